"""Per-address admission and bans with real gateways (in process) and a real Redis:
limits counted across gateways, the connect rate, counts released on every way a
session ends, bans on connected and new clients, expiry, unban, and Redis down
at admission."""

from __future__ import annotations

import io
import os
import signal

import redis
import trio

from services.admin.cli import parse_args
from services.admin.cli import run as admin_run
from services.gateway.gateway import Gateway
from tests.conftest import StartGateway, wait_until
from tests.support.chat_client import ChatClient
from tests.support.redis_server import RedisServer

LIMITED = {"max_connections_per_ip": 3, "connect_rate_per_ip": 1000.0,
           "connect_burst_per_ip": 1000}


def held(rc: redis.Redis, prefix: str, address: str) -> dict[str, int]:
    """What each gateway holds from ``address``, read by the independent oracle."""
    raw: dict[bytes, bytes] = rc.hgetall(f"{prefix}addr:{address}:conns")  # type: ignore[assignment]
    return {k.decode(): int(v) for k, v in raw.items()}


async def refused_line(port: int, source: str) -> str | None:
    """Connect from ``source``; the refusal line if refused, ``None`` if served."""
    client = await ChatClient.connect(port, source=source)
    line = await client.expect(r"^(!! disconnected:|\?\? )")
    if line.startswith("??"):
        await client.aclose()
        return None
    await client.read_until_closed()
    return line


async def admin(redis_url: str, prefix: str, *argv: str) -> str:
    out = io.StringIO()
    args = parse_args(["--redis-url", redis_url, "--key-prefix", prefix, *argv])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    code = await trio.to_thread.run_sync(admin_run, args, out, env)
    assert code == 0
    return out.getvalue()


async def test_the_limit_holds_across_two_gateways(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    g1 = await start_gateway(**LIMITED)
    g2 = await start_gateway(**LIMITED)
    a = await ChatClient.join(g1.ports[0], "ann", source="127.0.0.21")
    b = await ChatClient.join(g2.ports[0], "bob", source="127.0.0.21")
    await ChatClient.join(g1.ports[0], "cat", source="127.0.0.21")
    assert sum(held(rc, key_prefix, "127.0.0.21").values()) == 3
    for port in (g1.ports[0], g2.ports[0]):
        line = await refused_line(port, "127.0.0.21")
        assert line == "!! disconnected: too many connections from your address (3, at most 3)"
    # Another address is not affected.
    await ChatClient.join(g2.ports[0], "dan", source="127.0.0.22")

    # Ended sessions give their count back, whichever gateway they were on.
    await b.send("/quit")
    await b.read_until_closed()
    await wait_until(lambda: held(rc, key_prefix, "127.0.0.21").get(g2.incarnation) is None)
    await ChatClient.join(g2.ports[0], "eve", source="127.0.0.21")
    await a.aclose()  # EOF
    await wait_until(lambda: held(rc, key_prefix, "127.0.0.21") == {g1.incarnation: 1,
                                                                    g2.incarnation: 1})


async def test_the_connect_rate_limit_refuses_then_refills(start_gateway: StartGateway) -> None:
    gw = await start_gateway(max_connections_per_ip=100, connect_rate_per_ip=2.0,
                             connect_burst_per_ip=3)
    port = gw.ports[0]
    for _ in range(3):
        assert await refused_line(port, "127.0.0.23") is None
    line = await refused_line(port, "127.0.0.23")
    assert line == ("!! disconnected: connecting too often from your address; "
                    "try again in a few seconds")
    assert await refused_line(port, "127.0.0.24") is None  # its own bucket
    # Two tokens a second: served again soon (refused attempts spend none).
    with trio.fail_after(5):
        while await refused_line(port, "127.0.0.23") is not None:
            await trio.sleep(0.1)


async def test_counts_are_released_on_kick_timeout_and_drain(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str, redis_server: RedisServer
) -> None:
    # Every way a session ends goes through the listener's one ``finally`` (an
    # outbox overflow ends it exactly as a kick does); these are the server-side ends.
    gw = await start_gateway(nick_timeout_s=0.5, **LIMITED)
    address = "127.0.0.25"
    kicked = await ChatClient.join(gw.ports[0], "kim", source=address)
    silent = await ChatClient.connect(gw.ports[0], source=address)  # never picks a nick
    await silent.expect(r"^\?\? ")  # admitted (and counted) before the prompt
    assert sum(held(rc, key_prefix, address).values()) == 2
    await admin(redis_server.url, key_prefix, "kick", "kim", "bye")
    await kicked.read_until_closed()
    lines = await silent.read_until_closed()
    assert lines[-1].startswith("!! disconnected: no nickname chosen"), lines
    await wait_until(lambda: held(rc, key_prefix, address) == {})
    await ChatClient.join(gw.ports[0], "last", source=address)
    assert held(rc, key_prefix, address) == {gw.incarnation: 1}
    await gw.drain()
    assert held(rc, key_prefix, address) == {}
    assert rc.smembers(f"{key_prefix}gw:{gw.incarnation}:addrs") == set()


async def test_redis_down_at_admission_admits_under_a_local_cap_then_syncs(
    fresh_redis: RedisServer, start_gateway: StartGateway, key_prefix: str
) -> None:
    gw: Gateway = await start_gateway(redis_url=fresh_redis.url, redis_timeout_s=0.5,
                                      **LIMITED)
    port = gw.ports[0]
    await ChatClient.connect(port, source="127.0.0.27")
    fresh_redis.stop()
    await wait_until(lambda: not gw.redis.connected)
    # One already counted; the local cap (same limit, this gateway only) admits two more.
    for _ in range(2):
        assert await refused_line_kept(port, "127.0.0.27") is None
    line = await refused_line(port, "127.0.0.27")
    assert line is not None and "too many connections" in line
    fresh_redis.start()  # empty: the counts were lost with the data
    rc = fresh_redis.client()
    await wait_until(lambda: gw.available, timeout=15)
    await wait_until(lambda: held(rc, key_prefix, "127.0.0.27") == {gw.incarnation: 3})
    rc.close()


async def test_an_admission_redis_does_not_answer_is_decided_locally_then_corrected(
    fresh_redis: RedisServer, start_gateway: StartGateway, key_prefix: str
) -> None:
    gw = await start_gateway(redis_url=fresh_redis.url, redis_timeout_s=0.5, **LIMITED)
    proc = fresh_redis.proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)  # connected, but no answer: the script may yet run
    try:
        for _ in range(2):
            with trio.fail_after(5):
                assert await refused_line_kept(gw.ports[0], "127.0.0.28") is None
    finally:
        proc.send_signal(signal.SIGCONT)
    rc = fresh_redis.client()
    await wait_until(lambda: gw.available, timeout=15)
    await wait_until(lambda: held(rc, key_prefix, "127.0.0.28") == {gw.incarnation: 2},
                     timeout=15)
    line = await refused_line(gw.ports[0], "127.0.0.28")
    assert line is None  # 2 of 3: one more is allowed, counted in Redis again
    rc.close()


async def refused_line_kept(port: int, source: str) -> str | None:
    """Like :func:`refused_line`, but a served client stays connected."""
    client = await ChatClient.connect(port, source=source)
    line = await client.expect(r"^(!! disconnected:|\?\? )")
    return None if line.startswith("??") else line


async def test_bans_cut_connected_clients_on_every_gateway_and_refuse_new_ones(
    start_gateway: StartGateway, redis_server: RedisServer, key_prefix: str
) -> None:
    g1 = await start_gateway()
    g2 = await start_gateway()
    bad1 = await ChatClient.join(g1.ports[0], "bad1", source="127.0.0.31")
    bad2 = await ChatClient.join(g2.ports[0], "bad2", source="127.0.0.31")
    good = await ChatClient.join(g2.ports[0], "good", source="127.0.0.32")
    out = await admin(redis_server.url, key_prefix, "ban", "127.0.0.31", "spamming", "links")
    assert "127.0.0.31/32" in out
    for client in (bad1, bad2):
        await client.expect(r"^!! disconnected: banned: spamming links$")
        await client.read_until_closed()
    assert await refused_line(g1.ports[0], "127.0.0.31") == "!! disconnected: banned: spamming links"
    await good.send("still here")
    await good.expect(r"^#lobby <good> still here$")

    # A gateway started later loads the ban list before it serves anyone.
    g3 = await start_gateway()
    assert await refused_line(g3.ports[0], "127.0.0.31") == "!! disconnected: banned: spamming links"

    # A network ban, listed; then lifted.
    await admin(redis_server.url, key_prefix, "ban", "127.0.1.0/24", "--for", "1h")
    listing = await admin(redis_server.url, key_prefix, "bans")
    assert "127.0.1.0/24" in listing and "127.0.0.31/32" in listing
    with trio.fail_after(10):  # once g2 has reloaded the list
        while await refused_line(g2.ports[0], "127.0.1.9") is None:
            await trio.sleep(0.05)
    await admin(redis_server.url, key_prefix, "unban", "127.0.1.0/24")
    with trio.fail_after(10):
        while await refused_line(g2.ports[0], "127.0.1.9") is not None:
            await trio.sleep(0.05)


async def test_a_ban_expires_by_itself(
    start_gateway: StartGateway, redis_server: RedisServer, key_prefix: str
) -> None:
    gw = await start_gateway()
    await admin(redis_server.url, key_prefix, "ban", "127.0.0.33", "--for", "1s", "cool off")
    await wait_until(lambda: bool(gw.admission.bans))
    assert await refused_line(gw.ports[0], "127.0.0.33") == "!! disconnected: banned: cool off"
    with trio.fail_after(5):
        while await refused_line(gw.ports[0], "127.0.0.33") is not None:
            await trio.sleep(0.05)
