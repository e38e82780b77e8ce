"""The bus's scripts against a real redis-server: publications with ids and the
exact outcome of an uncertain publish, the forced reap of a dead predecessor."""

from __future__ import annotations

import json
import signal
import time

import pytest
import redis
import trio

from services.common.bus import REPLAY_WINDOW, Bus, PublishUncertain, Resolution
from services.common.config import parse_redis_url
from services.common.keys import Keys, incarnation_id, incarnation_name, owner_record
from services.common.redis import RedisClient
from tests.support.redis_server import RedisServer


async def _bus(server: RedisServer, prefix: str, gateway: str, *, timeout_s: float = 2.0
               ) -> tuple[Bus, RedisClient]:
    client = RedisClient(parse_redis_url(server.url), timeout_s=timeout_s)
    return Bus(client, Keys(prefix), gateway), client


async def test_every_publication_carries_an_id_found_by_resolve(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str
) -> None:
    bus, client = await _bus(redis_server, key_prefix, "g~1")
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        seq = await bus.publish("#r", "msg", "alice", "hello")
        entry = rc.lrange(f"{key_prefix}room:#r:log", -1, -1)[0]
        pub_id = json.loads(entry.split(b" ", 3)[3])["i"]
        now = time.time()
        published = PublishUncertain("lost", "#r", pub_id, int(now * 1000) - 1, now - 1)
        assert await bus.resolve(published) == (Resolution.PUBLISHED, seq)
        never = PublishUncertain("lost", "#r", "no-such-id", int(now * 1000) - 1, now - 1)
        assert await bus.resolve(never) == (Resolution.NOT_PUBLISHED, 0)
        # Before its deadline a publish may still run: no answer yet.
        early = PublishUncertain("lost", "#r", "no-such-id", int(now * 1000) + 60_000, now)
        assert (await bus.resolve(early))[0] is Resolution.PENDING
        nursery.cancel_scope.cancel()


async def test_a_publish_to_a_stopped_redis_is_uncertain_then_resolved_not_published(
    fresh_redis: RedisServer, key_prefix: str
) -> None:
    """A real stall (Redis SIGSTOPped): the publish gets no answer in time, so its
    outcome is unknown; once Redis runs again, the script refuses it (past its
    deadline) and resolve says so."""
    bus, client = await _bus(fresh_redis, key_prefix, "g~2", timeout_s=0.3)
    assert fresh_redis.proc is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        fresh_redis.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(PublishUncertain) as caught:
                await bus.publish("#r", "msg", "alice", "stuck")
        finally:
            fresh_redis.proc.send_signal(signal.SIGCONT)
        with trio.fail_after(10):
            while (outcome := await bus.resolve(caught.value))[0] is Resolution.PENDING:
                await trio.sleep(0.05)
        assert outcome == (Resolution.NOT_PUBLISHED, 0)
        assert fresh_redis.client().llen(f"{key_prefix}room:#r:log") == 0
        nursery.cancel_scope.cancel()


async def test_resolve_says_unknown_when_the_log_no_longer_reaches_back(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str
) -> None:
    bus, client = await _bus(redis_server, key_prefix, "g~3")
    body = json.dumps({"k": "msg", "n": "x", "x": "y", "g": "g~9", "t": time.time(), "i": "9"})
    rc.rpush(f"{key_prefix}room:#full:log", *[f"1 {i} #full {body}" for i in range(REPLAY_WINDOW)])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        old = time.time() - 60
        lost = PublishUncertain("lost", "#full", "1", int(old * 1000), old)
        assert await bus.resolve(lost) == (Resolution.UNKNOWN, 0)
        nursery.cancel_scope.cancel()


async def test_predecessors_are_earlier_processes_of_the_same_name_nobody_listens_for(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str
) -> None:
    me = incarnation_id("gw", "self")
    dead, live, other = incarnation_id("gw", "dead"), incarnation_id("gw", "live"), "other~x"
    assert incarnation_name(me) == "gw" and incarnation_name("bare") == "bare"
    rc.zadd(f"{key_prefix}gateways", {me: 1, dead: 1, live: 1, other: 1, "gw": 1})
    listener = rc.pubsub()
    listener.subscribe(f"{key_prefix}node:{live}")
    bus, client = await _bus(redis_server, key_prefix, me)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        # A bare name is a process of 0.1 (before incarnations): a predecessor too.
        assert sorted(await bus.predecessors("gw")) == sorted([dead, "gw"])
        nursery.cancel_scope.cancel()
    listener.close()


async def test_forced_reap_releases_a_predecessor_whose_lease_is_still_alive(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str
) -> None:
    p = key_prefix
    dead = incarnation_id("gw", "dead")
    rc.zadd(f"{p}gateways", {dead: 1})
    rc.set(f"{p}gw:{dead}:alive", "1", px=60_000)
    rc.hset(f"{p}nicks", "alice", owner_record(dead, "Alice"))
    rc.sadd(f"{p}gw:{dead}:nicks", "alice")
    rc.sadd(f"{p}nick:alice:rooms", "#lobby", "#dev")
    for room in ("#lobby", "#dev"):
        rc.hset(f"{p}room:{room}:members", "alice", "Alice")
    bus, client = await _bus(redis_server, p, incarnation_id("gw", "new"))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        assert await bus.reap(dead) == []  # its lease is alive: not without force
        assert await bus.reap(dead, force=True) == ["Alice"]
        assert await bus.reap(dead, force=True) == []  # exactly once
        nursery.cancel_scope.cancel()
    assert not rc.hexists(f"{p}nicks", "alice")
    assert not rc.exists(f"{p}nick:alice:rooms", f"{p}gw:{dead}:nicks", f"{p}gw:{dead}:alive")
    assert rc.zscore(f"{p}gateways", dead) is None
    for room in ("#lobby", "#dev"):
        assert not rc.hexists(f"{p}room:{room}:members", "alice")
        last = json.loads(rc.lrange(f"{p}room:{room}:log", -1, -1)[0].split(b" ", 3)[3])
        assert (last["k"], last["n"], last["x"]) == ("leave", "Alice", "gateway lost")


async def test_resolve_matches_the_id_and_the_origin_gateway(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str
) -> None:
    """Ids count per gateway process: another gateway's line with the same id is not
    ours (that mix-up once made a lost line look published)."""
    mine, other = await _bus(redis_server, key_prefix, "a~1"), await _bus(redis_server, key_prefix, "b~2")
    async with trio.open_nursery() as nursery:
        for _, client in (mine, other):
            await nursery.start(client.run)
            await client.wait_connected()
        await other[0].publish("#r", "msg", "bob", "id 1 of b~2")
        now = time.time()
        lost = PublishUncertain("lost", "#r", "1", int(now * 1000) - 1, now - 1)
        assert await mine[0].resolve(lost) == (Resolution.NOT_PUBLISHED, 0)
        assert (await other[0].resolve(lost))[0] is Resolution.PUBLISHED
        nursery.cancel_scope.cancel()


async def test_address_counts_sum_over_gateways_and_a_dead_ones_share_is_dropped_alone(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str
) -> None:
    p = key_prefix
    alive, dead = incarnation_id("gw", "alive"), incarnation_id("gw", "dead")
    rc.set(f"{p}gw:{dead}:alive", "1", px=60_000)
    inf = float("inf")
    bus_a, client_a = await _bus(redis_server, p, alive)
    bus_d, client_d = await _bus(redis_server, p, dead)
    async with trio.open_nursery() as nursery:
        for client in (client_a, client_d):
            await nursery.start(client.run)
            await client.wait_connected()
        assert await bus_a.admit_address("10.0.0.9", 3, inf, 1) == (True, "", 1)
        assert await bus_d.admit_address("10.0.0.9", 3, inf, 1) == (True, "", 2)
        assert await bus_d.admit_address("10.0.0.9", 3, inf, 1) == (True, "", 3)
        assert await bus_a.admit_address("10.0.0.9", 3, inf, 1) == (False, "connections", 3)
        assert await bus_d.admit_address("2001:db8::1", 3, inf, 1) == (True, "", 1)
        assert not rc.exists(f"{p}addr:10.0.0.9:rate")  # no rate limit: no bucket
        # Its lease is alive: the reaper leaves its counts alone unless forced.
        assert await bus_a.release_addresses(dead) == 0
        rc.delete(f"{p}gw:{dead}:alive")
        assert await bus_a.release_addresses(dead) == 2
        assert await bus_a.release_addresses(dead) == 0  # nothing left: harmless again
        # The owner's own sync sets an absolute count; 0 removes its entry.
        assert await bus_a.set_address_count("10.0.0.9", 2)
        assert await bus_a.release_address("10.0.0.9") == 1
        assert await bus_a.release_address("10.0.0.9") == 0
        nursery.cancel_scope.cancel()
    assert not rc.exists(f"{p}addr:10.0.0.9:conns", f"{p}addr:2001:db8::1:conns")
    assert not rc.exists(f"{p}gw:{alive}:addrs", f"{p}gw:{dead}:addrs")
