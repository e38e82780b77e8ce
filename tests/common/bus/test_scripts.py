"""Each Lua script against a real redis-server: its effects, checked with redis-py
(the independent oracle), and its atomicity where callers race."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest
import redis
import trio

from services.common.bus import (
    HISTORY_BYTES,
    HISTORY_KEEP,
    LOG_BYTES,
    REPLAY_WINDOW,
    ROOM_RETENTION_S,
    Bus,
    ClaimResult,
    Joined,
    RenameResult,
    RoomLimitReached,
    Script,
    decode_publication,
    encode_body,
    encode_publication,
)
from services.common.config import parse_redis_url
from services.common.keys import Keys, owner_record
from services.common.redis import RedisClient, RedisUnavailable
from tests.common.bus.conftest import MakeBus
from tests.support.redis_server import RedisServer

_markers = itertools.count()


class Channels:
    """redis-py subscribed to some channels.  :meth:`take` returns everything
    published on them since the last call, exactly (up to a marker it publishes)."""

    def __init__(self, rc: redis.Redis, *channels: str) -> None:
        self.rc = rc
        self.channels = channels
        self.pubsub = rc.pubsub()
        self.pubsub.subscribe(*channels)
        confirmed = 0
        while confirmed < len(channels):  # subscribed before anything is published
            message = self.pubsub.get_message(timeout=5)
            assert message is not None, "no subscribe confirmation"
            confirmed += message["type"] == "subscribe"

    def take(self) -> list[tuple[str, bytes]]:
        marker = f"marker {next(_markers)}".encode()
        self.rc.publish(self.channels[0], marker)
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.1)
            if message is None or message["type"] != "message":
                continue
            if message["data"] == marker:
                return got
            got.append((message["channel"].decode(), message["data"]))
        raise AssertionError("the marker never came back")

    def close(self) -> None:
        self.pubsub.close()


def body_of(payload: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(payload.split(b" ", 3)[3])
    return body


async def seat(bus: Bus, folded: str, nick: str, *rooms: str) -> None:
    """``nick`` online on ``bus``'s gateway and a member of ``rooms``."""
    assert await bus.claim_nick(folded, nick) == ClaimResult.CLAIMED
    for room in rooms:
        await bus.join_room(room, folded, nick)


# -- claim ------------------------------------------------------------------------------------
async def test_claim_new_then_already_ours_then_taken(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1, g2 = make_bus("g1~a"), make_bus("g2~b")
    assert await g1.claim_nick("alice", "Alice") is ClaimResult.CLAIMED
    assert await g1.claim_nick("alice", "Alice") is ClaimResult.ALREADY_OURS
    assert await g2.claim_nick("alice", "alice") is ClaimResult.TAKEN
    # The same gateway under another display form: not its record, so taken.
    assert await g1.claim_nick("alice", "ALICE") is ClaimResult.TAKEN
    assert rc.hgetall(keys.nicks) == {b"alice": b"g1~a Alice"}
    assert rc.smembers(keys.gateway_nicks("g1~a")) == {b"alice"}
    assert not rc.exists(keys.gateway_nicks("g2~b"))
    # IntEnum: callers comparing with the old integers still work.
    assert ClaimResult.CLAIMED == 2 and not ClaimResult.TAKEN


async def test_already_ours_puts_the_nick_back_in_the_gateways_set(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    """Re-assertion after a lapse: the record is ours but the set lost it."""
    rc.hset(keys.nicks, "bob", owner_record("g1~a", "Bob"))
    assert await make_bus("g1~a").claim_nick("bob", "Bob") is ClaimResult.ALREADY_OURS
    assert rc.smembers(keys.gateway_nicks("g1~a")) == {b"bob"}


async def test_fifty_concurrent_claims_of_one_nick_have_exactly_one_winner(
    redis_server: RedisServer, rc: redis.Redis, keys: Keys
) -> None:
    results: dict[str, ClaimResult] = {}
    nicks: dict[str, str] = {}
    clients = [RedisClient(parse_redis_url(redis_server.url), timeout_s=5.0) for _ in range(5)]
    async with trio.open_nursery() as nursery:
        for client in clients:
            await nursery.start(client.run)
            await client.wait_connected()
        start = trio.Event()

        async def claim(i: int) -> None:
            bus = Bus(clients[i % len(clients)], keys, f"g{i}~x")
            nicks[bus.gateway_id] = f"Zoe{i}"
            await start.wait()
            results[bus.gateway_id] = await bus.claim_nick("zoe", nicks[bus.gateway_id])

        async with trio.open_nursery() as claims:
            for i in range(50):
                claims.start_soon(claim, i)
            start.set()
        nursery.cancel_scope.cancel()
    winners = [g for g, r in results.items() if r is ClaimResult.CLAIMED]
    assert len(results) == 50 and len(winners) == 1
    assert all(r is ClaimResult.TAKEN for g, r in results.items() if g != winners[0])
    winner = winners[0]
    assert rc.hget(keys.nicks, "zoe") == owner_record(winner, nicks[winner]).encode()
    for gateway in results:
        owned = rc.smembers(keys.gateway_nicks(gateway))
        assert owned == ({b"zoe"} if gateway == winner else set())


# -- release ----------------------------------------------------------------------------------
async def test_release_announces_the_leave_in_every_room_and_expires_emptied_rooms(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1, g2 = make_bus("g1~a"), make_bus("g2~b")
    await seat(g1, "alice", "Alice", "#solo", "#shared")
    await seat(g2, "bob", "Bob", "#shared")
    await g1.publish("#solo", "msg", "Alice", "anyone?")
    channels = Channels(rc, keys.room_channel("#solo"), keys.room_channel("#shared"))
    try:
        assert await g1.release_nick("alice", "Alice", "bye now") is True
        published = channels.take()
    finally:
        channels.close()
    assert sorted(channel for channel, _ in published) == sorted(
        [keys.room_channel("#solo"), keys.room_channel("#shared")]
    )  # once in each room
    for channel, payload in published:
        room = channel.removeprefix(keys.room_channel(""))
        pub = decode_publication(payload)
        assert (pub.kind, pub.nick, pub.text, pub.gateway) == ("leave", "Alice", "bye now", "g1~a")
        assert rc.lrange(keys.room_log(room), -1, -1) == [payload]  # logged as published
        assert payload not in rc.lrange(keys.room_history(room), 0, -1)  # not chat
    assert not rc.hexists(keys.nicks, "alice")
    assert not rc.exists(keys.gateway_nicks("g1~a"), keys.nick_rooms("alice"))
    assert rc.hgetall(keys.room_members("#shared")) == {b"bob": b"Bob"}
    assert not rc.exists(keys.room_members("#solo"))
    assert rc.zrange(keys.rooms, 0, -1, withscores=True) == [(b"#shared", -1.0)]
    # The emptied room is kept a while, then expires; the other one stays.
    for key in (keys.room_seq("#solo"), keys.room_log("#solo"), keys.room_history("#solo")):
        assert 0 < rc.ttl(key) <= ROOM_RETENTION_S
    for key in (keys.room_seq("#shared"), keys.room_log("#shared")):
        assert rc.ttl(key) == -1


async def test_release_of_a_nick_that_is_no_longer_ours_only_forgets_it(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1, g2 = make_bus("g1~a"), make_bus("g2~b")
    await seat(g2, "alice", "Alice", "#r")
    rc.sadd(keys.gateway_nicks("g1~a"), "alice")  # a stale entry of ours
    assert await g1.release_nick("alice", "Alice") is False
    assert rc.hget(keys.nicks, "alice") == b"g2~b Alice"
    assert rc.hgetall(keys.room_members("#r")) == {b"alice": b"Alice"}
    assert not rc.exists(keys.gateway_nicks("g1~a"), keys.room_log("#r"))


# -- rename -----------------------------------------------------------------------------------
async def test_rename_moves_the_record_and_every_membership(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    await seat(g1, "alice", "Alice", "#a", "#b")
    await seat(g1, "carl", "Carl", "#a")
    assert await g1.rename_nick("alice", "Alice", "alicia", "Alicia") is RenameResult.RENAMED
    assert rc.hgetall(keys.nicks) == {b"alicia": b"g1~a Alicia", b"carl": b"g1~a Carl"}
    assert rc.smembers(keys.gateway_nicks("g1~a")) == {b"alicia", b"carl"}
    assert not rc.exists(keys.nick_rooms("alice"))
    assert rc.smembers(keys.nick_rooms("alicia")) == {b"#a", b"#b"}
    assert rc.hgetall(keys.room_members("#a")) == {b"alicia": b"Alicia", b"carl": b"Carl"}
    assert rc.hgetall(keys.room_members("#b")) == {b"alicia": b"Alicia"}


async def test_rename_changing_only_the_case_updates_the_display_nick(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    await seat(g1, "alice", "alice", "#a", "#b")
    assert await g1.rename_nick("alice", "alice", "alice", "ALICE") is RenameResult.RENAMED
    assert rc.hgetall(keys.nicks) == {b"alice": b"g1~a ALICE"}
    assert rc.smembers(keys.nick_rooms("alice")) == {b"#a", b"#b"}
    for room in ("#a", "#b"):
        assert rc.hgetall(keys.room_members(room)) == {b"alice": b"ALICE"}
    assert rc.smembers(keys.gateway_nicks("g1~a")) == {b"alice"}


async def test_rename_to_a_taken_nick_or_from_one_not_ours_changes_nothing(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1, g2 = make_bus("g1~a"), make_bus("g2~b")
    await seat(g1, "alice", "Alice", "#a")
    await seat(g2, "bob", "Bob", "#a")
    before = {key: rc.dump(key) for key in rc.keys(f"{keys.prefix}*")}
    assert await g1.rename_nick("alice", "Alice", "bob", "Bob") is RenameResult.TAKEN
    assert await g1.rename_nick("bob", "Bob", "bobby", "Bobby") is RenameResult.NOT_OURS
    # Ours, but under another display form than the one we think we have.
    assert await g1.rename_nick("alice", "ALICE", "al", "Al") is RenameResult.NOT_OURS
    assert await g1.rename_nick("nobody", "nobody", "x", "x") is RenameResult.NOT_OURS
    assert {key: rc.dump(key) for key in rc.keys(f"{keys.prefix}*")} == before
    assert RenameResult.NOT_OURS == -1 and RenameResult.RENAMED == 1


# -- join and leave ---------------------------------------------------------------------------
async def test_join_records_the_member_and_keeps_an_emptied_rooms_keys(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    rc.set(keys.room_seq("#r"), 7, ex=100)  # as left by the room's last leave
    for key in (keys.room_log("#r"), keys.room_history("#r")):
        rc.rpush(key, "x")
        rc.expire(key, 100)
    await g1.join_room("#r", "alice", "Alice")
    assert rc.hgetall(keys.room_members("#r")) == {b"alice": b"Alice"}
    assert rc.zrange(keys.rooms, 0, -1, withscores=True) == [(b"#r", -1.0)]
    assert rc.smembers(keys.nick_rooms("alice")) == {b"#r"}
    for key in (keys.room_seq("#r"), keys.room_log("#r"), keys.room_history("#r")):
        assert rc.ttl(key) == -1
    assert rc.get(keys.room_seq("#r")) == b"7"  # the numbering goes on


async def test_leave_removes_the_member_and_only_the_last_one_starts_the_expiry(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    await seat(g1, "alice", "Alice", "#r", "#other")
    await seat(g1, "bob", "Bob", "#r")
    await g1.publish("#r", "msg", "Alice", "hi")
    await g1.leave_room("#r", "alice")
    assert rc.hgetall(keys.room_members("#r")) == {b"bob": b"Bob"}
    assert rc.smembers(keys.nick_rooms("alice")) == {b"#other"}
    assert rc.ttl(keys.room_seq("#r")) == -1 and rc.zscore(keys.rooms, "#r") == -1.0
    await g1.leave_room("#r", "bob")
    assert not rc.exists(keys.room_members("#r"), keys.nick_rooms("bob"))
    assert rc.zrange(keys.rooms, 0, -1) == [b"#other"]
    for key in (keys.room_seq("#r"), keys.room_log("#r"), keys.room_history("#r")):
        assert 0 < rc.ttl(key) <= ROOM_RETENTION_S
    await g1.leave_room("#r", "bob")  # again: nothing to do, no error


# -- publish ----------------------------------------------------------------------------------
async def test_publish_numbers_logs_keeps_chat_history_and_publishes(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    channels = Channels(rc, keys.room_channel("#r"))
    try:
        seqs = [
            await g1.publish("#r", "msg", "Alice", "hello"),
            await g1.publish("#r", "enter", "Bob"),
            await g1.publish("#r", "act", "Bob", "waves"),
            await g1.publish("#other", "msg", "Carl", "elsewhere"),
        ]
        published = [payload for _, payload in channels.take()]
    finally:
        channels.close()
    assert seqs == [1, 2, 3, 1]  # per room
    epoch = rc.get(keys.epoch)
    assert epoch is not None and epoch.isdigit()
    log = rc.lrange(keys.room_log("#r"), 0, -1)
    assert published == log  # what subscribers got is what is logged
    for seq, payload in enumerate(log, 1):
        pub = decode_publication(payload)
        assert (pub.epoch, pub.seq, pub.gateway) == (epoch.decode(), seq, "g1~a")
        assert payload == encode_publication(epoch.decode(), seq, "#r", payload.split(b" ", 3)[3].decode())
    assert [decode_publication(p).kind for p in rc.lrange(keys.room_history("#r"), 0, -1)] == ["msg", "act"]
    assert [body_of(p)["i"] for p in log] == ["1", "2", "3"]  # ids, unique per bus
    assert rc.get(keys.room_seq("#r")) == b"3" and rc.get(keys.epoch) == epoch


def publish_keys(keys: Keys, room: str) -> list[str]:
    """The publish script's KEYS for ``room``."""
    return [keys.epoch, keys.room_seq(room), keys.room_log(room), keys.room_history(room),
            keys.room_members(room), keys.room_bytes(room)]


async def test_publish_trims_the_log_and_the_history(
    client: RedisClient, rc: redis.Redis, keys: Keys
) -> None:
    """The script directly, with short lengths: only the newest entries stay."""
    publish = Script("publish")
    for i in range(1, 8):
        body = encode_body("msg", "a", str(i), "g~1", at=0)
        args = [keys.room_channel("#t"), "#t", body, 5, 0, 3, LOG_BYTES, HISTORY_BYTES, 60]
        assert (await publish(client, publish_keys(keys, "#t"), args))[0] == i
    texts = [decode_publication(p).text for p in rc.lrange(keys.room_log("#t"), 0, -1)]
    assert texts == ["3", "4", "5", "6", "7"]
    texts = [decode_publication(p).text for p in rc.lrange(keys.room_history("#t"), 0, -1)]
    assert texts == ["5", "6", "7"]
    # The bus keeps REPLAY_WINDOW publications and HISTORY_KEEP chat lines.
    assert (REPLAY_WINDOW, HISTORY_KEEP) == (2000, 500)


async def test_a_publish_past_its_deadline_is_refused_and_changes_nothing(
    client: RedisClient, make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    room_keys = publish_keys(keys, "#d")
    past_ms = int(time.time() * 1000) - 10_000
    body = encode_body("msg", "a", "late", "g~1")
    caps = [LOG_BYTES, HISTORY_BYTES, 60]
    args = [keys.room_channel("#d"), "#d", body, REPLAY_WINDOW, past_ms, HISTORY_KEEP, *caps]
    publish = Script("publish")
    assert await publish(client, room_keys, args) == 0
    future_ms = int(time.time() * 1000) + 60_000
    assert (await publish(client, room_keys, [*args[:4], future_ms, HISTORY_KEEP, *caps]))[0] == 1
    # Through the bus: its deadline is now plus the client's timeout, on Redis's
    # clock; a clock offset an hour off puts it in the past.
    g1 = make_bus("g1~a")
    g1.clock_offset_s = -3600
    with pytest.raises(RedisUnavailable, match="after its deadline"):
        await g1.publish("#d", "msg", "Alice", "too late")
    assert rc.get(keys.room_seq("#d")) == b"1" and rc.llen(keys.room_log("#d")) == 1


# -- reap -------------------------------------------------------------------------------------
async def dead_gateway(rc: redis.Redis, keys: Keys, make_bus: MakeBus, gateway: str,
                       lease_ms: int | None = None) -> Bus:
    """``gateway`` registered with alice (#a, #b) and bob (#b); its lease alive for
    ``lease_ms`` when given, gone otherwise."""
    bus = make_bus(gateway)
    await seat(bus, "alice", "Alice", "#a", "#b")
    await seat(bus, "bob", "Bob", "#b")
    rc.zadd(keys.gateways, {gateway: 1})
    rc.hset(keys.gateway_info(gateway), "pid", 1)
    if lease_ms is not None:
        rc.set(keys.gateway_alive(gateway), "1", px=lease_ms)
    return bus


async def test_reap_releases_a_gateway_whose_lease_expired_once(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    await dead_gateway(rc, keys, make_bus, "dead~1")
    survivor = make_bus("live~2")
    await seat(survivor, "carl", "Carl", "#b")
    # A nick the dead gateway lists but that is someone else's by now stays theirs.
    rc.sadd(keys.gateway_nicks("dead~1"), "carl")
    channels = Channels(rc, keys.room_channel("#a"), keys.room_channel("#b"))
    try:
        released = await survivor.reap("dead~1")
        published = channels.take()
        assert await survivor.reap("dead~1") == []  # exactly once
        assert channels.take() == []
    finally:
        channels.close()
    assert sorted(released) == ["Alice", "Bob"]
    leaves = sorted((channel[-2:], body_of(p)["n"]) for channel, p in published)
    assert leaves == [("#a", "Alice"), ("#b", "Alice"), ("#b", "Bob")]
    for _, payload in published:
        pub = decode_publication(payload)  # the Lua-built envelope decodes
        assert (pub.kind, pub.text, pub.gateway) == ("leave", "gateway lost", "dead~1")
        assert pub.time == pytest.approx(time.time(), abs=60)
    assert rc.hgetall(keys.nicks) == {b"carl": b"live~2 Carl"}
    assert rc.hgetall(keys.room_members("#b")) == {b"carl": b"Carl"}
    assert rc.zrange(keys.rooms, 0, -1, withscores=True) == [(b"#b", -1.0)]
    assert 0 < rc.ttl(keys.room_seq("#a")) <= ROOM_RETENTION_S
    assert rc.ttl(keys.room_seq("#b")) == -1
    assert rc.zscore(keys.gateways, "dead~1") is None
    assert not rc.exists(
        keys.gateway_nicks("dead~1"), keys.gateway_info("dead~1"),
        keys.nick_rooms("alice"), keys.nick_rooms("bob"),
    )


async def test_a_gateway_whose_lease_is_alive_is_reaped_only_by_force(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    await dead_gateway(rc, keys, make_bus, "ghost~1", lease_ms=60_000)
    survivor = make_bus("live~2")
    before = {key: rc.dump(key) for key in rc.keys(f"{keys.prefix}*")}
    assert await survivor.reap("ghost~1") == []
    assert {key: rc.dump(key) for key in rc.keys(f"{keys.prefix}*")} == before
    assert sorted(await survivor.reap("ghost~1", force=True)) == ["Alice", "Bob"]
    assert not rc.exists(keys.gateway_alive("ghost~1"), keys.nicks)


async def test_two_gateways_racing_to_reap_release_each_user_once(
    redis_server: RedisServer, make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    dead = make_bus("dead~1")
    for i in range(40):
        await seat(dead, f"u{i}", f"U{i}", "#big", f"#r{i % 5}")
    rc.zadd(keys.gateways, {"dead~1": 1})
    clients = [RedisClient(parse_redis_url(redis_server.url), timeout_s=5.0) for _ in range(2)]
    results: list[list[str]] = []
    async with trio.open_nursery() as nursery:
        for client in clients:
            await nursery.start(client.run)
            await client.wait_connected()

        async def reap(client: RedisClient, me: str) -> None:
            results.append(await Bus(client, keys, me).reap("dead~1"))

        async with trio.open_nursery() as reapers:
            for n, client in enumerate(clients):
                for k in range(3):
                    reapers.start_soon(reap, client, f"live{n}{k}~x")
        nursery.cancel_scope.cancel()
    assert sorted(len(r) for r in results) == [0, 0, 0, 0, 0, 40]
    leaves = [body_of(p)["n"] for p in rc.lrange(keys.room_log("#big"), 0, -1)]
    assert sorted(leaves) == sorted(f"U{i}" for i in range(40))
    for r in range(5):
        assert rc.llen(keys.room_log(f"#r{r}")) == 8
    assert not rc.exists(keys.nicks)


# -- membership changes announced in the same step ---------------------------------------------
async def test_join_leave_and_rename_are_announced_by_the_script_that_makes_them(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    """No crash can separate a membership change from its announcement: the script
    that changes Redis publishes the line, once (repeating a join or a leave is
    silent, so a retry or an undo never announces twice)."""
    g1 = make_bus("g1~a")
    channels = Channels(rc, keys.room_channel("#a"), keys.room_channel("#b"))
    try:
        assert await g1.claim_nick("alice", "Alice") == ClaimResult.CLAIMED
        joined = await g1.join_room("#a", "alice", "Alice", announce="join")
        assert joined.seq >= 1 and joined.created
        again = await g1.join_room("#a", "alice", "Alice", announce="join")
        assert again == Joined(seq=0, created=False)  # already in: silent
        assert (await g1.join_room("#b", "alice", "Alice", announce="enter")).seq >= 1
        got = channels.take()
        assert [(ch, body_of(p)["k"], body_of(p)["n"]) for ch, p in got] == [
            (keys.room_channel("#a"), "join", "Alice"),
            (keys.room_channel("#b"), "enter", "Alice"),
        ]
        assert rc.lrange(keys.room_log("#a"), -1, -1) == [got[0][1]]

        assert await g1.rename_nick("alice", "Alice", "alicia", "Alicia") is RenameResult.RENAMED
        renames = channels.take()
        assert sorted(ch for ch, _ in renames) == sorted(
            [keys.room_channel("#a"), keys.room_channel("#b")]
        )
        assert {(body_of(p)["k"], body_of(p)["n"], body_of(p)["x"]) for _, p in renames} == {
            ("nick", "Alice", "Alicia")
        }

        assert await g1.leave_room("#b", "alicia", "Alicia", announce="part") is True
        assert await g1.leave_room("#b", "alicia", "Alicia", announce="part") is False
        parted = channels.take()
        assert [(ch, body_of(p)["k"]) for ch, p in parted] == [(keys.room_channel("#b"), "part")]
        assert rc.smembers(keys.nick_rooms("alicia")) == {b"#a"}
    finally:
        channels.close()


# -- room counts and bounded listings --------------------------------------------------
async def test_rooms_are_kept_sorted_by_member_count_by_every_membership_script(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    await seat(g1, "alice", "Alice", "#big", "#small")
    await seat(g1, "bob", "Bob", "#big", "#mid")
    await seat(g1, "carl", "Carl", "#big", "#mid")
    assert await g1.rooms(10) == (3, [("#big", 3), ("#mid", 2), ("#small", 1)])
    assert await g1.rooms(1) == (3, [("#big", 3)])
    await g1.leave_room("#big", "carl")
    await g1.release_nick("bob", "Bob")  # leaves #big and #mid
    assert rc.zrange(keys.rooms, 0, -1, withscores=True) == [
        (b"#big", -1.0), (b"#mid", -1.0), (b"#small", -1.0),
    ]
    assert await g1.rooms(10) == (3, [("#big", 1), ("#mid", 1), ("#small", 1)])


async def test_a_join_without_creation_rights_refuses_an_empty_room_and_changes_nothing(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    await seat(g1, "alice", "Alice", "#open")
    with pytest.raises(RoomLimitReached):
        await g1.join_room("#new", "bob", "Bob", announce="enter", may_create=False)
    assert not rc.exists(keys.room_members("#new"), keys.room_seq("#new"), keys.nick_rooms("bob"))
    assert rc.zscore(keys.rooms, "#new") is None
    joined = await g1.join_room("#open", "bob", "Bob", announce="enter", may_create=False)
    assert joined.seq >= 1 and not joined.created
    assert (await g1.join_room("#new", "bob", "Bob")).created


async def test_online_and_room_members_are_bounded_however_many_there_are(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    many = {f"u{i}": f"g1~a U{i}" for i in range(3000)}
    rc.hset(keys.nicks, mapping=many)
    rc.hset(keys.room_members("#big"), mapping={f"u{i}": f"U{i}" for i in range(3000)})
    total, names = await g1.online(50)
    assert total == 3000 and 1 <= len(names) <= 50
    assert names == sorted(names, key=str.lower) and set(names) <= {f"U{i}" for i in range(3000)}
    total, names = await g1.room_members("#big", 50)
    assert total == 3000 and 1 <= len(names) <= 50
    assert await g1.room_members("#none", 50) == (0, [])
