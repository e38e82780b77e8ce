"""Where the Redis primary is: one fixed server, or the one the sentinels name.

A :class:`Topology` answers :meth:`~Topology.locate` before every connection
attempt and tells its listeners when the primary moved.  :class:`Standalone`
is ``CHAT_REDIS_URL`` itself.  :class:`Sentinel` asks each sentinel in turn
(``SENTINEL get-master-addr-by-name``), has every data connection check
``ROLE`` before use, and watches ``+switch-master`` on one sentinel (with its
own reconnect loop) so that connections to a demoted primary are dropped at
once.  Sentinel connections are opened by the same
:func:`~services.common.redis.connection.open_stream` as data connections.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import hiredis
import structlog
import trio

from services.common.config import HostPort, RedisURL, Settings
from services.common.redis.connection import (
    RECEIVE_BYTES,
    Address,
    Arg,
    Backoff,
    handshake,
    open_stream,
    redis_tls_context,
)
from services.common.redis.errors import RedisReplyError, RedisUnavailable

log = structlog.get_logger()

ChangeCallback = Callable[[Address], None]


class Topology:
    """A single Redis server: always ``CHAT_REDIS_URL``'s host and port."""

    verify_role = False

    def __init__(self, url: RedisURL) -> None:
        self.url = url
        self._moved = trio.Event()
        self._listeners: list[ChangeCallback] = []

    async def locate(self, timeout_s: float) -> Address:
        return self.url.host, self.url.port

    def on_change(self, callback: ChangeCallback) -> None:
        """Call ``callback(new_address)`` whenever the primary moved."""
        self._listeners.append(callback)

    def moved(self, address: Address) -> None:
        """The primary is now at ``address``: wake whoever waits to reconnect."""
        event, self._moved = self._moved, trio.Event()
        event.set()
        for callback in self._listeners:
            callback(address)

    async def pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or until the primary moved."""
        with trio.move_on_after(delay):
            await self._moved.wait()

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Follow the topology until cancelled (a single server: nothing to follow)."""
        task_status.started()


Standalone = Topology


class Sentinel(Topology):
    """A primary managed by Redis Sentinel; ``url.hosts`` are the sentinels."""

    verify_role = True

    def __init__(self, url: RedisURL, master: str, password: str = "",
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(url)
        self.tls = tls  # sentinels speak TLS too when CHAT_REDIS_URL is rediss://
        self.master = master
        self.password = password
        self.sentinels: list[HostPort] = list(url.hosts) or [HostPort(url.host, url.port)]
        self.switches = 0  # +switch-master notifications seen for our master

    def _auth(self) -> list[tuple[Arg, ...]]:
        return [("AUTH", self.password)] if self.password else []

    async def _ask(self, sentinel: HostPort, commands: list[tuple[Arg, ...]]) -> list[object]:
        stream = await open_stream(sentinel.host, sentinel.port, self.tls)
        try:
            reader = hiredis.Reader(replyError=RedisReplyError)
            return await handshake(stream, reader, commands)
        finally:
            await trio.aclose_forcefully(stream)

    async def locate(self, timeout_s: float) -> Address:
        """The primary's address according to the first sentinel that knows it.
        Raises :class:`RedisUnavailable` naming what each sentinel said."""
        problems = []
        # Each sentinel gets its share of the deadline, so one that hangs cannot
        # hide the others.
        share = timeout_s / (len(self.sentinels) + 1)
        for sentinel in self.sentinels:
            try:
                with trio.fail_after(share):
                    replies = await self._ask(sentinel, [
                        *self._auth(), ("SENTINEL", "get-master-addr-by-name", self.master),
                    ])
            except trio.TooSlowError:
                problems.append(f"{sentinel}: no answer")
                continue
            except (OSError, trio.BrokenResourceError, RedisUnavailable) as exc:
                problems.append(f"{sentinel}: {getattr(exc, 'strerror', None) or exc}")
                continue
            errors = [r for r in replies if isinstance(r, RedisReplyError)]
            if errors:
                problems.append(f"{sentinel}: {errors[0]}")
                continue
            reply = replies[-1]
            if not reply:
                problems.append(f"{sentinel}: does not know master {self.master!r}")
                continue
            assert isinstance(reply, list)
            return reply[0].decode(), int(reply[1])
        raise RedisUnavailable(f"no sentinel named the primary: {'; '.join(problems)}")

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen for ``+switch-master`` on one sentinel at a time, moving on to
        the next one when it goes away; tell the listeners about our master's."""
        task_status.started()
        backoff = Backoff(base_s=0.1, cap_s=2.0)
        turn = 0
        while True:
            sentinel = self.sentinels[turn % len(self.sentinels)]
            turn += 1
            try:
                await self._follow(sentinel, backoff)
            except (OSError, trio.BrokenResourceError, RedisUnavailable, RedisReplyError) as exc:
                log.info("redis.sentinel_watch_lost", sentinel=str(sentinel),
                         error=str(exc) or type(exc).__name__)
            await trio.sleep(backoff.next_delay())

    async def _follow(self, sentinel: HostPort, backoff: Backoff) -> None:
        stream = await open_stream(sentinel.host, sentinel.port, self.tls)
        try:
            reader = hiredis.Reader(replyError=RedisReplyError)
            replies = await handshake(stream, reader,
                                      [*self._auth(), ("SUBSCRIBE", "+switch-master")])
            for reply in replies:
                if isinstance(reply, RedisReplyError):
                    raise reply
            backoff.reset()
            log.info("redis.sentinel_watching", sentinel=str(sentinel), master=self.master)
            while True:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise RedisUnavailable("sentinel closed the connection")
                reader.feed(bytes(data))
                while (reply := reader.gets()) is not False:
                    if isinstance(reply, list) and reply[0] == b"message":
                        self._on_switch(reply[2].decode(errors="replace"))
        finally:
            await trio.aclose_forcefully(stream)

    def _on_switch(self, text: str) -> None:
        # "<master name> <old ip> <old port> <new ip> <new port>"
        parts = text.split()
        if len(parts) != 5 or parts[0] != self.master:
            return
        self.switches += 1
        log.warning("redis.switch_master", master=self.master, old=f"{parts[1]}:{parts[2]}",
                    new=f"{parts[3]}:{parts[4]}")
        self.moved((parts[3], int(parts[4])))


def topology_for(settings: Settings) -> Topology:
    """The topology ``settings`` describe (``CHAT_REDIS_MODE``)."""
    if settings.redis_mode == "sentinel":
        return Sentinel(settings.redis_url, settings.redis_sentinel_master,
                        settings.redis_sentinel_password, redis_tls_context(settings))
    return Standalone(settings.redis_url)
