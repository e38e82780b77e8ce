"""The gateway's HTTP endpoints and PROXY protocol handling, in process."""

from __future__ import annotations

from functools import partial

import trio

from services.common import probes
from services.common.config import HostPort
from services.common.redis import Backoff
from tests.conftest import StartGateway
from tests.support.chat_client import ChatClient
from tests.support.waiting import wait_until


async def http_get(port: int, path: str) -> tuple[int | None, str]:
    return await trio.to_thread.run_sync(partial(probes.http_get, port, path, timeout_s=10.0))


async def test_health_readiness_and_metrics(start_gateway: StartGateway) -> None:
    gw = await start_gateway(http_listen=HostPort("127.0.0.1", 0))
    assert gw.http_port
    assert await http_get(gw.http_port, "/healthz") == (200, "ok\n")
    await wait_until(lambda: gw.ready()[0])
    assert (await http_get(gw.http_port, "/readyz"))[0] == 200
    a = await ChatClient.join(gw.ports[0], "a")
    b = await ChatClient.join(gw.ports[0], "b")
    await a.send("hello")
    await b.expect(r"^#lobby <a> hello$")
    await a.send(b"\xff\n")
    await a.expect(r"^!! line is not valid UTF-8")
    status, metrics = await http_get(gw.http_port, "/metrics")
    assert status == 200
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert values["chat_connections_open"] == 2
    assert values["chat_joins_total"] == 2
    assert values["chat_messages_in_total"] == 1
    assert values["chat_deliveries_total"] >= 2
    assert values['chat_rejected_lines_total{reason="bad_utf8"}'] == 1
    assert values["chat_redis_up"] == 1 and values["chat_subscriber_up"] == 1
    assert values["chat_publish_latency_seconds_count"] >= 1
    assert f'chat_gateway_info{{gateway="{gw.gateway_id}"}}' in values
    # Draining: not ready any more, so load balancers stop sending clients.
    gw.draining = True
    status, body = await http_get(gw.http_port, "/readyz")
    assert status == 503 and "draining" in body


async def test_proxy_protocol_gives_the_real_client_address(start_gateway: StartGateway) -> None:
    gw = await start_gateway(proxy_protocol=True)
    stream = await trio.open_tcp_stream("127.0.0.1", gw.ports[0])
    # The header and the first line in one write: nothing after the header is lost.
    await stream.send_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 7000\r\nproxied\n")
    client = ChatClient(stream)
    await client.expect(r"^== welcome, proxied!")
    (session,) = gw.sessions
    assert session.peer == "203.0.113.7:51234"


async def test_malformed_or_untrusted_proxy_header_closes_the_connection(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(proxy_protocol=True)
    bad = await ChatClient.connect(gw.ports[0])
    await bad.send("alice")  # no header at all
    assert await bad.read_until_closed() == []
    untrusted_gw = await start_gateway(proxy_protocol=True, trusted_proxies=("10.9.9.0/24",))
    stranger = await ChatClient.connect(untrusted_gw.ports[0])
    await stranger.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 7000\r\n")
    assert await stranger.read_until_closed() == []
    await wait_until(lambda: not gw.sessions and not untrusted_gw.sessions)


def test_backoff_grows_is_capped_has_jitter_and_resets() -> None:
    backoff = Backoff(base_s=0.1, cap_s=5.0)
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0.05 <= d <= 5.0 for d in delays)
    assert max(delays[:2]) <= 0.2 and min(delays[-3:]) >= 2.5  # grew up to the cap
    assert len({round(d, 6) for d in delays[-4:]}) > 1  # jitter: not all equal
    backoff.reset()
    assert backoff.next_delay() <= 0.1
