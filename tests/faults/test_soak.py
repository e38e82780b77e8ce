"""Soak: three gateways, 60 s of steady traffic with clients coming and going."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from services.common.names import fold_nick
from tests.faults.conftest import FAST
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

DURATION_S = 60.0
SENDERS = 3
RECEIVERS = 9
RATE_PER_SENDER = 10.0  # lines per second
CHURNERS = 6


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_soak_steady_traffic_with_churn(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    prefix = "soak:"
    gws = [gateway_procs(redis_server.url, f"k{i}", key_prefix=prefix, **FAST) for i in (1, 2, 3)]
    rng = random.Random(1234)
    senders = [await ChatClient.join(gws[i % 3].port, f"sender{i}") for i in range(SENDERS)]
    receivers = [await ChatClient.join(gws[i % 3].port, f"recv{i}") for i in range(RECEIVERS)]
    sent: dict[str, int] = {}
    churn_cycles = 0
    connected_churners: dict[str, ChatClient] = {}
    rss_samples: dict[int, list[int]] = {gw.proc.pid: [] for gw in gws}  # type: ignore[union-attr]
    start = trio.current_time()
    end = start + DURATION_S

    async def sender_task(client: ChatClient) -> None:
        assert client.nick is not None
        n = 0
        next_at = trio.current_time()
        while trio.current_time() < end:
            await client.send(f"{client.nick} {n}")
            n += 1
            next_at += 1 / RATE_PER_SENDER
            await trio.sleep_until(next_at)  # the traffic's pace, not a synchronisation
        sent[client.nick] = n

    async def reader_task(client: ChatClient) -> None:
        # Keep reading so nobody becomes a slow consumer; lines stay in client.lines.
        while True:
            await client._read_more()

    async def churner(k: int) -> None:
        nonlocal churn_cycles
        cycle = 0
        while trio.current_time() < end - 5:
            nick = f"churn{k}x{cycle}"
            client = await ChatClient.join(gws[rng.randrange(3)].port, nick)
            connected_churners[nick] = client
            await trio.sleep(rng.uniform(0.5, 3.0))  # how long this visitor stays
            if rng.random() < 0.5:
                await client.send("/quit")
                await client.read_until_closed()
            else:
                await client.aclose()  # an unclean leave
            del connected_churners[nick]
            cycle += 1
            churn_cycles += 1
            await trio.sleep(rng.uniform(0.1, 1.0))

    async def sample_memory() -> None:
        while trio.current_time() < end:
            for pid, samples in rss_samples.items():
                samples.append(rss_kib(pid))
            await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        for client in senders + receivers:
            nursery.start_soon(reader_task, client)
        nursery.start_soon(sample_memory)
        async with trio.open_nursery() as traffic:
            for client in senders:
                traffic.start_soon(sender_task, client)
            for k in range(CHURNERS):
                traffic.start_soon(churner, k)
        # Final marker: everything before it has been delivered everywhere.
        await senders[0].send("/msg recv0 flush")
        for receiver in receivers:
            for sender in senders:
                assert sender.nick is not None
                last = sent[sender.nick] - 1
                with trio.fail_after(30):
                    while f"#lobby <{sender.nick}> {sender.nick} {last}" not in receiver.lines:
                        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()

    assert churn_cycles >= CHURNERS * 5
    for receiver in receivers + senders:
        for sender in senders:
            assert sender.nick is not None
            got = [m for m in receiver.lines if m.startswith(f"#lobby <{sender.nick}> ")]
            expected = [f"#lobby <{sender.nick}> {sender.nick} {n}" for n in range(sent[sender.nick])]
            assert got == expected, (receiver.nick, sender.nick, len(got), len(expected))

    oracle = redis_server.client()
    online = {k.decode() for k in oracle.hkeys(f"{prefix}nicks")}
    # Redis keys each nickname by its skeleton (services.common.names.fold_nick).
    expected_online = {fold_nick(n) for n in [c.nick for c in senders + receivers if c.nick]
                       + list(connected_churners)}
    with trio.fail_after(10):
        while online != expected_online:
            await trio.sleep(0.1)
            online = {k.decode() for k in oracle.hkeys(f"{prefix}nicks")}
    members = {k.decode() for k in oracle.hkeys(f"{prefix}room:#lobby:members")}
    assert members == expected_online
    oracle.close()

    for pid, samples in rss_samples.items():
        # After warm-up, memory must level off: the last sample may not exceed the
        # one at ~15 s by more than 8 MiB (a leak per message or per connection
        # over 60 s of this traffic would).
        assert len(samples) >= 10
        assert samples[-1] - samples[3] < 8 * 1024, (pid, samples)
