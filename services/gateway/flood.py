"""Flood control: a token bucket per connection."""

from __future__ import annotations

import trio


class TokenBucket:
    """``burst`` tokens at once, then ``rate`` tokens per second.  A cost above
    ``burst`` can never be paid."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = float(burst)
        self.rate = rate
        self.tokens = float(burst)
        self.stamp = trio.current_time()

    def _refill(self) -> None:
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self, cost: float = 1.0) -> bool:
        """Whether ``cost`` tokens could be spent now (nothing is spent)."""
        self._refill()
        return self.tokens >= cost

    def take(self, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; ``False`` otherwise."""
        self._refill()
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
