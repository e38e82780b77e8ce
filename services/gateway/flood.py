"""Flood control: a token bucket per connection."""

from __future__ import annotations

import trio


class TokenBucket:
    """``burst`` lines at once, then ``rate`` lines per second."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = float(burst)
        self.rate = rate
        self.tokens = float(burst)
        self.stamp = trio.current_time()

    def take(self, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; ``False`` otherwise."""
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
