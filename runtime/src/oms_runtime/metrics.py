"""Metrics: OpenTelemetry instruments, read by Prometheus at `GET /metrics` on each service's own HTTP port.

Names and units follow the OpenTelemetry semantic conventions where one exists (`messaging.process.duration`,
`http.server.request.duration`, ...) and are `oms.*` otherwise; the Prometheus exporter turns them into Prometheus
names (`messaging_process_duration_seconds`, `oms_consumer_messages_total`, dots in labels become underscores).
docs/architecture.md ("Observability") has the catalogue with every name, unit and label.

What it costs: an instrument call of the SDK takes 5-10 µs on the 2-core machine, so nothing here is recorded per
message. A consumer records its counts once per batch, aggregated by label; the relay once per publish pass; HTTP
once per request. Statements are timed each (a batch sends several) by prometheus_client directly, at a tenth of the
SDK's cost (`statement_done`). Gauges (lag, outbox, a service's own queries) are observable: a scrape reads what a
refresh every `OMS_METRICS_REFRESH_S` found, never a query per scrape. Labels come from bounded sets only (topics,
consumer groups, statuses, channels, sources, templates, the top SKUs); the SDK's cardinality limit (2,000 series per
metric) is the last guard.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import prometheus_client
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

# Seconds. Handlers, statements, sends and requests: from a millisecond to the consumers' 30 s of patience.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Seconds. An order's way through the system and a customer's wait: from 50 ms to a week (backorders wait days).
FLOW_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0,
)  # fmt: skip
# Messages in one batch (the consumers take at most OMS_BATCH_MAX_RECORDS, 500 by default).
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)

# Semantic-convention attribute names, written once.
SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
GROUP = "messaging.consumer.group.name"
PARTITION = "messaging.destination.partition.id"
OPERATION = "messaging.operation.name"
ERROR_TYPE = "error.type"

_registry: Any = None


def meter(name: str) -> otel_metrics.Meter:
    """A meter for a service's own instruments (`oms.order`, ...). Instruments made before `setup` forward to the
    process's provider once it is installed, so services create them at import."""
    return otel_metrics.get_meter(name)


def setup(service: str) -> Any:
    """Install the process's MeterProvider, read by Prometheus, once per process (a Service does, when it is made);
    returns the registry `GET /metrics` renders. Later calls (tests build several services in one process) return the
    first one."""
    global _registry, _statements
    if _registry is not None:
        return _registry
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    # No scope labels: every series would carry otel_scope_name/version, and Prometheus's job already says which
    # service it is.
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": f"oms-{service}"}))
    otel_metrics.set_meter_provider(provider)
    # The exporter writes no `_created` series for the SDK's instruments; nor does this histogram.
    prometheus_client.disable_created_metrics()
    _statements = prometheus_client.Histogram(
        "db_client_operation_duration_seconds",
        "Database statements, by operation and table",
        ["db_system_name", "db_operation_name", "db_collection_name", ERROR_TYPE.replace(".", "_")],
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    _registry = registry
    return registry


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type."""
    if _registry is None:
        return b"", prometheus_client.CONTENT_TYPE_LATEST
    return prometheus_client.generate_latest(_registry), prometheus_client.CONTENT_TYPE_LATEST


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """One value as Prometheus would read it (0 when there is none): for tests in this process. The exporter gives
    every series of a metric the same label names, an absent one as "", which Prometheus reads as no label: so does
    this."""
    if _registry is None:
        return 0.0
    wanted = labels or {}
    return sum(
        s.value
        for family in _registry.collect()
        for s in family.samples
        if s.name == name and {k: v for k, v in s.labels.items() if v != ""} == wanted
    )


_meter = meter("oms.runtime")

# -- consumers (one call per batch) -------------------------------------------------------------------------------

CONSUMED = _meter.create_counter(
    "messaging.client.consumed.messages",
    unit="{message}",
    description="Records delivered to a consumer, counted per batch",
)
PROCESS_DURATION = _meter.create_histogram(
    "messaging.process.duration",
    unit="s",
    description="Time to apply one batch: inbox, handler, outbox and commit, retries and replays included",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
BATCH_SIZE = _meter.create_histogram(
    "oms.consumer.batch.size",
    unit="{message}",
    description="Records per batch a consumer applied",
    explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
)
MESSAGES = _meter.create_counter(
    "oms.consumer.messages",
    unit="{message}",
    description="What became of each record, once its transaction committed: applied, duplicate (the inbox had it), "
    "dead_lettered, skipped (a type the consumer does not handle)",
)
ERRORS = _meter.create_counter(
    "oms.consumer.errors",
    unit="{error}",
    description="Failed attempts to apply a batch or a message (transient ones are retried, others replayed one by "
    "one and dead-lettered)",
)
COMMIT_FAILURES = _meter.create_counter(
    "oms.consumer.offset_commit.failures",
    unit="{commit}",
    description="Offset commits refused or unanswered (error.type TimeoutError: no answer within the consumer's commit "
    "timeout); each is retried with the offsets applied since. The lag gauge counts applied records, so only this "
    "shows offsets held back",
)

# -- the outbox relay (one call per publish pass) -----------------------------------------------------------------

SENT = _meter.create_counter(
    "messaging.client.sent.messages",
    unit="{message}",
    description="Outbox rows the relay published and the broker acknowledged",
)
SEND_DURATION = _meter.create_histogram(
    "messaging.client.operation.duration",
    unit="s",
    description="One publish pass of the relay: from its first send to the broker's last acknowledgement",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
OUTBOX_DELAY = _meter.create_histogram(
    "oms.outbox.delay",
    unit="s",
    description="For each publish pass, how long its oldest row waited: from its transaction to the broker's "
    "acknowledgement",
    explicit_bucket_boundaries_advisory=FLOW_BUCKETS,
)

# -- HTTP and the database ----------------------------------------------------------------------------------------

HTTP_DURATION = _meter.create_histogram(
    "http.server.request.duration",
    unit="s",
    description="HTTP requests by route template (never by path: ids would make a series each)",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
# `db.client.operation.duration`: see `statement_done`.
_statements: Any = None

# -- an order's way through the services --------------------------------------------------------------------------

FLOW = _meter.create_histogram(
    "oms.order.flow.duration",
    unit="s",
    description="From the order's acceptance by the OMS to a step of its flow (oms.flow.step): fulfillment_requested "
    "and shipped (order service), customer_notified (the confirmation mail leaving, notifications service)",
    explicit_bucket_boundaries_advisory=FLOW_BUCKETS,
)


def flow_step(step: str) -> dict[str, str]:
    return {"oms.flow.step": step}


# -- observable gauges: read at scrape time from what the last refresh found ----------------------------------------


class GaugeSource:
    """Something that yields gauge observations from its last refresh: a consumer's lag, a service's outbox.

    Kept in a weak set, so that a service that is gone (tests build many) no longer reports."""

    def lag(self) -> Iterable[Observation]:
        return ()

    def outbox(self) -> dict[str, float] | None:
        return None


_sources: weakref.WeakSet[GaugeSource] = weakref.WeakSet()


def observe(source: GaugeSource) -> None:
    _sources.add(source)


def _lag(_: CallbackOptions) -> Iterable[Observation]:
    for source in list(_sources):
        try:
            yield from source.lag()
        except Exception as error:  # a scrape must never fail for one source
            log.debug("consumer lag not observed: %r", error)


def _outbox(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_: CallbackOptions) -> Iterable[Observation]:
        for source in list(_sources):
            state = source.outbox()
            if state is not None:
                yield Observation(state[field])

    return callback


_meter.create_observable_gauge(
    "oms.consumer.lag",
    callbacks=[_lag],
    unit="{message}",
    description="Records of a partition not applied yet: the partition's end offset (from the fetcher, or asked "
    "every refresh) minus the next offset the consumer group will apply",
)
_meter.create_observable_gauge(
    "oms.outbox.backlog",
    callbacks=[_outbox("backlog")],
    unit="{message}",
    description="Rows waiting in the outbox for the relay (counted up to 100,001)",
)
_meter.create_observable_gauge(
    "oms.outbox.oldest.age",
    callbacks=[_outbox("oldest_age")],
    unit="s",
    description="Age of the oldest row still in the outbox (0 when it is empty)",
)
_meter.create_observable_gauge(
    "oms.outbox.parked",
    callbacks=[_outbox("parked")],
    unit="{message}",
    description="Rows the relay parked because they can never be published (`oms outbox parked` lists them)",
)


def observable_gauge(
    meter_: otel_metrics.Meter, name: str, read: Callable[[], Iterable[tuple[float, dict[str, str]]]], **kwargs: Any
) -> None:
    """A gauge whose observations `read()` returns from a service's own refreshed state, e.g. orders by status."""

    def callback(_: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(value, attributes) for value, attributes in read()]
        except Exception as error:
            log.debug("%s not observed: %r", name, error)
            return []

    meter_.create_observable_gauge(name, callbacks=[callback], **kwargs)


# -- database statements: a metric each, and a span when they run inside a traced operation -----------------------

_TABLE = re.compile(r"\b(?:INTO|UPDATE|FROM|JOIN)\s+([a-z_][a-z0-9_]*)", re.IGNORECASE)
_FIRST_PART = re.compile(r"\bAS\s*\(\s*(INSERT|UPDATE|DELETE|SELECT)\b", re.IGNORECASE)
_QUERY_TEXT_MAX = 2000


@functools.lru_cache(maxsize=2048)
def statement(query: str) -> tuple[str, str | None]:
    """The operation (SELECT, INSERT, ...) and first table of a statement. The OMS's statements are a fixed set of
    texts (parameters travel apart), so this is cached and the labels it makes are bounded."""
    words = query.lstrip().split(None, 1)
    operation = words[0].upper().rstrip(";") if words else "UNKNOWN"
    if operation == "WITH" and (first := _FIRST_PART.search(query)):
        # Data-modifying CTEs (a batch's writes sent as one): named by their first part.
        operation = first.group(1).upper()
    found = _TABLE.search(query)
    return operation, found.group(1).lower() if found else None


@functools.lru_cache(maxsize=2048)
def _statement_series(operation: str, table: str | None, error: str) -> Any:
    return _statements.labels("postgresql", operation, table or "", error)


def statement_done(query: str, seconds: float, error: BaseException | None) -> None:
    """Record a finished statement: its duration, and a span under the current one when that is recorded (a sampled
    batch or request); a statement outside any (the relay's idle sweeps, readiness) gets no trace of its own.

    The duration goes to `db.client.operation.duration` (`db_client_operation_duration_seconds`), kept by
    prometheus_client in the registry `GET /metrics` renders, under the name and labels the OpenTelemetry exporter
    would give it (an absent label as "", as the exporter writes it): its series, looked up once per statement text,
    takes 0.7 µs per observation where the SDK's `Histogram.record` takes 7 (hashing the attributes, matching views,
    offering an exemplar). Every batch sends several statements: the SDK's instrument was 8-12 % of a service's CPU
    at low rates (docs/performance.md, step 27)."""
    operation, table = statement(query)
    if _statements is not None:
        _statement_series(operation, table, "" if error is None else type(error).__name__).observe(seconds)
    parent = trace.get_current_span()
    if not parent.is_recording():  # unsampled (most batches): no span object at all, not even a non-recording one
        return
    attributes = {"db.system.name": "postgresql", "db.operation.name": operation}
    if table:
        attributes["db.collection.name"] = table
    if error is not None:
        attributes[ERROR_TYPE] = type(error).__name__
    end = time.time_ns()
    from . import telemetry

    span = telemetry.tracer().start_span(
        f"{operation} {table}" if table else " ".join(query.split())[:40].rstrip(";"),
        kind=SpanKind.CLIENT,
        start_time=end - int(seconds * 1e9),
        attributes={**attributes, "db.query.text": query[:_QUERY_TEXT_MAX]},
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end(end_time=end)


def counted(values: Iterable[tuple[Sequence[tuple[str, str]], int]], counter: Any) -> None:
    """Add aggregated counts to a counter: one call per label set, however many events made them."""
    for labels, n in values:
        if n:
            counter.add(n, dict(labels))
