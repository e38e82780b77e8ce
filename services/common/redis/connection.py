"""Opening a Redis connection: RESP over a Trio stream, parsed by ``hiredis.Reader``,
with capped exponential backoff and jitter between attempts."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import hiredis
import structlog
import trio

from services.common.config import RedisURL
from services.common.redis.errors import RedisError, RedisReplyError, RedisUnavailable

log = structlog.get_logger()

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
