"""A small HTTP/1.1 server for operators and orchestrators: health, readiness, metrics.

``GET /healthz``
    200 ``ok`` while the process runs (liveness: the event loop answers).
``GET /readyz``
    200 ``ready``, or 503 with the reason ``ready()`` gives (readiness: the load
    balancer should send clients here).
``GET /metrics``
    The Prometheus text exposition of :class:`~services.common.metrics.Metrics`.

``HEAD`` works wherever ``GET`` does; other methods get 405, other paths 404.
HTTP parsing is h11's; this module only moves bytes and picks responses.

Bounds, per connection: a request head of at most :data:`MAX_REQUEST_HEAD_BYTES`
(431 beyond), a request body of at most :data:`MAX_REQUEST_BODY_BYTES` (413
beyond; none of these endpoints wants one), ``head_timeout_s`` to receive a
request head (the first, or the next on a kept-alive connection) and
``request_timeout_s`` to receive a whole request and send its response (408, or
a silent close when the client sent nothing).

A flood of connections cannot keep the probes out (a liveness probe that gets
no answer restarts the pod).  At most ``max_connections`` connections are open
at once, and at most ``max_connections_per_address`` from one client address.
A new connection is always served while there is a connection that is merely
waiting for a request head: when a limit is reached, the oldest such
connection (of that address, for the per-address limit; one that never sent a
request before a kept-alive one, for the total) is closed to make room.  Only
when every connection is busy with a request is the newcomer refused (503).
Idle sockets therefore cost an attacker its own older sockets, not the probes.

A failure on one connection never reaches the others or the server: clients
get a status line, never a traceback, and only unexpected errors are logged
(``http.error``, with traceback).
"""

from __future__ import annotations

import http
from collections import Counter
from collections.abc import Callable

import h11
import structlog
import trio

from services.common.metrics import Metrics

__all__ = [
    "HEAD_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "MAX_REQUEST_BODY_BYTES",
    "MAX_REQUEST_HEAD_BYTES",
    "REQUEST_TIMEOUT_S",
    "serve_http",
]

MAX_REQUEST_HEAD_BYTES = 8192
MAX_REQUEST_BODY_BYTES = 8192
REQUEST_TIMEOUT_S = 10.0
HEAD_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_ADDRESS = 16

_RECEIVE_BYTES = 8192
# After our last response: how long, and how much, to keep reading so that closing
# with unread request bytes does not turn into a TCP reset that destroys the
# response before the client has read it.
_LINGER_S = 1.0
_LINGER_BYTES = 65536

_TEXT = "text/plain; charset=utf-8"
_ALLOWED_METHODS = (b"GET", b"HEAD")

log = structlog.get_logger()


class _BodyTooLarge(Exception):
    pass


class _Response:
    __slots__ = ("body", "content_type", "extra_headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = _TEXT,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra_headers = extra_headers


def _status_response(status: int) -> _Response:
    return _Response(status, f"{status} {http.HTTPStatus(status).phrase}\n".encode())


async def serve_http(
    host: str,
    port: int,
    *,
    ready: Callable[[], tuple[bool, str]],
    metrics: Metrics,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    head_timeout_s: float = HEAD_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and serve health, readiness and metrics until cancelled.

    Calls ``task_status.started(port)`` with the bound port (useful with port 0)
    once the socket listens.  With port 0, give a literal address: a name that
    resolves to several addresses gets one random port per address, and only the
    first is reported.  ``host`` empty means every interface.

    ``ready()`` is called on each ``/readyz`` request, in the event loop, and must
    not block; it returns ``(True, _)`` when ready, else ``(False, reason)`` with a
    one-line reason for the operator.  If it raises, the answer is 503 and the
    error is logged.

    Raises ``OSError`` if the address cannot be bound; accept errors caused by
    descriptor or memory exhaustion are retried (``trio.serve_listeners``).
    """
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound_port: int = listeners[0].socket.getsockname()[1]
    server = _Server(ready, metrics, request_timeout_s, max_connections,
                     head_timeout_s=head_timeout_s,
                     max_connections_per_address=max_connections_per_address)
    task_status.started(bound_port)
    await trio.serve_listeners(server.handle, listeners)


class _Conn:
    """One open connection, as the limits see it."""

    __slots__ = ("address", "requests", "scope", "waiting")

    def __init__(self, address: str) -> None:
        self.address = address
        self.scope = trio.CancelScope()
        self.waiting = True  # for a request head: may be closed to make room
        self.requests = 0  # requests whose head arrived


class _Server:
    """Routes requests and keeps the connection limits; one per :func:`serve_http` call."""

    def __init__(
        self,
        ready: Callable[[], tuple[bool, str]],
        metrics: Metrics,
        request_timeout_s: float,
        max_connections: int,
        *,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
    ) -> None:
        self._ready = ready
        self._metrics = metrics
        self._request_timeout_s = request_timeout_s
        self._head_timeout_s = head_timeout_s
        self._max_connections = max_connections
        self._max_per_address = max_connections_per_address
        self._conns: dict[_Conn, None] = {}  # open connections, oldest first
        self._per_address: Counter[str] = Counter()

    async def handle(self, stream: trio.SocketStream) -> None:
        # trio.serve_listeners closes the stream when this returns, and would
        # crash the whole server on an exception: nothing may escape from here.
        try:
            conn = _Conn(_address(stream))
            if not self._make_room(conn.address):
                await _refuse(stream)
                return
            self._conns[conn] = None
            self._per_address[conn.address] += 1
            try:
                with conn.scope:
                    await self._serve_connection(stream, conn)
            finally:
                self._forget(conn)
        except trio.BrokenResourceError:
            pass  # the client went away; nothing to tell it
        except Exception:
            log.exception("http.error")

    def _make_room(self, address: str) -> bool:
        """Close the oldest waiting connection(s) a newcomer from ``address`` would
        exceed a limit by; ``False`` when a limit is reached and nothing waits."""
        if self._per_address[address] >= self._max_per_address:
            victim = next((c for c in self._conns if c.waiting and c.address == address), None)
            if victim is None:
                return False
            self._evict(victim)
        if len(self._conns) >= self._max_connections:
            waiting = [c for c in self._conns if c.waiting]
            # Never-used sockets go before kept-alive ones that did send requests.
            victim = next((c for c in waiting if not c.requests), waiting[0] if waiting else None)
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _evict(self, conn: _Conn) -> None:
        self._forget(conn)
        conn.scope.cancel()  # its task closes the socket, silently

    def _forget(self, conn: _Conn) -> None:
        if self._conns.pop(conn, False) is None:
            self._per_address[conn.address] -= 1
            if self._per_address[conn.address] <= 0:
                del self._per_address[conn.address]

    async def _serve_connection(self, stream: trio.SocketStream, conn: _Conn) -> None:
        h11_conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
        while True:
            started = trio.current_time()
            first_wait = min(self._head_timeout_s, self._request_timeout_s)
            with trio.CancelScope(deadline=started + first_wait) as deadline:

                def head_arrived(scope: trio.CancelScope = deadline, t0: float = started) -> None:
                    conn.waiting = False
                    conn.requests += 1
                    scope.deadline = t0 + self._request_timeout_s

                conn.waiting = True
                keep_open = await self._serve_request(stream, h11_conn, head_arrived)
            if deadline.cancelled_caught:
                await _timed_out(stream, h11_conn)
                return
            if not keep_open:
                return

    async def _serve_request(
        self, stream: trio.SocketStream, conn: h11.Connection, head_arrived: Callable[[], None]
    ) -> bool:
        """Serve one request on ``conn``; return whether the connection stays open."""
        try:
            request = await _read_request(stream, conn, head_arrived)
        except h11.RemoteProtocolError as exc:
            # Malformed, oversized or truncated: answer with h11's suggested status
            # when the protocol still allows a response, then close.
            await _send_error(stream, conn, _status_response(exc.error_status_hint))
            return False
        except _BodyTooLarge:
            await _send_error(stream, conn, _status_response(413))
            return False
        if request is None:
            return False

        response = self._route(request)
        await _send_response(
            stream, conn, response, head_only=request.method == b"HEAD", close=False
        )
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        await _linger(stream)
        return False

    def _route(self, request: h11.Request) -> _Response:
        path = request.target.split(b"?", 1)[0]
        if path == b"/healthz":
            handler = self._healthz
        elif path == b"/readyz":
            handler = self._readyz
        elif path == b"/metrics":
            handler = self._metrics_page
        else:
            return _status_response(404)
        if request.method not in _ALLOWED_METHODS:
            response = _status_response(405)
            response.extra_headers = (("Allow", "GET, HEAD"),)
            return response
        return handler()

    def _healthz(self) -> _Response:
        return _Response(200, b"ok\n")

    def _readyz(self) -> _Response:
        try:
            is_ready, reason = self._ready()
        except Exception:
            log.exception("http.error", path="/readyz")
            return _Response(503, b"readiness check failed\n")
        if is_ready:
            return _Response(200, b"ready\n")
        # One line, whatever the callback returned, so the body stays a reason.
        line = " ".join(reason.split()) or "not ready"
        return _Response(503, f"{line}\n".encode())

    def _metrics_page(self) -> _Response:
        body, content_type = self._metrics.render()
        return _Response(200, body, content_type)


async def _read_request(
    stream: trio.SocketStream, conn: h11.Connection, head_arrived: Callable[[], None]
) -> h11.Request | None:
    """The next request, its body read and discarded; ``None`` if the client closed.
    ``head_arrived`` is called once the request head is in.

    Raises ``h11.RemoteProtocolError`` for bytes that are not HTTP/1.1 and
    :class:`_BodyTooLarge` for a body over :data:`MAX_REQUEST_BODY_BYTES`.
    """
    event = await _next_event(stream, conn)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise RuntimeError(f"h11 produced {event!r} while waiting for a request")
    head_arrived()
    body_bytes = 0
    while True:
        part = await _next_event(stream, conn)
        if isinstance(part, h11.EndOfMessage):
            return event
        if isinstance(part, h11.Data):
            body_bytes += len(part.data)
            if body_bytes > MAX_REQUEST_BODY_BYTES:
                raise _BodyTooLarge
        else:
            raise RuntimeError(f"h11 produced {part!r} inside a request")


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE_BYTES))
        elif event is h11.PAUSED:
            raise RuntimeError("h11 paused while a request was being read")
        else:
            assert isinstance(event, h11.Event)
            return event


async def _send_response(
    stream: trio.SocketStream,
    conn: h11.Connection,
    response: _Response,
    *,
    head_only: bool,
    close: bool,
) -> None:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Cache-Control", "no-store"),
        *response.extra_headers,
    ]
    if close:
        headers.append(("Connection", "close"))
    reason = http.HTTPStatus(response.status).phrase.encode()
    data = _encode(conn, h11.Response(status_code=response.status, headers=headers, reason=reason))
    if not head_only:
        data += _encode(conn, h11.Data(data=response.body))
    data += _encode(conn, h11.EndOfMessage())
    await stream.send_all(data)


def _encode(conn: h11.Connection, event: h11.Event) -> bytes:
    data = conn.send(event)
    assert data is not None  # None only for ConnectionClosed, never sent here
    return data


async def _send_error(stream: trio.SocketStream, conn: h11.Connection, response: _Response) -> None:
    """Answer a request that cannot be served, if the protocol still allows, and close.

    What follows a bad request on the wire cannot be trusted to start a new one,
    so the connection always ends here.
    """
    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
        await _send_response(stream, conn, response, head_only=False, close=True)
    await _linger(stream)


async def _timed_out(stream: trio.SocketStream, conn: h11.Connection) -> None:
    # A client idle between requests is simply closed; one caught mid-request is
    # told why.  Either way the time spent here is bounded on its own.
    if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
        return
    with trio.move_on_after(_LINGER_S):
        await _send_error(stream, conn, _status_response(408))


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then read and drop what the client still sends, briefly and boundedly."""
    with trio.move_on_after(_LINGER_S):
        await stream.send_eof()
        received = 0
        while received < _LINGER_BYTES:
            chunk = await stream.receive_some(_RECEIVE_BYTES)
            if not chunk:
                return
            received += len(chunk)


def _address(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "unknown"


async def _refuse(stream: trio.SocketStream) -> None:
    with trio.move_on_after(_LINGER_S):
        await _send_error(
            stream, h11.Connection(h11.SERVER), _Response(503, b"too many connections\n")
        )
