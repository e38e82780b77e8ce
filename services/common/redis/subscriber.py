"""The pub/sub connection: wanted channels survive reconnects; messages go to a
synchronous callback, so the reader never waits on anyone."""

from __future__ import annotations

import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
import trio

from services.common.config import RedisURL
from services.common.redis.client import StateCallback
from services.common.redis.connection import (
    RECEIVE_BYTES,
    Address,
    Backoff,
    _open_with_retry,
    _pack,
    needs_reconnect,
    pause,
)
from services.common.redis.errors import RedisReplyError, RedisUnavailable
from services.common.redis.topology import Topology

log = structlog.get_logger()


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
        tls: ssl.SSLContext | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.url = url
        self.tls = tls
        self.topology = topology or Topology(url)
        self.topology.on_change(self._primary_moved)
        self.address: Address | None = None
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
        self._stream: trio.abc.Stream | None = None
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

    async def _send(self, stream: trio.abc.Stream, data: bytes) -> None:
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
            stream, reader, self.address = await _open_with_retry(
                self.url, self.timeout_s, self.name, self.backoff, select_db=False,
                first=self._resubscribe_command, tls=self.tls, topology=self.topology,
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
            await pause(self.topology, self.backoff.next_delay())

    def _primary_moved(self, address: Address) -> None:
        if self._stream is not None and self.address != address:
            self.force_reconnect()

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

    async def _read(self, stream: trio.abc.Stream, reader: Any) -> str:
        on_message = self.on_message
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return "Redis closed the connection"
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if isinstance(reply, RedisReplyError):
                    if needs_reconnect(reply):
                        return f"Redis replied {str(reply).split(' ', 1)[0]}"
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
