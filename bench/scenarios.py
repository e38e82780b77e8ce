"""The named benchmark scenarios and their knobs.

A scenario says how many clients connect (round-robin over the gateways), how
many of them send, at what total rate and for how long.  The same scenario runs
against ngircd with every client on its one server.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Scenario:
    """One workload.  ``rate`` is messages per second summed over all senders.

    ``senders == 0`` (or ``rate == 0``) means no measurement window: the run
    connects everyone, measures memory, and times one broadcast.
    ``verify_budget`` bounds how many deliveries per second are parsed line by
    line (the verified sample, see :mod:`bench.loadgen`).
    """

    name: str
    description: str
    clients: int
    gateways: int
    senders: int
    rate: float
    duration_s: float = 10.0
    drain_s: float = 10.0
    workers: int = 2
    payload_bytes: int = 64
    connect_timeout_s: float = 600.0
    verify_budget: float = 15_000.0
    inflight: int | None = None  # handshakes in progress per worker; None: per-system default

    def with_overrides(self, **changes: object) -> Scenario:
        """A copy with the given fields changed; ``None`` values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    @property
    def per_sender_rate(self) -> float:
        return self.rate / self.senders if self.senders else 0.0

    def verify_fraction(self, fanout: int) -> float:
        """Share of clients to verify so that about ``verify_budget`` deliveries/s are parsed."""
        offered = self.rate * fanout
        if offered <= self.verify_budget:
            return 1.0
        return max(self.verify_budget / offered, 20 / max(self.clients, 1))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="light",
            description="200 clients on one gateway, 20 senders, 20 msgs/s in total",
            clients=200,
            gateways=1,
            senders=20,
            rate=20,
        ),
        Scenario(
            name="heavy",
            description="1,000 clients over two gateways, 100 senders, 300 msgs/s "
            "(300,000 deliveries/s offered)",
            clients=1000,
            gateways=2,
            senders=100,
            rate=300,
        ),
        Scenario(
            name="idle",
            description="5,000 idle connections on one gateway: memory per connection, one broadcast to all",
            clients=5000,
            gateways=1,
            senders=0,
            rate=0,
            connect_timeout_s=1800.0,
        ),
        Scenario(
            name="capacity",
            description="10,000 connections on one gateway; 10 senders, 2 msgs/s in total "
            "(20,000 deliveries/s), every broadcast reaches all",
            clients=10000,
            gateways=1,
            senders=10,
            rate=2,
            workers=2,
            connect_timeout_s=3600.0,
        ),
    )
}
