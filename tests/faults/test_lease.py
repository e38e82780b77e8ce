"""A gateway frozen past its lease: released by the others, then it takes its users back."""

from __future__ import annotations

import signal
from collections.abc import Callable

import trio

from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer


async def test_paused_gateway_reclaims_its_users_after_being_reaped(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    prefix = "lease:"
    gw1 = gateway_procs(redis_server.url, "l1", key_prefix=prefix, **FAST)
    gw2 = gateway_procs(redis_server.url, "l2", key_prefix=prefix, **FAST)
    bob = await ChatClient.join(gw1.port, "bob")
    watcher = await ChatClient.join(gw2.port, "watcher")
    oracle = redis_server.client()
    gw1.signal(signal.SIGSTOP)
    try:
        await watcher.seen(r"^#lobby -- bob left the chat! \(gateway lost\)$", timeout=20)
        assert not oracle.hexists(f"{prefix}nicks", "bob")
    finally:
        gw1.signal(signal.SIGCONT)
    # Bob never left: his gateway notices its lapsed lease and claims him back.
    await watcher.seen(r"^#lobby -- bob joined the chat!$", timeout=10)
    gw1.wait_for_event("gateway.lease_lost")
    with trio.fail_after(10):
        while oracle.hget(f"{prefix}nicks", "bob") != f"{gw1.incarnation} bob".encode():
            await trio.sleep(0.05)
    await bob.send("still here")
    await watcher.seen(r"^#lobby <bob> still here$")
    await watcher.send("/who")
    await watcher.seen(r"^== 2 online: bob, watcher$")
    oracle.close()
