"""The health/readiness/metrics HTTP server, exercised by real clients over loopback."""

from __future__ import annotations

import functools
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
import structlog
import trio

from services.common.http import MAX_REQUEST_BODY_BYTES, MAX_REQUEST_HEAD_BYTES, serve_http
from services.common.metrics import Metrics


@dataclass
class Readiness:
    ready: bool = False
    reason: str = "redis: not connected"
    calls: int = 0
    error: Exception | None = None

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.ready, self.reason


@dataclass
class Server:
    port: int
    readiness: Readiness
    metrics: Metrics


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    extra: list[str] = field(default_factory=list)


async def start_server(
    nursery: trio.Nursery, *, request_timeout_s: float = 10.0, max_connections: int = 64,
    **limits: Any,
) -> Server:
    readiness = Readiness()
    metrics = Metrics("gw-http-test")
    port = await nursery.start(
        functools.partial(
            serve_http,
            "127.0.0.1",
            0,
            ready=readiness,
            metrics=metrics,
            request_timeout_s=request_timeout_s,
            max_connections=max_connections,
            **limits,
        )
    )
    return Server(port, readiness, metrics)


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    yield await start_server(nursery)


class Client:
    """One keep-alive HTTP/1.1 connection, framed by h11's client side."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, body: bytes = b"") -> Reply:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = [("Host", "localhost")]
        if body:
            headers.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=headers))
        assert out is not None
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)
        return await self.response()

    async def response(self) -> Reply:
        response: h11.Response | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                headers = {k.decode(): v.decode() for k, v in response.headers}
                return Reply(response.status_code, headers, body)
            else:
                raise AssertionError(f"unexpected {event!r}")


async def connect(server: Server, source: str | None = None) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", server.port, local_address=source)


async def get(server: Server, target: str, method: str = "GET", source: str | None = None
              ) -> Reply:
    async with await connect(server, source) as stream:
        return await Client(stream).request(method, target)


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def raw_exchange(server: Server, data: bytes) -> bytes:
    """Send raw bytes, return everything the server says before it closes."""
    async with await connect(server) as stream:
        await stream.send_all(data)
        return await read_until_eof(stream)


async def test_healthz(server: Server) -> None:
    reply = await get(server, "/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"


async def test_readyz_flips_from_503_with_reason_to_200(server: Server) -> None:
    reply = await get(server, "/readyz")
    assert (reply.status, reply.body) == (503, b"redis: not connected\n")
    server.readiness.ready = True
    reply = await get(server, "/readyz")
    assert (reply.status, reply.body) == (200, b"ready\n")
    server.readiness.ready = False
    server.readiness.reason = "subscriber:\n canary late"
    reply = await get(server, "/readyz")
    assert (reply.status, reply.body) == (503, b"subscriber: canary late\n")


async def test_readyz_callback_failure_is_503_and_logged(server: Server) -> None:
    server.readiness.error = RuntimeError("boom")
    with structlog.testing.capture_logs() as logs:
        reply = await get(server, "/readyz")
    assert (reply.status, reply.body) == (503, b"readiness check failed\n")
    assert b"boom" not in reply.body
    assert [entry["event"] for entry in logs] == ["http.error"]


async def test_metrics(server: Server) -> None:
    server.metrics.joins_total.inc(3)
    reply = await get(server, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    assert b"chat_joins_total 3.0\n" in reply.body
    assert b'chat_gateway_info{gateway="gw-http-test"} 1.0' in reply.body


async def test_metrics_with_query_string(server: Server) -> None:
    reply = await get(server, "/metrics?name[]=chat_joins_total")
    assert reply.status == 200


async def test_head_has_headers_but_no_body(server: Server) -> None:
    async with await connect(server) as stream:
        client = Client(stream)
        head = await client.request("HEAD", "/healthz")
        assert (head.status, head.body) == (200, b"")
        assert head.headers["content-length"] == "3"
        # The connection is still framed correctly for the next request.
        reply = await client.request("GET", "/healthz")
        assert reply.body == b"ok\n"


async def test_unknown_path_is_404(server: Server) -> None:
    assert (await get(server, "/")).status == 404
    assert (await get(server, "/healthz/extra")).status == 404
    assert (await get(server, "/nope", method="POST")).status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_are_405(server: Server, method: str) -> None:
    reply = await get(server, "/healthz", method=method)
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"


async def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    async with await connect(server) as stream:
        client = Client(stream)
        for target in ("/healthz", "/readyz", "/metrics", "/nope", "/healthz"):
            await client.request("GET", target)
        reply = await client.request("POST", "/readyz", body=b"x" * 100)
        assert reply.status == 405
        assert (await client.request("GET", "/healthz")).status == 200


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    async with await connect(server) as stream:
        await stream.send_all(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        client = Client(stream)
        statuses = []
        for _ in range(3):
            # Mirror the requests in the client's state machine to frame replies.
            client.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            client.conn.send(h11.EndOfMessage())
            statuses.append((await client.response()).status)
            if client.conn.our_state is h11.DONE and client.conn.their_state is h11.DONE:
                client.conn.start_next_cycle()
        assert statuses == [200, 503, 404]
        assert await read_until_eof(stream) == b""


async def test_http10_request_is_answered_and_closed(server: Server) -> None:
    received = await raw_exchange(server, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b"\r\n\r\nok\n")


async def test_malformed_request_gets_400_and_server_survives(server: Server) -> None:
    received = await raw_exchange(server, b"this is not http\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Traceback" not in received
    assert b"connection: close" in received.lower()
    received = await raw_exchange(server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert received.startswith(b"HTTP/1.1 400 ")
    assert (await get(server, "/healthz")).status == 200


async def test_oversized_request_head_gets_431(server: Server) -> None:
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_REQUEST_HEAD_BYTES
    received = await raw_exchange(server, huge)
    assert received.startswith(b"HTTP/1.1 431 ")
    assert (await get(server, "/healthz")).status == 200


async def test_oversized_body_gets_413(server: Server) -> None:
    size = MAX_REQUEST_BODY_BYTES + 1
    head = f"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    received = await raw_exchange(server, head + b"b" * size)
    assert received.startswith(b"HTTP/1.1 413 ")


async def test_client_disconnecting_mid_request_does_not_hurt_the_server(server: Server) -> None:
    async with await connect(server) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHo")
    assert (await get(server, "/healthz")).status == 200


async def test_stalled_request_gets_408(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, request_timeout_s=0.2)
    received = await raw_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert received.startswith(b"HTTP/1.1 408 ")


async def test_idle_keep_alive_connection_is_closed_quietly(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, request_timeout_s=0.2)
    async with await connect(server) as stream:
        client = Client(stream)
        assert (await client.request("GET", "/healthz")).status == 200
        assert await read_until_eof(stream) == b""


async def test_at_the_limit_the_oldest_idle_connection_makes_room(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, max_connections=2, head_timeout_s=30)
    async with await connect(server) as kept_alive, await connect(server) as never_used:
        client = Client(kept_alive)
        assert (await client.request("GET", "/healthz")).status == 200
        # Full: the socket that never sent a request goes first, not the kept-alive one.
        assert (await get(server, "/healthz")).status == 200
        with trio.fail_after(5):
            assert await read_until_eof(never_used) == b""
        assert (await client.request("GET", "/healthz")).status == 200
    # With only kept-alive connections waiting, the oldest of them makes room.
    server = await start_server(nursery, max_connections=1, head_timeout_s=30)
    async with await connect(server) as kept_alive:
        assert (await Client(kept_alive).request("GET", "/healthz")).status == 200
        assert (await get(server, "/healthz")).status == 200
        with trio.fail_after(5):
            assert await read_until_eof(kept_alive) == b""


async def test_the_per_address_cap_closes_that_address_own_oldest_idle_socket(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(nursery, max_connections_per_address=2, head_timeout_s=30)
    async with await connect(server, "127.0.0.81") as other:
        mine = [await connect(server, "127.0.0.80") for _ in range(2)]
        assert (await get(server, "/healthz", source="127.0.0.80")).status == 200
        with trio.fail_after(5):
            assert await read_until_eof(mine[0]) == b""
        # Another address's socket, older still, was left alone.
        assert (await Client(other).request("GET", "/healthz")).status == 200
        for stream in mine:
            await stream.aclose()


async def test_connections_over_the_limit_are_refused_when_all_are_busy(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(nursery, max_connections=1)
    async with await connect(server) as busy:
        # One write: a GET, then a POST whose body is still due.  The GET's answer
        # proves the server read both; the POST's connection is then mid-request,
        # not one to close for room.
        await busy.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        client = Client(busy)
        assert (await client.response()).status == 200
        received = await raw_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 503 ")
        assert received.endswith(b"too many connections\n")
        await busy.send_all(b"0123456789")
        with trio.fail_after(5):  # and it is served after all
            assert (await busy.receive_some(65536)).startswith(b"HTTP/1.1 405 ")


async def test_a_connection_must_send_its_request_head_in_time(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, head_timeout_s=0.2)
    async with await connect(server) as silent:
        with trio.fail_after(5):
            assert await read_until_eof(silent) == b""
    async with await connect(server) as slow:
        await slow.send_all(b"GET /healthz HTTP/1.1\r\nHo")
        with trio.fail_after(5):
            assert (await read_until_eof(slow)).startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("flood_sources", [["127.0.0.1"], [f"127.0.0.{i}" for i in range(61, 66)]])
async def test_healthz_answers_under_an_idle_connection_flood(
    nursery: trio.Nursery, flood_sources: list[str]
) -> None:
    """Hundreds of sockets that never send a byte, from one address or several:
    the probes, from the flooding address itself or another, are still served."""
    server = await start_server(nursery)  # the defaults: 64 in all, 16 per address
    flood = []
    for i in range(300):
        flood.append(await connect(server, flood_sources[i % len(flood_sources)]))
    for source in ("127.0.0.1", "127.0.0.70", flood_sources[-1]):
        with trio.fail_after(5):
            assert (await get(server, "/healthz", source=source)).status == 200
    for stream in flood:
        await stream.aclose()


async def test_standard_library_client(server: Server) -> None:
    server.readiness.ready = True

    def fetch(path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{server.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    assert await trio.to_thread.run_sync(fetch, "/healthz") == (200, b"ok\n")
    assert await trio.to_thread.run_sync(fetch, "/readyz") == (200, b"ready\n")
    assert (await trio.to_thread.run_sync(fetch, "/missing"))[0] == 404


async def test_binding_a_taken_port_raises(server: Server) -> None:
    with pytest.raises(OSError):
        await serve_http("127.0.0.1", server.port, ready=server.readiness, metrics=server.metrics)
