"""Swarms that never read, against a real gateway process and Redis, from many
loopback addresses.  The gateway's queued bytes (``chat_outbox_queued_bytes`` on
/metrics) never pass CHAT_OUTBOX_TOTAL_BYTES:

* 200 connections sit in a room a sender floods: the clients furthest behind are
  cut first and told why, and the readers get every line;
* 200 connections each ask for /help 300 times (issue 10: ~224 KiB each, never
  cut): the gateway's RSS stays far below what the per-client caps allow."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import trio

from services.common.probes import http_get
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

BUDGET = 4 * 1024 * 1024
EARLY, LATE = 40, 160  # never-readers that join before / after the flood starts
LINES, HEAD_START = 150, 30
TEXT = "x" * 3990
CUT = re.compile(r"^!! disconnected: output buffers full \(this server's \d+ bytes for all"
                 r" clients; you were furthest behind with \d+ bytes waiting\)")
# Under the per-client caps alone, 200 clients asking for /help 300 times grew the
# gateway by 126 MiB (300 x 12 lines each, every line its own bytes object); with
# a 4 MiB budget by 15.5 MiB (measured here).
HELPS = 300
RSS_GROWTH_LIMIT = 40 * 1024 * 1024


def metric(port: int, name: str) -> float:
    status, body = http_get(port, "/metrics", timeout_s=20)  # the gateway may be busy
    assert status == 200
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def swarm_address(index: int) -> str:
    """Five connections per loopback address (127.0.1.2, 127.0.1.3, ...)."""
    return f"127.0.{1 + index // 1250}.{2 + (index // 5) % 250}"


async def never_reader(port: int, index: int) -> trio.SocketStream:
    """A client from its own loopback address (5 per address) with a tiny receive
    buffer, that chooses a nickname and never reads."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.bind((swarm_address(index), 0))
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(f"idle{index}\n".encode())
    return stream


async def read_to_the_end(stream: trio.SocketStream, timeout_s: float) -> bytes:
    """Everything until the gateway closes the connection."""
    data = bytearray()
    with trio.fail_after(timeout_s):
        while chunk := await stream.receive_some(1 << 20):
            data += chunk
    return bytes(data)


async def test_a_non_reading_swarm_stays_within_the_gateways_output_budget(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    prefix = "swarm:"
    gw = gateway_procs(redis_server.url, "swarm", key_prefix=prefix, http_port=0,
                       outbox_total_bytes=BUDGET, default_room="#swarm", history_size=0,
                       flood_burst=5000, flood_rate=5000, max_clients=1000)
    assert gw.http_port is not None
    http_port = gw.http_port

    async def joined(n: int) -> None:
        """``n`` clients had a nickname and joined the room (some may be gone since)."""
        with trio.fail_after(30):
            while sum(e.get("event") == "client.joined" for e in gw.records()) < n:
                await trio.sleep(0.05)

    sender = await ChatClient.join(gw.port, "sender")
    readers = [sender, *[await ChatClient.join(gw.port, f"reader{i}") for i in range(2)]]
    early = [await never_reader(gw.port, i) for i in range(EARLY)]
    await joined(len(readers) + EARLY)
    samples: list[float] = []
    cut: dict[str, bytes] = {}  # nick -> everything it read, once the gateway cut it
    streams = {f"idle{i}": s for i, s in enumerate(early)}

    async def watch(done: trio.Event) -> None:
        while not done.is_set():
            samples.append(await trio.to_thread.run_sync(
                metric, http_port, "chat_outbox_queued_bytes"))
            await trio.sleep(0.02)

    async def drain_when_cut(nursery: trio.Nursery, done: trio.Event) -> None:
        """Read a cut client's last lines as soon as the gateway logs the cut (it
        waits 5 s for a slow client to read its reason)."""
        seen = 0
        while not done.is_set() or seen < len(cut_events()):
            events = cut_events()
            for event in events[seen:]:
                nursery.start_soon(collect, event["nick"])
            seen = len(events)
            await trio.sleep(0.05)

    def cut_events() -> list[dict[str, object]]:
        return [e for e in gw.records() if e.get("event") == "client.outbox_budget_cut"]

    async def collect(nick: str) -> None:
        cut[nick] = await read_to_the_end(streams[nick], 20)

    try:
        async with trio.open_nursery() as nursery:
            flooding = trio.Event()
            nursery.start_soon(watch, flooding)
            nursery.start_soon(drain_when_cut, nursery, flooding)
            async with trio.open_nursery() as reading:
                for reader in readers:  # each reads everything, up to the last line
                    reading.start_soon(reader.seen, rf"^#swarm <sender> flood {LINES - 1} ", 60)
                for i in range(LINES):
                    if i == HEAD_START:  # the rest of the swarm joins, behind the early ones
                        late = [await never_reader(gw.port, EARLY + j) for j in range(LATE)]
                        streams.update({f"idle{EARLY + j}": s for j, s in enumerate(late)})
                        await joined(len(readers) + EARLY + LATE)
                    await sender.send(f"flood {i} {TEXT}")
            flooding.set()
    finally:
        for stream in streams.values():
            stream.socket.close()

    assert samples and max(samples) <= BUDGET, max(samples)
    # The furthest behind went first: the early never-readers.
    events = cut_events()
    assert len(events) >= EARLY // 2
    assert all(str(e["nick"]).startswith("idle") and int(str(e["nick"])[4:]) < EARLY
               for e in events[: EARLY // 2]), [e["nick"] for e in events[: EARLY // 2]]
    assert metric(http_port, "chat_outbox_budget_disconnects_total") == len(events)
    # Each was told why, on a fresh line, as the last thing it got.
    for nick, data in cut.items():
        last = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1].decode(errors="replace")
        assert CUT.match(last), (nick, last)
    assert len(cut) == len(events)
    # Readers got every line, in order.
    for reader in readers:
        got = [int(m.group(1)) for line in reader.lines
               if (m := re.match(r"^#swarm <sender> flood (\d+) ", line))]
        assert got == list(range(LINES)), reader.nick


async def test_help_asked_over_and_over_without_reading_stays_within_the_budget(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_procs(redis_server.url, "helpers", key_prefix="helpers:", http_port=0,
                       outbox_total_bytes=BUDGET, default_room="#helpers", history_size=0,
                       flood_burst=5000, flood_rate=5000, max_clients=1000)
    assert gw.http_port is not None
    http_port = gw.http_port
    streams = [await never_reader(gw.port, i) for i in range(200)]
    try:
        with trio.fail_after(30):
            while sum(e.get("event") == "client.joined" for e in gw.records()) < len(streams):
                await trio.sleep(0.05)
        base_rss = rss(gw.pid)
        peak_rss, samples = base_rss, []
        for stream in streams:
            await stream.send_all(b"/help\n" * HELPS)
        # Until every /help was answered or refused: the total no longer moves.
        previous = -1.0
        with trio.fail_after(60):
            while True:
                samples.append(await trio.to_thread.run_sync(
                    metric, http_port, "chat_outbox_queued_bytes"))
                peak_rss = max(peak_rss, rss(gw.pid))
                cuts = await trio.to_thread.run_sync(
                    metric, http_port, "chat_outbox_budget_disconnects_total")
                if samples[-1] == previous and (cuts or samples[-1]):
                    break
                previous = samples[-1]
                await trio.sleep(0.2)
    finally:
        for stream in streams:
            stream.socket.close()
    assert max(samples) <= BUDGET, max(samples)
    assert peak_rss - base_rss < RSS_GROWTH_LIMIT, (peak_rss - base_rss) / 2**20
