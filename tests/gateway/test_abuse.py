"""Command floods against a live gateway and real Redis (issue 10): every line
spends one budget, output to the flooder and to the members stays bounded, /who
and /rooms cost a bounded number of Redis commands and fit the asker's buffer."""

from __future__ import annotations

import re

import redis
import trio

from services.common.bus import LOG_BYTES, REPLAY_WINDOW, Script
from services.common.config import Settings, load_settings
from services.common.keys import Keys, owner_record
from services.gateway.commands import COMMAND_COSTS, LIST_BUFFER_FRACTION, LIST_LIMIT
from tests.conftest import StartGateway
from tests.support.chat_client import ChatClient
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

NOT_SENT = re.compile(r"^!! too many lines, slow down; (?:your line|(\d+) lines) (?:was|were) not sent$")


def refused(lines: list[str]) -> int:
    """How many refused lines the flood notices in ``lines`` report."""
    total = 0
    for line in lines:
        m = NOT_SENT.match(line)
        if m:
            total += int(m.group(1) or 1)
    return total


def total_calls(rc: redis.Redis) -> int:
    return sum(int(stat["calls"]) for stat in rc.info("commandstats").values())


async def settle(flooder: ChatClient, sent: int, accepted: int) -> None:
    """Wait until the notices account for every line that was not accepted."""
    with trio.fail_after(10):
        while refused(flooder.lines) < sent - accepted():  # type: ignore[operator]
            await flooder.expect(NOT_SENT.pattern)


async def test_a_nick_flood_gives_members_a_bounded_number_of_renames(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway()  # the default budget: 10 tokens, then 5 a second
    burst, rate = gw.settings.flood_burst, gw.settings.flood_rate
    member = await ChatClient.join(gw.ports[0], "member")
    flooder = await ChatClient.join(gw.ports[0], "flooder")
    started = trio.current_time()
    await flooder.send(b"".join(f"/nick f{i}\n".encode() for i in range(200)))

    def renamed() -> int:
        return sum(line.startswith("== you are now ") for line in flooder.lines)

    await settle(flooder, 200, renamed)
    elapsed = trio.current_time() - started
    # Every line was either run or reported refused, and the notices came at
    # most once a second (plus the first one at once).
    assert renamed() + refused(flooder.lines) == 200
    notices = sum(bool(NOT_SENT.match(line)) for line in flooder.lines)
    assert notices <= 2 + elapsed
    cost = COMMAND_COSTS["nick"]
    assert 1 <= renamed() <= (burst - 1 + rate * elapsed) / cost  # the nickname line cost 1
    # The member saw exactly those renames: a line published after them by
    # someone else arrives after them in the room's order.
    probe = await ChatClient.join(gw.ports[0], "probe")
    await probe.send("after the flood")
    await member.expect(r"^#lobby <probe> after the flood$")
    renames = [line for line in member.lines if " is now known as " in line]
    assert len(renames) == renamed()


async def test_join_part_churn_is_bounded_by_the_budget(start_gateway: StartGateway) -> None:
    gw = await start_gateway(history_size=50)
    flooder = await ChatClient.join(gw.ports[0], "churner")
    watcher = await ChatClient.join(gw.ports[0], "watcher")
    lines = b"".join(f"/join #c{i % 3}\n/part #c{i % 3}\n".encode() for i in range(100))
    started = trio.current_time()
    await flooder.send(lines)

    def answered() -> int:
        return sum(line.startswith(("== now talking", "== left ", "!! you are")) for line in
                   flooder.lines)

    await settle(flooder, 200, answered)
    elapsed = trio.current_time() - started
    assert answered() + refused(flooder.lines) == 200
    # Each accepted /join cost 3 and each /part 1: the budget bounds the work done.
    assert answered() <= gw.settings.flood_burst - 1 + gw.settings.flood_rate * elapsed
    await flooder.send("/quit")
    await watcher.expect(r"^#lobby -- churner left the chat!")
    assert len(watcher.lines) < 20  # the other member saw nothing of the churn


async def test_rooms_created_per_minute_are_limited_and_reported(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    gw = await start_gateway(flood_burst=100000, flood_rate=100000, rooms_per_minute=3)
    keys = Keys(key_prefix)
    creator = await ChatClient.join(gw.ports[0], "creator")
    host = await ChatClient.join(gw.ports[0], "host")
    await host.send("/join #existing")
    await host.expect(r"^== now talking in #existing$")
    await creator.send(b"".join(f"/join #new{i}\n/part #new{i}\n".encode() for i in range(20)))
    for _ in range(3):
        await creator.expect(r"^== now talking in #new\d+$")
    await creator.expect(r"^!! #new3 does not exist and you created 3 rooms in the last minute; "
                         r"wait, or /join a room that has members$")
    await creator.send("/join #existing")  # a room with members can still be joined
    await creator.expect(r"^== now talking in #existing$")
    created = {key for key in rc.scan_iter(f"{key_prefix}room:#new*:seq")}
    assert len(created) == 3
    assert rc.zscore(keys.rooms, "#new5") is None


async def test_who_with_thousands_online_is_one_bounded_reply(
    start_gateway: StartGateway, fresh_redis: RedisServer, key_prefix: str
) -> None:
    gw = await start_gateway(redis_url=fresh_redis.url)
    keys = Keys(key_prefix)
    rc = fresh_redis.client()
    # Users on another (live, for this test) gateway: exactly the records claim writes.
    rc.hset(keys.nicks, mapping={f"user{i}": owner_record("elsewhere~1", f"User{i}")
                                 for i in range(20000)})
    asker = await ChatClient.join(gw.ports[0], "asker")
    rc.config_resetstat()
    await asker.send("/who")
    reply = await asker.expect(r"^== 20001 online: ")
    stats = rc.info("commandstats")
    assert "cmdstat_hvals" not in stats
    assert stats["cmdstat_hscan"]["calls"] <= 4
    names = reply.removeprefix("== 20001 online: ").split(", ")
    assert len(names) <= LIST_LIMIT
    assert re.search(r" and \d+ more$", reply)
    assert len(reply) <= gw.settings.outbox_bytes // LIST_BUFFER_FRACTION
    rc.close()


async def test_rooms_with_15000_rooms_is_one_bounded_reply_in_two_commands(
    start_gateway: StartGateway, fresh_redis: RedisServer, key_prefix: str
) -> None:
    outbox = 16384
    gw = await start_gateway(redis_url=fresh_redis.url, outbox_bytes=outbox)
    keys = Keys(key_prefix)
    rc = fresh_redis.client()
    # 15,000 one-member rooms made by the real join script: the real schema.
    join = rc.register_script(Script("join_room").source)
    with rc.pipeline(transaction=False) as pipe:
        for i in range(15000):
            room = f"#r{i}"
            join(keys=[keys.room_seq(room), keys.room_history(room), keys.room_log(room),
                       keys.room_members(room), keys.rooms, keys.nick_rooms(f"m{i}"),
                       keys.epoch, keys.room_bytes(room)],
                 args=[room, f"m{i}", f"M{i}", keys.room_channel(room), "", REPLAY_WINDOW, 1,
                       LOG_BYTES],
                 client=pipe)
        pipe.execute()
    asker = await ChatClient.join(gw.ports[0], "asker")
    other = await ChatClient.join(gw.ports[0], "other")
    before = total_calls(rc)
    await asker.send("/rooms")
    reply = await asker.expect(r"^== 15001 rooms: ")
    # Heartbeats and the like run meanwhile; the listing itself is two commands
    # (ZCARD, ZRANGE), not one per room.
    assert total_calls(rc) - before < 100
    assert reply.startswith("== 15001 rooms: #lobby (2), #r0 (1), #r1 (1)")
    assert re.search(r" and \d+ more$", reply)
    assert len(reply) <= outbox // LIST_BUFFER_FRACTION
    await asker.send("still here")  # not disconnected for its output buffer
    await other.expect(r"^#lobby <asker> still here$")
    rc.close()


async def test_help_before_a_nickname_is_bounded_and_cut(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    limit = gw.settings.max_lines_before_nick
    # Connections that never read, each sending /help 300 times: each is cut
    # after `limit` lines, whatever it sent.
    swarm = [await ChatClient.connect(gw.ports[0]) for _ in range(50)]
    for client in swarm:
        try:
            await client.send(b"/help\n" * 300)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # already cut
    await wait_until(lambda: not gw.sessions, timeout=10)
    # One that reads: its whole output is bounded, and the last line says why.
    reader = await ChatClient.connect(gw.ports[0])
    await reader.send(b"/help\n" * (limit + 2))
    lines = await reader.read_until_closed()
    assert lines[-1] == f"!! disconnected: no nickname chosen in {limit} lines"
    helps = sum(line == "== commands:" for line in lines)
    assert 1 <= helps <= gw.settings.flood_burst / COMMAND_COSTS["help"]
    assert refused(lines) == limit - helps
    assert len("\n".join(lines)) < 8192


def test_nickname_timeout_is_on_by_default() -> None:
    assert Settings().nick_timeout_s == 30.0
    assert load_settings([], {}).nick_timeout_s == 30.0
    assert Settings().idle_timeout_s == float("inf")  # quiet people are not cut
