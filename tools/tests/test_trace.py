"""`oms trace`'s reading of spans, apart from the services that write them (tests/e2e/test_observability.py runs it
on the trace files of a real flow): the SDK's JSON lines and Jaeger's query API give the same spans, a batch hangs
under the message it applied, and the waterfall says where a message waited and which span failed."""

from __future__ import annotations

import json
from pathlib import Path

from oms_tools import trace

ORDER = "6f9c3c3e-5d7b-5a55-9d39-0b9a9c1b2f10"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BATCH_TRACE = "0af7651916cd43dd8448eb211c80319c"


def sdk_span(name, span_id, parent=None, *, trace_id=TRACE, start, end, service="oms-order", links=(), **attributes):
    """A span as the OpenTelemetry SDK's console exporter writes it into OMS_TRACE_FILE."""
    return {
        "name": name,
        "context": {"trace_id": f"0x{trace_id}", "span_id": f"0x{span_id}", "trace_state": "[]"},
        "kind": "SpanKind.INTERNAL",
        "parent_id": f"0x{parent}" if parent else None,
        "start_time": f"2026-11-29T10:00:{start:09.6f}Z",
        "end_time": f"2026-11-29T10:00:{end:09.6f}Z",
        "status": attributes.pop("status", {"status_code": "UNSET"}),
        "attributes": attributes,
        "events": [],
        "links": [{"context": {"trace_id": f"0x{t}", "span_id": f"0x{s}"}, "attributes": {}} for t, s in links],
        "resource": {"attributes": {"service.name": service}, "schema_url": ""},
    }


def trace_file(tmp_path: Path) -> Path:
    spans = [
        sdk_span("process oms.channel.orders.v1", "a1", start=0, end=0.2, **{"cloudevents.event_subject": ORDER}),
        sdk_span("publish oms.order.events.v1", "a2", "a1", start=0.25, end=0.251),
        sdk_span("process oms.order.events.v1", "b1", "a2", start=0.3, end=0.4, service="oms-routing",
                 **{"cloudevents.event_subject": ORDER}),
        sdk_span("process oms.order.events.v1", "c1", trace_id=BATCH_TRACE, start=0.31, end=0.39,
                 service="oms-routing", links=[(TRACE, "b1")], **{"messaging.batch.message_count": 7}),
        sdk_span("INSERT inbox", "c2", "c1", trace_id=BATCH_TRACE, start=0.32, end=0.33, service="oms-routing",
                 status={"status_code": "ERROR", "description": "UniqueViolationError"}),
        # Another order's trace, in the same file: left out.
        sdk_span("process oms.channel.orders.v1", "d1", trace_id="1" * 32, start=0, end=1,
                 **{"cloudevents.event_subject": "00000000-0000-0000-0000-000000000000"}),
    ]  # fmt: skip
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in spans))
    return path


def test_the_files_give_the_orders_trace_and_the_batches_that_applied_its_messages(tmp_path):
    spans = trace.read_files([trace_file(tmp_path)], ORDER)
    assert sorted(s.span_id for s in spans) == ["a1", "a2", "b1", "c1", "c2"]
    batch = next(s for s in spans if s.span_id == "c1")
    assert batch.links == [(TRACE, "b1")] and batch.service == "oms-routing"
    assert next(s for s in spans if s.span_id == "c2").error == "UniqueViolationError"


def test_the_waterfall_nests_the_batch_under_its_message_and_says_where_the_message_waited(tmp_path):
    out = trace.waterfall(ORDER, trace.read_files([trace_file(tmp_path)], ORDER), width=160).splitlines()
    assert out[0].startswith(f"order {ORDER}: 5 spans in 2 services (oms-order, oms-routing)")
    rows = [line for line in out if line.lstrip().startswith("+")]
    assert [row.split()[0] for row in rows] == ["+0.0ms", "+250.0ms", "+300.0ms", "+310.0ms", "+320.0ms"]
    routing = next(row for row in rows if "process oms.order.events.v1  (waited" in row)
    assert "(waited 49.0ms in the topic)" in routing and "100.0ms" in routing
    assert any("process oms.order.events.v1 [batch of 7]" in row for row in rows)
    assert any("INSERT inbox" in row and "ERROR: UniqueViolationError" in row for row in rows)
    # Indented by depth: the message, its publish, the next hop, the batch that applied it, the batch's statement.
    operations = [row[41:] for row in rows]  # after start, duration and service
    assert [(len(op) - len(op.lstrip())) // 2 for op in operations] == [0, 1, 2, 3, 4]


def test_jaegers_answer_gives_the_same_spans(tmp_path):
    # The shape of Jaeger's GET /api/traces/{id} (data[0]): microseconds, references, processes.
    document = {
        "traceID": TRACE,
        "spans": [
            {
                "traceID": TRACE,
                "spanID": "a1",
                "operationName": "process oms.channel.orders.v1",
                "references": [],
                "startTime": 1_795_946_400_000_000,
                "duration": 200_000,
                "tags": [{"key": "cloudevents.event_subject", "type": "string", "value": ORDER}],
                "processID": "p1",
            },
            {
                "traceID": TRACE,
                "spanID": "a2",
                "operationName": "publish oms.order.events.v1",
                "references": [{"refType": "CHILD_OF", "traceID": TRACE, "spanID": "a1"}],
                "startTime": 1_795_946_400_250_000,
                "duration": 1_000,
                "tags": [{"key": "otel.status_code", "type": "string", "value": "ERROR"}],
                "processID": "p1",
            },
        ],
        "processes": {"p1": {"serviceName": "oms-order", "tags": []}},
    }
    first, second = trace.from_jaeger(document)
    assert (first.name, first.service, first.parent_id, first.duration) == (
        "process oms.channel.orders.v1",
        "oms-order",
        None,
        200_000_000,
    )
    assert second.parent_id == "a1" and second.error == "error"
    assert second.start - first.start == 250_000_000
