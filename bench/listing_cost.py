"""What one ``/rooms`` and one ``/who`` cost against a crowded Redis:
``python -m bench.listing_cost [--rooms 15000] [--users 20000]``.

Starts its own redis-server (on a free 127.0.0.1 port) and one in-process
gateway, fills Redis with rooms (through the real ``join_room`` script) and
online users (the records ``claim`` writes), then asks once each and prints the
Redis commands the question ran (``INFO commandstats``), the reply's size and
the time to the reply.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time

import redis
import trio

from services.common.bus import REPLAY_WINDOW, Script
from services.common.config import HostPort, Settings, parse_redis_url
from services.common.keys import Keys, owner_record
from services.common.logging import configure_logging
from services.gateway.gateway import Gateway


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill(rc: redis.Redis, keys: Keys, rooms: int, users: int) -> None:
    join = rc.register_script(Script("join_room").source)
    with rc.pipeline(transaction=False) as pipe:
        for i in range(rooms):
            room = f"#r{i}"
            join(keys=[keys.room_seq(room), keys.room_history(room), keys.room_log(room),
                       keys.room_members(room), keys.rooms, keys.nick_rooms(f"m{i}"),
                       keys.epoch],
                 args=[room, f"m{i}", f"M{i}", keys.room_channel(room), "", REPLAY_WINDOW, 1],
                 client=pipe)
        pipe.execute()
    if users:
        rc.hset(keys.nicks, mapping={f"u{i}": owner_record("elsewhere~1", f"U{i}")
                                     for i in range(users)})


async def _ask(port: int, rc: redis.Redis, command: str) -> tuple[int, int, float]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = b""
    await stream.send_all(b"asker\n")
    while b"joined the chat!" not in buffer:
        buffer += await stream.receive_some(65536)
    before = sum(int(s["calls"]) for s in rc.info("commandstats").values())
    started = time.perf_counter()
    await stream.send_all(command.encode() + b"\n")
    buffer = b""
    while b"\n" not in buffer:
        buffer += await stream.receive_some(65536)
    elapsed = time.perf_counter() - started
    after = sum(int(s["calls"]) for s in rc.info("commandstats").values())
    await stream.aclose()
    return after - before - 1, len(buffer.split(b"\n", 1)[0]), elapsed  # -1: our INFO


async def _main(port: int, rooms: int, users: int) -> None:
    configure_logging(fmt="json", level="warning")
    rc = redis.Redis(port=port)
    while True:
        try:
            rc.ping()
            break
        except redis.ConnectionError:
            await trio.sleep(0.05)
    keys = Keys("bench:")
    _fill(rc, keys, rooms, users)
    settings = Settings(listen=HostPort("127.0.0.1", 0), key_prefix="bench:",
                        redis_url=parse_redis_url(f"redis://127.0.0.1:{port}/0"),
                        log_format="json")
    gateway = Gateway(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        while not gateway.available:
            await trio.sleep(0.05)
        for command in ("/rooms", "/who"):
            calls, size, elapsed = await _ask(gateway.ports[0], rc, command)
            print(f"{command}: {calls} Redis commands (heartbeats included), "
                  f"reply {size} bytes, {elapsed * 1000:.1f} ms "
                  f"({rooms} rooms, {users} users)")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=15000)
    parser.add_argument("--users", type=int, default=20000)
    args = parser.parse_args()
    port = _free_port()
    binary = shutil.which("redis-server") or "redis-server"
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([binary, "--port", str(port), "--save", "", "--dir", tmp],
                                  stdout=subprocess.DEVNULL)
        try:
            trio.run(_main, port, args.rooms, args.users)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
