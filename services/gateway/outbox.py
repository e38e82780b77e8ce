"""A client's bounded outgoing buffer.

Producers never wait.  Two ways in:

* :meth:`Outbox.put` queues bytes and calls ``on_pending`` at once (replies to
  the client's own commands, notices).
* :meth:`Outbox.queue` queues bytes and calls nothing; fan-out uses it for every
  message of one batch read from Redis and then has each touched client flush
  once, so many messages leave in one write.

Flushing (:meth:`flush_now`) writes everything pending straight to the socket
with one non-blocking ``write`` and no task switch.  Only what the socket cannot
take at once is left for a writer task, which the owner starts on demand, so an
idle connection costs no task at all.  When more than ``limit_bytes`` wait, the
outbox refuses further data and calls ``on_overflow`` once: the client is too
slow and must go, nobody else waits.
"""

from __future__ import annotations

import os
from collections.abc import Callable


class Outbox:
    """Byte-capped buffer in front of one socket; it never blocks and owns no task."""

    __slots__ = ("_chunks", "closed", "limit_bytes", "on_overflow", "on_pending", "overflowed",
                 "size", "writer_busy")

    def __init__(
        self,
        limit_bytes: int,
        on_overflow: Callable[[], None],
        on_pending: Callable[[], None] = lambda: None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.on_overflow = on_overflow
        self.on_pending = on_pending
        self.size = 0
        self.overflowed = False
        self.closed = False
        self.writer_busy = False  # a writer task is inside a send: do not write around it
        self._chunks: list[bytes] = []

    def queue(self, data: bytes) -> bool:
        """Queue ``data`` without telling anyone; ``False`` when refused."""
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
        """Queue ``data`` and call ``on_pending``; ``False`` when refused."""
        if not self.queue(data):
            return False
        self.on_pending()
        return True

    @property
    def pending(self) -> bool:
        return bool(self._chunks)

    def flush_now(self, fd: int) -> bool:
        """Write what is pending to ``fd`` as far as the socket takes it without
        blocking.  ``True`` when nothing is left for a writer task (all written,
        nothing pending, closed); ``False`` when a writer must send the rest.
        Errors are left to the writer, which reports them."""
        if self.closed or not self._chunks:
            return True
        if self.writer_busy:
            return False
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        try:
            sent = os.write(fd, data)
        except OSError:  # would block, or a broken socket the writer will report
            sent = 0
        if sent == len(data):
            self._chunks.clear()
            self.size = 0
            return True
        rest = data[sent:]
        self._chunks[:] = [rest]
        self.size = len(rest)
        return False

    def take(self) -> bytes:
        """Everything pending, as one bytes object (empty when nothing is)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.size = 0
        return data

    def close(self) -> None:
        self.closed = True
