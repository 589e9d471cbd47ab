"""OpenTelemetry tracing and JSON logs with trace_id and order_id.

Trace context travels in Kafka headers (W3C traceparent/tracestate) and is stored in outbox rows, so the relay's
publish span continues the trace of the transaction that wrote the row.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult, TraceIdRatioBased
from pythonjsonlogger.json import JsonFormatter

_order_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("oms_order_id", default=None)

# As aiokafka hands them over: a header's value may be null, and its bytes need not be text.
Headers = Sequence[tuple[str, bytes | None]]

TRACE_HEADERS = ("traceparent", "tracestate")

# Of the orders whose trace starts here (a channel that sent no trace context), the share whose spans are recorded
# and exported. Recording and exporting every span cost more CPU than all the rest of a hop; the trace context (and
# so every timeline row's trace id) travels whether sampled or not, and a channel that sends a sampled traceparent
# has its order traced whole (parent-based). OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG choose another.
DEFAULT_SAMPLE_RATIO = 0.01


class _LinkedOrRatio(Sampler):
    """For a span that starts a trace: recorded when it links to a sampled span (a batch holding a traced order's
    message, so that order's trace shows the batch, its transaction and its statements), else by trace-id ratio."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        if any(link.context.trace_flags.sampled for link in links or ()):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LinkedOr{self._ratio.get_description()}"


def default_sampler() -> Sampler | None:
    """The sampler the runtime installs: None (the SDK's reading of OTEL_TRACES_SAMPLER) when that is set, else
    parent-based, and for a new trace: recorded when it links to a sampled span, else DEFAULT_SAMPLE_RATIO of them."""
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(_LinkedOrRatio(DEFAULT_SAMPLE_RATIO))


# Whether the installed sampler is the runtime's parent-based default, under which a span whose remote parent is not
# sampled is never recorded: such a span need not be made at all (`span_for`).
_parent_based = False


class _ResourceEncodedOnce(Resource):
    """A resource whose JSON is made once. The SDK's `span.to_json`, which writes each span to the trace file, encodes
    the span's resource again for every span, indented, so through the pure-Python JSON encoder: its closures refer to
    each other, and each call left a reference cycle for the garbage collector. Compact, whatever the indent asked."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._json = super().to_json(indent=None)

    def to_json(self, indent: int | None = None) -> str:
        return self._json


def setup_tracing(service: str, trace_file: str | None) -> TracerProvider:
    global _parent_based, _tracer
    sampler = default_sampler()
    _parent_based = sampler is not None
    resource = _ResourceEncodedOnce(Resource.create({"service.name": f"oms-{service}"}))
    provider = TracerProvider(resource=resource, sampler=sampler)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if trace_file:
        sink = open(trace_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        exporter = ConsoleSpanExporter(out=sink, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    trace.set_tracer_provider(provider)
    # The provider's own tracer, not the proxy's indirection at every span (the global provider: one set before wins).
    _tracer = trace.get_tracer_provider().get_tracer("oms")
    return provider


# A proxy until setup_tracing installs the provider, then the real tracer; get_tracer itself is costly per call.
_tracer: trace.Tracer = trace.get_tracer("oms")


def tracer() -> trace.Tracer:
    return _tracer


def trace_headers(headers: Headers | None) -> dict[str, str]:
    """The W3C trace headers of a Kafka message, as text. W3C allows only ASCII in them: a null or non-ASCII value
    is left out, so a sender's mangled header costs the link to its trace and nothing else."""
    return {k: v.decode("ascii") for k, v in headers or () if k in TRACE_HEADERS and v is not None and v.isascii()}


def extract(headers: Headers | None) -> otel_context.Context:
    """The trace context a Kafka message carries, or an empty one."""
    carried = trace_headers(headers)
    if "tracestate" in carried:
        return propagate.extract(carried)
    return context_from_traceparent(carried.get("traceparent"))


def context_from_traceparent(traceparent: str | None) -> otel_context.Context:
    if (parent := _parent(traceparent)) is not None:
        return trace.set_span_in_context(trace.NonRecordingSpan(parent))
    return propagate.extract({"traceparent": traceparent} if traceparent else {})


def _stand_in(traceparent: str | None) -> trace.NonRecordingSpan | None:
    """Under the default sampler a child of an unsampled parent is never recorded, so the parent's own context stands
    in for it: the trace id travels on just the same, and no span is made, sampled or given an id. None when a span
    is to be made."""
    parent = _parent(traceparent) if _parent_based else None
    if parent is not None and not parent.trace_flags.sampled:
        return trace.NonRecordingSpan(parent)
    return None


def span_for(headers: Headers | None, name: str, kind: trace.SpanKind) -> trace.Span:
    """The span of taking in a Kafka message, a child of the trace context it carries, or its parent's context
    standing in for it (`_stand_in`: most messages)."""
    if _parent_based:
        traceparent = None
        for key, value in headers or ():
            if key == "tracestate":
                traceparent = None
                break
            if key == "traceparent" and value is not None and value.isascii():
                traceparent = value.decode("ascii")
        if (stand_in := _stand_in(traceparent)) is not None:
            return stand_in
    return _tracer.start_span(name, context=extract(headers), kind=kind)


# The one form of traceparent the OMS writes (version 00, lowercase hex): read without the propagators' machinery,
# which cost more than the rest of taking a record in. Anything else goes through the SDK's propagator.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@functools.lru_cache(maxsize=16_384)  # an order's events carry the order's one traceparent, hop after hop
def _parent(traceparent: str | None) -> trace.SpanContext | None:
    if traceparent is None or (match := _TRACEPARENT.fullmatch(traceparent)) is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    return trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(int(match[3], 16)))


def inject(ctx: otel_context.Context | None = None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def traceparent_of(span: trace.Span) -> str | None:
    """The W3C traceparent of a span, as the trace-context propagator writes it (None for an invalid span), without
    the propagators' machinery: five times cheaper, and called for most events written."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def is_sampled(traceparent: str | None) -> bool:
    """Whether a W3C traceparent says its trace is sampled (recorded); False for none or a malformed one."""
    if not traceparent or len(traceparent) != 55:
        return False
    try:
        return bool(int(traceparent[53:], 16) & 1)
    except ValueError:
        return False


@contextlib.contextmanager
def continued(
    traceparent: str | None, name: str, kind: trace.SpanKind, attributes: dict[str, Any]
) -> Iterator[trace.Span]:
    """A span continuing `traceparent`, made current, or its parent's context standing in for it (`_stand_in`; the
    log lines inside carry the trace id either way)."""
    if (stand_in := _stand_in(traceparent)) is not None:
        with trace.use_span(stand_in, end_on_exit=False) as span:
            yield span
        return
    with _tracer.start_as_current_span(
        name, context=context_from_traceparent(traceparent), kind=kind, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def order_context(order_id: Any) -> Iterator[None]:
    """Log lines inside carry this order_id."""
    token = _order_id.set(str(order_id) if order_id is not None else None)
    try:
        yield
    finally:
        _order_id.reset(token)


class _OmsFields(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        span_context = trace.get_current_span().get_span_context()
        if not hasattr(record, "trace_id"):
            record.trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else None
        if not hasattr(record, "order_id"):
            record.order_id = _order_id.get()
        return True


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    # Topics are created by `oms topics create`, by design; FastStream warns about that at every subscriber start.
    handler.addFilter(lambda record: "Auto create topics is disabled" not in record.getMessage())
    handler.addFilter(_OmsFields(service))
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{service}{trace_id}{order_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # FastStream gives its logger a coloured stderr handler of its own at import; route it through ours instead.
    framework = logging.getLogger("faststream")
    framework.handlers.clear()
    framework.propagate = True
    # Per-message framework chatter would drown the lines that matter.
    for noisy in ("aiokafka", "faststream", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
