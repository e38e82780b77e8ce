"""Issue 12: a Sentinel-managed primary fails over without silent loss.

Real processes only: one primary, one replica, three sentinels
(:class:`~tests.support.sentinel.SentinelTopology`, failure detection in half a
second), gateway processes in ``CHAT_REDIS_MODE=sentinel``.

* The primary is SIGKILLed while thirty clients on three gateways send about
  1,000 lines; chat must be back within 15 s on the promoted replica and the
  books of ``test_delivery_accounting`` must balance (every line delivered once,
  in order, to everyone, or reported to its sender; the same narrow excuse for a
  line in flight at the kill).
* A replica that lagged is promoted: the room numbering it holds is behind what
  the gateways delivered.  Lines sent afterwards must still reach everyone (they
  start a new epoch rather than being dropped as duplicates).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Iterator

import pytest
import trio

from services.admin.cli import parse_args
from services.admin.cli import run as run_admin
from services.common.names import fold_nick
from tests.faults import test_delivery_accounting as books
from tests.faults.test_delivery_accounting import Participant
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.sentinel import SentinelTopology

RESUME_WITHIN_S = 15.0
MESSAGES = 1000


@pytest.fixture
def sentinel_topology() -> Iterator[SentinelTopology]:
    with SentinelTopology() as topology:
        yield topology


class TimedParticipant(Participant):
    """A participant that also notes when it was told chat is back."""

    back_at: float | None = None

    def on_line(self, line: str) -> None:
        if line == "== chat is back":
            self.back_at = trio.current_time()
        super().on_line(line)


async def start_sentinel_gateways(
    topology: SentinelTopology, gateway_procs: Callable[..., GatewayProcess], count: int,
    **settings: object,
) -> list[GatewayProcess]:
    started: dict[int, GatewayProcess] = {}

    async def start(i: int) -> None:
        started[i] = await trio.to_thread.run_sync(functools.partial(
            gateway_procs, topology.url, f"s{i + 1}",
            **{**books.SETTINGS, **topology.gateway_settings(), **settings},
        ))

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(start, i)
    return [started[i] for i in range(count)]


async def test_primary_killed_under_load_chat_resumes_and_the_books_balance(
    sentinel_topology: SentinelTopology, gateway_procs: Callable[..., GatewayProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topology = sentinel_topology
    # 150 lines a second: 1.5 s before the kill, the failover, then long enough
    # on the new primary for more than MESSAGES lines in all.
    monkeypatch.setattr(books, "SEND_AFTER_RECOVERY_S", 4.0)
    replica = topology.replicas[0]
    with trio.fail_after(books.TRIAL_DEADLINE_S):
        gateways = await start_sentinel_gateways(topology, gateway_procs, books.GATEWAYS)
        people = [
            TimedParticipant(i, gateways[i // books.CLIENTS_PER_GATEWAY])
            for i in range(books.GATEWAYS * books.CLIENTS_PER_GATEWAY)
        ]
        problems: list[str] = []
        faulted_at: list[float] = []
        promoted_at: list[float] = []

        async def kill_primary(_redis: RedisServer, _trial: int) -> None:
            # In the event loop, not a thread: no line is sent between the moment
            # recorded as the fault and the kill (the in-flight excuse relies on it).
            topology.kill_primary()
            await trio.to_thread.run_sync(topology.wait_primary, replica.port)
            promoted_at.append(trio.current_time())

        try:
            async with trio.open_nursery() as readers:
                await books.join_everyone(people, readers)
                await books.chat_through_fault(people, kill_primary, topology.primary, 0,
                                               problems, faulted_at)
                excusable = books.in_flight(people, faulted_at[0])
                if not await books.drain(people, excusable):
                    problems.append("not settled within the drain deadline")
                # Nicknames stay unique: the new primary holds each one once (checked
                # while every client is still connected).
                with replica.client() as oracle:
                    nicks = {k.decode() for k in oracle.hkeys("chat:nicks")}
                expected = {fold_nick(p.nick) for p in people}
                readers.cancel_scope.cancel()
        finally:
            for person in people:
                if person.client is not None:
                    await person.client.aclose()
    excused = books.excuse_lost_in_the_crash(people, excusable,
                                             faulted_at[0] if faulted_at else None)
    violations = books.account(people, excusable) + problems
    sent = sum(len(p.sent) for p in people)
    if sent < MESSAGES:
        violations.append(f"only {sent} lines were sent; the test wants {MESSAGES}")
    told = [p for p in people if p.interrupted]
    slow = [p.nick for p in told
            if p.back_at is None or p.back_at - faulted_at[0] > RESUME_WITHIN_S]
    if slow:
        violations.append(f"chat not back within {RESUME_WITHIN_S:g}s for {slow}")
    violations += [f"gateway {gw.gateway_id} exited" for gw in gateways
                   if gw.proc is not None and gw.proc.poll() is not None]
    if nicks != expected:
        violations.append(f"nick registry differs: missing {sorted(expected - nicks)[:5]},"
                          f" extra {sorted(nicks - expected)[:5]}")
    summary = books.summarize("sentinel-failover", 0, people, gateways)
    summary += f"\nfailover: primary killed, replica promoted after " \
               f"{promoted_at[0] - faulted_at[0]:.2f}s" if promoted_at else ""
    backs = [p.back_at - faulted_at[0] for p in told if p.back_at is not None]
    if backs:
        summary += f"; chat back for every client {max(backs):.2f}s after the kill"
    if excused:
        summary += "\n" + "\n".join(excused)
    if violations:
        pytest.fail(f"{len(violations)} violations\n{summary}\n" + "\n".join(violations[:60]))
    print(summary)


async def test_promoted_replica_that_lagged_does_not_swallow_new_lines(
    sentinel_topology: SentinelTopology, gateway_procs: Callable[..., GatewayProcess]
) -> None:
    """The replica misses the last lines (its replication link is cut while it is
    stopped), then is promoted: its room counter is behind what the gateways
    delivered.  Without a new epoch the gateways would take the next lines for
    duplicates of ones they had delivered and drop them silently."""
    topology = sentinel_topology
    primary, replica = topology.primary, topology.replicas[0]
    gw1, gw2 = await start_sentinel_gateways(topology, gateway_procs, 2)
    alice = await ChatClient.join(gw1.port, "alice")
    bob = await ChatClient.join(gw2.port, "bob")
    await alice.expect(r"^#lobby -- bob joined")
    for n in range(5):
        await alice.send(f"before {n}")
        await bob.expect(rf"^#lobby <alice> before {n}$")
    # Cut the replica off: stopped, and its link dropped by the primary, so the
    # next lines exist only on the primary.
    topology.pause_replication(replica)
    with primary.client() as oracle:
        assert oracle.client_kill_filter(_type="replica") == 1
    for n in range(20):
        await alice.send(f"lagged {n}")
        await bob.expect(rf"^#lobby <alice> lagged {n}$")
    await alice.expect(r"^#lobby <alice> lagged 19$")
    await trio.to_thread.run_sync(topology.kill_primary)
    topology.resume(replica)
    await trio.to_thread.run_sync(topology.wait_primary, replica.port)
    with replica.client() as oracle:
        lagged = [e for e in oracle.lrange("chat:room:#lobby:log", 0, -1) if b"lagged" in e]
    assert lagged == [], "the promoted replica should have missed the lagged lines"
    await alice.expect(r"^== chat is back$", timeout=RESUME_WITHIN_S)
    await bob.expect(r"^== chat is back$", timeout=RESUME_WITHIN_S)
    for n in range(5):
        await alice.send(f"after {n}")
        await bob.send(f"bob after {n}")
    # Every line of both, once each, in each sender's order, at both clients.
    await alice.seen(r"^#lobby <bob> bob after 4$")
    await alice.seen(r"^#lobby <alice> after 4$")
    await bob.seen(r"^#lobby <alice> after 4$")
    await bob.seen(r"^#lobby <bob> bob after 4$")
    for client in (alice, bob):
        got = [line for line in client.lines if " after " in line and line.startswith("#lobby <")]
        assert [line for line in got if line.startswith("#lobby <alice>")] == [
            f"#lobby <alice> after {n}" for n in range(5)], got
        assert [line for line in got if line.startswith("#lobby <bob>")] == [
            f"#lobby <bob> bob after {n}" for n in range(5)], got
        assert not [line for line in client.lines if line.startswith("!! ")], client.lines[-30:]

    # chat-admin understands the same settings and finds the new primary too.
    out = io.StringIO()
    environ = {"CHAT_REDIS_URL": topology.url, "CHAT_REDIS_MODE": "sentinel",
               "CHAT_REDIS_SENTINEL_MASTER": topology.master}
    assert await trio.to_thread.run_sync(run_admin, parse_args(["--json", "who"]), out, environ) == 0
    online = json.loads(out.getvalue())["online"]
    assert sorted(o["nick"] for o in online) == ["alice", "bob"], online
