"""Redis killed and started again empty on the same port."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import trio

from services.common.names import fold_nick
from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer


async def test_restart_keeps_clients_reasserts_state_and_chat_resumes(
    fresh_redis: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    gw1 = gateway_procs(fresh_redis.url, "r1", **FAST)
    gw2 = gateway_procs(fresh_redis.url, "r2", **FAST)
    alice = await ChatClient.join(gw1.port, "alice")
    bob = await ChatClient.join(gw2.port, "bob")
    await bob.send("/join #dev")
    await bob.expect(r"^== now talking in #dev$")
    await bob.send("/join #lobby")
    await bob.expect(r"^== now talking in #lobby$")

    fresh_redis.kill()
    for client in (alice, bob):
        await client.expect(r"^== chat interrupted: ", timeout=15)
    await alice.send("sent while down")

    fresh_redis.start()  # empty: no nicknames, no rooms, no scripts
    back_at = time.monotonic()
    for client in (alice, bob):
        await client.expect(r"^== chat is back$", timeout=15)
    assert time.monotonic() - back_at < 10
    # One outcome for the line: "not delivered" at once when the gateway already
    # knew Redis was gone; when its command connection wrote the PUBLISH before
    # seeing the close, the outcome is found out once Redis is back.
    await alice.seen(r"^!! not (delivered|confirmed): ", timeout=15)

    oracle = fresh_redis.client()
    with trio.fail_after(10):
        while oracle.hlen("chat:nicks") < 2:
            await trio.sleep(0.05)
    assert oracle.hgetall("chat:nicks") == {
        fold_nick("alice").encode(): f"{gw1.incarnation} alice".encode(),
        b"bob": f"{gw2.incarnation} bob".encode(),
    }
    assert oracle.hgetall("chat:room:#dev:members") == {b"bob": b"bob"}
    assert set(oracle.hkeys("chat:room:#lobby:members")) == {fold_nick("alice").encode(), b"bob"}
    await alice.send("after restart")
    await bob.expect(r"^#lobby <alice> after restart$", timeout=10)
    await alice.expect(r"^#lobby <alice> after restart$")
    assert not any("sent while down" in line for line in bob.lines)
    assert sum(line.startswith(("!! not delivered", "!! not confirmed")) for line in alice.lines) == 1
    # Told exactly once each way.
    for client in (alice, bob):
        assert sum(m.startswith("== chat interrupted") for m in client.lines) == 1
        assert sum(m == "== chat is back" for m in client.lines) == 1
    oracle.close()


async def test_nickname_conflict_after_restart_renames_the_later_claimant(
    fresh_redis: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    gw1 = gateway_procs(fresh_redis.url, "k1", **FAST)
    gw2 = gateway_procs(fresh_redis.url, "k2", **FAST)
    alice = await ChatClient.join(gw1.port, "alice")
    gw1.signal(signal.SIGSTOP)  # frozen: it cannot re-assert alice yet
    try:
        fresh_redis.restart()
        # On the empty Redis, someone else takes "alice" through the other gateway.
        with trio.fail_after(15):
            while True:
                intruder = await ChatClient.connect(gw2.port)
                await intruder.send("alice")
                line = await intruder.expect(r"^(== welcome, |!! )")
                if line.startswith("== welcome, "):
                    break
                await intruder.aclose()
                await trio.sleep(0.1)
    finally:
        gw1.signal(signal.SIGCONT)
    # The rule: whoever holds the name in Redis keeps it; the gateway that finds it
    # taken when re-asserting renames its own user and says so.
    line = await alice.expect(r'^!! your nickname "alice" was taken', timeout=20)
    assert 'you are now "alice_"' in line
    oracle = fresh_redis.client()
    assert oracle.hget("chat:nicks", fold_nick("alice")) == f"{gw2.incarnation} alice".encode()
    with trio.fail_after(10):
        while oracle.hget("chat:nicks", fold_nick("alice_")) != f"{gw1.incarnation} alice_".encode():
            await trio.sleep(0.05)
    await alice.send("still here")
    await intruder.seen(r"^#lobby <alice_> still here$")
    oracle.close()
