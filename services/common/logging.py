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
import math
import sys
import time
from collections.abc import Callable
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


class LogThrottle:
    """At most one log line per ``interval_s`` for one kind of event, so input a
    peer controls (a flood of malformed bus messages) cannot flood the log.

    :meth:`allow` says whether to log now; :attr:`suppressed` is how many were
    not logged since the last one (put it in the line that is logged).
    """

    __slots__ = ("_clock", "_next_at", "interval_s", "suppressed")

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next_at = -math.inf
        self.suppressed = 0

    def allow(self) -> bool:
        """``True`` (and the count restarts) when a line may be logged now."""
        now = self._clock()
        if now < self._next_at:
            self.suppressed += 1
            return False
        self._next_at = now + self.interval_s
        return True

    def take_suppressed(self) -> int:
        """How many were suppressed before this line; resets the count."""
        count, self.suppressed = self.suppressed, 0
        return count
