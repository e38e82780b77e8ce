"""Opening a Redis connection: RESP over a Trio stream, parsed by ``hiredis.Reader``,
with capped exponential backoff and jitter between attempts.

Every Redis socket the gateway opens comes from :func:`open_redis_stream`: TCP
keepalive on, and TLS (``rediss://``) wrapped there with the context
:func:`redis_tls_context` builds once from the ``CHAT_REDIS_TLS_*`` files.
"""

from __future__ import annotations

import random
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import hiredis
import structlog
import trio

from services.common.config import ConfigError, RedisURL, Settings
from services.common.redis.errors import (
    RedisError,
    RedisReplyError,
    RedisTLSError,
    RedisUnavailable,
)

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
# TCP keepalive on every Redis socket: a Redis host that vanished (power, network)
# without closing the connection is noticed after at most 15 + 6 * 5 = 45 s of
# silence, even on the subscriber connection, which may carry nothing for long.
KEEPALIVE_IDLE_S = 15
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 6


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


def redis_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The client context for a ``rediss://`` ``settings.redis_url`` (``None``: plain TCP).

    Certificates are verified against ``CHAT_REDIS_TLS_CA`` (the system's CAs when
    empty) and so is the host name: a Redis reached by IP needs that IP in its
    certificate's subjectAltName.  Raises :class:`ConfigError` (one line) when a
    file is missing, unreadable or not PEM, or the key does not match the
    certificate.
    """
    if not settings.redis_url.tls:
        return None
    files = (("CHAT_REDIS_TLS_CA", settings.redis_tls_ca),
             ("CHAT_REDIS_TLS_CERT", settings.redis_tls_cert),
             ("CHAT_REDIS_TLS_KEY", settings.redis_tls_key))
    for variable, path in files:
        if path:
            try:
                with open(path, "rb") as file:
                    file.read(1)
            except OSError as exc:
                raise ConfigError(
                    f"cannot read {variable} {path!r}: {exc.strerror or exc}"
                ) from None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.redis_tls_ca:
        try:
            context.load_verify_locations(cafile=settings.redis_tls_ca)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"CHAT_REDIS_TLS_CA {settings.redis_tls_ca!r} is not a PEM CA bundle"
                f" ({exc.reason or exc})"
            ) from None
    if settings.redis_tls_cert:
        try:
            # An encrypted key would make OpenSSL prompt on the terminal: refuse it.
            context.load_cert_chain(settings.redis_tls_cert, settings.redis_tls_key,
                                    password=lambda: b"")
        except ssl.SSLError as exc:
            raise ConfigError(
                f"CHAT_REDIS_TLS_CERT {settings.redis_tls_cert!r} and CHAT_REDIS_TLS_KEY"
                f" {settings.redis_tls_key!r} are not a usable PEM certificate chain and its"
                f" unencrypted private key ({exc.reason or exc})"
            ) from None
    return context


def _set_keepalive(sock: Any) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's timings apply
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


def stream_socket(stream: trio.abc.Stream) -> Any:
    """The socket under ``stream`` (through an ``SSLStream``), for options and tests."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket  # type: ignore[attr-defined]


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (trio wraps it in ``BrokenResourceError``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and not isinstance(
            seen, ssl.SSLEOFError | ssl.SSLZeroReturnError
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def open_redis_stream(
    host: str, port: int, tls: ssl.SSLContext | None
) -> trio.abc.Stream:
    """A connected stream to ``host:port`` with TCP keepalive on; with ``tls``, the
    TLS handshake done (the certificate verified for ``host``).

    The caller sets the deadline.  Raises :class:`RedisTLSError` when the TLS
    handshake fails (certificate not trusted, wrong host name, a client certificate
    refused), ``OSError`` or ``trio.BrokenResourceError`` otherwise.
    """
    tcp = await trio.open_tcp_stream(host, port)
    try:
        _set_keepalive(tcp.socket)
        if tls is None:
            return tcp
        stream = trio.SSLStream(tcp, tls, server_hostname=host)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            tls_error = _tls_error(f"{host}:{port}", exc)
            if tls_error is None:
                raise
            raise tls_error from None
        return stream
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise


def _tls_error(where: str, exc: BaseException) -> RedisTLSError | None:
    """The :class:`RedisTLSError` to raise for ``exc`` when a TLS error is behind
    it (trio wraps it in ``BrokenResourceError``), else ``None``."""
    failure = _tls_failure(exc)
    if failure is None:
        return None
    return RedisTLSError(f"TLS to Redis at {where} failed: {_describe_tls(failure)}")


def _describe_tls(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"certificate verify failed: {exc.verify_message or exc.reason}"
            " (CHAT_REDIS_TLS_CA must hold the CA that signed Redis's certificate, and the"
            " certificate must name the host of CHAT_REDIS_URL; an IP needs an IP SAN)"
        )
    reason = exc.reason or str(exc)
    if "ALERT" in reason.upper():
        return f"Redis refused the handshake ({reason}): check CHAT_REDIS_TLS_CERT and _KEY"
    return reason


async def open_stream(host: str, port: int, tls: ssl.SSLContext | None = None) -> trio.abc.Stream:
    """The byte stream to one Redis server or sentinel: every connection (data,
    pub/sub, sentinel) is opened here, so what applies to one applies to all
    (TCP keepalive; TLS with ``tls``: see :func:`open_redis_stream`)."""
    return await open_redis_stream(host, port, tls)


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
        reader.feed(bytes(data))
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
    tls: ssl.SSLContext | None = None,
) -> tuple[trio.abc.Stream, Any, Address]:
    """Find the server (the primary, through the topology), connect, authenticate,
    check its role where the topology asks for it, select the database, name the
    connection, then run ``setup`` (before anyone else can use the connection).

    Raises :class:`RedisUnavailable` (its subclass :class:`RedisTLSError` for a
    failed TLS handshake) or :class:`RedisReplyError`.
    """
    reader = hiredis.Reader(replyError=RedisReplyError)
    if url.tls and tls is None:
        tls = ssl.create_default_context()
    where = str(url)
    try:
        with trio.fail_after(timeout_s):
            if topology is not None:
                host, port = await topology.locate(timeout_s)
            else:
                host, port = url.host, url.port
            where = f"{host}:{port}"
            stream = await open_stream(host, port, tls if url.tls else None)
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
        # TLS 1.3: a refused client certificate shows only on the first read.
        tls_error = _tls_error(where, exc)
        if tls_error is not None:
            raise tls_error from None
        raise RedisUnavailable(f"connection to {where} broke: {exc}") from None
    return stream, reader, (host, port)


# How long the start-up check listens after the handshake for Redis refusing the
# client certificate: with TLS 1.3 that refusal comes as an alert just after the
# handshake completed on the client's side.
CLIENT_CERT_VERDICT_S = 0.5


async def check_redis_tls(settings: Settings) -> None:
    """Start-up check: one TLS handshake with ``settings.redis_url`` (nothing for
    ``redis://``).  Raises :class:`RedisTLSError` when the handshake fails or Redis
    refuses the client certificate; a Redis that cannot be reached is left to the
    usual reconnect loop.

    Nothing is written after the handshake: with TLS 1.3 a refused client
    certificate shows as an alert on the first read, and bytes written after the
    server closed would make it reset the connection, losing the alert."""
    url = settings.redis_url
    context = redis_tls_context(settings)
    if context is None:
        return
    where = f"{url.host}:{url.port}"
    try:
        with trio.fail_after(settings.redis_timeout_s):
            stream = await open_redis_stream(url.host, url.port, context)
    except RedisTLSError:
        raise
    except (trio.TooSlowError, OSError, trio.BrokenResourceError):
        return
    try:
        with trio.move_on_after(CLIENT_CERT_VERDICT_S):
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise RedisTLSError(
                    f"TLS to Redis at {where} failed: Redis closed the connection right after"
                    " the handshake (does it require a client certificate? check"
                    " CHAT_REDIS_TLS_CERT and _KEY)"
                )
    except trio.BrokenResourceError as exc:
        tls_error = _tls_error(where, exc)
        if tls_error is not None:
            raise tls_error from None
        raise RedisTLSError(
            f"TLS to Redis at {where} failed: the connection broke right after the handshake"
            f" ({exc.__cause__ or exc}); check CHAT_REDIS_TLS_CERT and _KEY"
        ) from None
    finally:
        await trio.aclose_forcefully(stream)


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
    tls: ssl.SSLContext | None = None,
) -> tuple[trio.abc.Stream, Any, Address]:
    """:func:`_open` until it works (sending what ``first()`` returns, computed
    once connected), sleeping
    with ``backoff`` between attempts; the backoff is reset on success.  Logs the
    first failure and then every 20th: no log storm while Redis is down."""
    failures = 0
    while True:
        try:
            stream, reader, address = await _open(
                url, timeout_s, name, select_db=select_db, topology=topology, setup=setup,
                tls=tls,
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
