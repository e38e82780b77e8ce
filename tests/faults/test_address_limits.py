"""Per-address limits against gateway processes: an idle-socket flood from one
address with the production defaults, and a SIGKILLed gateway whose per-address
counts are released by the reaper."""

from __future__ import annotations

import re
from collections.abc import Callable

import redis
import trio

from services.gateway.server import raise_open_files_limit
from tests.conftest import wait_until
from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

DEFAULT_LIMITS = {"max_connections_per_ip": 10, "connect_rate_per_ip": 2,
                  "connect_burst_per_ip": 10}
FLOOD = 2000


def held(rc: redis.Redis, prefix: str, address: str) -> dict[str, int]:
    raw: dict[bytes, bytes] = rc.hgetall(f"{prefix}addr:{address}:conns")  # type: ignore[assignment]
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_idle_socket_flood_from_one_address_leaves_room_for_real_clients(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str,
    gateway_procs: Callable[..., GatewayProcess],
) -> None:
    raise_open_files_limit()
    gw = gateway_procs(redis_server.url, "flood", key_prefix=key_prefix,
                       max_clients=FLOOD, **{**FAST, **DEFAULT_LIMITS})
    first_lines: list[str] = []
    sockets: list[trio.SocketStream] = []

    async def one() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        sockets.append(stream)  # never sends a byte
        data = b""
        with trio.move_on_after(10):
            while b"\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
        first_lines.append(data.split(b"\n", 1)[0].decode(errors="replace"))

    async with trio.open_nursery() as nursery:
        for _ in range(FLOOD):
            nursery.start_soon(one)
            await trio.lowlevel.checkpoint()
    welcomed = [line for line in first_lines if line.startswith("== welcome")]
    refused = [line for line in first_lines if line.startswith("!! disconnected:")]
    assert len(welcomed) == 10, first_lines[:20]
    assert len(refused) == FLOOD - 10
    assert all(re.search(r"connecting too often|too many connections", line) for line in refused)
    assert list(held(rc, key_prefix, "127.0.0.1").values()) == [10]

    # Real clients from other addresses still get in and chat.
    alice = await ChatClient.join(gw.port, "alice", source="127.0.0.2")
    bob = await ChatClient.join(gw.port, "bob", source="127.0.0.3")
    await alice.send("hello despite the flood")
    await bob.expect(r"^#lobby <alice> hello despite the flood$")
    for stream in sockets:
        await stream.aclose()
    await wait_until(lambda: held(rc, key_prefix, "127.0.0.1") == {}, timeout=15)


async def test_a_killed_gateways_address_counts_are_released_by_the_reaper(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str,
    gateway_procs: Callable[..., GatewayProcess],
) -> None:
    limits = {**FAST, "max_connections_per_ip": 3}
    doomed = gateway_procs(redis_server.url, "doomed", key_prefix=key_prefix, **limits)
    survivor = gateway_procs(redis_server.url, "survivor", key_prefix=key_prefix, **limits)
    address = "127.0.0.41"
    for nick in ("a1", "a2"):
        await ChatClient.join(doomed.port, nick, source=address)
    await ChatClient.join(survivor.port, "a3", source=address)
    extra = await ChatClient.connect(survivor.port, source=address)
    assert (await extra.expect(r"^!! ")).startswith("!! disconnected: too many connections")

    doomed.kill()  # SIGKILL: nothing released on the way out
    doomed.wait()
    # The survivor reaps the dead lease, and with it the dead gateway's share.
    await trio.to_thread.run_sync(
        lambda: survivor.wait_for_event("gateway.addresses_released", timeout=30)
    )
    assert list(held(rc, key_prefix, address).values()) == [1]
    for nick in ("b1", "b2"):
        await ChatClient.join(survivor.port, nick, source=address)
    assert list(held(rc, key_prefix, address).values()) == [3]


async def test_a_gateway_restarted_under_its_name_releases_its_predecessors_counts(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str,
    gateway_procs: Callable[..., GatewayProcess],
) -> None:
    # A lease far longer than the test: only the restart's predecessor reap can
    # release the dead process's counts in time.
    settings = {**FAST, "heartbeat_ttl_s": 60, "max_connections_per_ip": 2}
    first = gateway_procs(redis_server.url, "same", key_prefix=key_prefix, **settings)
    address = "127.0.0.42"
    for nick in ("p1", "p2"):
        await ChatClient.join(first.port, nick, source=address)
    assert list(held(rc, key_prefix, address).values()) == [2]
    first.kill()
    first.wait()
    second = gateway_procs(redis_server.url, "same", key_prefix=key_prefix, **settings)
    # Serving clients only after settling its predecessor: the address is free again.
    for nick in ("q1", "q2"):
        await ChatClient.join(second.port, nick, source=address)
    assert held(rc, key_prefix, address) == {second.incarnation: 2}
