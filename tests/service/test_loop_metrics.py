"""The per-request metrics are plain numbers, exposed exactly as prometheus_client's own would be."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.observability.metrics import LATENCY_BUCKETS, LoopCounter, LoopGauge, LoopHistogram

# Values on bucket bounds included: "le" means value <= bound.
OBSERVED = (0.0005, 0.0004, 0.001, 0.0011, 0.005, 0.2, 10.0, 11.0, 0.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The exposition lines without the ``_created`` series (prometheus_client adds a creation time)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_loop_metrics_expose_what_prometheus_client_exposes() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = LoopHistogram("h_seconds", "a histogram", ("route",), LATENCY_BUCKETS, ours)
    reference = Histogram("h_seconds", "a histogram", ["route"], buckets=LATENCY_BUCKETS, registry=theirs)
    counter = LoopCounter("c", "a counter", ("route", "status"), ours)
    reference_counter = Counter("c", "a counter", ["route", "status"], registry=theirs)
    gauge = LoopGauge("g", "a gauge", ("route",), ours)
    reference_gauge = Gauge("g", "a gauge", ["route"], registry=theirs)
    unlabelled = LoopGauge("depth", "an unlabelled gauge", (), ours)
    reference_unlabelled = Gauge("depth", "an unlabelled gauge", registry=theirs)
    for route in ("/a", "/b"):
        for value in OBSERVED:
            histogram.labels(route).observe(value)
            reference.labels(route).observe(value)
        counter.labels(route, "200").inc()
        reference_counter.labels(route, "200").inc()
        gauge.labels(route).inc()
        gauge.labels(route).inc()
        gauge.labels(route).dec()
        reference_gauge.labels(route).inc()
    unlabelled.child.set(7)
    reference_unlabelled.set(7)
    assert exposition(ours) == exposition(theirs)
