"""One order's trace as a waterfall in the terminal: every span of the order's trace (the messaging spans of each
hop, the relay's publishes, the notifications' sends), the batches that applied its messages with their database
transactions and statements, and the HTTP requests about it; each with its service, operation, start offset,
duration and error, and before each hop how long the message waited in its topic.

Spans come from the services' trace files (OMS_TRACE_FILE: one JSON span per line, as the SDK's console exporter
writes them) or from Jaeger's HTTP query API. A batch's span is in a trace of its own (one batch serves many orders)
and links to the spans of its messages: the files have those links; Jaeger is asked only for the order's trace."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start: int  # ns since the epoch
    end: int
    error: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace_id, span_id)
    children: list[Span] = field(default_factory=list, repr=False)

    @property
    def duration(self) -> int:
        return self.end - self.start


def _hex(value: str | None) -> str | None:
    return value[2:] if value and value.startswith("0x") else value


def _ns(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def from_sdk_json(document: dict[str, Any]) -> Span:
    """A span as the OpenTelemetry SDK's console exporter writes it (what OMS_TRACE_FILE holds)."""
    status = document.get("status") or {}
    error = None
    if status.get("status_code") == "ERROR":
        error = status.get("description") or "error"
    return Span(
        trace_id=_hex(document["context"]["trace_id"]),
        span_id=_hex(document["context"]["span_id"]),
        parent_id=_hex(document.get("parent_id")),
        name=document["name"],
        service=(document.get("resource") or {}).get("attributes", {}).get("service.name", "?"),
        start=_ns(document["start_time"]),
        end=_ns(document["end_time"]),
        error=error,
        attributes=document.get("attributes") or {},
        links=[(_hex(x["context"]["trace_id"]), _hex(x["context"]["span_id"])) for x in document.get("links") or ()],
    )


def from_jaeger(trace: dict[str, Any]) -> list[Span]:
    """The spans of one trace as Jaeger's HTTP query API returns it (GET /api/traces/{id}: data[0])."""
    processes = trace.get("processes", {})
    spans = []
    for s in trace["spans"]:
        tags = {t["key"]: t["value"] for t in s.get("tags", ())}
        parent = next((r["spanID"] for r in s.get("references", ()) if r.get("refType") == "CHILD_OF"), None)
        links = [(r["traceID"], r["spanID"]) for r in s.get("references", ()) if r.get("refType") == "FOLLOWS_FROM"]
        error = None
        if tags.get("otel.status_code") == "ERROR" or tags.get("error") in (True, "true"):
            error = tags.get("otel.status_description") or "error"
        start = int(s["startTime"]) * 1000
        spans.append(
            Span(
                trace_id=s["traceID"],
                span_id=s["spanID"],
                parent_id=parent,
                name=s["operationName"],
                service=processes.get(s.get("processID"), {}).get("serviceName", "?"),
                start=start,
                end=start + int(s["duration"]) * 1000,
                error=error,
                attributes=tags,
                links=links,
            )
        )
    return spans


def _lines(paths: Iterable[Path]) -> Iterator[str]:
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as f:
            yield from f


def _about(span: Span, order_id: str) -> bool:
    """A span of the order: its event's subject, or an HTTP request whose path names it."""
    return span.attributes.get("cloudevents.event_subject") == order_id or order_id in str(
        span.attributes.get("url.path", "")
    )


def read_files(paths: list[Path], order_id: str) -> list[Span]:
    """The order's spans from trace files: three passes, each parsing only the lines that can matter (a text match
    first), so a long `make run` file is read, not decoded."""
    traces: set[str] = set()
    for line in _lines(paths):
        if order_id in line:
            span = from_sdk_json(json.loads(line))
            if _about(span, order_id):
                traces.add(span.trace_id)
    if not traces:
        return []
    found: dict[str, Span] = {}
    batches: set[str] = set()
    for line in _lines(paths):
        if any(t in line for t in traces):
            span = from_sdk_json(json.loads(line))
            if span.trace_id in traces:
                found[span.span_id] = span
            elif any(t in traces for t, _ in span.links):
                batches.add(span.trace_id)  # a batch that applied one of the order's messages
    if batches:
        for line in _lines(paths):
            if any(t in line for t in batches):
                span = from_sdk_json(json.loads(line))
                if span.trace_id in batches:
                    found[span.span_id] = span
    return list(found.values())


def read_jaeger(url: str, order_id: str, services: Iterable[str]) -> list[Span]:
    """The order's trace from Jaeger: found by the order id its spans carry as their event's subject."""
    with httpx.Client(base_url=url.rstrip("/"), timeout=10) as http:
        ids: set[str] = set()
        for service in services:
            r = http.get(
                "/api/traces",
                params={"service": service, "tags": json.dumps({"cloudevents.event_subject": order_id}), "limit": 20},
            )
            r.raise_for_status()
            ids |= {t["traceID"] for t in r.json().get("data") or ()}
        spans = []
        for trace_id in sorted(ids):
            r = http.get(f"/api/traces/{trace_id}")
            r.raise_for_status()
            for trace in r.json().get("data") or ():
                spans += from_jaeger(trace)
    return spans


def _tree(spans: list[Span]) -> list[Span]:
    """Parents and children; a batch hangs under the first of the order's messages it links to (it is the handling
    of that message), the rest are roots. Everything in start order."""
    by_id = {s.span_id: s for s in spans}
    roots = []
    for span in sorted(spans, key=lambda s: (s.start, -s.duration)):
        parent = by_id.get(span.parent_id) if span.parent_id else None
        if parent is None:
            parent = next((by_id[s] for _, s in span.links if s in by_id), None)
        if parent is not None and parent is not span:
            parent.children.append(span)
        else:
            roots.append(span)
    return roots


def _duration(ns: int) -> str:
    ms = ns / 1e6
    if ms < 1000:
        return f"{ms:.1f}ms"
    return f"{ms / 1000:.2f}s"


def _label(span: Span) -> str:
    count = span.attributes.get("messaging.batch.message_count")
    return f"{span.name} [batch of {count}]" if count is not None else span.name


def waterfall(order_id: str, spans: list[Span], width: int | None = None) -> str:
    """The spans as text: one line per span, indented under its parent, with a bar on the trace's time axis."""
    width = width or shutil.get_terminal_size((160, 40)).columns
    roots = _tree(spans)
    origin = min(s.start for s in spans)
    last = max(s.end for s in spans)
    total = max(last - origin, 1)
    trace_ids = sorted({s.trace_id for s in spans if _about(s, order_id)})
    services = sorted({s.service for s in spans})
    errors = sum(1 for s in spans if s.error)
    head = [
        f"order {order_id}: {len(spans)} spans in {len(services)} services ({', '.join(services)}), "
        f"{_duration(total)} from first to last; trace {', '.join(trace_ids)}"
        + (f"; {errors} with errors" if errors else ""),
        f"{'start':>10} {'duration':>9}  {'service':<18} operation",
    ]
    rows: list[tuple[str, str]] = []

    def visit(span: Span, depth: int, previous: Span | None) -> None:
        text = f"{'+' + _duration(span.start - origin):>10} {_duration(span.duration):>9}  {span.service:<18} "
        text += "  " * depth + _label(span)
        if previous is not None and previous.name.startswith("publish ") and span.name.startswith("process "):
            text += f"  (waited {_duration(max(span.start - previous.end, 0))} in the topic)"
        if span.error:
            text += f"  ERROR: {span.error}"
        rows.append((text, _bar(span, origin, total)))
        for child in span.children:
            visit(child, depth + 1, span)

    for root in roots:
        visit(root, 0, None)
    # The bars on the right, where the terminal leaves room for them (none on a narrow one).
    pad = max(len(text) for text, _ in rows)
    cells = min(width - pad - 3, 60)
    if cells < 10:
        return "\n".join(head + [text for text, _ in rows])
    return "\n".join(head + [f"{text.ljust(pad)}  |{bar(cells)}|" for text, bar in rows])


def _bar(span: Span, origin: int, total: int):
    def draw(cells: int) -> str:
        first = min(int((span.start - origin) / total * cells), cells - 1)
        length = min(max(round(span.duration / total * cells), 1), cells - first)
        return " " * first + ("!" if span.error else "#") * length + " " * (cells - first - length)

    return draw
