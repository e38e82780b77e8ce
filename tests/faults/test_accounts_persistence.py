"""Accounts and Redis restarts: with persistence (AOF) they survive, and their
online owner is re-asserted; without it they are gone, as docs/OPERATIONS.md says."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

PASSWORD = "persist-me-please"


async def register(port: int, nick: str) -> ChatClient:
    client = await ChatClient.join(port, nick)
    await client.send(f"/register {PASSWORD}")
    await client.expect(rf"^== {nick} is registered to you")
    return client


@pytest.mark.parametrize("fresh_redis", [{"appendonly": True}], indirect=True)
async def test_accounts_survive_a_redis_restart_with_aof(
    fresh_redis: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_procs(fresh_redis.url, "p1", **FAST)
    alice = await register(gw.port, "alice")
    await (await register(gw.port, "bob")).send("/quit")

    fresh_redis.kill()  # SIGKILL: only what the AOF holds comes back
    await alice.expect(r"^== chat interrupted: ", timeout=15)
    fresh_redis.start()
    await alice.expect(r"^== chat is back$", timeout=15)

    # alice, online through the restart, still holds her registered nickname.
    impostor = await ChatClient.connect(gw.port)
    await impostor.send("alice")
    await impostor.expect(r'^!! nickname "alice" is taken')
    await impostor.send("bob")  # bob was offline: still registered
    await impostor.expect(r"^\?\? bob is registered")
    await impostor.send("wrong-password")
    await impostor.expect(r"^!! wrong password for bob$")
    await alice.send("still me")  # re-asserted with her proof, not renamed
    await alice.expect(r"^#lobby <alice> still me$")
    assert not [line for line in alice.lines if "was taken" in line]
    await alice.send("/quit")
    await alice.read_until_closed()
    await impostor.send("alice")
    await impostor.expect(r"^\?\? alice is registered")
    await impostor.send(PASSWORD)
    await impostor.expect(r"^== welcome, alice!")  # the owner, of course


async def test_without_persistence_a_redis_restart_forgets_accounts(
    fresh_redis: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_procs(fresh_redis.url, "p2", **FAST)
    await (await register(gw.port, "carol")).send("/quit")
    fresh_redis.restart()  # empty
    with trio.fail_after(15):  # until the gateway is back on the new Redis
        while True:
            newcomer = await ChatClient.connect(gw.port)
            await newcomer.send("carol")
            line = await newcomer.expect(r"^(== welcome, |!! |\?\? carol)")
            if line.startswith("== welcome, carol!"):
                break
            assert not line.startswith("?? carol"), line
            await newcomer.aclose()
            await trio.sleep(0.05)
