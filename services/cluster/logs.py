"""The local cluster's one output stream: every child's lines and its own events.

Each line is tagged with its source (``gw1``, ``redis``, ``haproxy``, ``cluster``):

- ``json``: one JSON object per line.  A gateway's log events are passed on with
  a ``source`` field added; other output lines become ``process.output`` events;
  the supervisor's own events carry ``source: "cluster"``.
- ``console``: ``NAME    | `` then the event as structlog's own
  :class:`structlog.dev.ConsoleRenderer` renders it (the clock, level, event,
  ``key=value`` fields, a traceback below), or the plain line.

Children's lines arrive from reader threads (see
:class:`services.common.processes.Process`), so writes are serialised by a lock.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, TextIO

import structlog

_COLORS = ("36", "33", "35", "32", "34", "31", "96", "93", "95")
_HIDDEN_CONSOLE_KEYS = ("gateway", "source")  # the line's prefix says it


class Output:
    """Writes every process's lines, and the supervisor's own events, to one stream."""

    def __init__(self, fmt: str, stream: TextIO, *, color: bool = False) -> None:
        self.fmt = fmt
        self.stream = stream
        self.color = color
        self.width = 8
        self._colors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._renderer = structlog.dev.ConsoleRenderer(colors=color)

    def _name(self, source: str) -> str:
        label = f"{source:<{self.width}}|"
        if not self.color:
            return label
        code = self._colors.setdefault(source, _COLORS[len(self._colors) % len(_COLORS)])
        return f"\x1b[{code}m{label}\x1b[0m"

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                pass  # whoever reads us went away; keep supervising regardless

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        """The supervisor's own structured event."""
        record = {"timestamp": now_iso(), "level": level, "event": event, "source": "cluster"}
        record.update(fields)
        self.record("cluster", record)

    def say(self, text: str) -> None:
        """A human sentence: plain in console mode, a ``cluster.info`` event in JSON."""
        if self.fmt == "json":
            self.event("cluster.info", text=text)
        else:
            self._write(f"{self._name('cluster')} {text}")

    def record(self, source: str, record: dict[str, Any]) -> None:
        """One structured event from ``source``."""
        if self.fmt == "json":
            record.setdefault("source", source)
            self._write(json.dumps(record, default=str, separators=(",", ":")))
            return
        shown = {k: v for k, v in record.items() if k not in _HIDDEN_CONSOLE_KEYS}
        if "timestamp" in shown:
            shown["timestamp"] = _clock(str(shown["timestamp"]))
        first, *rest = self._renderer(None, str(record.get("level", "")), shown).splitlines() or [""]
        name = self._name(source)
        self._write(f"{name} {first}")
        for line in rest:  # a traceback
            self._write(f"{name}   {line}")

    def line(self, source: str, text: str, *, structured: bool) -> None:
        """One line of a child's output; JSON objects from gateways are re-rendered."""
        if structured and text.startswith("{"):
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if isinstance(record, dict):
                self.record(source, record)
                return
        if self.fmt == "json":
            event = {"timestamp": now_iso(), "level": "info", "event": "process.output"}
            self._write(json.dumps({**event, "source": source, "line": text}, separators=(",", ":")))
        else:
            self._write(f"{self._name(source)} {text}")


def _clock(timestamp: str) -> str:
    """``HH:MM:SS`` of an ISO timestamp: the date is the same on every line of a run."""
    return timestamp[11:19] if len(timestamp) >= 19 and timestamp[10] in "T " else timestamp


def now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
