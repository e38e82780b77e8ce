"""What the chat costs in Redis, measured: ``python -m bench.redis_memory``.

Starts its own ``redis-server`` (no persistence) on a free port, writes through
the gateway's own :class:`~services.common.bus.Bus` (the same scripts), and reads
``INFO memory`` (``used_memory``) before and after each step, or ``MEMORY USAGE``
of single keys.  Prints one Markdown table; docs/OPERATIONS.md quotes it.

Steps: N users online, each in the default room (claim + join, announced); each
of them in one more room (a membership); M rooms used once and emptied (join,
a line, part: what an empty room keeps until CHAT_ROOM_TTL_S); one room whose
log and history are full of the longest lines that escape worst in JSON (a
4096-byte line of ``"``), and one full of 100-byte lines.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import redis
import trio

from services.cluster.redis_server import find_redis_server, redis_server_command
from services.common.bus import HISTORY_KEEP, REPLAY_WINDOW, Bus
from services.common.config import Settings, parse_redis_url
from services.common.keys import Keys
from services.common.probes import free_port, redis_ping
from services.common.redis import RedisClient

GATEWAY = "gw1~0123abcd"  # an incarnation id as long as a typical one


def used(rc: redis.Redis) -> int:
    return int(rc.info("memory")["used_memory"])


async def measure(url: str, rc: redis.Redis, users: int, rooms: int, log_bytes: int,
                  history_bytes: int) -> list[tuple[str, str]]:
    settings = Settings(room_log_bytes=log_bytes, room_history_bytes=history_bytes)
    client = RedisClient(parse_redis_url(url), timeout_s=30.0)
    rows: list[tuple[str, str]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        bus = Bus(client, Keys(settings.key_prefix), GATEWAY, room_ttl_s=settings.room_ttl_s,
                  log_bytes=settings.room_log_bytes, history_bytes=settings.room_history_bytes)
        keys = bus.keys

        async def each(n: int, step: object) -> None:
            limiter = trio.CapacityLimiter(64)

            async def one(i: int) -> None:
                async with limiter:
                    await step(i)  # type: ignore[operator]

            async with trio.open_nursery() as inner:
                for i in range(n):
                    inner.start_soon(one, i)

        # Warm up: the default room exists, its log holds a few entries.
        await bus.claim_nick("warmup", "warmup")
        await bus.join_room("#lobby", "warmup", "warmup", announce="join")
        before = used(rc)

        async def user(i: int) -> None:
            nick = f"user{i:06d}"  # 10 characters; nicknames may have up to 32
            await bus.claim_nick(nick, nick)
            await bus.join_room("#lobby", nick, nick, announce="join")

        await each(users, user)
        lobby_log = rc.memory_usage(keys.room_log("#lobby")) or 0
        per_user = (used(rc) - before - lobby_log) / users
        rows.append(("a user online, in the default room (nicks, gateway set, nick's rooms,"
                     " room members)", f"{per_user:.0f} B"))
        before = used(rc)

        async def membership(i: int) -> None:
            nick = f"user{i:06d}"
            await bus.join_room(f"#room{i % 100:03d}", nick, nick)  # not announced

        await each(users, membership)
        per_membership = (used(rc) - before) / users
        rows.append(("one more room membership of a user", f"{per_membership:.0f} B"))
        rows.append(("the room log entry a join or leave announcement adds",
                     f"{lobby_log / min(users + 1, REPLAY_WINDOW):.0f} B"))

        before = used(rc)

        async def used_once(i: int) -> None:
            room, nick = f"#once{i:06d}", f"user{i % users:06d}"
            await bus.join_room(room, nick, nick, announce="join")
            await bus.publish(room, "msg", nick, "x" * 60)
            await bus.leave_room(room, nick, nick, announce="part")

        await each(rooms, used_once)
        per_empty = (used(rc) - before) / rooms
        rows.append(("a room used once and left (join, one 60-byte line, part), kept"
                     f" {settings.room_ttl_s:g} s", f"{per_empty:.0f} B"))

        async def fill(room: str, text: str) -> int:
            await bus.join_room(room, "warmup", "warmup")
            for _ in range(REPLAY_WINDOW):
                await bus.publish(room, "msg", "w" * 32, text)
            return sum(rc.memory_usage(k) or 0 for k in (
                keys.room_seq(room), keys.room_log(room), keys.room_history(room),
                keys.room_bytes(room), keys.room_members(room)))

        worst = await fill("#worst", '"' * settings.max_line_bytes)
        log_n, hist_n = rc.llen(keys.room_log("#worst")), rc.llen(keys.room_history("#worst"))
        rows.append((f"a room full of {settings.max_line_bytes}-byte lines of `\"` (log"
                     f" {log_n} entries, history {hist_n})", f"{worst / 2**20:.2f} MiB"))
        typical = await fill("#typical", "t" * 100)
        log_n, hist_n = rc.llen(keys.room_log("#typical")), rc.llen(keys.room_history("#typical"))
        rows.append((f"a room full of 100-byte lines (log {log_n} entries, history {hist_n})",
                     f"{typical / 2**20:.2f} MiB"))
        assert hist_n <= HISTORY_KEEP
        nursery.cancel_scope.cancel()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_memory", description=__doc__)
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--rooms", type=int, default=5000)
    parser.add_argument("--log-bytes", type=int, default=Settings().room_log_bytes,
                        help="CHAT_ROOM_LOG_BYTES to measure with")
    parser.add_argument("--history-bytes", type=int, default=Settings().room_history_bytes,
                        help="CHAT_ROOM_HISTORY_BYTES to measure with")
    args = parser.parse_args(argv)
    binary = find_redis_server()
    if binary is None:
        print("redis-server is not installed", file=sys.stderr)
        return 1
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chat-redis-mem-") as workdir:
        proc = subprocess.Popen(redis_server_command(binary, port, workdir=workdir,
                                                     loglevel="warning"),
                                stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not redis_ping(port):
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer")
                time.sleep(0.05)
            rc = redis.Redis(port=port)
            version = rc.info("server")["redis_version"]
            rows = trio.run(measure, f"redis://127.0.0.1:{port}/0", rc, args.users, args.rooms,
                            args.log_bytes, args.history_bytes)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"Redis {version}, {args.users} users, {args.rooms} rooms used once, room caps"
          f" {args.log_bytes} + {args.history_bytes} bytes"
          " (used_memory deltas; MEMORY USAGE for the full rooms)\n")
    print("| what | Redis memory |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
