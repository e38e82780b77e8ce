"""Flood control as properties: whatever a client sends and whenever, what gets
through never exceeds ``burst + rate * elapsed``, a line is refused only when
the budget cannot pay for it, and every refused line is reported to its sender
exactly once, in at most one notice a second."""

from __future__ import annotations

import math
import re

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.config import HostPort, Settings
from services.gateway.commands import COMMAND_COSTS, UNKNOWN_COMMAND_COST, Commands
from services.gateway.flood import TokenBucket
from services.gateway.session import FLOOD_NOTICE_INTERVAL_S, Session
from tests.support.memory_chat import MemoryChat

COSTS = sorted({*COMMAND_COSTS.values(), UNKNOWN_COMMAND_COST} - {0.0})


@settings(max_examples=200, deadline=None, database=None)
@given(
    burst=st.integers(min_value=1, max_value=50),
    rate=st.floats(min_value=0.01, max_value=100),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=3), st.sampled_from(COSTS)),
        max_size=200,
    ),
)
def test_what_gets_through_never_exceeds_the_budget(
    burst: int, rate: float, steps: list[tuple[float, float]]
) -> None:
    async def main() -> None:
        bucket = TokenBucket(burst, rate)
        start = trio.current_time()
        spent = 0.0
        for delay, cost in steps:
            await trio.sleep(delay)
            before = bucket.tokens + (trio.current_time() - bucket.stamp) * rate
            could_pay = min(float(burst), before) >= cost
            assert bucket.available(cost) == could_pay
            taken = bucket.take(cost)
            assert taken == could_pay  # refused exactly when it cannot pay
            if taken:
                spent += cost
            elapsed = trio.current_time() - start
            assert spent <= burst + rate * elapsed + 1e-6
            assert 0 <= bucket.tokens <= burst

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


LINES = {
    "chat": ("hello", r"^#lobby <alice> hello$"),
    "who": ("/who", r"^== \d+ online: "),
    "help": ("/help", r"^== commands:$"),
    "unknown": ("/frob", r"^!! unknown command /frob"),
}
NOTICE = re.compile(r"^!! too many lines, slow down; (?:your line|(\d+) lines) (?:was|were) not sent$")


@settings(max_examples=60, deadline=None, database=None)
@given(
    bursts=st.lists(
        st.tuples(st.floats(min_value=0, max_value=2.5), st.integers(min_value=1, max_value=30),
                  st.sampled_from(sorted(LINES))),
        min_size=1, max_size=12,
    ),
)
def test_every_refused_line_is_reported_once_and_notices_come_at_most_once_a_second(
    bursts: list[tuple[float, int, str]],
) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            chat = MemoryChat(nursery, settings=Settings(
                listen=HostPort("127.0.0.1", 0), flood_burst=6, flood_rate=2,
                nick_timeout_s=math.inf))
            server_end, client_end = trio.testing.memory_stream_pair()
            session = Session(chat, Commands(chat), server_end, "test:1")
            nursery.start_soon(session.run)
            received = bytearray()

            async def read() -> None:
                while data := await client_end.receive_some(65536):
                    received.extend(data)

            nursery.start_soon(read)
            await client_end.send_all(b"alice\n")
            await trio.sleep(0.01)
            start = trio.current_time()
            sent = 0
            for delay, count, kind in bursts:
                await trio.sleep(delay)
                await client_end.send_all((LINES[kind][0] + "\n").encode() * count)
                sent += count
            await trio.sleep(FLOOD_NOTICE_INTERVAL_S * 2)  # every owed notice is due
            elapsed = trio.current_time() - start
            lines = received.decode().splitlines()
            done = sum(any(re.match(pattern, line) for _, pattern in LINES.values())
                       for line in lines)
            notices = [NOTICE.match(line) for line in lines]
            reported = sum(int(m.group(1) or 1) for m in notices if m)
            assert done + reported == sent
            assert sum(m is not None for m in notices) <= 2 + elapsed / FLOOD_NOTICE_INTERVAL_S
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
