"""Rooms, private messages, renames, actions and history over three gateway processes."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator

import pytest
import redis
import trio
import trio.lowlevel

from services.common.bus import REPLAY_WINDOW
from services.common.names import fold_nick
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

_ids = itertools.count(1)


class Cluster:
    def __init__(self, gateways: list[GatewayProcess], prefix: str, oracle: redis.Redis) -> None:
        self.gateways = gateways
        self.prefix = prefix
        self.oracle = oracle

    def port(self, i: int) -> int:
        return self.gateways[i].port

    def numsub(self, room: str) -> int:
        channel = f"{self.prefix}room:{room}"
        return int(self.oracle.pubsub_numsub(channel)[0][1])


@pytest.fixture
def cluster(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> Iterator[Cluster]:
    prefix = f"feat{next(_ids)}:"
    gateways = [
        gateway_procs(redis_server.url, f"f{i}", key_prefix=prefix, flood_burst=500, history_size=5)
        for i in (1, 2, 3)
    ]
    oracle = redis_server.client()
    yield Cluster(gateways, prefix, oracle)
    oracle.close()


async def poll(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def test_rooms_join_part_rooms_who_and_current_room(cluster: Cluster) -> None:
    alice = await ChatClient.join(cluster.port(0), "alice")
    bob = await ChatClient.join(cluster.port(1), "bob")
    carol = await ChatClient.join(cluster.port(2), "carol")

    await alice.send("/join #Dev")
    # The local reply and the join echoed through Redis come in either order.
    await alice.seen(r"^#dev -- alice joined #dev$")
    await alice.seen(r"^== now talking in #dev$")
    await bob.send("/join dev")
    await alice.expect(r"^#dev -- bob joined #dev$")
    await bob.expect(r"^#dev -- bob joined #dev$")

    await alice.send("in dev")  # current room: #dev
    await bob.expect(r"^#dev <alice> in dev$")
    await alice.send("/join #lobby")  # already a member: switches
    await alice.expect(r"^== now talking in #lobby$")
    await alice.send("in lobby")
    await carol.expect(r"^#lobby <alice> in lobby$")
    assert not any("in dev" in line for line in carol.lines)  # carol is not in #dev

    await carol.send("/rooms")
    await carol.expect(r"^== 2 rooms: #lobby \(3\), #dev \(2\)$")  # largest first
    await carol.send("/who #dev")
    await carol.expect(r"^== 2 in #dev: alice, bob$")
    await carol.send("/who")
    await carol.expect(r"^== 3 online: alice, bob, carol$")

    await bob.send("/part #dev")
    await alice.expect(r"^#dev -- bob left #dev$")
    await bob.expect(r"^== left #dev; now talking in #lobby$")
    await carol.send("/rooms")
    await carol.expect(r"^== 2 rooms: #lobby \(3\), #dev \(1\)$")

    await carol.send("/join bad room!")
    await carol.expect(r"^!! invalid room: ")
    await carol.send("/part #nowhere")
    await carol.expect(r"^!! you are not in #nowhere$")


async def test_disconnect_announces_the_leave_once_in_every_room(cluster: Cluster) -> None:
    watcher = await ChatClient.join(cluster.port(0), "watcher")
    await watcher.send("/join #a")
    await watcher.expect(r"^== now talking in #a$")
    await watcher.send("/join #b")
    await watcher.expect(r"^== now talking in #b$")
    leaver = await ChatClient.join(cluster.port(1), "leaver")
    for room in ("#a", "#b"):
        await leaver.send(f"/join {room}")
        await leaver.expect(rf"^== now talking in {room}$")
    await leaver.aclose()
    for room in ("#lobby", "#a", "#b"):
        await watcher.seen(rf"^{room} -- leaver left the chat!")
    await watcher.send("/who")
    await watcher.seen(r"^== 1 online: watcher$")
    leaves = [m for m in watcher.lines if "leaver left" in m]
    assert sorted(leaves) == sorted(
        f"{room} -- leaver left the chat!" for room in ("#lobby", "#a", "#b")
    )
    assert cluster.oracle.hlen(f"{cluster.prefix}room:#a:members") == 1


async def test_private_message_reaches_only_its_target_on_another_gateway(cluster: Cluster) -> None:
    alice = await ChatClient.join(cluster.port(0), "alice")
    bob = await ChatClient.join(cluster.port(2), "Bob")
    eve = await ChatClient.join(cluster.port(1), "eve")
    await alice.send("/msg bob psst, secret")
    await bob.expect(r"^@Bob <alice> psst, secret$")
    await alice.expect(r"^@Bob <alice> psst, secret$")
    await alice.send("/msg nobody hello?")
    await alice.expect(r'^!! no such nickname "nobody"')
    await alice.send("/msg bob")
    await alice.expect(r"^!! usage: /msg NICK TEXT$")
    await eve.send("public marker")
    await alice.seen(r"^#lobby <eve> public marker$")
    await bob.seen(r"^#lobby <eve> public marker$")
    assert not any("secret" in line for line in eve.lines)


async def test_rename_is_atomic_and_announced_across_gateways(cluster: Cluster) -> None:
    alice = await ChatClient.join(cluster.port(0), "alice")
    bob = await ChatClient.join(cluster.port(1), "bob")
    await alice.send("/join #dev")
    await alice.expect(r"^== now talking in #dev$")
    await bob.send("/nick alice")
    await bob.expect(r'^!! nickname "alice" is taken')
    await alice.send("/nick Alicia")
    await alice.expect(r"^== you are now Alicia$")
    await bob.seen(r"^#lobby -- alice is now known as Alicia$")
    await alice.seen(r"^#dev -- alice is now known as Alicia$")
    nicks = cluster.oracle.hgetall(f"{cluster.prefix}nicks")
    f1, f2 = (gw.incarnation for gw in cluster.gateways[:2])
    alicia = fold_nick("Alicia")  # Redis keys a nickname by its skeleton
    assert nicks == {alicia.encode(): f"{f1} Alicia".encode(), b"bob": f"{f2} bob".encode()}
    assert cluster.oracle.hget(f"{cluster.prefix}room:#dev:members", alicia) == b"Alicia"
    assert cluster.oracle.smembers(f"{cluster.prefix}gw:{f1}:nicks") == {alicia.encode()}
    # The old name is free at once, from any gateway.
    await bob.send("/nick alice")
    await bob.expect(r"^== you are now alice$")
    await alice.send("/join #lobby")
    await alice.send("now in lobby")
    await bob.seen(r"^#lobby <Alicia> now in lobby$")
    # A case-only change keeps the identity.
    await bob.send("/nick ALICE")
    await bob.expect(r"^== you are now ALICE$")
    owner = f"{cluster.gateways[1].incarnation} ALICE".encode()
    assert cluster.oracle.hget(f"{cluster.prefix}nicks", fold_nick("alice")) == owner


async def test_action_line(cluster: Cluster) -> None:
    alice = await ChatClient.join(cluster.port(0), "alice")
    bob = await ChatClient.join(cluster.port(1), "bob")
    await alice.send("/me waves")
    await bob.expect(r"^#lobby \* alice waves$")
    await alice.expect(r"^#lobby \* alice waves$")


async def test_history_is_replayed_on_join_marked_and_bounded(cluster: Cluster) -> None:
    talker = await ChatClient.join(cluster.port(0), "talker")
    await talker.send("/join #hist")
    await talker.expect(r"^== now talking in #hist$")
    for i in range(8):
        await talker.send(f"old {i}")
    await talker.expect(r"^#hist <talker> old 7$")
    late = await ChatClient.join(cluster.port(2), "late")
    await late.send("/join #hist")
    await late.expect(r"^== last 5 messages in #hist:$")
    replay = [m for m in late.lines if "(history)" in m]
    await late.expect(r"^== end of history of #hist$")
    replay = [m for m in late.lines if "(history)" in m]
    assert replay == [f"#hist (history) <talker> old {i}" for i in range(3, 8)]
    await talker.send("live one")
    await late.expect(r"^#hist <talker> live one$")
    assert cluster.oracle.llen(f"{cluster.prefix}room:#hist:history") <= REPLAY_WINDOW


async def test_history_off_when_size_is_zero(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    prefix = f"nohist{next(_ids)}:"
    gw = gateway_procs(redis_server.url, "nh1", key_prefix=prefix, history_size=0)
    a = await ChatClient.join(gw.port, "a")
    await a.send("before")
    await a.expect(r"^#lobby <a> before$")
    b = await ChatClient.join(gw.port, "b")
    await b.send("marker")
    await b.expect(r"^#lobby <b> marker$")
    assert not any("history" in line for line in b.lines)


async def test_subscriptions_follow_local_members(cluster: Cluster) -> None:
    assert cluster.numsub("#quiet") == 0
    a = await ChatClient.join(cluster.port(0), "a")
    b = await ChatClient.join(cluster.port(0), "b")
    c = await ChatClient.join(cluster.port(1), "c")
    # #lobby: one subscription per gateway with members, never one per client.
    await poll(lambda: cluster.numsub("#lobby") == 2)
    await a.send("/join #quiet")
    await a.expect(r"^== now talking in #quiet$")
    assert cluster.numsub("#quiet") == 1
    await b.send("/join #quiet")
    await b.expect(r"^== now talking in #quiet$")
    assert cluster.numsub("#quiet") == 1  # same gateway: still one
    await c.send("/join #quiet")
    await c.expect(r"^== now talking in #quiet$")
    assert cluster.numsub("#quiet") == 2
    await a.send("/part #quiet")
    await a.expect(r"^== left #quiet")
    assert cluster.numsub("#quiet") == 2  # b is still there
    await b.aclose()
    await poll(lambda: cluster.numsub("#quiet") == 1)
    await c.send("/part")
    await c.expect(r"^== left #quiet")
    await poll(lambda: cluster.numsub("#quiet") == 0)
    # The third gateway has no members anywhere: it is subscribed to no room.
    channels = {ch.decode() for ch in cluster.oracle.pubsub_channels(f"{cluster.prefix}room:*")}
    assert channels == {f"{cluster.prefix}room:#lobby"}
    assert cluster.numsub("#lobby") == 2


async def test_every_publication_carries_gateway_room_and_sequence(cluster: Cluster) -> None:
    pubsub = cluster.oracle.pubsub()
    pubsub.subscribe(f"{cluster.prefix}room:#lobby")
    a = await ChatClient.join(cluster.port(0), "a")
    b = await ChatClient.join(cluster.port(1), "b")
    await a.send("one")
    await b.send("two")
    await a.send("three")
    await b.seen(r"^#lobby <a> three$")
    payloads: list[bytes] = []
    with trio.fail_after(10):
        while len(payloads) < 5:
            msg = pubsub.get_message(timeout=0.1)
            if msg and msg["type"] == "message":
                payloads.append(msg["data"])
            await trio.lowlevel.checkpoint()
    pubsub.close()
    seqs = []
    for payload in payloads:
        epoch, seq, room, body = payload.split(b" ", 3)
        assert room == b"#lobby"
        envelope = json.loads(body)
        assert envelope["g"] in {gw.incarnation for gw in cluster.gateways[:2]}
        assert re.fullmatch(rb"\d+", epoch)
        seqs.append(int(seq))
    assert seqs == list(range(seqs[0], seqs[0] + 5))  # gap-free and ordered
    kinds = [json.loads(p.split(b" ", 3)[3])["k"] for p in payloads]
    assert kinds == ["join", "join", "msg", "msg", "msg"]
