"""Redis memory bounded by design, against a real redis-server: an empty room's
keys expire after the configured retention whichever path emptied it (part, quit,
reap), a room with members has no expiry (a rename never empties one), and a
room's log and history hold at most their byte caps as well as their entry caps."""

from __future__ import annotations

import time

import redis
import trio

from services.common.bus import (
    HISTORY_KEEP,
    REPLAY_WINDOW,
    Bus,
    ClaimResult,
    PublishUncertain,
    Resolution,
    decode_publication,
)
from services.common.keys import Keys
from services.common.redis import RedisClient
from tests.support.waiting import wait_until_sync

TTL_S = 120  # a retention no test waits for, distinct from the default


def room_keys(keys: Keys, room: str) -> list[str]:
    """Every key of a room that outlives its members."""
    return [keys.room_seq(room), keys.room_log(room), keys.room_history(room),
            keys.room_bytes(room)]


def assert_expiring(rc: redis.Redis, keys: Keys, room: str, ttl_s: int = TTL_S) -> None:
    assert not rc.exists(keys.room_members(room))
    assert rc.zscore(keys.rooms, room) is None
    for key in room_keys(keys, room):
        assert rc.exists(key), key
        assert 0 < rc.ttl(key) <= ttl_s, (key, rc.ttl(key))


def assert_kept(rc: redis.Redis, keys: Keys, room: str) -> None:
    assert rc.hlen(keys.room_members(room)) > 0
    for key in room_keys(keys, room):
        assert rc.ttl(key) == -1, (key, rc.ttl(key))  # exists, no expiry


def bus_of(client: RedisClient, keys: Keys, gateway: str, **caps: int) -> Bus:
    return Bus(client, keys, gateway, room_ttl_s=TTL_S, **caps)


async def seat(bus: Bus, folded: str, nick: str, *rooms: str) -> None:
    assert await bus.claim_nick(folded, nick) == ClaimResult.CLAIMED
    for room in rooms:
        await bus.join_room(room, folded, nick, announce="join")
        await bus.publish(room, "msg", nick, "hello")  # history and sizes exist too


async def test_every_path_that_empties_a_room_starts_its_expiry(
    client: RedisClient, rc: redis.Redis, keys: Keys
) -> None:
    g1, g2 = bus_of(client, keys, "g1~a"), bus_of(client, keys, "g2~b")
    await seat(g1, "alice", "Alice", "#parted", "#quit", "#shared")
    await seat(g2, "bob", "Bob", "#shared", "#reaped")
    await seat(g2, "carl", "Carl", "#shared")
    for room in ("#parted", "#quit", "#shared", "#reaped"):
        assert_kept(rc, keys, room)
    # /part
    await g1.leave_room("#parted", "alice", "Alice", announce="part")
    assert_expiring(rc, keys, "#parted")
    # /quit (or any disconnect): the nickname's release leaves every room
    assert await g1.release_nick("alice", "Alice", "bye")
    assert_expiring(rc, keys, "#quit")
    assert_kept(rc, keys, "#shared")  # bob and carl are still there
    # the death of a gateway: a survivor reaps it
    rc.zadd(keys.gateways, {"g2~b": 1})
    assert sorted(await g1.reap("g2~b")) == ["Bob", "Carl"]
    assert_expiring(rc, keys, "#reaped")
    assert_expiring(rc, keys, "#shared")
    # Joining again keeps everything (the numbering goes on) and lifts the expiry.
    seq = int(rc.get(keys.room_seq("#shared")) or 0)
    await seat(g1, "dora", "Dora", "#shared")
    assert_kept(rc, keys, "#shared")
    assert int(rc.get(keys.room_seq("#shared")) or 0) == seq + 2  # her join and her line


async def test_a_rename_keeps_its_rooms_without_expiry(
    client: RedisClient, rc: redis.Redis, keys: Keys
) -> None:
    g1 = bus_of(client, keys, "g1~a")
    await seat(g1, "alice", "Alice", "#solo")
    await g1.rename_nick("alice", "Alice", "alicia", "Alicia")
    await g1.rename_nick("alicia", "Alicia", "alicia", "ALICIA")
    assert rc.hgetall(keys.room_members("#solo")) == {b"alicia": b"ALICIA"}
    assert_kept(rc, keys, "#solo")


async def test_a_publication_in_a_room_without_members_leaves_expiring_keys(
    client: RedisClient, rc: redis.Redis, keys: Keys
) -> None:
    """A sender removed meanwhile (its gateway was reaped) still publishes: the keys
    it creates must not live for ever."""
    g1 = bus_of(client, keys, "g1~a")
    await g1.publish("#ghost", "msg", "Alice", "anyone?")
    assert_expiring(rc, keys, "#ghost")
    await g1.publish("#ghost", "msg", "Alice", "again")  # the expiry stays
    assert_expiring(rc, keys, "#ghost")


async def test_an_emptied_room_is_gone_after_its_retention(
    client: RedisClient, rc: redis.Redis, keys: Keys
) -> None:
    g1 = Bus(client, keys, "g1~a", room_ttl_s=0.2)  # rounded up to EXPIRE's 1 s
    await seat(g1, "alice", "Alice", "#brief")
    await g1.leave_room("#brief", "alice", "Alice", announce="part")
    assert_expiring(rc, keys, "#brief", ttl_s=1)
    await wait_until_sync(lambda: not rc.exists(*room_keys(keys, "#brief")), timeout=10)


async def test_log_and_history_are_capped_in_bytes_as_well_as_entries(
    client: RedisClient, rc: redis.Redis, keys: Keys
) -> None:
    g1 = bus_of(client, keys, "g1~a", log_bytes=20_000, history_bytes=8_000)
    await seat(g1, "alice", "Alice", "#big")
    for i in range(60):
        await g1.publish("#big", "msg", "Alice", f"{i:03d} " + "x" * 1000)
    log = rc.lrange(keys.room_log("#big"), 0, -1)
    history = rc.lrange(keys.room_history("#big"), 0, -1)
    # The newest entries stay, as many as fit (entries of ~1.1 KB each).
    assert 15 <= len(log) <= 20 and 5 <= len(history) <= 8
    assert sum(map(len, log)) <= 20_000 and sum(map(len, history)) <= 8_000
    assert decode_publication(log[-1]).text.startswith("059 ")
    assert [decode_publication(e).text[:3] for e in history] == [
        f"{i:03d}" for i in range(60 - len(history), 60)
    ]
    # The recorded totals are exact.
    sizes = rc.hgetall(keys.room_bytes("#big"))
    assert sizes.pop(b"numbering")  # the epoch the room's numbering belongs to
    assert sizes == {b"log": str(sum(map(len, log))).encode(),
                     b"history": str(sum(map(len, history))).encode()}


async def test_the_entry_caps_still_hold_and_a_huge_entry_stays_alone(
    client: RedisClient, rc: redis.Redis, keys: Keys
) -> None:
    g1 = bus_of(client, keys, "g1~a", log_bytes=10**9, history_bytes=1_000)
    await seat(g1, "alice", "Alice", "#r")
    for i in range(HISTORY_KEEP + 10):
        await g1.publish("#r", "msg", "Alice", str(i))
    assert rc.llen(keys.room_log("#r")) == HISTORY_KEEP + 10 + 2  # join + hello too
    assert rc.llen(keys.room_history("#r")) < HISTORY_KEEP  # 1,000 bytes hold fewer
    await g1.publish("#r", "msg", "Alice", "y" * 2_000)  # larger than the cap itself
    history = rc.lrange(keys.room_history("#r"), 0, -1)
    assert len(history) == 1 and decode_publication(history[0]).text == "y" * 2_000
    assert REPLAY_WINDOW == 2000  # the log's entry cap


async def test_a_list_without_a_recorded_size_is_counted_once(
    client: RedisClient, rc: redis.Redis, keys: Keys
) -> None:
    """A log written before sizes were recorded (an upgrade) is measured on the
    next publication, then capped like any other."""
    g1 = bus_of(client, keys, "g1~a", log_bytes=5_000)
    rc.rpush(keys.room_log("#old"), *[f"1 {i} #old " + "z" * 500 for i in range(1, 40)])
    rc.set(keys.room_seq("#old"), 39)
    await g1.publish("#old", "msg", "Alice", "new")
    log = rc.lrange(keys.room_log("#old"), 0, -1)
    assert sum(map(len, log)) <= 5_000 and decode_publication(log[-1]).text == "new"
    assert int(rc.hget(keys.room_bytes("#old"), "log") or 0) == sum(map(len, log))


async def test_resolve_knows_a_log_trimmed_by_bytes_may_have_lost_the_line(
    client: RedisClient, keys: Keys
) -> None:
    g1 = bus_of(client, keys, "g1~a", log_bytes=3_000)
    submitted = time.time() - 5
    lost = PublishUncertain("lost", "#t", "no-such-id", int(submitted * 1000), submitted)
    for _ in range(10):  # far fewer than REPLAY_WINDOW entries, but over 3,000 bytes
        await g1.publish("#t", "msg", "Alice", "w" * 500)
    with trio.fail_after(5):
        assert await g1.resolve(lost) == (Resolution.UNKNOWN, 0)
    # An untrimmed log that does not hold the line: certainly not published.
    untrimmed = bus_of(client, keys, "g2~b")
    await untrimmed.publish("#u", "msg", "Bob", "short")
    lost_u = PublishUncertain("lost", "#u", "no-such-id", int(submitted * 1000), submitted)
    assert await untrimmed.resolve(lost_u) == (Resolution.NOT_PUBLISHED, 0)
