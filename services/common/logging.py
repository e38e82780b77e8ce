"""structlog configuration, done once per process.

Output is one JSON object per line on stdout (``timestamp``, ``level``, ``event``,
``gateway`` and whatever context is bound), or a readable console rendering when
asked for or when stdout is a terminal.  Per-connection context (``conn``,
``peer``, ``nick``) is bound with :func:`structlog.contextvars.bind_contextvars`
at the top of each connection task; trio copies context variables into child
tasks, so each connection sees only its own.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(*, fmt: str = "auto", level: str = "info", gateway: str | None = None) -> None:
    """Configure structlog for the whole process.

    ``fmt`` is ``json``, ``console`` or ``auto`` (JSON unless stdout is a terminal).
    ``gateway`` is added to every event.  Safe to call again (tests do).
    """
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if gateway is not None:
        processors.append(_AddGateway(gateway))
    if fmt == "json":
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )


class _AddGateway:
    def __init__(self, gateway: str) -> None:
        self.gateway = gateway

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict.setdefault("gateway", self.gateway)
        return event_dict
