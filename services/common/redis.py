"""Redis over Trio: RESP on a Trio stream, replies parsed by ``hiredis.Reader``.

Two kinds of connection, each kept alive by a supervisor that reconnects with
capped exponential backoff plus jitter (reset after every success):

* :class:`RedisClient` - the command connection.  Many tasks call
  :meth:`RedisClient.execute` at once; their commands are written together
  (automatic pipelining) and replies are matched to callers in order.
* :class:`Subscriber` - the pub/sub connection.  It remembers which channels are
  wanted and subscribes to all of them again after every reconnect.  Messages
  go to a synchronous callback, so the reader never waits on anyone.

Everything that can go wrong surfaces as :class:`RedisError`:
:class:`RedisUnavailable` (not connected, connection lost, deadline passed) or
:class:`RedisReplyError` (Redis answered with an error).  Nothing above this
module sees trio or OS errors from the Redis connection.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import hiredis
import structlog
import trio

from services.common.config import RedisURL

log = structlog.get_logger()

RECEIVE_BYTES = 256 * 1024
RECONNECT_CAP_S = 5.0  # the longest wait between two connection attempts


class RedisError(Exception):
    """Base of every Redis failure the service reports."""


class RedisUnavailable(RedisError):
    """Redis cannot be reached right now: not connected, connection lost, or too slow.

    Raised as such, the command may have been written (and run); see the subclass
    :class:`CommandNotSent` for the case where it certainly was not."""


class CommandNotSent(RedisUnavailable):
    """The command was never written to Redis (no connection): it certainly did not run."""


class RedisReplyError(RedisError):
    """Redis answered a command with an error reply."""


class _ConnectionLost(Exception):
    pass


Reply = Any
Arg = str | bytes | int | float


def _pack(args: Iterable[Arg]) -> bytes:
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


class Backoff:
    """Capped exponential backoff with jitter: each delay is drawn between half the
    ceiling and the ceiling, which doubles per attempt up to ``cap_s``.
    :meth:`reset` after a success."""

    def __init__(self, base_s: float = 0.1, cap_s: float = RECONNECT_CAP_S) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class _Wakeup:
    """A level-triggered flag a single task can wait on."""

    def __init__(self) -> None:
        self._flag = False
        self._lot = trio.lowlevel.ParkingLot()

    def set(self) -> None:
        self._flag = True
        self._lot.unpark_all()

    async def wait(self) -> None:
        if not self._flag:
            await self._lot.park()
        self._flag = False


async def _open(url: RedisURL, timeout_s: float, name: str, *, select_db: bool) -> tuple[
    trio.SocketStream, Any
]:
    """Connect, authenticate, select the database, name the connection.

    Raises :class:`RedisUnavailable` or :class:`RedisReplyError`.
    """
    reader = hiredis.Reader(replyError=RedisReplyError)
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(url.host, url.port)
            try:
                commands: list[tuple[Arg, ...]] = []
                if url.password is not None:
                    if url.username:
                        commands.append(("AUTH", url.username, url.password))
                    else:
                        commands.append(("AUTH", url.password))
                if select_db and url.db:
                    commands.append(("SELECT", url.db))
                commands.append(("CLIENT", "SETNAME", name))
                await stream.send_all(b"".join(_pack(c) for c in commands))
                replies: list[Reply] = []
                while len(replies) < len(commands):
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise RedisUnavailable("connection closed during handshake")
                    reader.feed(data)
                    while (reply := reader.gets()) is not False:
                        replies.append(reply)
                for reply in replies:
                    if isinstance(reply, RedisReplyError):
                        raise reply
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
    except trio.TooSlowError:
        raise RedisUnavailable(f"no answer from {url} within {timeout_s}s") from None
    except OSError as exc:
        raise RedisUnavailable(f"cannot connect to {url}: {exc.strerror or exc}") from None
    except trio.BrokenResourceError as exc:
        raise RedisUnavailable(f"connection to {url} broke: {exc}") from None
    return stream, reader


async def _open_with_retry(
    url: RedisURL,
    timeout_s: float,
    name: str,
    backoff: Backoff,
    *,
    select_db: bool,
    first: Callable[[], bytes] | None = None,
) -> tuple[trio.SocketStream, Any]:
    """:func:`_open` until it works (sending what ``first()`` returns, computed
    once connected), sleeping
    with ``backoff`` between attempts; the backoff is reset on success.  Logs the
    first failure and then every 20th: no log storm while Redis is down."""
    failures = 0
    while True:
        try:
            stream, reader = await _open(url, timeout_s, name, select_db=select_db)
            data = first() if first is not None else b""
            if data:
                try:
                    await stream.send_all(data)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except (RedisError, trio.BrokenResourceError, OSError) as exc:
            failures += 1
            delay = backoff.next_delay()
            if failures == 1 or failures % 20 == 0:
                log.warning(
                    "redis.connect_failed",
                    connection=name,
                    error=str(exc),
                    attempts=failures,
                    retry_in_s=round(delay, 2),
                )
            await trio.sleep(delay)
            continue
        backoff.reset()
        return stream, reader


class _Pending:
    __slots__ = ("abandoned", "done", "reply", "started")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Reply = None
        self.abandoned = False
        self.started = trio.current_time()


class _CommandConnection:
    """One live command connection: a writer task, a reader task, a stall watchdog."""

    def __init__(self, stream: trio.SocketStream, reader: Any, stall_s: float) -> None:
        self.stream = stream
        self.reader = reader
        self.stall_s = stall_s
        self.outgoing: list[bytes] = []
        self.waiting: deque[_Pending] = deque()
        self.wakeup = _Wakeup()
        self.closed = False

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
    ) -> None:
        self.url = url
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
            stream, reader = await _open_with_retry(
                self.url, self.timeout_s, self.name, self.backoff, select_db=True
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
            await trio.sleep(self.backoff.next_delay())

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


MessageCallback = Callable[[bytes, bytes], None]


class Subscriber:
    """The pub/sub connection: wanted channels survive reconnects.

    ``on_message(channel, data)`` is called synchronously from the reader for
    every message; it must not block.  ``on_batch_end()`` follows each read's
    messages, so consumers can act once per batch (one write per client).
    Start :meth:`run` with ``nursery.start``.
    """

    def __init__(
        self,
        url: RedisURL,
        on_message: MessageCallback,
        *,
        timeout_s: float = 2.0,
        name: str = "chat-sub",
        on_state: StateCallback | None = None,
        on_reconnect: Callable[[], None] | None = None,
        on_batch_end: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = url
        self.on_message = on_message
        self.on_batch_end = on_batch_end
        self.timeout_s = timeout_s
        self.name = name
        self.on_state = on_state
        self.on_reconnect = on_reconnect
        self.backoff = backoff or Backoff()
        self.reconnects = 0
        self.wanted: set[bytes] = set()
        self._waiters: dict[bytes, deque[trio.Event]] = {}
        self._stream: trio.SocketStream | None = None
        self._send_lock = trio.StrictFIFOLock()
        self._restart = trio.Event()
        self._resubscribed: list[bytes] = []
        self._unconfirmed = 0  # resubscriptions Redis has not confirmed yet
        self._reconnect_due = False

    @property
    def connected(self) -> bool:
        return self._stream is not None

    async def subscribe(self, channel: str | bytes) -> None:
        """Want ``channel``; return once Redis confirmed the subscription.

        The channel stays wanted even when this raises :class:`RedisUnavailable`
        (it is subscribed on the next reconnect).
        """
        ch = channel.encode() if isinstance(channel, str) else channel
        self.wanted.add(ch)
        stream = self._stream
        if stream is None:
            raise RedisUnavailable("subscriber not connected to Redis")
        done = trio.Event()
        self._waiters.setdefault(ch, deque()).append(done)
        with trio.move_on_after(self.timeout_s) as scope:
            await self._send(stream, _pack(("SUBSCRIBE", ch)))
            await done.wait()
        if scope.cancelled_caught:
            self._discard_waiter(ch, done)
            raise RedisUnavailable(f"Redis did not confirm SUBSCRIBE within {self.timeout_s}s")
        if self._stream is not stream:
            raise RedisUnavailable("subscriber connection lost while subscribing")

    async def unsubscribe(self, channel: str | bytes) -> None:
        """Stop wanting ``channel``.  Never raises: a lost connection drops it anyway."""
        ch = channel.encode() if isinstance(channel, str) else channel
        self.wanted.discard(ch)
        stream = self._stream
        if stream is None:
            return
        with trio.move_on_after(self.timeout_s):
            with contextlib.suppress(RedisUnavailable):
                await self._send(stream, _pack(("UNSUBSCRIBE", ch)))

    def force_reconnect(self) -> None:
        """Drop the connection and start over (used when the canary stops coming back)."""
        self._restart.set()

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        try:
            async with self._send_lock:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise RedisUnavailable(f"subscriber connection lost: {exc}") from None

    def _discard_waiter(self, ch: bytes, done: trio.Event) -> None:
        waiters = self._waiters.get(ch)
        if waiters and done in waiters:
            waiters.remove(done)

    def _fail_waiters(self) -> None:
        for waiters in self._waiters.values():
            for done in waiters:
                done.set()
        self._waiters.clear()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        ever_connected = False
        while True:
            stream, reader = await _open_with_retry(
                self.url, self.timeout_s, self.name, self.backoff, select_db=False,
                first=self._resubscribe_command,
            )
            sent = self._resubscribed
            # ``on_reconnect`` waits until Redis confirmed every resubscription:
            # whoever then looks for what was missed cannot miss it again.
            self._unconfirmed = len(sent)
            self._reconnect_due = ever_connected
            if ever_connected:
                self.reconnects += 1
            log.info(
                "redis.reconnected" if ever_connected else "redis.connected",
                connection=self.name,
                redis=str(self.url),
                channels=len(sent),
            )
            ever_connected = True
            self._stream = stream
            if not sent:
                self._confirmed()
            late = sorted(self.wanted.difference(sent))
            if late:  # wanted while the handshake was under way
                with contextlib.suppress(RedisUnavailable):
                    await self._send(stream, _pack(("SUBSCRIBE", *late)))
            self._restart = trio.Event()
            if self.on_state:
                self.on_state(True)
            reason = "unknown"
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_restart, nursery.cancel_scope)
                    reason = await self._read(stream, reader)
                    nursery.cancel_scope.cancel()
                if self._restart.is_set():
                    reason = "restart requested (canary lost)"
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
                reason = str(group.exceptions[0]) or type(group.exceptions[0]).__name__
            finally:
                self._stream = None
                self._fail_waiters()
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
            log.warning("redis.disconnected", connection=self.name, reason=reason)
            if self.on_state:
                self.on_state(False)
            await trio.sleep(self.backoff.next_delay())

    def _resubscribe_command(self) -> bytes:
        # Computed once connected, so channels wanted during the outage are
        # included.  Subscribing before the connection is published keeps order:
        # nobody else can write to it yet.
        self._resubscribed = sorted(self.wanted)
        return _pack(("SUBSCRIBE", *self._resubscribed)) if self._resubscribed else b""

    def _confirmed(self) -> None:
        if self._reconnect_due:
            self._reconnect_due = False
            if self.on_reconnect:
                self.on_reconnect()

    async def _watch_restart(self, scope: trio.CancelScope) -> None:
        await self._restart.wait()
        scope.cancel()

    async def _read(self, stream: trio.SocketStream, reader: Any) -> str:
        on_message = self.on_message
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return "Redis closed the connection"
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if isinstance(reply, RedisReplyError):
                    log.error("redis.subscriber_error", error=str(reply))
                    continue
                kind = reply[0]
                if kind == b"message":
                    on_message(reply[1], reply[2])
                elif kind == b"subscribe":
                    if self._unconfirmed > 0:
                        self._unconfirmed -= 1
                        if self._unconfirmed == 0:
                            self._confirmed()
                        continue
                    waiters = self._waiters.get(reply[1])
                    if waiters:
                        waiters.popleft().set()
                        if not waiters:
                            del self._waiters[reply[1]]
            if self.on_batch_end is not None:
                self.on_batch_end()
