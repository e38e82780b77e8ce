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

Every writer of a gateway also charges what it holds (queued, and taken by its
writer task but not yet sent) to one shared :class:`OutboxBudget`.  When the
total would pass the budget's limit, the writers furthest behind are cut (their
bytes dropped, ``on_overflow`` called with :attr:`Writer.budget_cut` set) until
the total is back within it, so N clients that stop reading cannot hold more
than the limit between them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import trio

Spawn = Callable[..., None]

# What one queued piece costs beyond its bytes (a bytes object's header and its
# list slot, rounded up): charged to the budget, so many tiny pieces (a /help
# repeated by a client that never reads) count for the memory they really take.
PIECE_OVERHEAD = 48


class OutboxBudget:
    """Output bytes held for all of one gateway's clients together, against one limit.

    Owned by the gateway and handed to each :class:`Writer`, which keeps
    :attr:`used` up to date itself (two additions per delivery, nothing more).
    Only when a charge takes :attr:`used` past :attr:`limit_bytes` does the
    budget look at writers: those whose writer task is running (the ones behind)
    and the one charging, largest backlog first.
    """

    __slots__ = ("behind", "cuts", "limit_bytes", "used")

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used = 0  # bytes charged by every writer together
        self.behind: set[Writer] = set()  # writers whose writer task is running
        self.cuts = 0  # writers cut so far

    def relieve(self, charging: Writer) -> None:
        """Over the limit: cut the writers furthest behind, largest backlog first,
        until the total is back within the limit (``charging`` included)."""
        candidates = [w for w in self.behind if w.charge and not w.overflowed]
        if charging not in self.behind:
            candidates.append(charging)
        candidates.sort(key=_charge, reverse=True)
        for writer in candidates:
            if self.used <= self.limit_bytes:
                return
            writer.cut(budget=True)
            self.cuts += 1


def _charge(writer: Writer) -> int:
    return writer.charge


class Writer:
    """Owns one stream's outgoing bytes.  Never blocks its callers."""

    __slots__ = (
        "_chunks",
        "_done",
        "_live",
        "_scope",
        "budget",
        "budget_cut",
        "closed",
        "cut_waiting",
        "dirty",
        "fd",
        "in_flight",
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
        budget: OutboxBudget | None = None,
    ) -> None:
        self.stream = stream
        self.fd = _fileno(stream)
        self.limit_bytes = limit_bytes
        self.on_overflow = on_overflow
        self.on_broken = on_broken  # the socket broke under the writer task
        self.spawn = spawn  # starts the writer task in a nursery that outlives callers
        self.budget = budget if budget is not None else OutboxBudget(sys.maxsize)
        self.size = 0  # queued bytes (what limit_bytes caps)
        self.in_flight = 0  # bytes taken (by the writer task, or the farewell), not yet sent
        self.overflowed = False
        self.budget_cut = False  # the overflow was the gateway's total, not this client's cap
        self.cut_waiting = 0  # bytes dropped when cut
        self.closed = False
        self.dirty = False  # queued by the current fan-out batch, not yet flushed
        self._chunks: list[bytes] = []
        self._live = False  # writes allowed (the connection task is running)
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None  # set when the running writer task ends

    @property
    def charge(self) -> int:
        """What this writer holds, as charged to the budget: queued bytes plus
        :data:`PIECE_OVERHEAD` per queued piece, plus what was taken but not yet sent."""
        return self.size + PIECE_OVERHEAD * len(self._chunks) + self.in_flight

    # -- producers ------------------------------------------------------------------
    def queue(self, data: bytes) -> bool:
        """Queue ``data`` without writing; ``False`` when refused (full, closed, or
        cut because the gateway's total passed its budget)."""
        if self.overflowed or self.closed:
            return False
        n = len(data)
        if self.size + n > self.limit_bytes:
            self.cut(budget=False)
            return False
        self.size += n
        self._chunks.append(data)
        budget = self.budget
        budget.used += n + PIECE_OVERHEAD
        if budget.used > budget.limit_bytes:
            budget.relieve(self)
            return not self.overflowed
        return True

    def cut(self, *, budget: bool) -> None:
        """Drop everything held and refuse further data; ``on_overflow`` is called
        once (not when already closing: the last send is just abandoned).
        ``budget``: cut for the gateway's total, not this client's cap."""
        if self.overflowed:
            return
        self.cut_waiting = self.size + self.in_flight
        self.overflowed = True
        self.budget_cut = budget
        self._release(self.charge)
        self._chunks.clear()
        self.size = self.in_flight = 0
        if self._scope is not None:
            self._scope.cancel()  # the writer task, or the last send: their bytes go now
        if not self.closed:
            self.on_overflow()

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
        self.budget.behind.add(self)
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
            self.budget.used -= self.size + PIECE_OVERHEAD * len(self._chunks)
            self._chunks.clear()
            self.size = 0
            return True
        rest = data[sent:]
        self.budget.used -= sent + PIECE_OVERHEAD * (len(self._chunks) - 1)
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
        """Cancel the writer task, if any, and wait for it to end; no other starts
        (what is queued from now on waits for :meth:`take`)."""
        self._live = False
        if self._scope is not None:
            self._scope.cancel()
        if self._done is not None:
            await self._done.wait()

    def take(self) -> bytes:
        """Everything pending, as one bytes object (empty when nothing is).  Its
        bytes stay charged to the budget until :meth:`sent` says they are gone."""
        if not self._chunks:
            return b""
        data = b"".join(self._chunks)
        self.budget.used -= PIECE_OVERHEAD * (len(self._chunks) - 1)
        self._chunks.clear()
        self.in_flight += self.size + PIECE_OVERHEAD
        self.size = 0
        return data

    def sent(self) -> None:
        """What :meth:`take` returned was sent, or given up: stop charging it."""
        self._release(self.in_flight)
        self.in_flight = 0

    def close(self) -> None:
        """Refuse everything from now on."""
        self.closed = True

    async def send_last(self, data: bytes, timeout_s: float) -> None:
        """The connection ends: refuse everything from now on and send ``data``
        (what :meth:`take` returned, perhaps with a last line) within ``timeout_s``.
        Charged to the budget meanwhile, and cut like any writer behind (which
        abandons the send at once).  Call after :meth:`stop`."""
        self.closed = True
        was_cut = self.overflowed
        self._release(self.in_flight)
        self.in_flight = len(data) + PIECE_OVERHEAD if data else 0
        budget = self.budget
        budget.used += self.in_flight
        if budget.used > budget.limit_bytes:
            budget.relieve(self)
            if self.overflowed and not was_cut:
                return  # cut for the budget just now: its bytes are already dropped
        if not data:
            return
        self._scope = trio.CancelScope(deadline=trio.current_time() + timeout_s)
        self.budget.behind.add(self)
        try:
            with self._scope:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client is gone
        finally:
            self._scope = None
            self.budget.behind.discard(self)
            self.sent()

    def _release(self, n: int) -> None:
        self.budget.used -= n

    async def _run(self, scope: trio.CancelScope, done: trio.Event) -> None:
        """Send until nothing is pending, then exit.  A broken socket ends the
        session (``on_broken``), never the nursery that runs this."""
        try:
            with scope:
                while data := self.take():
                    await self.stream.send_all(data)
                    self.sent()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.on_broken()  # the client is gone: nobody to tell why
        finally:
            self.sent()
            self.budget.behind.discard(self)
            self._scope = None
            self._done = None
            done.set()


def _fileno(stream: trio.abc.Stream) -> int:
    """The socket's descriptor, for direct non-blocking writes (-1 if none)."""
    socket: Any = getattr(stream, "socket", None)
    return int(socket.fileno()) if socket is not None else -1

