"""Settings that make faults show quickly: short leases, short Redis deadlines."""

from __future__ import annotations

FAST = {
    "heartbeat_interval_s": 0.5,
    "heartbeat_ttl_s": 2.0,
    "redis_timeout_s": 1.0,
    "canary_interval_s": 0.5,
    "canary_timeout_s": 2.0,
    "flood_burst": 5000,
    "flood_rate": 5000,
    "max_connections_per_ip": 100000,
    "connect_rate_per_ip": 100000,
    "connect_burst_per_ip": 100000,
}
