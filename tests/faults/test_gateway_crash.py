"""A gateway killed with SIGKILL: survivors release its users exactly once."""

from __future__ import annotations

from collections.abc import Callable

import trio

from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer


async def test_killed_gateway_users_are_released_and_announced_once(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    prefix = "crash:"
    gws = [gateway_procs(redis_server.url, f"c{i}", key_prefix=prefix, **FAST) for i in (1, 2, 3)]
    oracle = redis_server.client()
    victims = [await ChatClient.join(gws[0].port, name) for name in ("vic1", "vic2")]
    await victims[0].send("/join #side")
    await victims[0].expect(r"^== now talking in #side$")
    w2 = await ChatClient.join(gws[1].port, "watch2")
    w3 = await ChatClient.join(gws[2].port, "watch3")
    await w3.send("/join #side")
    await w3.expect(r"^== now talking in #side$")
    assert oracle.scard(f"{prefix}gw:{gws[0].incarnation}:nicks") == 2

    gws[0].kill()  # SIGKILL: no goodbye, no cleanup

    for watcher in (w2, w3):
        await watcher.seen(r"^#lobby -- vic1 left the chat! \(gateway lost\)$", timeout=15)
        await watcher.seen(r"^#lobby -- vic2 left the chat! \(gateway lost\)$", timeout=15)
    await w3.seen(r"^#side -- vic1 left the chat! \(gateway lost\)$")
    # Both survivors raced to reap; a marker sent afterwards proves no late duplicate.
    with trio.fail_after(10):
        while oracle.zscore(f"{prefix}gateways", gws[0].incarnation) is not None:
            await trio.sleep(0.05)
    await w2.send("marker")
    for watcher in (w2, w3):
        await watcher.seen(r"^#lobby <watch2> marker$")
        for name in ("vic1", "vic2"):
            leaves = [m for m in watcher.lines if m.startswith(f"#lobby -- {name} left")]
            assert len(leaves) == 1, (watcher.nick, leaves)
    reaped = [e for gw in gws[1:] for e in gw.events() if e["event"] == "gateway.reaped"]
    assert sum(e["released"] for e in reaped) == 2
    assert oracle.hkeys(f"{prefix}nicks") and set(oracle.hkeys(f"{prefix}nicks")) == {
        b"watch2", b"watch3"
    }
    assert not oracle.exists(f"{prefix}gw:{gws[0].incarnation}:nicks")
    assert oracle.hkeys(f"{prefix}room:#side:members") == [b"watch3"]
    # The nicknames are free again, on any gateway.
    again = await ChatClient.join(gws[1].port, "vic1")
    await again.aclose()
    oracle.close()
