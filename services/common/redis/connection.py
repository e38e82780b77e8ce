"""Opening a Redis connection: RESP over a Trio stream, parsed by ``hiredis.Reader``,
with capped exponential backoff and jitter between attempts."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import hiredis
import structlog
import trio

from services.common.config import RedisURL
from services.common.redis.errors import RedisError, RedisReplyError, RedisUnavailable

log = structlog.get_logger()

# Error replies that mean "not this server, not now" rather than "bad command":
# the command did not run, and the connection is dropped so that the primary is
# looked up again (a failover demoted this one, or it is loading its data).
RECONNECT_REPLIES = ("READONLY", "LOADING", "MASTERDOWN")


def needs_reconnect(reply: object) -> bool:
    """Whether ``reply`` is an error reply that calls for a new connection."""
    return isinstance(reply, RedisReplyError) and str(reply).startswith(RECONNECT_REPLIES)

RECEIVE_BYTES = 256 * 1024
RECONNECT_CAP_S = 5.0  # the longest wait between two connection attempts


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


async def open_stream(host: str, port: int) -> trio.SocketStream:
    """The byte stream to one Redis server or sentinel: every connection (data,
    pub/sub, sentinel) is opened here, so what applies to one applies to all."""
    return await trio.open_tcp_stream(host, port)


async def handshake(
    stream: trio.abc.Stream, reader: Any, commands: Sequence[tuple[Arg, ...]]
) -> list[Reply]:
    """Send ``commands`` and read one reply each (error replies included)."""
    await stream.send_all(b"".join(_pack(c) for c in commands))
    replies: list[Reply] = []
    while len(replies) < len(commands):
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise RedisUnavailable("connection closed during handshake")
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            replies.append(reply)
    return replies


Address = tuple[str, int]


class Locator(Protocol):
    """Where to connect (see :mod:`services.common.redis.topology`)."""

    verify_role: bool

    async def locate(self, timeout_s: float) -> Address: ...

    async def pause(self, delay: float) -> None: ...


async def _open(
    url: RedisURL,
    timeout_s: float,
    name: str,
    *,
    select_db: bool,
    topology: Locator | None = None,
    setup: Sequence[tuple[Arg, ...]] = (),
) -> tuple[trio.SocketStream, Any, Address]:
    """Find the server (the primary, through the topology), connect, authenticate,
    check its role where the topology asks for it, select the database, name the
    connection, then run ``setup`` (before anyone else can use the connection).

    Raises :class:`RedisUnavailable` or :class:`RedisReplyError`.
    """
    reader = hiredis.Reader(replyError=RedisReplyError)
    where = str(url)
    try:
        with trio.fail_after(timeout_s):
            if topology is not None:
                host, port = await topology.locate(timeout_s)
            else:
                host, port = url.host, url.port
            where = f"{host}:{port}"
            stream = await open_stream(host, port)
            try:
                commands: list[tuple[Arg, ...]] = []
                if url.password is not None:
                    if url.username:
                        commands.append(("AUTH", url.username, url.password))
                    else:
                        commands.append(("AUTH", url.password))
                verify = topology is not None and topology.verify_role
                if verify:
                    commands.append(("ROLE",))
                if select_db and url.db:
                    commands.append(("SELECT", url.db))
                commands.append(("CLIENT", "SETNAME", name))
                commands.extend(setup)
                replies = await handshake(stream, reader, commands)
                for reply in replies:
                    if isinstance(reply, RedisReplyError):
                        raise reply
                if verify:
                    role = replies[1 if url.password is not None else 0]
                    if not role or role[0] != b"master":
                        shown = role[0].decode() if role else "unknown"
                        raise RedisUnavailable(f"{where} is not the primary (role {shown})")
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
    except trio.TooSlowError:
        raise RedisUnavailable(f"no answer from {where} within {timeout_s}s") from None
    except OSError as exc:
        raise RedisUnavailable(f"cannot connect to {where}: {exc.strerror or exc}") from None
    except trio.BrokenResourceError as exc:
        raise RedisUnavailable(f"connection to {where} broke: {exc}") from None
    return stream, reader, (host, port)


async def _open_with_retry(
    url: RedisURL,
    timeout_s: float,
    name: str,
    backoff: Backoff,
    *,
    select_db: bool,
    first: Callable[[], bytes] | None = None,
    topology: Locator | None = None,
    setup: Sequence[tuple[Arg, ...]] = (),
) -> tuple[trio.SocketStream, Any, Address]:
    """:func:`_open` until it works (sending what ``first()`` returns, computed
    once connected), sleeping
    with ``backoff`` between attempts; the backoff is reset on success.  Logs the
    first failure and then every 20th: no log storm while Redis is down."""
    failures = 0
    while True:
        try:
            stream, reader, address = await _open(
                url, timeout_s, name, select_db=select_db, topology=topology, setup=setup
            )
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
            await pause(topology, delay)
            continue
        backoff.reset()
        return stream, reader, address


async def pause(topology: Locator | None, delay: float) -> None:
    """Sleep ``delay`` seconds, or less if the topology learns the primary moved."""
    if topology is None:
        await trio.sleep(delay)
    else:
        await topology.pause(delay)
