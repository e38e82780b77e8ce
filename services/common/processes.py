"""Child processes for the local cluster, the benchmark and the tests.

A :class:`Process` is the one supervisor of one child: it starts it in its own
process group (its pid is the group id, and a terminal's Ctrl-C reaches only us),
reads its output (stdout and stderr together) as lines, waits for a line or a
log event, and stops it: a signal to the whole group, a deadline, then
``SIGKILL`` to the group, so nothing the child started survives it.

Output goes one of two ways:

- by default into a pipe, read by a thread of ours: lines are kept in memory
  (unless ``keep_lines=False``) and handed to ``on_line`` as they arrive;
- with ``log_path``, into that file, written by the child itself (no thread and
  no pipe that could fill up and stall it); lines are read back when asked for.

Every wait takes a deadline.  Nothing here is async: Trio code runs the blocking
calls with :func:`trio.to_thread.run_sync`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

KILL_WAIT_S = 5.0  # after SIGKILL: only a process stuck in the kernel takes longer
MAX_LINE_BYTES = 64 * 1024  # a longer line is handed on in pieces of this size
_POLL_INTERVAL_S = 0.02

T = TypeVar("T")


class ProcessExited(RuntimeError):
    """The process exited while something was waited for; the message has its output's tail."""


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``).

    Meant for ``preexec_fn``.  Elsewhere than Linux it does nothing.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # 1 == PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_until(
    check: Callable[[], T | bool | None],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.05,
    process: Process | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    Raises :class:`TimeoutError` at the deadline, or :class:`ProcessExited` as soon
    as ``process`` (when given) is no longer running.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value  # type: ignore[return-value]
        if process is not None and not process.running():
            raise ProcessExited(
                f"{process.name} exited with status {process.returncode} before {what}:\n{process.tail()}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


class Process:
    """One child process in its own process group; see the module docstring.

    Use it as a context manager: leaving the block stops the group (``SIGTERM``,
    or ``SIGKILL`` at once when the block raised) and closes the pipe.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        log_path: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        keep_lines: bool = True,
        parent_death_signal: signal.Signals | None = None,
    ) -> None:
        """Start ``argv``.  Raises :class:`OSError` when it cannot be started.

        ``env`` defaults to this process's environment.  ``on_line`` is called from
        the reader thread (not with ``log_path``).  ``parent_death_signal`` is sent
        to the child if this process dies without stopping it (Linux only).
        """
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.killed = False  # stop() had to SIGKILL it
        self._on_line = on_line
        self._keep_lines = keep_lines
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._offset = 0  # log_path: bytes read back so far
        self._partial = b""
        self._stopped = False
        self.output_done = threading.Event()  # the pipe reached end of file
        options: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stderr": subprocess.STDOUT,
            "env": dict(env) if env is not None else None,
            "cwd": cwd,
            "start_new_session": True,  # its own process group, out of the terminal's reach
        }
        if parent_death_signal is not None:
            options["preexec_fn"] = partial(die_with_parent, parent_death_signal)
        self._reader: threading.Thread | None = None
        if log_path is not None:
            with open(log_path, "ab") as out:
                self.popen = subprocess.Popen(self.argv, stdout=out, **options)
        else:
            self.popen = subprocess.Popen(self.argv, stdout=subprocess.PIPE, **options)
            self._reader = threading.Thread(target=self._read, name=f"output-{name}", daemon=True)
            self._reader.start()

    # -- state -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group id."""
        return int(self.popen.pid)

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    # -- output ----------------------------------------------------------------------

    def _read(self) -> None:
        stream = self.popen.stdout
        assert stream is not None
        try:
            for raw in iter(partial(stream.readline, MAX_LINE_BYTES), b""):
                self._add(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, ValueError):
            pass  # the pipe was closed under us: close() ran
        finally:
            self.output_done.set()
            with self._cond:
                self._cond.notify_all()

    def _add(self, line: str) -> None:
        if self._keep_lines:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        if self._on_line is not None:
            self._on_line(line)

    def _read_back(self) -> None:
        """With ``log_path``: take in what the child wrote since the last call."""
        if self.log_path is None:
            return
        with self._cond:
            try:
                with open(self.log_path, "rb") as log:
                    log.seek(self._offset)
                    data = log.read()
            except FileNotFoundError:
                return
            self._offset += len(data)
            *complete, self._partial = (self._partial + data).split(b"\n")
            self._lines += [raw.decode("utf-8", "replace").rstrip("\r") for raw in complete]

    @property
    def lines(self) -> list[str]:
        """Every output line so far (a copy)."""
        self._read_back()
        with self._cond:
            return list(self._lines)

    def records(self) -> list[dict[str, Any]]:
        """Every output line that is a JSON object (a structured log event)."""
        return [record for line in self.lines if (record := _json_object(line)) is not None]

    def tail(self, n: int = 60) -> str:
        """The last ``n`` lines, each prefixed with the process name, for error messages."""
        where = f" (log: {self.log_path})" if self.log_path is not None else ""
        lines = self.lines[-n:]
        return "\n".join([f"  {self.name}{where}:", *(f"  {self.name}| {line}" for line in lines)])

    def wait_for_line(self, match: Callable[[str], bool], timeout_s: float, what: str) -> str:
        """The first output line (from the start) that ``match`` accepts.

        Raises :class:`TimeoutError` at the deadline, or :class:`ProcessExited` when
        the output ended without such a line.
        """
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            # Read "finished" first: lines written just before the end are then in.
            finished = self.output_done.is_set() if self.log_path is None else not self.running()
            lines = self.lines
            for line in lines[seen:]:
                if match(line):
                    return line
            seen = len(lines)
            left = deadline - time.monotonic()
            if finished:
                raise ProcessExited(
                    f"{self.name} exited (status {self.returncode}) without {what}; output:\n{self.tail()}"
                )
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {what} within {timeout_s:g}s; output:\n{self.tail()}")
            if self.log_path is not None:
                time.sleep(min(left, _POLL_INTERVAL_S))
            else:
                with self._cond:
                    if len(self._lines) == seen and not self.output_done.is_set():
                        self._cond.wait(min(left, 0.2))

    def wait_for_record(
        self, match: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> dict[str, Any]:
        """The first output line that is a JSON object ``match`` accepts, parsed."""

        def matches(line: str) -> bool:
            record = _json_object(line)
            return record is not None and match(record)

        record = _json_object(self.wait_for_line(matches, timeout_s, what))
        assert record is not None
        return record

    def wait_for_event(self, event: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
        """The first log event named ``event`` whose ``fields`` have the given values."""

        def match(record: dict[str, Any]) -> bool:
            return record.get("event") == event and all(record.get(k) == v for k, v in fields.items())

        shown = " ".join([event, *(f"{k}={v!r}" for k, v in fields.items())])
        return self.wait_for_record(match, timeout_s, f"log event {shown}")

    # -- signals and stopping --------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Signal the whole process group; a group already gone is not an error."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def wait(self, timeout_s: float | None = None) -> int:
        """The exit status; raises :class:`subprocess.TimeoutExpired` at the deadline."""
        return self.popen.wait(timeout=timeout_s)

    def stop(
        self,
        sig: int = signal.SIGTERM,
        timeout_s: float = 15.0,
        *,
        interrupt: threading.Event | None = None,
        on_kill: Callable[[], None] | None = None,
    ) -> int | None:
        """Signal the group, wait up to ``timeout_s`` (less once ``interrupt`` is set),
        then ``SIGKILL`` the group; returns the exit status (``None`` if even that
        did not end it).  Whatever the child left in its group is killed too.
        ``on_kill`` is called just before the SIGKILL of a child that outlived its
        deadline.  Only the first call signals anything."""
        if self._stopped:
            return self.returncode
        self._stopped = True
        if self.running():
            self.send_signal(sig)
        deadline = time.monotonic() + timeout_s
        while self.running():
            left = deadline - time.monotonic()
            if left <= 0 or (interrupt is not None and interrupt.is_set()):
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=min(left, 0.05))
        if self.running():
            self.killed = True
            if on_kill is not None:
                on_kill()
        self.send_signal(signal.SIGKILL)  # the late leader, or what it left in its group
        try:
            return self.popen.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> int | None:
        """``SIGKILL`` the group at once (no grace); returns the exit status."""
        return self.stop(signal.SIGKILL, 0.0)

    def close(self) -> None:
        """Let the reader thread finish (bounded) and close the pipe."""
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(signal.SIGKILL if exc_type is not None else signal.SIGTERM)
        self.close()


def _json_object(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
