"""Redis frozen with SIGSTOP for 20 s, then resumed with SIGCONT."""

from __future__ import annotations

import signal
from collections.abc import Callable

import trio

from services.common.names import fold_nick
from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

STALL_S = 20.0


async def test_stalled_redis_is_survived_without_a_restart(
    fresh_redis: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    gw1 = gateway_procs(fresh_redis.url, "s1", **FAST)
    gw2 = gateway_procs(fresh_redis.url, "s2", **FAST)
    alice = await ChatClient.join(gw1.port, "alice")
    bob = await ChatClient.join(gw2.port, "bob")
    assert fresh_redis.proc is not None
    fresh_redis.proc.send_signal(signal.SIGSTOP)
    stall_started = trio.current_time()
    try:
        with trio.fail_after(20):
            # Written to a Redis that does not answer: its outcome is unknown until
            # Redis answers again (it refuses the line then: past its deadline).
            await alice.send("during the stall")
            for client in (alice, bob):
                await client.expect(r"^== chat interrupted: ")
            # Once the command connection is given up (its watchdog; the canary may
            # have cut the subscriber first), a line is refused at once.
            await trio.to_thread.run_sync(
                lambda: gw1.wait_for_event("redis.disconnected", connection="chat:s1:cmd")
            )
            await alice.send("while interrupted")
            await alice.expect(r"^!! not delivered: ")
            # The gateway keeps serving what needs no Redis.
            await bob.send("/help")
            await bob.expect(r"^== commands:$")
            newcomer = await ChatClient.connect(gw2.port)
            await newcomer.expect(r"^!! chat is unavailable right now")
            await newcomer.send("carol")
            await newcomer.expect(r"^!! chat is unavailable right now")
            await newcomer.expect(r"^\?\? ")
        # The fault lasts 20 s (its duration, not a synchronisation).
        await trio.sleep_until(stall_started + STALL_S)
    finally:
        fresh_redis.proc.send_signal(signal.SIGCONT)
    for client in (alice, bob):
        await client.expect(r"^== chat is back$", timeout=20)
    # Exactly one outcome for each line: both reported, neither delivered.
    with trio.fail_after(20):
        while sum(line.startswith("!! not delivered: ") for line in alice.lines) < 2:
            await alice.drain(0.1)
    await alice.send("after the stall")
    await bob.expect(r"^#lobby <alice> after the stall$", timeout=10)
    await newcomer.send("carol")
    await newcomer.expect(r"^== welcome, carol!")
    assert gw1.proc.poll() is None and gw2.proc.poll() is None  # type: ignore[union-attr]
    await alice.expect(r"^#lobby <alice> after the stall$")
    for client in (alice, bob):
        assert not any("during the stall" in line or "while interrupted" in line
                       for line in client.lines if not line.startswith("!!"))
    assert sum(line.startswith("!! not delivered: ") for line in alice.lines) == 2
    oracle = fresh_redis.client()
    assert set(oracle.hkeys("chat:nicks")) == {fold_nick(n).encode() for n in ("alice", "bob", "carol")}
    oracle.close()
    for gw in (gw1, gw2):
        names = [e["event"] for e in gw.events()]
        assert "chat.interrupted" in names and "chat.restored" in names

