"""OpenTelemetry tracing (TRACING=true, the optional extra ``otel``): the worker is no hole in a trace.

Per batch, one ``sentiment.batch`` span with a child span per stage (decode,
tokenize, infer, outputs, publish), linked to the trace context of each input
that carries one (W3C ``traceparent`` / ``tracestate`` headers). Per traced
input, one ``sentiment.score`` span, a child of the producer's span, so the
trace goes on through the worker: its context is the ``traceparent`` written on
that input's output (outputs of untraced inputs carry the batch span's). At
least-once commits get a ``sentiment.commit`` span of their own.

Exported with OTLP over HTTP, configured by the standard ``OTEL_*`` variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``,
``OTEL_BSP_*``...); ``OTEL_TRACES_EXPORTER=console`` prints spans instead, ``none``
drops them (what tracing costs the worker itself, for the benchmark).
Off by default; when off, nothing of OpenTelemetry is imported and the
pipeline skips every tracing call (one check per batch).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Optional

Header = tuple[str, bytes]
MAX_LINKS = 128  # the SDK's default link limit per span


class TracingUnavailable(RuntimeError):
    """TRACING=true but the otel extra is not installed."""


def _getter() -> Any:
    from opentelemetry.propagators.textmap import Getter

    class HeaderGetter(Getter):  # type: ignore[misc]
        """Reads W3C trace headers from a Kafka record's (name, bytes) header list."""

        def get(self, carrier: Sequence[Header], key: str) -> Optional[list[str]]:
            values = [v.decode("latin-1") for k, v in carrier if k == key and v is not None]
            return values or None

        def keys(self, carrier: Sequence[Header]) -> list[str]:
            return [k for k, _ in carrier]

    return HeaderGetter()


class Tracing:
    """The worker's tracer; ``exporter`` (tests) replaces the one the OTEL_* variables describe."""

    def __init__(self, exporter: Any = None, *, batch_processor: bool = True) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise TracingUnavailable(
                "TRACING=true needs the otel extra: pip install 'sentiment-worker[otel]'"
            ) from exc
        if exporter is None:
            exporter = _exporter_from_environment()
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "sentiment-worker")})
        self.provider = TracerProvider(resource=resource)
        processor = BatchSpanProcessor(exporter) if batch_processor else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("sentiment-worker")
        self._propagator = TraceContextTextMapPropagator()
        self._getter = _getter()

    def extract(self, headers: Sequence[Header]) -> Any:
        """The trace context a record's headers carry (W3C traceparent)."""
        return self._propagator.extract(headers, getter=self._getter)

    def inject(self, ctx: Any) -> tuple[Header, ...]:
        """Headers that carry ``ctx`` (traceparent, and tracestate where there is one)."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=ctx)
        return tuple((k, v.encode("latin-1")) for k, v in carrier.items())

    def batch(self, records: Sequence[Any], started_ns: int) -> "BatchTrace":
        """A batch's trace, started when it was consumed."""
        return BatchTrace(self, records, started_ns)

    def commit(self, offsets: dict[Any, int], started_ns: int, ok: bool) -> None:
        span = self.tracer.start_span("sentiment.commit", start_time=started_ns)
        span.set_attribute("messaging.kafka.partitions", len(offsets))
        span.set_attribute("sentiment.committed", ok)
        span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()


def _exporter_from_environment() -> Any:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip()
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind == "none":  # spans are made and dropped: what tracing costs the worker itself
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

        class Discard(SpanExporter):  # type: ignore[misc]
            def export(self, spans: Any) -> Any:
                return SpanExportResult.SUCCESS

        return Discard()
    if kind not in ("otlp", ""):
        raise TracingUnavailable(f"OTEL_TRACES_EXPORTER={kind}: otlp (OTLP over HTTP), console or none")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class BatchTrace:
    """The spans of one batch: the batch span, its stage spans, one span per traced input."""

    def __init__(self, tracing: Tracing, records: Sequence[Any], started_ns: int) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanKind

        self._tracing = tracing
        self._started_ns = started_ns
        tracer = tracing.tracer
        parents: dict[int, Any] = {}  # index -> the input's span context
        for index, record in enumerate(records):
            headers = record.headers
            if headers and any(k == "traceparent" for k, _ in headers):
                ctx = tracing.extract(headers)
                span_context = trace.get_current_span(ctx).get_span_context()
                if span_context.is_valid:
                    parents[index] = ctx
        links = [
            Link(trace.get_current_span(ctx).get_span_context()) for ctx in list(parents.values())[:MAX_LINKS]
        ]
        self.span = tracer.start_span("sentiment.batch", kind=SpanKind.CONSUMER, links=links, start_time=started_ns)
        self.span.set_attribute("messaging.batch.message_count", len(records))
        self.span.set_attribute("messaging.system", "kafka")
        batch_ctx = trace.set_span_in_context(self.span)
        self._batch_headers = tracing.inject(batch_ctx)
        self._record_spans: dict[int, Any] = {}
        self._record_headers: dict[int, tuple[Header, ...]] = {}
        own = Link(self.span.get_span_context())
        for index, ctx in parents.items():
            record = records[index]
            span = tracer.start_span(
                "sentiment.score", context=ctx, kind=SpanKind.CONSUMER, links=[own], start_time=started_ns
            )
            span.set_attribute("messaging.destination.name", record.topic)
            span.set_attribute("messaging.kafka.partition", record.partition)
            span.set_attribute("messaging.kafka.offset", record.offset)
            self._record_spans[index] = span
            self._record_headers[index] = tracing.inject(trace.set_span_in_context(span))

    def headers(self, index: int) -> tuple[Header, ...]:
        """traceparent (and tracestate) for the output of the batch's ``index``-th record."""
        return self._record_headers.get(index, self._batch_headers)

    def stage(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        from opentelemetry import trace

        span = self._tracing.tracer.start_span(name, context=trace.set_span_in_context(self.span), start_time=start_ns)
        for key, value in attributes.items():
            span.set_attribute(f"sentiment.{key}", value)
        span.end(end_time=max(start_ns, end_ns))

    def end(self, *, stored: bool, end_ns: Optional[int] = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        end_ns = end_ns or time.time_ns()
        status = Status(StatusCode.OK) if stored else Status(StatusCode.ERROR, "not stored (abandoned)")
        for span in self._record_spans.values():
            span.set_status(status)
            span.end(end_time=end_ns)
        self.span.set_status(status)
        self.span.end(end_time=end_ns)
