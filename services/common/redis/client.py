"""The command connection: many tasks' commands written together (automatic
pipelining), replies matched to callers in order, reconnects with backoff."""

from __future__ import annotations

import math
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio

from services.common.config import RedisURL
from services.common.redis.connection import (
    RECEIVE_BYTES,
    Address,
    Arg,
    Backoff,
    Reply,
    _open_with_retry,
    _pack,
    _Wakeup,
    needs_reconnect,
    pause,
)
from services.common.redis.errors import (
    CommandNotSent,
    RedisError,
    RedisUnavailable,
    _ConnectionLost,
)
from services.common.redis.topology import Topology

log = structlog.get_logger()


class _Pending:
    __slots__ = ("abandoned", "done", "reply", "started")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Reply = None
        self.abandoned = False
        self.started = trio.current_time()


class _CommandConnection:
    """One live command connection: a writer task, a reader task, a stall watchdog."""

    def __init__(self, stream: trio.abc.Stream, reader: Any, stall_s: float) -> None:
        self.stream = stream
        self.reader = reader
        self.stall_s = stall_s
        self.outgoing: list[bytes] = []
        self.waiting: deque[_Pending] = deque()
        self.wakeup = _Wakeup()
        self.closed = False
        self.restart = trio.Event()

    def submit(self, packed: bytes) -> _Pending:
        pending = _Pending()
        self.outgoing.append(packed)
        self.waiting.append(pending)
        self.wakeup.set()
        return pending

    async def run(self) -> None:
        """Serve until the connection fails; then fail every waiting caller."""
        reason = "connection closed"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._watchdog)
                nursery.start_soon(self._restarter)
                await self._reader()
        except* (_ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError,
                 OSError) as group:
            exc = group.exceptions[0]
            reason = str(exc) or type(exc).__name__
        finally:
            self.closed = True
            while self.waiting:
                pending = self.waiting.popleft()
                pending.reply = RedisUnavailable("connection to Redis lost")
                pending.done.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
        raise _ConnectionLost(reason)

    async def _restarter(self) -> None:
        await self.restart.wait()
        raise _ConnectionLost("the primary moved")

    async def _writer(self) -> None:
        while True:
            await self.wakeup.wait()
            if self.outgoing:
                data = b"".join(self.outgoing)
                self.outgoing.clear()
                await self.stream.send_all(data)

    async def _reader(self) -> None:
        while True:
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise _ConnectionLost("Redis closed the connection")
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                if not self.waiting:
                    raise _ConnectionLost("reply with no command waiting for it")
                pending = self.waiting.popleft()
                if needs_reconnect(reply):
                    # Not the primary (any more), or not ready: the command did not
                    # run; look for the primary again.
                    pending.reply = CommandNotSent(f"Redis refused it: {reply}")
                    pending.done.set()
                    raise _ConnectionLost(f"Redis replied {str(reply).split(' ', 1)[0]}")
                if not pending.abandoned:
                    pending.reply = reply
                    pending.done.set()

    async def _watchdog(self) -> None:
        # A Redis that stops answering (SIGSTOP, a dead network) keeps the TCP
        # connection open; only the age of the oldest unanswered command shows it.
        if math.isinf(self.stall_s):
            return
        tick = self.stall_s / 4
        while True:
            before = trio.current_time()
            await trio.sleep(tick)
            if trio.current_time() - before > 2 * tick:
                # We overslept: this process was frozen or starved, not Redis. Let the
                # reader take in what arrived meanwhile before judging Redis.
                continue
            if self.waiting and trio.current_time() - self.waiting[0].started > self.stall_s:
                raise _ConnectionLost(f"Redis did not answer for {self.stall_s}s")


StateCallback = Callable[[bool], None]


class RedisClient:
    """The shared command connection, with automatic pipelining and reconnects.

    Start :meth:`run` in a nursery (``await nursery.start(client.run)``); it
    returns from ``start`` at once, connected or not, and keeps (re)connecting
    until cancelled.  :meth:`execute` never waits for a connection: when Redis is
    not connected it raises :class:`RedisUnavailable` straight away.
    """

    def __init__(
        self,
        url: RedisURL,
        *,
        timeout_s: float = 2.0,
        name: str = "chat",
        on_state: StateCallback | None = None,
        on_reconnect: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        tls: ssl.SSLContext | None = None,
        topology: Topology | None = None,
        setup: Sequence[tuple[Arg, ...]] = (),
    ) -> None:
        """``setup``: commands run on every new connection before anyone can use
        it (an error reply fails the connection attempt)."""
        self.url = url
        self.tls = tls
        self.topology = topology or Topology(url)
        self.topology.on_change(self._primary_moved)
        self.setup = setup
        self.address: Address | None = None
        self.timeout_s = timeout_s
        self.name = name
        self.on_state = on_state
        self.on_reconnect = on_reconnect
        self.backoff = backoff or Backoff()
        self.reconnects = 0
        self._conn: _CommandConnection | None = None
        self._connected_event = trio.Event()
        self.connected_at = math.inf  # trio time of the latest successful connect

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def wait_connected(self) -> None:
        while not self.connected:
            await self._connected_event.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        ever_connected = False
        while True:
            stream, reader, self.address = await _open_with_retry(
                self.url, self.timeout_s, self.name, self.backoff, select_db=True,
                topology=self.topology, setup=self.setup, tls=self.tls,
            )
            conn = _CommandConnection(stream, reader, stall_s=self.timeout_s * 3)
            self._conn = conn
            self.connected_at = trio.current_time()
            if ever_connected:
                self.reconnects += 1
                if self.on_reconnect:
                    self.on_reconnect()
            log.info(
                "redis.reconnected" if ever_connected else "redis.connected",
                connection=self.name,
                redis=str(self.url),
                address=f"{self.address[0]}:{self.address[1]}",
            )
            ever_connected = True
            self._connected_event.set()
            self._connected_event = trio.Event()
            if self.on_state:
                self.on_state(True)
            try:
                await conn.run()
            except _ConnectionLost as exc:
                log.warning("redis.disconnected", connection=self.name, reason=str(exc))
            finally:
                self._conn = None
            if self.on_state:
                self.on_state(False)
            await pause(self.topology, self.backoff.next_delay())

    def _primary_moved(self, address: Address) -> None:
        conn = self._conn
        if conn is not None and self.address != address:
            conn.restart.set()

    async def execute(self, *args: Arg, timeout_s: float | None = None) -> Reply:
        """Send one command and return its reply.

        Raises :class:`CommandNotSent` when not connected (the command did not
        run); :class:`RedisUnavailable` when the connection is lost before the
        reply or no reply came within the deadline (the command may have run);
        :class:`RedisReplyError` when Redis answered with an error.
        """
        conn = self._conn
        if conn is None or conn.closed:
            raise CommandNotSent("not connected to Redis")
        pending = conn.submit(_pack(args))
        deadline = self.timeout_s if timeout_s is None else timeout_s
        with trio.move_on_after(deadline) as scope:
            await pending.done.wait()
        if scope.cancelled_caught:
            pending.abandoned = True
            raise RedisUnavailable(f"Redis did not answer {args[0]!r} within {deadline}s")
        reply = pending.reply
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def pipeline(self, commands: list[tuple[Arg, ...]]) -> list[Reply]:
        """Send several commands back to back; return their replies (errors included
        as :class:`RedisReplyError` values rather than raised)."""
        conn = self._conn
        if conn is None or conn.closed:
            raise CommandNotSent("not connected to Redis")
        pendings = [conn.submit(_pack(c)) for c in commands]
        with trio.move_on_after(self.timeout_s) as scope:
            for p in pendings:
                await p.done.wait()
        if scope.cancelled_caught:
            for p in pendings:
                p.abandoned = True
            raise RedisUnavailable(f"Redis did not answer a pipeline within {self.timeout_s}s")
        replies = [p.reply for p in pendings]
        for reply in replies:
            if isinstance(reply, RedisUnavailable):
                raise reply
        return replies
