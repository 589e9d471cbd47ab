"""The stuck-order check on a real PostgreSQL: each episode raised once, cleared when the order moves on. The check
is given the time it runs at, so the tests move time forward instead of waiting."""

import asyncio
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from oms_contracts import inventory
from oms_contracts.order import OrderStatus, StuckKind
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_order import store, writes
from oms_order.app import create_service
from oms_order.settings import OrderSettings
from oms_order.stuck import Stuck, Waits
from oms_runtime.testing import deliver, take_outbox
from oms_tools import samples

WAITS = Waits.from_settings(OrderSettings())


@pytest.fixture(scope="module")
def service(service_database):
    """The order service on a database of its own: the check looks at every order there."""
    return create_service(OrderSettings(database_url=service_database("order", "stuck"), api_tokens={"t": "ops"}))


async def check(service, at: datetime) -> list:
    """Run one pass at `at`; returns the order.stuck.v1 events it raised."""
    await writes.check_stuck(service, WAITS, at)
    return [e.event.data for e in await take_outbox(service) if e.headers["ce-type"] == "oms.order.stuck.v1"]


async def stuck_list(service) -> list[str]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http), base_url="http://o") as client:
        response = await client.get("/orders", params={"stuck": "true"}, headers={"Authorization": "Bearer t"})
    return [o["order_id"] for o in response.json()]


async def paid(service, name, lines=(("TENT", 1, "99.00"),)):
    submitted = samples.order_submitted(name, list(lines))
    await deliver(service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    return submitted


def later(**delta) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


async def test_a_paid_order_without_a_plan_raises_one_alert_per_episode_and_clears_when_it_moves_on(service):
    submitted = await paid(service, "stuck-paid")
    order_id = submitted.data.order_id
    assert [s for s in await check(service, later(minutes=20)) if s.order_id == order_id] == []
    [alert] = [s for s in await check(service, later(minutes=31)) if s.order_id == order_id]
    assert (alert.kind, alert.status, alert.fulfillment_id) == (StuckKind.paid_not_planned, OrderStatus.paid, None)
    assert "nothing requested from a source yet (no plan from routing)" in alert.reason and alert.age_hours >= 0.5
    assert [s for s in await check(service, later(minutes=45)) if s.order_id == order_id] == []  # once
    assert str(order_id) in await stuck_list(service)
    async with service.database.connect() as conn:
        [entry] = [row for row in await store.timeline(conn, order_id) if row["kind"] == "stuck"]
    assert (entry["actor"], entry["cause_type"], entry["details"]["kind"]) == (
        "service:order",
        "stuck-check",
        "paid_not_planned",
    )
    # Planned and requested: the order moved on, the episode is over.
    plan = samples.fulfillment_planned(submitted, [("1", 1)])
    await deliver(service, ROUTING_PLANS, plan)
    await deliver(service, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))
    assert [s.kind for s in await check(service, later(minutes=50)) if s.order_id == order_id] == []
    assert str(order_id) not in await stuck_list(service)


async def test_a_fulfillment_not_accepted_then_not_shipped_raises_each_kind_once(service):
    submitted = await paid(service, "stuck-source")
    plan = samples.fulfillment_planned(submitted, [("1", 1)])
    await deliver(service, ROUTING_PLANS, plan)
    [_, request] = await deliver(service, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))
    order_id = submitted.data.order_id
    found = [s for s in await check(service, later(hours=5)) if s.order_id == order_id]
    assert [(s.kind, s.fulfillment_id) for s in found] == [
        (StuckKind.requested_not_accepted, request.event.data.fulfillment_id)
    ]
    assert "WH-EAST has not accepted fulfillment" in found[0].reason
    await deliver(service, FULFILLMENT_UPDATES, samples.accepted(request.event))
    found = [s for s in await check(service, later(hours=25)) if s.order_id == order_id]
    assert sorted(s.kind for s in found) == [StuckKind.accepted_not_shipped, StuckKind.no_progress]
    await deliver(service, FULFILLMENT_UPDATES, samples.shipped(request.event))
    assert [s for s in await check(service, later(hours=49)) if s.order_id == order_id] == []
    assert str(order_id) not in await stuck_list(service)


async def test_backordered_units_past_their_expected_date_raise_backorder_overdue(service):
    submitted = await paid(service, "stuck-backorder", [("LAMP", 3, "10.00")])
    order_id = submitted.data.order_id
    await deliver(service, ROUTING_PLANS, samples.fulfillment_planned(submitted, [], [("1", 3)]))
    expected = date.today() + timedelta(days=2)
    queued = inventory.BackorderQueued(
        source="/oms/inventory",
        subject=str(order_id),
        data=inventory.BackorderQueuedData(
            order_id=order_id,
            lines=[inventory.BackorderedLine(line_id="1", sku="LAMP", quantity=3, position=4, expected_date=expected)],
        ),
    )
    await deliver(service, INVENTORY_ALLOCATIONS, queued)
    assert StuckKind.backorder_overdue not in {
        s.kind for s in await check(service, later(days=2)) if s.order_id == order_id
    }
    found = {s.kind: s for s in await check(service, later(days=4)) if s.order_id == order_id}
    assert (
        found[StuckKind.backorder_overdue].reason
        == f"3 backordered unit(s) were expected by {expected} and have not come"
    )


async def test_two_checks_at_once_raise_an_episode_once(service, service_database):
    other = create_service(OrderSettings(database_url=service_database("order", "stuck")))
    submitted = await paid(service, "stuck-twice")
    at = later(minutes=40)
    await asyncio.gather(writes.check_stuck(service, WAITS, at), writes.check_stuck(other, WAITS, at))
    raised = [e.event.data for e in await take_outbox(service) if e.headers["ce-type"] == "oms.order.stuck.v1"]
    assert [s.kind for s in raised if s.order_id == submitted.data.order_id] == [StuckKind.paid_not_planned]
    await other.database.dispose()


def test_each_kind_says_in_words_what_has_not_happened():
    since = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    now = since + timedelta(hours=5, minutes=30)
    order_id = samples.order_submitted("words", [("A", 1, "1.00")]).data.order_id
    fid = order_id
    said = {
        kind: Stuck(order_id, kind, since, OrderStatus.paid, fid, "WH-EAST", planned=True, units=2).reason(now)
        for kind in StuckKind
    }
    assert said == {
        StuckKind.paid_not_planned: "paid 5.5 h ago and nothing requested from a source yet (routing planned it, "
        "inventory has not reserved it)",
        StuckKind.requested_not_accepted: f"WH-EAST has not accepted fulfillment {fid}, requested 5.5 h ago",
        StuckKind.accepted_not_shipped: f"WH-EAST accepted fulfillment {fid} 5.5 h ago and has not shipped it",
        StuckKind.backorder_overdue: "2 backordered unit(s) were expected by 2026-12-01 and have not come",
        StuckKind.no_progress: "awaiting fulfillment with no change for 5.5 h",
    }
    assert Stuck(order_id, StuckKind.no_progress, since, OrderStatus.paid).age_hours(now) == 5.5
