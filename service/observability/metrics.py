"""Prometheus metrics on a per-app CollectorRegistry (several apps can live in one process).

The metrics every request touches (requests, latency, in flight, queue wait and depth) are
plain numbers the event loop adds to and the registry reads at scrape time: a
prometheus_client metric takes a lock per update, several microseconds per request in all.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from service.observability.drift import DriftCollector
from service.observability.logs import dropped_access_lines, dropped_log_records

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = LoopCounter(
            "hc_http_requests", "HTTP requests by route and status code", ("route", "method", "status"), r
        )
        self.latency = LoopHistogram(
            "hc_http_request_duration_seconds", "HTTP request latency", ("route",), LATENCY_BUCKETS, r
        )
        self.in_flight = LoopGauge("hc_http_requests_in_flight", "HTTP requests being handled", ("route",), r)
        self.queue_wait = LoopHistogram(
            "hc_batch_queue_wait_seconds", "Time a request waited before its batch started", (), LATENCY_BUCKETS, r
        )
        self.compute = Histogram(
            "hc_batch_compute_seconds", "Model time per batch (encode + forward)", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_texts = Histogram("hc_batch_size_texts", "Texts per batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            "hc_batch_size_requests", "Requests merged per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = LoopGauge("hc_queue_depth_texts", "Texts waiting for the model", (), r)
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
        # Several versions: answers by version, and the shadow version against the served answers.
        # Answers by version: a plain dict the event loop adds to (a labelled Counter's lock cost
        # most of a microsecond per request), read at scrape time.
        self.answers: dict[str, int] = {}
        r.register(_Answers(self.answers))
        self.shadow_agreement = Counter(
            "hc_shadow_texts_total",
            "Texts the shadow version scored, by whether its label agrees with the served one (agree, disagree)",
            ["outcome"],
            registry=r,
        )
        self.shadow_top_difference = Summary(
            "hc_shadow_top_probability_abs_difference",
            "Per shadowed text, |served - shadow| probability of the served label (sum/count: the mean)",
            registry=r,
        )
        self.shadow_skipped = Counter(
            "hc_shadow_skipped_total",
            "Answered requests the shadow did not score, by reason (busy: the shadow's buffer was full; failed)",
            ["reason"],
            registry=r,
        )
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
        self.queue_wait.child.observe(seconds)

    def set_queue_depth(self, texts: int) -> None:
        self.queue_depth.child.value = texts

    def count_dropped(self, reason: str) -> None:
        self.dropped.labels(reason).inc()

    def set_model(self, version: str, device: str) -> None:
        self.model_info.info({"version": version, "device": device})
        self.model_loaded.set_to_current_time()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- metrics updated on the event loop only ---------------------------------------------------
class _Value:
    """One labelled series of a counter or gauge: a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _Buckets:
    """One labelled series of a histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # "le": value <= bound
        self.total += value


S = TypeVar("S", _Value, _Buckets)


class _LoopMetric(Generic[S]):
    """A metric family whose series only the event loop's thread updates; read at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        registry: CollectorRegistry,
        new: Callable[[], S],
    ) -> None:
        self.name, self.documentation, self.label_names = name, documentation, tuple(labels)
        self.series: dict[tuple[str, ...], S] = {}
        self._new: Callable[[], S] = new
        if not self.label_names:
            self.labels()  # an unlabelled series is exported at 0 from the start
        registry.register(self)  # type: ignore[arg-type]  # collect() is on each subclass

    def labels(self, *values: str) -> S:
        """The series for these label values (created at 0 on first use, as prometheus_client does)."""
        key = tuple(str(v) for v in values)
        if len(key) != len(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {key}")
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = self._new()
        return series

    @property
    def child(self) -> S:
        """The one series of an unlabelled metric."""
        return self.labels()

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _LoopValue(_LoopMetric[_Value]):
    """A counter or gauge: one number per series, exposed as ``family``."""

    family: type[CounterMetricFamily] | type[GaugeMetricFamily]

    def __init__(self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry) -> None:
        super().__init__(name, documentation, labels, registry, _Value)

    def collect(self) -> Iterator[Metric]:
        family = self.family(self.name, self.documentation, labels=self.label_names)
        for key, series in list(self.series.items()):
            family.add_metric(key, series.value)
        yield family


class LoopCounter(_LoopValue):
    """A counter (exposed as ``<name>_total``)."""

    family = CounterMetricFamily


class LoopGauge(_LoopValue):
    """A gauge."""

    family = GaugeMetricFamily


class LoopHistogram(_LoopMetric[_Buckets]):
    """A histogram with fixed buckets."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.bounds = tuple(sorted(buckets))
        super().__init__(name, documentation, labels, registry, lambda: _Buckets(self.bounds))

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for key, series in list(self.series.items()):
            cumulative, running = [], 0
            for bound, count in zip((*self.bounds, float("inf")), list(series.counts), strict=True):
                running += count
                cumulative.append((_le(bound), running))
            family.add_metric(list(key), cumulative, sum_value=series.total)
        yield family


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``0.005``, ``10.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Answers:
    """``hc_model_answers_total{version}``: requests answered, by the model version that computed them."""

    def __init__(self, answers: dict[str, int]) -> None:
        self.answers = answers

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "hc_model_answers", "Requests answered, by the model version that computed them", labels=["version"]
        )
        for version, count in list(self.answers.items()):
            family.add_metric([version], count)
        yield family


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
