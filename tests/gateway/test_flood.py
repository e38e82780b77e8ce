"""The token bucket behind flood control, as a property: whatever a client sends
and whenever, what it gets through never exceeds ``burst + rate * elapsed``, and
a line is refused only when the budget really cannot pay for it."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.commands import COMMAND_COSTS, UNKNOWN_COMMAND_COST
from services.gateway.flood import TokenBucket

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
