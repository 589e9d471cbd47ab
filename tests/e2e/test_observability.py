"""What an SRE sees of real flows through the four services (real broker, databases, processes):

- each service's GET /metrics has the named series, with the counts the flow implies (orders sent, mails, plans,
  reservations, a dead letter) and its latency histograms filled;
- every query of the Grafana dashboards (deploy/grafana) parses and names only series the services export, and a
  real Prometheus (deploy/prometheus, as `make observe` runs it) scrapes the four services and evaluates each query
  and alert rule;
- `oms trace <order_id>` prints the order's waterfall from the services' trace files.

The flow, once for the module: three orders shipped from WH-EAST, one cancelled before payment, one backordered
(SKU-C is in stock nowhere), and one undecodable record on the receipts topic."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oms_contracts import channel, fulfillment
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_RECEIPTS, fulfillment_requests
from oms_tools import samples
from oms_tools.kafka import new_traceparent
from tests.dashboards import dashboard_queries, metric_names

from .conftest import ROOT, System, eventually, free_port, read_until, run_id

pytestmark = pytest.mark.timeout(300)

SHIPPED = 3
CHANNEL = "web-eu"
SERVICES = ("order", "routing", "inventory", "notifications")


@dataclass
class Flow:
    shipped: list[uuid.UUID]
    cancelled: uuid.UUID
    backordered: uuid.UUID


Samples = list[tuple[str, dict[str, str], float]]


async def scrape(system: System, service: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(system.url(service, "/metrics"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(response.text) for s in f.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    return sum(v for n, have, v in samples if n == name and labels.items() <= have.items())


def series(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [(have, v) for n, have, v in samples if n == name and labels.items() <= have.items()]


async def until_scraped(system: System, service: str, check, what: str):
    """Scrape until `check(samples)` holds (counts are recorded after each commit, gauges at each refresh); on a
    time-out, say what the service's own oms_* series were."""
    last: Samples = []

    async def scraped():
        last[:] = await scrape(system, service)
        return list(last) if check(last) else None

    try:
        return await eventually(scraped, timeout=60, what=what)
    except pytest.fail.Exception:
        shown = "\n".join(f"{n}{labels} {v}" for n, labels, v in last if n.startswith("oms_") and "_bucket" not in n)
        pytest.fail(f"{service}: {what} never held; its oms_* series:\n{shown}")


@pytest.fixture(scope="module")
async def flow(system: System, network) -> Flow:
    tag = run_id()
    orders = [samples.order_submitted(f"obs-{tag}-{i}", [("SKU-A", 1, "10.00")]) for i in range(SHIPPED)]
    unpaid = samples.order_submitted(f"obs-{tag}-cancel", [("SKU-A", 1, "10.00")])
    waiting = samples.order_submitted(f"obs-{tag}-wait", [("SKU-C", 1, "7.00")])
    cancel = channel.CancellationRequested(
        source=f"/channels/{CHANNEL}",
        subject=str(unpaid.data.order_id),
        data=channel.CancellationRequestedData(
            channel=CHANNEL,
            external_order_id=unpaid.data.external_order_id,
            lines=None,
            reason="changed my mind",
            requested_by="customer",
        ),
    )
    source = system.consumer(fulfillment_requests("WH-EAST").name)
    await source.start()
    try:
        for order in [*orders, waiting]:
            # Each channel traces its order (a sampled trace context): its spans are recorded whatever share of the
            # other orders' traces the services record, so `oms trace` has a waterfall to print.
            traced = [("traceparent", new_traceparent().encode())]
            await system.publish(CHANNEL_ORDERS.name, order, samples.payment_captured(order), headers=traced)
        await system.publish(CHANNEL_ORDERS.name, unpaid, cancel)
        await system.publish(INVENTORY_RECEIPTS.name, b"not an event", key="garbage")
        wanted = {o.data.order_id for o in orders}
        requests: dict[uuid.UUID, tuple[fulfillment.FulfillmentRequested, list]] = {}

        def requested(record) -> bool:
            event = json.loads(record.value)
            order_id = uuid.UUID(event["data"]["order_id"])
            if order_id in wanted and event["type"] == fulfillment.FulfillmentRequested.TYPE:
                traceparent = [(k, v) for k, v in record.headers if k == "traceparent"]
                requests[order_id] = (fulfillment.FulfillmentRequested.model_validate_json(record.value), traceparent)
            return len(requests) == SHIPPED

        await read_until(source, requested)
    finally:
        await source.stop()
    for request, traceparent in requests.values():
        await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(request), headers=traceparent)

    async with system.http() as http:

        async def status_of(order_id: uuid.UUID) -> str | None:
            r = await http.get(system.url("order", f"/orders/{order_id}"))
            return r.json()["status"] if r.status_code == 200 else None

        async def settled():
            statuses = [await status_of(o.data.order_id) for o in orders]
            statuses += [await status_of(unpaid.data.order_id), await status_of(waiting.data.order_id)]
            return statuses == ["fulfilled"] * SHIPPED + ["cancelled", "awaiting_fulfillment"]

        await eventually(settled, timeout=90, what="three orders fulfilled, one cancelled, one backordered")

        async def mailed():
            sent = []
            for order in [*orders, unpaid, waiting]:
                r = await http.get(
                    system.url("notifications", "/notifications"), params={"order_id": str(order.data.order_id)}
                )
                sent += [n["template"] for n in r.json() if n["status"] == "sent"] if r.status_code == 200 else []
            return sent.count("order_confirmation") == SHIPPED + 2 and sent.count("shipped") == SHIPPED

        await eventually(mailed, timeout=90, what="five confirmations and three shipped mails sent")
    return Flow([o.data.order_id for o in orders], unpaid.data.order_id, waiting.data.order_id)


async def test_every_service_counts_its_batches_records_and_their_outcomes(system: System, flow: Flow):
    for service in SERVICES:
        samples_ = await scrape(system, service)
        consumed = total(samples_, "messaging_client_consumed_messages_total", messaging_system="kafka")
        applied = total(samples_, "oms_consumer_messages_total", oms_outcome="applied")
        assert consumed > 0 and applied > 0, service
        # Every record delivered ends as exactly one outcome (no failures here, so no record is counted twice).
        outcomes = total(samples_, "oms_consumer_messages_total")
        assert outcomes == consumed, f"{service}: {outcomes} outcomes for {consumed} records"
        batches = total(samples_, "messaging_process_duration_seconds_count")
        assert batches > 0 and total(samples_, "oms_consumer_batch_size_count") == batches
        assert total(samples_, "oms_consumer_batch_size_sum") == consumed
        _assert_histogram(samples_, "messaging_process_duration_seconds")
        # The relay published, each pass timed, and the database statements of the batches were measured.
        assert total(samples_, "messaging_client_sent_messages_total") > 0, service
        _assert_histogram(samples_, "messaging_client_operation_duration_seconds", messaging_operation_name="send")
        _assert_histogram(samples_, "oms_outbox_delay_seconds")
        _assert_histogram(samples_, "db_client_operation_duration_seconds", db_collection_name="inbox")


def _assert_histogram(samples_: Samples, name: str, **labels: str) -> None:
    """Filled and well-formed: a count, a sum, and buckets that only grow up to +Inf, which holds every observation."""
    for have, count in series(samples_, f"{name}_count", **labels):
        buckets = sorted(
            (float(b["le"]), v)
            for b, v in series(samples_, f"{name}_bucket", **{k: v for k, v in have.items()})
            if b.keys() - {"le"} == have.keys()
        )
        assert buckets and buckets[-1] == (float("inf"), count), (name, have)
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets)), (name, have)
    assert total(samples_, f"{name}_count", **labels) > 0, name
    assert total(samples_, f"{name}_sum", **labels) > 0, name


async def test_the_order_service_counts_status_changes_flow_steps_and_fulfillment_kpis(system: System, flow: Flow):
    expected = {
        "pending": SHIPPED + 2,
        "paid": SHIPPED + 1,
        "awaiting_fulfillment": SHIPPED + 1,
        "fulfilled": SHIPPED,
        "cancelled": 1,
    }

    def counted(s: Samples) -> bool:
        changes = {
            status: total(s, "oms_order_status_changes_total", oms_order_status=status, oms_channel=CHANNEL)
            for status in expected
        }
        return changes == expected

    samples_ = await until_scraped(system, "order", counted, "the order service's status changes")
    for step in ("fulfillment_requested", "shipped"):
        assert total(samples_, "oms_order_flow_duration_seconds_count", oms_flow_step=step) == SHIPPED
        _assert_histogram(samples_, "oms_order_flow_duration_seconds", oms_flow_step=step)
    kpi = {"oms_channel": CHANNEL, "oms_source": "WH-EAST"}
    assert total(samples_, "oms_fulfillment_order_to_ship_duration_seconds_count", **kpi) == SHIPPED
    _assert_histogram(samples_, "oms_fulfillment_order_to_ship_duration_seconds", **kpi)
    # Shipped the day they were requested, and routing promised a ship-by day after the warehouse's handling day.
    assert total(samples_, "oms_fulfillment_shipments_total", **kpi, oms_on_time="true") == SHIPPED
    assert total(samples_, "oms_fulfillment_shipments_total", oms_on_time="false") == 0
    # Per source: the three fulfillments requested of WH-EAST; the unpaid order's cancellation held no source's units.
    assert total(samples_, "oms_fulfillment_requests_total", **kpi) == SHIPPED
    assert total(samples_, "oms_order_cancellations_total", oms_channel=CHANNEL, oms_source="(none)") == 1
    assert total(samples_, "oms_order_cancellations_total", oms_source="WH-EAST") == 0


async def test_open_orders_lag_and_outboxes_settle_to_where_the_flow_left_them(system: System, flow: Flow):
    def open_orders(s: Samples) -> bool:
        by_status = {labels["oms_order_status"]: v for labels, v in series(s, "oms_orders")}
        return by_status == {
            "pending": 0,
            "payment_processing": 0,
            "paid": 0,
            "awaiting_fulfillment": 1,
            "partially_fulfilled": 0,
        }

    samples_ = await until_scraped(system, "order", open_orders, "one open order, awaiting fulfillment")
    ages = {labels["oms_order_status"]: v for labels, v in series(samples_, "oms_orders_oldest_age_seconds")}
    assert ages["awaiting_fulfillment"] >= 0 and ages["paid"] == 0
    # Every kind of the stuck-order check has its series, none stuck: nothing waited past its settings.
    stuck = {labels["oms_stuck_kind"]: v for labels, v in series(samples_, "oms_orders_stuck")}
    assert stuck == dict.fromkeys(
        ("paid_not_planned", "requested_not_accepted", "accepted_not_shipped", "backorder_overdue", "no_progress"), 0
    )

    for service in SERVICES:

        def settled(s: Samples) -> bool:
            lag = series(s, "oms_consumer_lag")
            return (
                lag
                and all(v == 0 for _, v in lag)
                and total(s, "oms_outbox_backlog") == 0
                and total(s, "oms_outbox_oldest_age_seconds") == 0
            )

        samples_ = await until_scraped(system, service, settled, f"{service}: no lag, an empty outbox")
        groups = {labels["messaging_consumer_group_name"] for labels, _ in series(samples_, "oms_consumer_lag")}
        assert all(group.startswith(f"oms-{service}.") for group in groups)
        assert all("messaging_destination_partition_id" in labels for labels, _ in series(samples_, "oms_consumer_lag"))
        assert series(samples_, "oms_outbox_parked") == [({}, 0.0)]


async def test_routing_counts_plans_by_channel_and_shape_and_shipments_by_source(system: System, flow: Flow):
    def counted(s: Samples) -> bool:
        return total(s, "oms_routing_plans_total", oms_channel=CHANNEL) == SHIPPED + 1

    samples_ = await until_scraped(system, "routing", counted, "routing's plans")
    first = {"oms_channel": CHANNEL, "oms_plan_attempt": "first"}
    assert (
        total(samples_, "oms_routing_plans_total", **first, oms_plan_split="false", oms_plan_backorder="false")
        == SHIPPED
    )
    assert total(samples_, "oms_routing_plans_total", **first, oms_plan_backorder="true") == 1
    assert total(samples_, "oms_routing_shipments_total", oms_source="WH-EAST") == SHIPPED
    _assert_histogram(samples_, "oms_routing_planning_duration_seconds")


async def test_inventory_counts_reservations_and_the_dead_letter_and_shows_the_waiting_sku(system: System, flow: Flow):
    receipts = {"messaging_destination_name": INVENTORY_RECEIPTS.name}

    def counted(s: Samples) -> bool:
        return (
            total(s, "oms_consumer_messages_total", **receipts, oms_outcome="dead_lettered") == 1
            and total(s, "oms_inventory_backorder_lines", oms_sku="SKU-C") == 1
        )

    samples_ = await until_scraped(system, "inventory", counted, "the dead letter and SKU-C's queue")
    assert total(samples_, "oms_inventory_reservations_total", oms_source="WH-EAST", oms_outcome="reserved") == SHIPPED
    assert total(samples_, "oms_inventory_reservations_total", oms_outcome="rejected") == 0
    assert total(samples_, "oms_inventory_backorder_units", oms_sku="SKU-C") == 1
    assert total(samples_, "oms_inventory_backorder_oldest_age_seconds", oms_sku="SKU-C") >= 0
    assert {labels["oms_sku"] for labels, _ in series(samples_, "oms_inventory_backorder_lines")} == {"SKU-C"}


async def test_notifications_counts_mails_per_template_and_the_customer_notified_step(system: System, flow: Flow):
    def counted(s: Samples) -> bool:
        return (
            total(
                s, "oms_notifications_mails_total", oms_notification_template="order_confirmation", oms_outcome="sent"
            )
            == SHIPPED + 2
        )

    samples_ = await until_scraped(system, "notifications", counted, "five confirmations counted")
    assert (
        total(samples_, "oms_notifications_mails_total", oms_notification_template="shipped", oms_outcome="sent")
        == SHIPPED
    )
    assert total(samples_, "oms_notifications_mails_total", oms_outcome="failed") == 0
    assert total(samples_, "oms_order_flow_duration_seconds_count", oms_flow_step="customer_notified") == SHIPPED + 2
    _assert_histogram(samples_, "oms_order_flow_duration_seconds", oms_flow_step="customer_notified")
    _assert_histogram(samples_, "oms_notifications_delay_seconds", oms_notification_template="shipped")


async def test_http_requests_are_measured_by_route_template_never_by_path(system: System, flow: Flow):
    samples_ = await scrape(system, "order")
    routes = {labels.get("http_route") for labels, _ in series(samples_, "http_server_request_duration_seconds_count")}
    assert "/orders/{order_id}" in routes
    assert (
        total(
            samples_,
            "http_server_request_duration_seconds_count",
            http_route="/orders/{order_id}",
            http_response_status_code="200",
        )
        > 0
    )
    # No label anywhere holds an order id: a series per order would grow without end.
    ids = {str(order_id) for order_id in [*flow.shipped, flow.cancelled, flow.backordered]}
    for service in SERVICES:
        for _, labels, _ in await scrape(system, service):
            assert not ids & set(labels.values()), (service, labels)


async def test_every_dashboard_query_parses_and_names_only_series_the_services_export(system: System, flow: Flow):
    exported: set[str] = set()
    for service in SERVICES:
        exported |= {name for name, _, _ in await scrape(system, service)}
    exported.add("up")  # Prometheus's own, per target
    queries = dashboard_queries()
    assert len(queries) >= 20
    missing = {
        (dashboard, title, name)
        for dashboard, title, expr in queries
        for name in metric_names(expr)
        if name not in exported
    }
    assert not missing, f"dashboard queries name series no service exports after the flow: {sorted(missing)}"


@pytest.fixture(scope="module")
def prometheus(system: System, flow: Flow, tmp_path_factory) -> str:
    """Prometheus as `make observe` runs it (deploy/prometheus/prometheus.sh), scraping this module's services
    every second, on a port of its own; stopped after the module."""
    port = free_port()
    env = {
        **os.environ,
        "OMS_PROMETHEUS_PORT": str(port),
        "OMS_PROMETHEUS_STATE": str(tmp_path_factory.mktemp("prometheus")),
        "OMS_PROMETHEUS_TARGETS": " ".join(f"{s}=127.0.0.1:{system.ports[s]}" for s in SERVICES),
        "OMS_PROMETHEUS_SCRAPE_INTERVAL": "1s",
    }
    script = str(ROOT / "deploy" / "prometheus" / "prometheus.sh")
    subprocess.run([script, "start"], check=True, env=env, timeout=120)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([script, "stop"], check=True, env=env, timeout=60)


async def test_prometheus_scrapes_the_four_services_and_evaluates_every_dashboard_query_and_rule(
    system: System, flow: Flow, prometheus: str
):
    async with httpx.AsyncClient(base_url=prometheus, timeout=10) as http:

        async def query(expr: str) -> list:
            r = await http.get("/api/v1/query", params={"query": expr})
            assert r.status_code == 200, f"{expr}: {r.text}"
            return r.json()["data"]["result"]

        async def all_up():
            result = await query('up{job="oms"}')
            return {x["metric"]["service"] for x in result if x["value"][1] == "1"} == set(SERVICES)

        await eventually(all_up, timeout=60, what="Prometheus to scrape the four services")

        async def accepted():
            result = await query('sum(oms_order_status_changes_total{oms_order_status="pending"})')
            return result and float(result[0]["value"][1]) == SHIPPED + 2

        await eventually(accepted, timeout=60, what="Prometheus to read the orders accepted")
        for _, _, expr in dashboard_queries():
            await query(expr)  # a query Prometheus cannot parse or evaluate answers 400 or 422

        async def rules_evaluated():
            r = await http.get("/api/v1/rules")
            groups = r.json()["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(rule["health"] == "ok" for rule in rules) else None

        rules = await eventually(rules_evaluated, timeout=60, what="every alert rule evaluated without error")
        assert {rule["name"] for rule in rules} >= {
            "OMSOrdersStuck",
            "OMSOrderStuckPaid",
            "OMSDeadLetters",
            "OMSOutboxBehind",
            "OMSConsumerLag",
            "OMSBackorderWaitingLong",
            "OMSConsumerErrors",
        }
        # A record dead-lettered while Prometheus watches fires its rule. (The flow's own came before the first
        # scrape: a counter already at 1 then has no increase; its series starting at 0 is what lets the next count.)
        await system.publish(INVENTORY_RECEIPTS.name, b"still not an event", key="garbage")

        async def firing():
            r = await http.get("/api/v1/alerts")
            return [a for a in r.json()["data"]["alerts"] if a["labels"]["alertname"] == "OMSDeadLetters"]

        [alert] = await eventually(firing, timeout=60, what="the dead letter to fire OMSDeadLetters")
        assert alert["labels"]["service"] == "inventory"
        assert alert["labels"]["messaging_destination_name"] == INVENTORY_RECEIPTS.name


def oms_trace(*args: str) -> subprocess.CompletedProcess:
    # The installed command, as a user runs it (.venv/bin/oms).
    return subprocess.run(
        [str(Path(sys.executable).parent / "oms"), "trace", "--width", "200", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def trace_files(system: System) -> list[Path]:
    return sorted(Path(system.trace_dir).glob("*.jsonl"))


async def test_oms_trace_prints_an_orders_waterfall_across_the_four_services(flow: Flow, trace_files: list[Path]):
    order_id = str(flow.shipped[0])
    files = trace_files

    async def traced():
        done = oms_trace(order_id, *(f"--file={f}" for f in files))
        wanted = ("oms-order", "oms-routing", "oms-inventory", "oms-notifications", "send order_confirmation")
        return done if done.returncode == 0 and all(w in done.stdout for w in wanted) else None

    done = await eventually(traced, timeout=60, what="the order's spans of all four services in the trace files")
    out = done.stdout
    print(out)
    assert f"order {order_id}" in out
    # The messaging spans of each hop, the batch transactions with their statements, and the relay's publishes.
    for operation in (
        "process oms.channel.orders.v1",
        "publish oms.order.events.v1",
        "process oms.routing.plans.v1",
        "transaction",
        "INSERT inbox",
        "COMMIT",
        "publish oms.fulfillment.requests.WH-EAST.v1",
    ):
        assert operation in out, operation
    # A waterfall: every span line has its offset from the trace's start and its duration.
    lines = [line for line in out.splitlines() if "+" in line and "ms" in line]
    assert len(lines) > 10
    unknown = oms_trace(str(uuid.uuid4()), *(f"--file={f}" for f in files))
    assert unknown.returncode == 1 and "no spans" in unknown.stderr
