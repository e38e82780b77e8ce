"""A Redis at ``maxmemory`` with ``noeviction`` (the recommended policy) refuses
every write that needs memory with an OOM error.  A real gateway process turns
that into clear error lines, keeps its lease (renewals need no memory), frees
what leaving clients held, and serves normally again once Redis has room."""

from __future__ import annotations

from collections.abc import Callable

import trio

from services.common.names import fold_nick
from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

FULL = r"^!! chat is unavailable right now \(Redis is out of memory\); try again shortly$"


async def test_a_full_redis_gives_clear_lines_and_the_gateway_carries_on(
    fresh_redis: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    oracle = fresh_redis.client()
    oracle.config_set("maxmemory-policy", "noeviction")
    gw = gateway_procs(fresh_redis.url, "oom", **FAST)
    alice = await ChatClient.join(gw.port, "alice")
    bob = await ChatClient.join(gw.port, "bob")
    await bob.send("/join #side")
    await bob.expect(r"^== now talking in #side$")

    oracle.config_set("maxmemory", 1)  # every write that needs memory is refused now
    await alice.send("hello?")
    await alice.expect(r"^!! not delivered: Redis is out of memory; your line was not sent$")
    await alice.send("/nick alicia")
    await alice.expect(FULL)
    await alice.send("/join #new")  # a join is refused whole, not run past the limit
    await alice.expect(FULL)
    assert not oracle.exists("chat:room:#new:members")
    carl = await ChatClient.connect(gw.port)
    await carl.send("carl")
    await carl.expect(FULL)
    await carl.expect(r"^\?\? ")  # asked again, not disconnected
    await bob.send("/quit")  # leaving frees memory: allowed, and announced
    await alice.expect(r"^#lobby -- bob left the chat!$")
    # Its lease survives (PEXPIRE needs no memory): nobody reaps it meanwhile.
    lease = f"chat:gw:{gw.incarnation}:alive"
    with trio.move_on_after(FAST["heartbeat_ttl_s"] * 2):
        while oracle.exists(lease):
            await trio.sleep(0.1)
    assert oracle.exists(lease)
    assert gw.proc is not None and gw.proc.poll() is None  # still running
    assert not [e for e in gw.records() if e.get("event") == "gateway.lease_lost"]
    assert any("OOM" in str(e.get("error")) for e in gw.records()
               if e.get("event") == "message.not_delivered")

    oracle.config_set("maxmemory", 0)  # room again: everything works
    await carl.send("carl")
    await carl.expect(r"^== welcome, carl!")
    await alice.send("back")
    await alice.expect(r"^#lobby <alice> back$")
    await carl.expect(r"^#lobby <alice> back$")
    assert set(oracle.hkeys("chat:nicks")) == {fold_nick("alice").encode(), b"carl"}
    oracle.close()
