"""Graceful drain on SIGTERM/SIGINT; a second signal exits at once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
import trio

from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_drain_tells_clients_releases_everything_and_exits_0(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess], signum: int
) -> None:
    prefix = f"drain{int(signum)}:"
    gw1 = gateway_procs(redis_server.url, "d1", key_prefix=prefix, **FAST)
    gw2 = gateway_procs(redis_server.url, "d2", key_prefix=prefix, **FAST)
    alice = await ChatClient.join(gw1.port, "alice")
    carol = await ChatClient.join(gw1.port, "carol")
    await carol.send("/join #side")
    await carol.expect(r"^== now talking in #side$")
    bob = await ChatClient.join(gw2.port, "bob")
    oracle = redis_server.client()
    assert oracle.pubsub_numsub(f"{prefix}room:#side")[0][1] == 1

    started = time.monotonic()
    gw1.signal(signum)
    for client in (alice, carol):
        lines = await client.read_until_closed(timeout=15)
        assert lines[-1] == (
            "!! disconnected: this gateway is shutting down; "
            "reconnect and you will land on another one"
        )
    await bob.seen(r"^#lobby -- alice left the chat!$")
    await bob.seen(r"^#lobby -- carol left the chat!$")
    assert await trio.to_thread.run_sync(gw1.wait) == 0
    assert time.monotonic() - started < 10  # the default drain deadline
    assert set(oracle.hkeys(f"{prefix}nicks")) == {b"bob"}
    assert oracle.zscore(f"{prefix}gateways", gw1.incarnation) is None
    assert not oracle.exists(f"{prefix}gw:{gw1.incarnation}:alive")
    assert oracle.pubsub_numsub(f"{prefix}room:#side")[0][1] == 0
    events = [e["event"] for e in gw1.events()]
    assert events.index("gateway.draining") < events.index("gateway.stopped")
    assert events[-1] == "gateway.stopped", events[-3:]
    # Reconnecting lands on a surviving gateway, with the same nickname free.
    again = await ChatClient.join(gw2.port, "alice")
    await again.aclose()
    oracle.close()


async def test_second_signal_exits_at_once(
    fresh_redis: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    # Slow Redis deadlines make the drain itself slow, so only the second signal
    # can explain a quick exit.
    gw = gateway_procs(fresh_redis.url, "d9", **{**FAST, "redis_timeout_s": 8.0})
    client = await ChatClient.join(gw.port, "stuck")
    assert fresh_redis.proc is not None
    fresh_redis.proc.send_signal(signal.SIGSTOP)
    try:
        gw.signal(signal.SIGTERM)
        gw.wait_for_event("gateway.draining")
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(gw.wait)
        assert time.monotonic() - started < 3
        assert code == 1
        assert "gateway.killed" in [e["event"] for e in gw.events()]
    finally:
        fresh_redis.proc.send_signal(signal.SIGCONT)
    await client.read_until_closed()
