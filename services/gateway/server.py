"""The chat listeners: accept, PROXY headers, TLS, admission, and the drain.

:class:`Server` accepts connections on the plain listener and, when
``CHAT_TLS_LISTEN`` is set, on the TLS one, reads a PROXY header from trusted
proxies (before the TLS handshake, as HAProxy sends it), completes the TLS
handshake within ``CHAT_TLS_HANDSHAKE_TIMEOUT_S``, decides whether to admit
(capacity by open files and ``CHAT_MAX_CLIENTS``, not while draining, briefly
held while the gateway is starting), and runs one session per admitted
connection.  It knows sessions only as things to run, count, tell and
disconnect.
"""

from __future__ import annotations

import contextlib
import functools
import math
import resource
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

import structlog
import trio

from services.common.bans import client_address
from services.common.config import Settings
from services.common.logging import LogThrottle
from services.common.metrics import Metrics
from services.gateway import protocol as p
from services.gateway.admission import Admission
from services.gateway.proxy_protocol import ProxyProtocolError, is_trusted, read_proxy_header
from services.gateway.tls import server_context

log = structlog.get_logger()

PROXY_HEADER_TIMEOUT_S = 5.0
FD_RESERVE = 64
# A client arriving before the gateway could serve it for the first time (Redis
# connected, subscriber up, predecessors settled) waits this long, not refused.
STARTUP_HOLD_S = 5.0
REFUSAL_TIMEOUT_S = 1.0
# TLS handshakes run at once only to tell refused TLS clients why (see _refuse_raw).
REFUSAL_HANDSHAKES = 32


class Runnable(Protocol):
    """A session as the listener sees it."""

    conn_id: str

    async def run(self, leftover: bytes = b"") -> None: ...

    def deliver(self, data: bytes) -> None: ...

    def disconnect(self, reason: str) -> None: ...


class Server:
    """Listeners and admission.  Run :meth:`serve` with ``nursery.start``."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        make_session: Callable[[trio.abc.Stream, str], Runnable],
        admitting: trio.Event,
        admission: Admission,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.make_session = make_session
        self.admitting = admitting  # set once the gateway can serve clients
        self.admission = admission
        self.sessions: set[Runnable] = set()
        self.addresses: dict[Runnable, str] = {}  # each session's client address
        self._banned: set[Runnable] = set()  # told to go for a ban, not gone yet
        self.ports: list[int] = []
        self.tls_ports: list[int] = []
        # Built here so a bad certificate or key fails at start (ConfigError).
        self.tls_context: ssl.SSLContext | None = server_context(settings)
        self.capacity = settings.max_clients
        self.open_files = 0
        self.draining = False
        self._listen_scope = trio.CancelScope()
        self._refusal_handshakes = trio.CapacityLimiter(REFUSAL_HANDSHAKES)
        self._refused_log = LogThrottle(1.0)
        self._handshake_log = LogThrottle(1.0)
        self._all_gone = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen; ``task_status.started`` gets the bound ports; serve until cancelled
        or drained."""
        self.open_files = raise_open_files_limit()
        # Each client costs one descriptor; keep some for Redis, HTTP, logs.
        self.capacity = max(0, min(self.settings.max_clients, self.open_files - FD_RESERVE))
        if self.capacity < self.settings.max_clients:
            log.warning("gateway.capacity_limited", max_clients=self.settings.max_clients,
                        open_files=self.open_files, capacity=self.capacity)
        listen = self.settings.listen
        listeners = await trio.open_tcp_listeners(listen.port, host=listen.host or None)
        self.ports = [ln.socket.getsockname()[1] for ln in listeners]
        tls_listeners: list[trio.SocketListener] = []
        if self.settings.tls_listen is not None:
            tls = self.settings.tls_listen
            tls_listeners = await trio.open_tcp_listeners(tls.port, host=tls.host or None)
            self.tls_ports = [ln.socket.getsockname()[1] for ln in tls_listeners]
        task_status.started(self.ports)
        with self._listen_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                if tls_listeners:
                    handle_tls = functools.partial(self._handle, tls=True)
                    nursery.start_soon(trio.serve_listeners, handle_tls, tls_listeners)

    async def _handle(self, raw: trio.SocketStream, *, tls: bool = False) -> None:
        peer = _peer_name(raw)
        enable_keepalive(raw, self.settings)
        leftover = b""
        if self.settings.proxy_protocol:
            proxied = await self._read_proxy_header(raw, peer)
            if proxied is None:
                return
            peer, leftover = proxied
        address = client_address(peer.rsplit(":", 1)[0])
        if not self.admitting.is_set():
            # Starting up: serve this client once we can, rather than refuse it.
            with trio.move_on_after(STARTUP_HOLD_S):
                await self.admitting.wait()
        # Admission comes before a TLS handshake, so that a connection still in
        # its handshake counts against its address's limits like any other.
        refusal: tuple[str, str] | None = None
        ban = self.admission.banned(address)
        if ban is not None:
            refusal = ("banned", f"banned: {ban.reason or 'no reason given'}")
        elif len(self.sessions) >= self.capacity or self.draining:
            reason = "gateway shutting down" if self.draining else "server full"
            refusal = (reason, f"{reason}; try again later")
        else:
            refusal = await self.admission.admit(address)
        if refusal is not None:
            await self._refuse_raw(raw, peer, leftover, refusal, tls=tls)
            return
        try:
            stream: trio.abc.Stream = raw
            if tls:
                secured = await self._tls_handshake(raw, peer, leftover)
                if secured is None:
                    return
                stream, leftover = secured, b""
            session = self.make_session(stream, peer)
            self.sessions.add(session)
            self.addresses[session] = address
            self.metrics.connections.inc()
            self.metrics.connections_total.inc()
            try:
                await session.run(leftover)
            except Exception:
                # One client's bug must not take the gateway down: log it once, with traceback.
                log.exception("client.crashed", conn=session.conn_id, peer=peer)
            finally:
                self.sessions.discard(session)
                self.addresses.pop(session, None)
                self._banned.discard(session)
                self.metrics.connections.dec()
                if self.draining and not self.sessions:
                    self._all_gone.set()
        finally:
            # Whatever ended the session (or its creation), its count goes back.
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.settings.redis_timeout_s):
                    await self.admission.release(address)

    def _log_refused(self, peer: str, reason: str, **fields: object) -> None:
        # Refusals are counted in chat_refused_connections_total; the log gets at
        # most one line a second, so a connection flood cannot flood the log.
        if self._refused_log.allow():
            log.warning("client.refused", peer=peer, reason=reason,
                        suppressed=self._refused_log.take_suppressed(), **fields)

    async def _refuse_raw(
        self, raw: trio.SocketStream, peer: str, leftover: bytes, refusal: tuple[str, str],
        *, tls: bool,
    ) -> None:
        """Refuse a connection that was not admitted.  A TLS client is told why
        over TLS, but at most ``REFUSAL_HANDSHAKES`` such handshakes run at once
        (they are not counted against any limit): past that it is closed
        without a word (logged and counted like any refusal)."""
        reason, told = refusal
        if not tls:
            await self._refuse(raw, peer, told, reason=reason)
            return
        try:
            self._refusal_handshakes.acquire_nowait()
        except trio.WouldBlock:
            self._log_refused(peer, reason, told=False)
            self.metrics.refused_connections_total.labels(reason=reason.replace(" ", "_")).inc()
            await trio.aclose_forcefully(raw)
            return
        try:
            secured = await self._tls_handshake(raw, peer, leftover)
            if secured is not None:
                await self._refuse(secured, peer, told, reason=reason)
        finally:
            self._refusal_handshakes.release()

    async def _refuse(self, stream: trio.abc.Stream, peer: str, told: str, *, reason: str
                      ) -> None:
        """Tell a client why it is not served, in one line, and close."""
        self._log_refused(peer, reason)
        self.metrics.refused_connections_total.labels(reason=reason.replace(" ", "_")).inc()
        with trio.move_on_after(REFUSAL_TIMEOUT_S):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(p.error(f"disconnected: {told}"))
        await trio.aclose_forcefully(stream)

    def disconnect_banned(self) -> int:
        """Disconnect every session whose address is now banned; how many."""
        count = 0
        if not self.admission.bans:
            return 0
        for session, address in list(self.addresses.items()):
            ban = self.admission.banned(address)
            if ban is not None and session not in self._banned:
                self._banned.add(session)
                log.warning("client.banned", conn=session.conn_id, address=address,
                            ban=str(ban.network))
                session.disconnect(f"banned: {ban.reason or 'no reason given'}")
                count += 1
        return count

    async def _tls_handshake(
        self, raw: trio.SocketStream, peer: str, leftover: bytes
    ) -> trio.SSLStream[trio.abc.Stream] | None:
        """The client's TLS stream once the handshake is done; ``None`` (closed,
        logged and counted, never raised) when it failed or took longer than
        ``CHAT_TLS_HANDSHAKE_TIMEOUT_S``."""
        assert self.tls_context is not None
        timeout_s = self.settings.tls_handshake_timeout_s
        transport: trio.abc.Stream = _Prepended(raw, leftover) if leftover else raw
        stream = trio.SSLStream(transport, self.tls_context, server_side=True)
        reason, detail = "timeout", f"no handshake within {timeout_s:g}s"
        try:
            with trio.move_on_after(timeout_s):
                try:
                    await stream.do_handshake()
                    return stream
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    # The ssl module's reason ("HTTP_REQUEST", "WRONG_VERSION_NUMBER")
                    # is the useful part; the peer vanishing has none.
                    cause = exc.__cause__
                    reason = "error"
                    detail = getattr(cause, "reason", None) or str(cause or "connection closed")
        except BaseException:  # cancelled (the drain): close what we opened
            await trio.aclose_forcefully(raw)
            raise
        self.metrics.tls_handshake_failures_total.labels(reason=reason).inc()
        if self._handshake_log.allow():  # a flood of failed handshakes is one line a second
            log.info("tls.handshake_failed", peer=peer, reason=reason, error=str(detail)[:200],
                     suppressed=self._handshake_log.take_suppressed())
        await trio.aclose_forcefully(raw)
        return None

    async def _read_proxy_header(
        self, stream: trio.SocketStream, peer: str
    ) -> tuple[str, bytes] | None:
        """The real client address from a PROXY header, and the bytes after it;
        ``None`` (connection closed, event logged) when it is untrusted or malformed."""
        peer_ip = peer.rsplit(":", 1)[0].strip("[]")
        if not is_trusted(peer_ip, self.settings.trusted_proxies):
            log.warning("proxy.untrusted", peer=peer)
            await trio.aclose_forcefully(stream)
            return None
        try:
            header, leftover = await read_proxy_header(stream, PROXY_HEADER_TIMEOUT_S)
        except ProxyProtocolError as exc:
            log.warning("proxy.malformed", peer=peer, error=str(exc))
            await trio.aclose_forcefully(stream)
            return None
        if header.source is None:  # LOCAL: a health check from the proxy itself
            return peer, leftover
        host, port = header.source
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), leftover

    def tell_everyone(self, line: bytes) -> None:
        for session in self.sessions:
            session.deliver(line)

    async def drain(self, reason: str) -> None:
        """Stop accepting, disconnect every session with ``reason``, and wait until
        all are gone (the caller bounds the wait)."""
        self.draining = True
        self._listen_scope.cancel()
        for session in list(self.sessions):
            session.disconnect(reason)
        if self.sessions:
            await self._all_gone.wait()


class _Prepended(trio.abc.Stream):
    """A stream that first yields bytes already read from it (what came after a
    PROXY header), so the TLS layer sees the client's bytes whole."""

    def __init__(self, stream: trio.SocketStream, first: bytes) -> None:
        self.stream = stream
        self.first = first

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.first:
            size = len(self.first) if max_bytes is None else max_bytes
            data, self.first = self.first[:size], self.first[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "unknown"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def enable_keepalive(stream: trio.SocketStream, settings: Settings) -> None:
    """Let the kernel probe a client's socket once it has been silent
    ``keepalive_idle_s``, every ``keepalive_interval_s``; after
    ``keepalive_count`` unanswered probes the socket fails and the session ends.
    The peer's TCP stack answers the probes, so a person idle at a terminal is
    never cut; a peer that vanished (host down, network gone) is.  Unacknowledged
    data is bounded the same way (``TCP_USER_TIMEOUT``), so a socket with
    queued output cannot outlive the probes by retransmitting."""
    if math.isinf(settings.keepalive_idle_s):
        return
    idle = max(1, int(settings.keepalive_idle_s))
    interval = max(1, int(settings.keepalive_interval_s))
    count = settings.keepalive_count
    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                              (idle + interval * count) * 1000)
    except OSError:
        pass


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
