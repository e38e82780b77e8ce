"""LogThrottle: one line per interval, with the count of the ones left out."""

from __future__ import annotations

from services.common.logging import LogThrottle


def test_one_line_per_interval_with_the_suppressed_count() -> None:
    now = [100.0]
    throttle = LogThrottle(10.0, clock=lambda: now[0])
    assert throttle.allow()
    assert throttle.take_suppressed() == 0
    for _ in range(5):
        now[0] += 1.0
        assert not throttle.allow()
    now[0] = 110.0
    assert throttle.allow()
    assert throttle.take_suppressed() == 5
    assert throttle.take_suppressed() == 0
    assert not throttle.allow()
