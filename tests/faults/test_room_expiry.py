"""Real gateways and Redis: a room emptied by /part, by /quit or by the death of
its last member's gateway gets CHAT_ROOM_TTL_S on every key it keeps; a room
with members has no expiry at all."""

from __future__ import annotations

from collections.abc import Callable

import trio

from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

TTL_S = 900


async def test_emptied_rooms_expire_whatever_emptied_them_and_used_ones_never(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    prefix = "expiry:"
    gw1, gw2 = (gateway_procs(redis_server.url, f"e{i}", key_prefix=prefix, room_ttl_s=TTL_S,
                              **FAST) for i in (1, 2))
    oracle = redis_server.client()

    def kept_keys(room: str) -> list[str]:
        return [f"{prefix}room:{room}:{kind}" for kind in ("seq", "log", "history", "bytes")]

    async def join(client: ChatClient, room: str) -> None:
        await client.send(f"/join {room}")
        await client.expect(rf"^== now talking in {room}$")
        await client.send(f"hello {room}")  # so the history exists too
        await client.expect(rf"^{room} <{client.nick}> hello {room}$")

    stay = await ChatClient.join(gw1.port, "stay")
    await stay.send("hello #lobby")
    await stay.expect(r"^#lobby <stay> hello #lobby$")
    await join(stay, "#kept")
    parter = await ChatClient.join(gw1.port, "parter")
    await join(parter, "#parted")
    quitter = await ChatClient.join(gw1.port, "quitter")
    await join(quitter, "#quit")
    doomed = await ChatClient.join(gw2.port, "doomed")
    await join(doomed, "#crashed")
    for room in ("#kept", "#parted", "#quit", "#crashed", "#lobby"):
        assert all(oracle.ttl(key) == -1 for key in kept_keys(room)), room

    await parter.send("/part #parted")
    await parter.expect(r"^== left #parted")
    await quitter.send("/quit")
    await quitter.read_until_closed()
    gw2.kill()  # SIGKILL: gw1 reaps its users once the lease expires
    with trio.fail_after(15):
        while oracle.exists(f"{prefix}room:#crashed:members"):
            await trio.sleep(0.05)

    for room in ("#parted", "#quit", "#crashed"):
        assert not oracle.exists(f"{prefix}room:{room}:members")
        for key in kept_keys(room):
            assert 0 < oracle.ttl(key) <= TTL_S, (key, oracle.ttl(key))
    for room in ("#kept", "#lobby"):  # stay is still in both
        assert oracle.hlen(f"{prefix}room:{room}:members") >= 1
        for key in kept_keys(room):
            assert oracle.ttl(key) == -1, (key, oracle.ttl(key))
    assert set(oracle.zrange(f"{prefix}rooms-by-size", 0, -1)) == {b"#kept", b"#lobby"}
    oracle.close()
