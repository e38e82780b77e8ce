"""A client's bounded outgoing buffer.

Producers never wait.  Two ways in:

* :meth:`Outbox.put` queues bytes and wakes the client's writer task (replies
  to the client's own commands, notices).
* :meth:`Outbox.queue` queues bytes *without* waking anyone; fan-out uses it for
  every message of one batch read from Redis and then calls :meth:`flush_now`
  once per client, which writes everything pending straight to the socket with
  one ``write`` and no task switch.  Only what the socket cannot take at once is
  left to the writer task.

Either way, many messages for one client leave in one write.  When more than
``limit_bytes`` wait, the outbox refuses further data and calls ``on_overflow``
once: the client is too slow and must go, nobody else waits.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio


class Outbox:
    """Byte-capped buffer between producers and one writer task, owning no socket."""

    __slots__ = ("_chunks", "_lot", "_ready", "closed", "finishing", "limit_bytes",
                 "on_overflow", "overflowed", "size", "writer_busy")

    def __init__(self, limit_bytes: int, on_overflow: Callable[[], None]) -> None:
        self.limit_bytes = limit_bytes
        self.on_overflow = on_overflow
        self.size = 0
        self.overflowed = False
        self.closed = False
        self.finishing = False
        self.writer_busy = False  # the writer task is inside a send: do not write around it
        self._chunks: list[bytes] = []
        self._ready = False
        self._lot = trio.lowlevel.ParkingLot()

    def queue(self, data: bytes) -> bool:
        """Queue ``data`` without waking the writer; ``False`` when refused."""
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
        """Queue ``data`` and wake the writer; ``False`` when refused."""
        if not self.queue(data):
            return False
        self.wake()
        return True

    def wake(self) -> None:
        if not self._ready and self._chunks:
            self._ready = True
            self._lot.unpark_all()

    def flush_now(self, fd: int) -> None:
        """Write what is pending to ``fd`` at once, as far as the socket takes it
        without blocking; leave the rest (and any error) to the writer task."""
        if self.writer_busy or not self._chunks or self.closed:
            self.wake()
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        try:
            sent = os.write(fd, data)
        except OSError:  # would block, or a broken socket the writer will report
            sent = 0
        if sent == len(data):
            self._chunks.clear()
            self.size = 0
            return
        rest = data[sent:]
        self._chunks[:] = [rest]
        self.size = len(rest)
        self.wake()

    def take(self) -> bytes:
        """Everything pending, as one bytes object (empty when nothing is)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.size = 0
        self._ready = False
        return data

    async def wait(self) -> None:
        """Return once something is pending for the writer, or :meth:`finish` was called."""
        while not self._ready and not self.finishing:
            await self._lot.park()

    def finish(self) -> None:
        """Ask the writer to send what is pending and stop."""
        self.finishing = True
        self._lot.unpark_all()

    def close(self) -> None:
        self.closed = True
