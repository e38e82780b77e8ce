"""The gateway's Prometheus metrics: names, private registries, exposition."""

from __future__ import annotations

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from services.common.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for sample in family.samples
    }


def test_render_exposes_every_metric_with_its_initial_value() -> None:
    metrics = Metrics("gw-1")
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    values = samples(metrics)
    assert values[("chat_gateway_info", (("gateway", "gw-1"),))] == 1.0
    for name in (
        "chat_connections_open",
        "chat_connections_total",
        "chat_joins_total",
        "chat_messages_in_total",
        "chat_deliveries_total",
        "chat_slow_consumer_disconnects_total",
        "chat_outbox_budget_disconnects_total",
        "chat_outbox_queued_bytes",
        "chat_redis_up",
        "chat_subscriber_up",
        "chat_publish_latency_seconds_count",
        "chat_subscriber_lag_seconds_count",
    ):
        assert values[(name, ())] == 0.0, name
    for connection in ("command", "subscriber"):
        assert values[("chat_redis_reconnects_total", (("connection", connection),))] == 0.0
    assert b"# TYPE chat_rejected_lines_total counter" in body
    assert all(name.startswith("chat_") for name, _ in values)


def test_updates_show_in_the_exposition() -> None:
    metrics = Metrics("gw-1")
    metrics.connections.inc()
    metrics.connections.inc()
    metrics.connections.dec()
    metrics.connections_total.inc(2)
    metrics.joins_total.inc()
    metrics.messages_in_total.inc(3)
    metrics.deliveries_total.inc(30)
    metrics.rejected_lines_total.labels(reason="too_long").inc()
    metrics.slow_consumer_disconnects_total.inc()
    metrics.redis_reconnects_total.labels(connection="subscriber").inc()
    metrics.publish_latency_seconds.observe(0.0004)
    metrics.observe_subscriber_lag(0.003)
    metrics.redis_up.set(1)
    metrics.subscriber_up.set(1)

    values = samples(metrics)
    assert values[("chat_connections_open", ())] == 1.0
    assert values[("chat_connections_total", ())] == 2.0
    assert values[("chat_joins_total", ())] == 1.0
    assert values[("chat_messages_in_total", ())] == 3.0
    assert values[("chat_deliveries_total", ())] == 30.0
    assert values[("chat_rejected_lines_total", (("reason", "too_long"),))] == 1.0
    assert values[("chat_slow_consumer_disconnects_total", ())] == 1.0
    assert values[("chat_redis_reconnects_total", (("connection", "subscriber"),))] == 1.0
    assert values[("chat_redis_reconnects_total", (("connection", "command"),))] == 0.0
    assert values[("chat_publish_latency_seconds_bucket", (("le", "0.0001"),))] == 0.0
    assert values[("chat_publish_latency_seconds_bucket", (("le", "0.0005"),))] == 1.0
    assert values[("chat_publish_latency_seconds_count", ())] == 1.0
    assert values[("chat_subscriber_lag_seconds_bucket", (("le", "0.0025"),))] == 0.0
    assert values[("chat_subscriber_lag_seconds_bucket", (("le", "0.005"),))] == 1.0
    assert values[("chat_redis_up", ())] == 1.0
    assert values[("chat_subscriber_up", ())] == 1.0


def test_histogram_buckets_span_a_tenth_of_a_millisecond_to_a_second() -> None:
    values = samples(Metrics("gw-1"))
    buckets = {
        labels[0][1] for name, labels in values if name == "chat_publish_latency_seconds_bucket"
    }
    assert {"0.0001", "0.001", "0.01", "0.1", "1.0", "+Inf"} <= buckets


def test_negative_lag_from_clock_skew_is_clamped_to_zero() -> None:
    metrics = Metrics("gw-1")
    metrics.observe_subscriber_lag(-0.5)
    values = samples(metrics)
    assert values[("chat_subscriber_lag_seconds_sum", ())] == 0.0
    assert values[("chat_subscriber_lag_seconds_bucket", (("le", "0.0001"),))] == 1.0


def test_gateways_in_one_process_have_separate_registries() -> None:
    first, second = Metrics("gw-a"), Metrics("gw-b")
    first.joins_total.inc()
    assert samples(first)[("chat_joins_total", ())] == 1.0
    assert samples(second)[("chat_joins_total", ())] == 0.0
    assert ("chat_gateway_info", (("gateway", "gw-b"),)) in samples(second)
    # Nothing leaks into the process-global registry.
    global_body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    assert b"chat_" not in global_body
