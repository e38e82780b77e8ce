"""The subscriber connection: gaps filled after a drop, and the canary."""

from __future__ import annotations

from collections.abc import Callable

import redis
import trio

from tests.conftest import StartGateway
from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import StallingProxy
from tests.support.waiting import wait_until

MESSAGES = 1000


async def test_pubsub_drop_mid_stream_loses_and_repeats_nothing(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    prefix = "gap:"
    gw1 = gateway_procs(redis_server.url, "g1", key_prefix=prefix, **FAST)
    gw2 = gateway_procs(redis_server.url, "g2", key_prefix=prefix, **FAST)
    sender = await ChatClient.join(gw1.port, "sender")
    local = await ChatClient.join(gw1.port, "local")
    remote = await ChatClient.join(gw2.port, "remote")
    oracle = redis_server.client()
    killed = 0

    async def send_all() -> None:
        nonlocal killed
        for i in range(MESSAGES):
            await sender.send(f"m{i}")
            if i == MESSAGES // 3:
                # Every gateway's subscriber connection drops while the sender goes on.
                killed = int(oracle.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
            if i % 50 == 0:
                await trio.sleep(0.01)  # a steady sender, not one burst

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
    assert killed >= 2  # both gateways' subscribers (and nothing else) were cut
    for client in (sender, local, remote):
        await client.seen(rf"^#lobby <sender> m{MESSAGES - 1}$", timeout=30)
        got = [m for m in client.lines if m.startswith("#lobby <sender> m")]
        assert got == [f"#lobby <sender> m{i}" for i in range(MESSAGES)], client.nick
    for gw in (gw1, gw2):
        names = [e["event"] for e in gw.events()]
        assert "redis.reconnected" in names
    filled = [e for gw in (gw1, gw2) for e in gw.events() if e["event"] == "gap.filled"]
    assert filled, "the drop should have caused at least one gap to fill"
    oracle.close()


async def test_dead_subscriber_loop_is_detected_by_the_canary(
    redis_server: RedisServer, start_gateway: StartGateway, rc: redis.Redis
) -> None:
    proxy = StallingProxy(redis_server.port)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.run)
        gw = await start_gateway(redis_url=f"redis://127.0.0.1:{port}/0", **FAST)
        alice = await ChatClient.join(gw.ports[0], "alice")
        await wait_until(lambda: gw.ready() == (True, "ready"), timeout=10)
        # Redis keeps accepting, the socket stays open, but nothing reaches the
        # subscriber loop any more: only the canary can tell.
        proxy.stall_replies_to(f"chat:{gw.gateway_id}:sub".encode())
        await wait_until(lambda: gw.canary_failures >= 1, timeout=10)
        assert not gw.ready()[0]
        proxy.clear()
        await wait_until(lambda: gw.ready()[0], timeout=15)
        assert gw.subscriber.reconnects >= 1
        assert proxy.stalled_connections >= 1
        await alice.send("heard again")
        await alice.expect(r"^#lobby <alice> heard again$")
        nursery.cancel_scope.cancel()
