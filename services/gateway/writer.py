"""One client's write path: its bounded buffer, direct writes and the writer task.

A :class:`Writer` is the only thing that writes to a client's socket.  Producers
never wait:

* :meth:`Writer.put` queues bytes and writes them at once (replies to the
  client's own commands, notices).
* :meth:`Writer.queue` queues bytes and writes nothing; fan-out uses it for
  every message of one batch read from Redis, then calls :meth:`Writer.flush`
  once per touched client, so many messages leave in one write.

Writing is a non-blocking ``write`` straight to the socket, with no task switch.
Only what the socket cannot take at once is left for a writer task, started on
demand and gone as soon as the buffer is empty, so an idle connection costs no
task.  When more than ``limit_bytes`` wait, the writer refuses further data and
calls ``on_overflow`` once: the client is too slow and must go, nobody else
waits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import trio

Spawn = Callable[..., None]


class Writer:
    """Owns one stream's outgoing bytes.  Never blocks its callers."""

    __slots__ = (
        "_chunks",
        "_done",
        "_live",
        "_scope",
        "closed",
        "dirty",
        "fd",
        "limit_bytes",
        "on_broken",
        "on_overflow",
        "overflowed",
        "size",
        "spawn",
        "stream",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        limit_bytes: int,
        *,
        on_overflow: Callable[[], None],
        on_broken: Callable[[], None],
        spawn: Spawn,
    ) -> None:
        self.stream = stream
        self.fd = _fileno(stream)
        self.limit_bytes = limit_bytes
        self.on_overflow = on_overflow
        self.on_broken = on_broken  # the socket broke under the writer task
        self.spawn = spawn  # starts the writer task in a nursery that outlives callers
        self.size = 0
        self.overflowed = False
        self.closed = False
        self.dirty = False  # queued by the current fan-out batch, not yet flushed
        self._chunks: list[bytes] = []
        self._live = False  # writes allowed (the connection task is running)
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None  # set when the running writer task ends

    # -- producers ------------------------------------------------------------------
    def queue(self, data: bytes) -> bool:
        """Queue ``data`` without writing; ``False`` when refused (full or closed)."""
        if self.overflowed or self.closed:
            return False
        self.size += len(data)
        if self.size > self.limit_bytes:
            self.overflowed = True
            self._chunks.clear()
            self.on_overflow()
            return False
        self._chunks.append(data)
        return True

    def put(self, data: bytes) -> bool:
        """Queue ``data`` and write what the socket takes now; ``False`` when refused."""
        if not self.queue(data):
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Write what is queued straight to the socket; leave the rest to a writer
        task, started if none runs (while one runs, it alone writes: it sends what
        is queued before it exits)."""
        self.dirty = False
        if not self._live or self._done is not None or self._write_now():
            return
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self.spawn(self._run, self._scope, self._done)

    def _write_now(self) -> bool:
        """One non-blocking write.  ``True`` when nothing is left for a writer task
        (all written, nothing pending, closed).  Errors are left to the writer task,
        which reports them."""
        if self.closed or not self._chunks:
            return True
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        try:
            sent = os.write(self.fd, data) if self.fd >= 0 else 0
        except OSError:  # would block, or a broken socket the writer task will report
            sent = 0
        if sent == len(data):
            self._chunks.clear()
            self.size = 0
            return True
        rest = data[sent:]
        self._chunks[:] = [rest]
        self.size = len(rest)
        return False

    # -- the connection task's side --------------------------------------------------
    def start(self) -> None:
        """The connection task runs: from now on bytes may be written (and what was
        queued before goes out)."""
        self._live = True
        self.flush()

    async def wait_flushed(self, timeout_s: float) -> None:
        """Wait, bounded, until a running writer task has sent everything."""
        if self._done is not None:
            with trio.move_on_after(timeout_s):
                await self._done.wait()

    async def stop(self) -> None:
        """Cancel the writer task, if any, and wait for it to end."""
        if self._scope is not None:
            self._scope.cancel()
        if self._done is not None:
            await self._done.wait()

    def take(self) -> bytes:
        """Everything pending, as one bytes object (empty when nothing is)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.size = 0
        return data

    def close(self) -> None:
        """Refuse everything from now on."""
        self.closed = True

    async def _run(self, scope: trio.CancelScope, done: trio.Event) -> None:
        """Send until nothing is pending, then exit.  A broken socket ends the
        session (``on_broken``), never the nursery that runs this."""
        try:
            with scope:
                while data := self.take():
                    await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.on_broken()  # the client is gone: nobody to tell why
        finally:
            self._scope = None
            self._done = None
            done.set()


def _fileno(stream: trio.abc.Stream) -> int:
    """The socket's descriptor, for direct non-blocking writes (-1 if none)."""
    socket: Any = getattr(stream, "socket", None)
    return int(socket.fileno()) if socket is not None else -1

