"""Three gateway processes on one real Redis: what crosses processes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator

import pytest
import redis
import trio

from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

PREFIX = "e2e:"


@pytest.fixture
def cluster(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> Iterator[list[GatewayProcess]]:
    prefix = f"{PREFIX}{os.getpid()}:{id(object())}:"
    gateways = [
        gateway_procs(redis_server.url, f"gw{i}", key_prefix=prefix, flood_burst=500)
        for i in (1, 2, 3)
    ]
    for gw in gateways:
        gw.prefix = prefix  # type: ignore[attr-defined]
    yield gateways


async def test_relay_join_and_leave_cross_all_gateways(cluster: list[GatewayProcess]) -> None:
    gw1, gw2, gw3 = cluster
    alice = await ChatClient.join(gw1.port, "alice")
    bob = await ChatClient.join(gw2.port, "bob")
    carol = await ChatClient.join(gw3.port, "carol")
    for watcher in (alice, bob):
        await watcher.seen(r"^#lobby -- carol joined the chat!$")
    await alice.seen(r"^#lobby -- bob joined the chat!$")

    for i in range(20):
        await alice.send(f"from alice {i}")
        await carol.send(f"from carol {i}")
    await alice.send("done-a")
    await carol.send("done-c")
    for client in (alice, bob, carol):
        await client.seen(r"^#lobby <alice> done-a$")
        await client.seen(r"^#lobby <carol> done-c$")
    for client in (alice, bob, carol):
        for sender in ("alice", "carol"):
            got = [m for m in client.lines if m.startswith(f"#lobby <{sender}> from ")]
            assert got == [f"#lobby <{sender}> from {sender} {i}" for i in range(20)], client.nick

    await carol.aclose()  # unclean: the socket just closes
    await alice.seen(r"^#lobby -- carol left the chat!$")
    await bob.seen(r"^#lobby -- carol left the chat!$")
    await bob.send("/quit")
    await alice.seen(r"^#lobby -- bob left the chat!$")


async def test_fifty_clients_race_for_one_nickname(
    cluster: list[GatewayProcess], redis_server: RedisServer
) -> None:
    prefix = cluster[0].prefix  # type: ignore[attr-defined]
    clients = [await ChatClient.connect(cluster[i % 3].port) for i in range(50)]
    for client in clients:
        await client.expect(r"^\?\? ")
    results: dict[int, str] = {}

    async def attempt(i: int, client: ChatClient) -> None:
        # Different spellings of one nickname: uniqueness ignores case.
        await client.send("racer" if i % 2 else "RACER")
        results[i] = await client.expect(r"^(== welcome, |!! nickname)")

    async with trio.open_nursery() as nursery:
        for i, client in enumerate(clients):
            nursery.start_soon(attempt, i, client)
    winners = [i for i, line in results.items() if line.startswith("== welcome, ")]
    losers = [i for i, line in results.items() if "is taken" in line]
    assert len(winners) == 1
    assert len(losers) == 49
    winner_gw = cluster[winners[0] % 3].incarnation
    oracle = redis_server.client()
    record = oracle.hget(f"{prefix}nicks", "racer")
    assert record is not None and record.decode().startswith(f"{winner_gw} ")
    assert oracle.hlen(f"{prefix}nicks") == 1
    owned = [oracle.smembers(f"{prefix}gw:{gw.incarnation}:nicks") for gw in cluster]
    assert sorted(map(len, owned)) == [0, 0, 1]
    # The losers keep their connection and can choose again.
    await clients[losers[0]].expect(r"^\?\? ")
    await clients[losers[0]].send("second_choice")
    await clients[losers[0]].expect(r"^== welcome, second_choice!")
    oracle.close()


async def test_nicknames_are_unique_across_gateways_and_freed_on_leave(
    cluster: list[GatewayProcess], redis_server: RedisServer
) -> None:
    prefix = cluster[0].prefix  # type: ignore[attr-defined]
    oracle: redis.Redis = redis_server.client()
    dana = await ChatClient.join(cluster[0].port, "Dana")
    for gw in cluster[1:]:
        other = await ChatClient.connect(gw.port)
        await other.send("DANA")
        await other.expect(r'^!! nickname "DANA" is taken')
        await other.aclose()
    await dana.send("/who")
    await dana.expect(r"^== 1 online: Dana$")
    assert oracle.hget(f"{prefix}nicks", "dana") == f"{cluster[0].incarnation} Dana".encode()
    await dana.send("/quit")
    await dana.read_until_closed()
    with trio.fail_after(10):
        while oracle.hexists(f"{prefix}nicks", "dana"):
            await trio.sleep(0.02)
    again = await ChatClient.join(cluster[2].port, "dana")
    assert oracle.hget(f"{prefix}nicks", "dana") == f"{cluster[2].incarnation} dana".encode()
    await again.aclose()
    oracle.close()


async def test_every_log_line_is_json_with_the_required_fields(
    cluster: list[GatewayProcess],
) -> None:
    gw = cluster[0]
    client = await ChatClient.join(gw.port, "logger")
    await client.send("secret body text")
    await client.expect(r"^#lobby <logger> secret body text$")
    await client.send(b"\xff\n")
    await client.expect(r"^!! line is not valid UTF-8")
    await client.send("/quit")
    await client.read_until_closed()
    gw.wait_for_event("client.left", nick="logger")
    gw.stop()
    lines = [line for line in gw.log_lines() if line.strip()]
    assert lines
    events = [json.loads(line) for line in lines]  # raises if any line is not JSON
    for record in events:
        assert {"timestamp", "level", "event", "gateway"} <= record.keys(), record
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", record["event"]), record["event"]
        assert record["gateway"] == "gw1"
    names = [e["event"] for e in events]
    for expected in ("gateway.started", "redis.connected", "client.connected", "client.joined",
                     "line.rejected", "client.left", "gateway.stopped"):
        assert expected in names, expected
    for record in events:
        if record["event"].startswith("client."):
            assert {"conn", "peer"} <= record.keys(), record
        if record["event"] in ("client.joined", "client.left"):
            assert record["nick"] == "logger"
    assert "secret body text" not in "\n".join(lines)
