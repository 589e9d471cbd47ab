"""The runtime's metrics (oms_runtime.metrics), read as Prometheus reads them: a batch's records counted once by
outcome whatever replays it, a handler's own counts kept only when its transaction commits, the consumer lag of
records not applied yet, what the relay published, statements timed (and traced under the operation that ran
them), requests by route, and GET /metrics answering without a token."""

import asyncio

import httpx
import pytest
from fastapi import APIRouter
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from oms_runtime import metrics, telemetry
from oms_runtime.database import Database, driver
from oms_runtime.outbox import OutboxMessage, append
from oms_runtime.testing import record

UNREACHABLE_DATABASE = "postgresql+asyncpg://oms:oms@127.0.0.1:1/nowhere"


def of(topic) -> dict[str, str]:
    group = f"oms-probe.{topic.name}"
    return {
        "messaging_system": "kafka",
        "messaging_destination_name": topic.name,
        "messaging_consumer_group_name": group,
    }


def client(service) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http), base_url="http://probe")


async def test_a_batch_counts_each_record_once_by_outcome_whatever_replays_it(
    make_service, database_url, topic, probe, receipt, consume
):
    service = make_service(database_url, topic, probe)
    labels = of(topic)
    first = record(topic.name, receipt("ok-1").to_bytes(), "SKU-1")
    batch = [
        first,
        record(topic.name, receipt("ok-2").to_bytes(), "SKU-1"),
        record(topic.name, receipt("refuse-3").to_bytes(), "SKU-1"),
        record(topic.name, b"not an event", "SKU-1"),
    ]
    # The refusal fails the batch, which is replayed one record at a time: two applied, two dead-lettered.
    await consume(service, topic, batch)
    # The first record delivered again: the inbox knows it.
    await consume(service, topic, [first])

    def outcome(name: str) -> float:
        return metrics.sample("oms_consumer_messages_total", {**labels, "oms_outcome": name})

    assert (outcome("applied"), outcome("dead_lettered"), outcome("duplicate")) == (2, 2, 1)
    assert metrics.sample("messaging_client_consumed_messages_total", labels) == 5
    assert metrics.sample("oms_consumer_batch_size_count", labels) == 2
    assert metrics.sample("oms_consumer_batch_size_sum", labels) == 5
    assert metrics.sample("messaging_process_duration_seconds_count", labels) == 2
    # The batch failed once as a whole, then the refused record alone.
    assert (
        metrics.sample("oms_consumer_errors_total", {**labels, "error_type": "Refused", "oms_transient": "false"}) == 2
    )


async def test_a_handlers_after_commit_callbacks_run_once_its_batch_commits_and_never_when_it_rolls_back(
    make_service, database_url, topic, receipt, consume
):
    ran: list[str] = []

    async def handler(tx, events):
        for event in events:
            reference = event.event.data.reference
            tx.after_commit(lambda reference=reference: ran.append(reference))
            if reference.startswith("boom"):
                raise RuntimeError("cannot apply it")

    service = make_service(database_url, topic, handler)
    await consume(
        service,
        topic,
        [record(topic.name, receipt(r).to_bytes(), "SKU-1") for r in ("a", "boom-b", "c")],
    )
    # The batch of three rolled back (its callbacks dropped); replayed alone, a and c committed, boom-b never did.
    assert ran == ["a", "c"]


async def test_the_lag_gauge_counts_the_records_of_a_partition_not_applied_yet(
    kafka_topic, make_service, database_url, probe, receipt, producer, oms_topics, wait_until
):
    topic = await kafka_topic(partitions=1)
    for i in range(5):
        await producer.send_and_wait(topic.name, receipt(f"r{i}").to_bytes(), key=b"SKU-1")
    probe.gate = asyncio.Event()
    service = make_service(database_url, topic, probe, bootstrap=oms_topics)
    [consumer] = service.consumers
    lag = {**of(topic), "messaging_destination_partition_id": "0"}

    async with service.lifespan(service.http):
        try:
            await asyncio.wait_for(probe.entered.wait(), 30)
            # Fetched, and held by the handler: not applied, so all five are lag.
            await consumer.refresh()
            assert metrics.sample("oms_consumer_lag", lag) == 5
        finally:
            probe.gate.set()

        async def caught_up() -> bool:
            await consumer.refresh()
            return len(probe.seen) == 5 and metrics.sample("oms_consumer_lag", lag) == 0

        await wait_until(caught_up, "the lag back at 0 once the five records are applied")


async def test_the_relay_counts_what_it_published_per_topic_and_times_each_pass(
    kafka_topic, make_service, database_url, oms_topics, wait_until
):
    topic = await kafka_topic(partitions=1)
    service = make_service(database_url, bootstrap=oms_topics)
    sent = {"messaging_system": "kafka", "messaging_destination_name": topic.name}
    passes = metrics.sample(
        "messaging_client_operation_duration_seconds_count",
        {"messaging_system": "kafka", "messaging_operation_name": "send"},
    )
    async with service.database.transaction() as conn:
        await append(conn, [OutboxMessage(topic.name, "k", f"m{i}".encode()) for i in range(3)])
    await service.relay.start()
    try:
        service.relay.wake()

        async def published() -> bool:
            return metrics.sample("messaging_client_sent_messages_total", sent) == 3

        await wait_until(published, "three rows counted as published to their topic")
    finally:
        await service.relay.stop()
    after = metrics.sample(
        "messaging_client_operation_duration_seconds_count",
        {"messaging_system": "kafka", "messaging_operation_name": "send"},
    )
    assert after > passes
    assert metrics.sample("oms_outbox_delay_seconds_count") > 0


async def test_the_outbox_gauges_show_the_backlog_its_oldest_row_and_the_parked_rows(make_service, database_url):
    service = make_service(database_url)
    async with service.database.transaction() as conn:
        await append(conn, [OutboxMessage("oms.nowhere.v1", "k", b"waiting") for _ in range(2)])
        await (await driver(conn)).execute(
            """
            INSERT INTO parked_messages (id, topic, key, payload, created_at, error_class, error_message, attempts)
            VALUES (-1, 'oms.nowhere.v1', 'k', 'x', now(), 'UnknownTopicOrPartitionError', 'no such topic', 3)
            """
        )
    await service.refresh_metrics()
    # Read from the service's own gauge source: other services of this test process report theirs beside it.
    assert service.outbox_gauges.outbox()["backlog"] == 2
    assert service.outbox_gauges.outbox()["parked"] == 1
    assert service.outbox_gauges.outbox()["oldest_age"] >= 0


async def test_statements_are_timed_and_traced_under_the_operation_that_ran_them(database_url):
    spans = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    labels = {"db_system_name": "postgresql", "db_operation_name": "SELECT", "db_collection_name": "parked_messages"}
    before = metrics.sample("db_client_operation_duration_seconds_count", labels)
    database = Database(database_url)
    try:
        with telemetry.tracer().start_as_current_span("applying a batch") as parent:
            async with database.transaction() as conn:
                await (await driver(conn)).fetch("SELECT id FROM parked_messages WHERE id = $1", 7)
        # Outside any traced operation: measured, but no trace of its own.
        async with database.connect() as conn:
            await (await driver(conn)).fetchval("SELECT count(*) FROM parked_messages")
    finally:
        await database.dispose()
        spans.shutdown()
    assert metrics.sample("db_client_operation_duration_seconds_count", labels) == before + 2
    mine = [s for s in spans.get_finished_spans() if s.context.trace_id == parent.get_span_context().trace_id]
    statement = next(s for s in mine if s.name == "SELECT parked_messages")
    assert statement.parent.span_id == parent.get_span_context().span_id
    assert statement.attributes["db.query.text"] == "SELECT id FROM parked_messages WHERE id = $1"
    assert {"BEGIN", "COMMIT"} <= {s.name for s in mine}
    assert not [s for s in spans.get_finished_spans() if s.name == "SELECT parked_messages" and s not in mine]


async def test_requests_are_measured_by_route_template_and_metrics_need_no_token(make_service):
    service = make_service(UNREACHABLE_DATABASE)
    router = APIRouter()

    @router.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"thing": thing_id}

    service.http.include_router(router)
    labels = {"http_request_method": "GET", "http_route": "/things/{thing_id}", "http_response_status_code": "200"}
    before = metrics.sample("http_server_request_duration_seconds_count", labels)
    async with client(service) as http:
        assert (await http.get("/things/a-very-particular-thing")).status_code == 200
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert metrics.sample("http_server_request_duration_seconds_count", labels) == before + 1
    assert "a-very-particular-thing" not in response.text
    assert 'http_route="/things/{thing_id}"' in response.text


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("SELECT id FROM parked_messages WHERE id = $1", ("SELECT", "parked_messages")),
        ("BEGIN; SELECT pg_advisory_xact_lock(1)", ("BEGIN", None)),
        # Writes sent together as data-modifying CTEs are named by their first part.
        (
            "WITH claimed AS (INSERT INTO inbox SELECT 1 RETURNING 1), a AS (INSERT INTO outbox SELECT 2) SELECT 1",
            ("INSERT", "inbox"),
        ),
        (
            "WITH w0 AS (UPDATE orders SET x = $1), w1 AS (INSERT INTO order_lines SELECT $2) SELECT 1",
            ("UPDATE", "orders"),
        ),
    ],
)
def test_a_statement_is_named_by_its_operation_and_first_table(query, named):
    assert metrics.statement(query) == named
