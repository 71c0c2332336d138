"""Prometheus metrics on a per-app CollectorRegistry (several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily

from service.observability.drift import DriftCollector
from service.observability.logs import dropped_access_lines, dropped_log_records

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "hc_http_requests_total",
            "HTTP requests by route and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "hc_http_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("hc_http_requests_in_flight", "HTTP requests being handled", ["route"], registry=r)
        self.queue_wait = Histogram(
            "hc_batch_queue_wait_seconds",
            "Time a request waited before its batch started",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "hc_batch_compute_seconds", "Model time per batch (encode + forward)", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_texts = Histogram("hc_batch_size_texts", "Texts per batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            "hc_batch_size_requests", "Requests merged per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("hc_queue_depth_texts", "Texts waiting for the model", registry=r)
        self.model_info = Info("hc_model", "The model version being served", registry=r)
        self.model_loaded = Gauge("hc_model_loaded_timestamp_seconds", "When the served model was loaded", registry=r)
        self.reloads = Counter("hc_model_reloads_total", "Model reload attempts by outcome", ["outcome"], registry=r)
        self.rejected = Counter("hc_rejected_requests_total", "Requests refused by reason", ["reason"], registry=r)
        self.dropped = Counter(
            "hc_dropped_requests_total",
            "Requests taken out of the queue without being computed, by reason (deadline, disconnected)",
            ["reason"],
            registry=r,
        )
        for reason in ("deadline", "disconnected"):
            self.dropped.labels(reason)  # exported at 0 from the start, so rate() works
        self.model_process_restarts = Counter(
            "hc_model_process_restarts_total",
            "Model processes replaced, by reason (exited: it died; stalled: the watchdog stopped it)",
            ["reason"],
            registry=r,
        )
        for reason in ("exited", "stalled"):
            self.model_process_restarts.labels(reason)
        # Drift signals: input tokens / OOV / empty, predicted labels, confidence, and the reference.
        self.drift = DriftCollector()
        r.register(self.drift)
        r.register(_AccessLogDrops())

    # BatchMetrics protocol
    def observe_batch(self, texts: int, requests: int, compute_s: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_requests.observe(requests)
        self.compute.observe(compute_s)

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def set_queue_depth(self, texts: int) -> None:
        self.queue_depth.set(texts)

    def count_dropped(self, reason: str) -> None:
        self.dropped.labels(reason).inc()

    def set_model(self, version: str, device: str) -> None:
        self.model_info.info({"version": version, "device": device})
        self.model_loaded.set_to_current_time()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AccessLogDrops:
    """``hc_access_log_dropped_lines_total`` and ``hc_log_dropped_records_total``, read at scrape time."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "hc_access_log_dropped_lines",
            "Access-log lines dropped because stderr was not draining (the backlog passed its cap)",
            value=dropped_access_lines(),
        )
        yield CounterMetricFamily(
            "hc_log_dropped_records",
            "Other log records dropped because stderr was not draining (one backlog bound for all log output)",
            value=dropped_log_records(),
        )
