"""The runtime's default sampler: a share of new traces, every span of a sampled trace, and a batch whenever it holds
a message of a sampled trace (so a traced order shows its batches, their transactions and statements)."""

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import INVALID_SPAN, Link, NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from oms_runtime import telemetry

SAMPLED = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(TraceFlags.SAMPLED))
UNSAMPLED = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4737, 0x00F067AA0BA902B8, True, TraceFlags(0))
NO_PARENT = set_span_in_context(INVALID_SPAN)


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
