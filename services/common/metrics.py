"""Prometheus metrics of one gateway.

:class:`Metrics` owns its own :class:`prometheus_client.CollectorRegistry` rather
than the process-global one, so several gateways can live in one process (tests
do exactly that) without "Duplicated timeseries" errors, and ``/metrics`` shows
only what this gateway registered.  Create one in ``main`` and pass it down.

Every metric is named ``chat_*``.  The current-connections gauge is
``chat_connections_open``, not ``chat_connections``: prometheus_client names a
counter's family without ``_total``, so ``chat_connections_total`` already owns
``chat_connections``.  Which gateway is speaking is carried by one
info metric, ``chat_gateway_info{gateway="..."} 1``, not by a label on every
series: Prometheus attaches the scrape target anyway, and a join on the info
metric gives the gateway id where it is wanted.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

__all__ = ["LAG_BUCKETS_S", "LATENCY_BUCKETS_S", "REDIS_CONNECTIONS", "Metrics"]

LATENCY_BUCKETS_S: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
"""0.1 ms to 1 s: a PUBLISH on a healthy local Redis takes well under a millisecond;
anything near a second is an outage in the making (the command deadline is 2 s)."""

LAG_BUCKETS_S: Final = (*LATENCY_BUCKETS_S, 2.5, 5.0)
"""Like :data:`LATENCY_BUCKETS_S`, plus 2.5 s and 5 s: lag also includes queueing
in the subscriber and clock skew between gateways, which can exceed a second."""

REDIS_CONNECTIONS: Final = ("command", "subscriber")
"""Values of the ``connection`` label of ``chat_redis_reconnects_total``."""


class Metrics:
    """The counters, gauges and histograms a gateway updates, in a private registry.

    Attributes are the ``prometheus_client`` objects themselves; update them
    directly (``metrics.connections.inc()``,
    ``metrics.rejected_lines_total.labels(reason="too_long").inc()``).
    Updating is thread-safe and never blocks on I/O.
    ``chat_redis_reconnects_total`` exists at 0 for both connections from the start,
    so ``rate()`` works before the first reconnect.
    """

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id: Final = gateway_id
        self.registry: Final = CollectorRegistry(auto_describe=True)
        registry = self.registry

        self.gateway_info: Final = Info(
            "chat_gateway", "Identity of this gateway process", registry=registry
        )
        self.gateway_info.info({"gateway": gateway_id})

        self.connections: Final = Gauge(
            "chat_connections_open", "Client connections currently open", registry=registry
        )
        self.connections_total: Final = Counter(
            "chat_connections_total", "Client connections accepted", registry=registry
        )
        self.refused_connections_total: Final = Counter(
            "chat_refused_connections_total",
            "Client connections refused before a session, by reason",
            ["reason"],
            registry=registry,
        )
        self.joins_total: Final = Counter(
            "chat_joins_total", "Nicknames accepted (clients that joined)", registry=registry
        )
        self.messages_in_total: Final = Counter(
            "chat_messages_in_total", "Chat lines accepted from clients", registry=registry
        )
        self.deliveries_total: Final = Counter(
            "chat_deliveries_total", "Lines handed to client outboxes", registry=registry
        )
        self.rejected_lines_total: Final = Counter(
            "chat_rejected_lines_total",
            "Client lines rejected, by reason",
            ["reason"],
            registry=registry,
        )
        self.slow_consumer_disconnects_total: Final = Counter(
            "chat_slow_consumer_disconnects_total",
            "Clients disconnected because their outbox overflowed",
            registry=registry,
        )
        self.tls_handshake_failures_total: Final = Counter(
            "chat_tls_handshake_failures_total",
            "TLS clients closed before their handshake completed, by reason (timeout, error)",
            ["reason"],
            registry=registry,
        )
        self.bus_malformed_total: Final = Counter(
            "chat_bus_malformed_total",
            "Bus messages dropped because they could not be decoded or handled, by channel",
            ["channel"],
            registry=registry,
        )
        self.outbox_budget_disconnects_total: Final = Counter(
            "chat_outbox_budget_disconnects_total",
            "Clients disconnected because all clients' output together reached"
            " CHAT_OUTBOX_TOTAL_BYTES (they were furthest behind)",
            registry=registry,
        )
        self.outbox_queued_bytes: Final = Gauge(
            "chat_outbox_queued_bytes",
            "Output bytes held for all clients together (queued or being written),"
            " bounded by CHAT_OUTBOX_TOTAL_BYTES",
            registry=registry,
        )
        self.redis_reconnects_total: Final = Counter(
            "chat_redis_reconnects_total",
            "Reconnections to Redis, by connection (command or subscriber)",
            ["connection"],
            registry=registry,
        )
        for connection in REDIS_CONNECTIONS:
            self.redis_reconnects_total.labels(connection=connection)
        self.publish_latency_seconds: Final = Histogram(
            "chat_publish_latency_seconds",
            "Time from sending PUBLISH to its reply",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.subscriber_lag_seconds: Final = Histogram(
            "chat_subscriber_lag_seconds",
            "Time from publish (sender's clock) to receipt on this gateway; "
            "negative skew is observed as 0",
            buckets=LAG_BUCKETS_S,
            registry=registry,
        )
        self.redis_up: Final = Gauge(
            "chat_redis_up", "1 while the Redis command connection works", registry=registry
        )
        self.subscriber_up: Final = Gauge(
            "chat_subscriber_up",
            "1 while the subscriber loop is proven alive (canary received)",
            registry=registry,
        )

    def observe_subscriber_lag(self, seconds: float) -> None:
        """Record one publish-to-receipt lag, clamping clock skew below zero to 0.

        A negative observation would lower the histogram's sum and make averages lie.
        """
        self.subscriber_lag_seconds.observe(max(0.0, seconds))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
