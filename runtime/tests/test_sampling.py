"""The runtime's default sampler: a share of new traces, every span of a sampled trace, and a batch whenever it holds
a message of a sampled trace (so a traced order shows its batches, their transactions and statements)."""

import gc
import json

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    set_span_in_context,
)

from oms_runtime import telemetry

SAMPLED = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(TraceFlags.SAMPLED))
UNSAMPLED = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4737, 0x00F067AA0BA902B8, True, TraceFlags(0))
NO_PARENT = set_span_in_context(INVALID_SPAN)
KIND = SpanKind.CONSUMER


def tracer(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    return TracerProvider(sampler=telemetry.default_sampler()).get_tracer("test")


def test_a_batch_holding_a_message_of_a_sampled_trace_is_recorded(monkeypatch):
    batch = tracer(monkeypatch).start_span("process t", context=NO_PARENT, links=[Link(UNSAMPLED), Link(SAMPLED)])
    assert batch.is_recording()


def test_spans_follow_their_parents_decision(monkeypatch):
    spans = tracer(monkeypatch)
    assert spans.start_span("child", context=set_span_in_context(_remote(SAMPLED))).is_recording()
    assert not spans.start_span("child", context=set_span_in_context(_remote(UNSAMPLED))).is_recording()


def test_of_new_traces_without_sampled_links_about_one_in_a_hundred_is_recorded(monkeypatch):
    spans = tracer(monkeypatch)
    recorded = sum(
        spans.start_span("b", context=NO_PARENT, links=[Link(UNSAMPLED)]).is_recording() for _ in range(5000)
    )
    assert 10 <= recorded <= 120


def test_the_standard_variable_chooses_another_sampler(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    assert telemetry.default_sampler() is None


def _remote(context: SpanContext) -> NonRecordingSpan:
    return NonRecordingSpan(context)


def _traceparent(context: SpanContext) -> bytes:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}".encode()


def test_a_message_of_an_unsampled_trace_is_taken_in_under_its_parents_context_with_no_span_made(monkeypatch):
    monkeypatch.setattr(telemetry, "_tracer", tracer(monkeypatch))
    monkeypatch.setattr(telemetry, "_parent_based", True)
    span = telemetry.span_for([("ce-type", b"t"), ("traceparent", _traceparent(UNSAMPLED))], "process t", KIND)
    assert not span.is_recording()
    assert span.get_span_context() == UNSAMPLED  # the trace id (and the parent) travel on as they came

    child = telemetry.span_for([("traceparent", _traceparent(SAMPLED))], "process t", KIND)
    assert child.is_recording()
    assert child.get_span_context().trace_id == SAMPLED.trace_id
    assert child.parent.span_id == SAMPLED.span_id

    # Anything but the plain form goes the SDK's way: with a tracestate, or with no trace context at all.
    headers = [("traceparent", _traceparent(UNSAMPLED)), ("tracestate", b"vendor=1")]
    with_state = telemetry.span_for(headers, "process t", KIND)
    assert with_state.get_span_context().trace_id == UNSAMPLED.trace_id
    assert with_state.get_span_context().span_id != UNSAMPLED.span_id
    assert telemetry.span_for([], "process t", KIND).get_span_context().is_valid


def test_under_another_sampler_every_message_gets_a_span_of_its_own(monkeypatch):
    monkeypatch.setattr(telemetry, "_tracer", TracerProvider().get_tracer("test"))  # the SDK's default: parent-based
    monkeypatch.setattr(telemetry, "_parent_based", False)
    span = telemetry.span_for([("traceparent", _traceparent(UNSAMPLED))], "process t", KIND)
    assert span.get_span_context().trace_id == UNSAMPLED.trace_id
    assert span.get_span_context().span_id != UNSAMPLED.span_id


def test_writing_a_span_as_json_leaves_nothing_for_the_garbage_collector():
    """The trace file's line for a span (`span.to_json`) re-encoded the resource for every span through the
    pure-Python JSON encoder, whose closures are a reference cycle; the runtime's resource is encoded once."""
    resource = Resource.create({"service.name": "oms-probe"})
    provider = TracerProvider(resource=telemetry._ResourceEncodedOnce(resource))
    with provider.get_tracer("test").start_as_current_span("process oms.probe") as span:
        span.set_attribute("messaging.kafka.offset", 7)
    gc.collect()
    gc.disable()
    try:
        line = json.loads(span.to_json(indent=None))
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert line["resource"] == {"attributes": dict(resource.attributes), "schema_url": ""}
    assert line["name"] == "process oms.probe"


def test_a_traceparent_is_written_as_the_trace_context_propagator_writes_it(monkeypatch):
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    spans = tracer(monkeypatch)
    for span in (_remote(SAMPLED), _remote(UNSAMPLED), spans.start_span("s", context=NO_PARENT)):
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
        assert telemetry.traceparent_of(span) == carrier["traceparent"]
    assert telemetry.traceparent_of(INVALID_SPAN) is None


def test_a_span_continuing_an_unsampled_trace_is_its_parents_context_made_current(monkeypatch):
    from opentelemetry import trace

    monkeypatch.setattr(telemetry, "_tracer", tracer(monkeypatch))
    monkeypatch.setattr(telemetry, "_parent_based", True)
    unsampled = _traceparent(UNSAMPLED).decode()
    with telemetry.continued(unsampled, "send", SpanKind.CLIENT, {}) as span:
        assert trace.get_current_span() is span
        assert not span.is_recording()
        assert telemetry.traceparent_of(span) == unsampled  # the mail's event continues the trace as it came
    with telemetry.continued(_traceparent(SAMPLED).decode(), "send", SpanKind.CLIENT, {"a": 1}) as span:
        assert span.is_recording()
        assert span.parent.span_id == SAMPLED.span_id
    with telemetry.continued(None, "send", SpanKind.CLIENT, {}) as span:
        assert span.get_span_context().is_valid  # no trace to continue: a new one


def test_under_another_sampler_a_continued_span_is_made_whatever_its_parent(monkeypatch):
    monkeypatch.setattr(telemetry, "_tracer", TracerProvider().get_tracer("test"))
    monkeypatch.setattr(telemetry, "_parent_based", False)
    with telemetry.continued(_traceparent(UNSAMPLED).decode(), "send", SpanKind.CLIENT, {}) as span:
        assert span.get_span_context().trace_id == UNSAMPLED.trace_id
        assert span.get_span_context().span_id != UNSAMPLED.span_id
