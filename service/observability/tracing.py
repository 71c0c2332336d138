"""OpenTelemetry tracing, configured only by the standard environment variables and off unless
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or ``console``; ``none`` or unset: off).

The SDK reads the rest itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (the
resource), ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` (the sampler),
``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other ``OTEL_EXPORTER_OTLP_*`` variables (the OTLP/HTTP
exporter). Needs the ``otel`` extra; without tracing nothing here is imported.

Three kinds of span:

- the request (kind SERVER, named ``METHOD ROUTE``), continuing the caller's W3C
  ``traceparent``; attributes: route, status, model version, text count, request id;
- its queue wait (a child of the request: from submission until its batch started);
- the model batch (its own trace, linked to every request span it served): texts, requests,
  compute time, device, model version.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

EXPORTERS = ("otlp", "console")


class TracingError(RuntimeError):
    """Tracing was asked for and cannot be set up (a bad exporter name, the extra not installed)."""


class Tracing:
    """A tracer and the propagator the server uses; ``Tracing(provider)`` for any TracerProvider."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("service")
        self._propagator = TraceContextTextMapPropagator()
        self._server = SpanKind.SERVER

    # -- the request -----------------------------------------------------------------------
    def start_request(self, name: str, traceparent: bytes | None, tracestate: bytes | None) -> Any:
        """The request's span, a child of the caller's ``traceparent`` when it sent a valid one."""
        context = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
            context = self._propagator.extract(carrier)
        return self.tracer.start_span(name, context=context, kind=self._server)

    @staticmethod
    def trace_id(span: Any) -> str:
        """The span's trace id as 32 hex digits (for the access log)."""
        return f"{span.get_span_context().trace_id:032x}"

    # -- the batch -------------------------------------------------------------------------
    def batch_observer(self, device: str) -> Callable[[float, float, Sequence[tuple[float, Any]], int, str], None]:
        """``observe(started, finished, requests, texts, version)`` for a batcher: one queue span per
        traced request (``requests``: its enqueue time and span context) and one batch span linked to
        them all. Times are ``time.monotonic()`` seconds."""
        from opentelemetry.trace import Link, NonRecordingSpan, set_span_in_context

        tracer = self.tracer

        def observe(
            started: float, finished: float, requests: Sequence[tuple[float, Any]], texts: int, version: str
        ) -> None:
            offset = time.time_ns() - time.monotonic_ns()
            started_ns = int(started * 1e9) + offset
            links = []
            for enqueued, context in requests:
                if context is None:
                    continue
                parent = set_span_in_context(NonRecordingSpan(context))
                queued = tracer.start_span("queue", context=parent, start_time=int(enqueued * 1e9) + offset)
                queued.end(end_time=started_ns)
                links.append(Link(context))
            if not links:
                return
            batch = tracer.start_span(
                "batch",
                context=None,
                links=links,
                start_time=started_ns,
                attributes={
                    "hc.batch.texts": texts,
                    "hc.batch.requests": len(requests),
                    "hc.batch.compute_ms": (finished - started) * 1000,
                    "hc.model.device": device,
                    "hc.model.version": version,
                },
            )
            batch.end(end_time=int(finished * 1e9) + offset)

        return observe

    def shutdown(self) -> None:
        """Export what is still buffered."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


def tracing_from_env(environ: dict[str, str] | None = None) -> Tracing | None:
    """Tracing as the standard variables ask; None when ``OTEL_TRACES_EXPORTER`` is unset or ``none``."""
    env = os.environ if environ is None else environ
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r} (this server has: otlp, console, none)"
        )
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise TracingError(
            f"OTEL_TRACES_EXPORTER={','.join(names)} needs the otel extra: "
            f"pip install 'headline-classifier[otel]' ({exc})"
        ) from None
    provider = TracerProvider(resource=Resource.create())  # sampler and resource from the OTEL_* variables
    for name in names:
        if name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise TracingError(
                    f"the OTLP exporter is not installed: pip install 'headline-classifier[otel]' ({exc})"
                ) from None
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return Tracing(provider)
