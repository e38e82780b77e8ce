"""A client's bounded outgoing buffer.

Fan-out calls :meth:`Outbox.put` synchronously and never waits: bytes are
appended and the client's writer task is woken.  The writer takes everything
pending in one go, so many messages for one client leave in one write.  When
more than ``limit_bytes`` wait, the outbox refuses further data and calls
``on_overflow`` once: the client is too slow and must go, nobody else waits.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class Outbox:
    """Byte-capped buffer between fan-out (many producers) and one writer task."""

    __slots__ = ("_chunks", "_lot", "_ready", "closed", "finishing", "limit_bytes",
                 "on_overflow", "overflowed", "size")

    def __init__(self, limit_bytes: int, on_overflow: Callable[[], None]) -> None:
        self.limit_bytes = limit_bytes
        self.on_overflow = on_overflow
        self.size = 0
        self.overflowed = False
        self.closed = False
        self.finishing = False
        self._chunks: list[bytes] = []
        self._ready = False
        self._lot = trio.lowlevel.ParkingLot()

    def put(self, data: bytes) -> bool:
        """Queue ``data``; ``False`` when refused (overflowed or closed)."""
        if self.overflowed or self.closed:
            return False
        self.size += len(data)
        if self.size > self.limit_bytes:
            self.overflowed = True
            self._chunks.clear()
            self.on_overflow()
            return False
        self._chunks.append(data)
        if not self._ready:
            self._ready = True
            self._lot.unpark_all()
        return True

    def take(self) -> bytes:
        """Everything pending, as one bytes object (empty when nothing is)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.size = 0
        self._ready = False
        return data

    async def wait(self) -> None:
        """Return once something is pending, or :meth:`finish` was called."""
        while not self._ready and not self.finishing:
            await self._lot.park()

    def finish(self) -> None:
        """Ask the writer to send what is pending and stop."""
        self.finishing = True
        self._lot.unpark_all()

    def close(self) -> None:
        self.closed = True
