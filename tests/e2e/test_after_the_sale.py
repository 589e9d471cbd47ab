"""After the sale, through all four services on the real broker and databases, with the test as channel, WMS, store
and 3PL (real Kafka clients), customer service (HTTP with a token) and the customer (the link in the real mail):
cancellations of backordered, requested and shipped lines with their refunds, a source that gives up a fulfillment
and the re-plan elsewhere, a return in a store that serves a waiting backorder, a stuck order raised once, the
customer's signed link, the timeline of every actor, and what is refused on the way."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from oms_contracts import channel, fulfillment
from oms_contracts.common import ReturnedLine
from oms_contracts.topics import CHANNEL_ORDERS, DEAD_LETTERS, FULFILLMENT_UPDATES, ORDER_EVENTS, fulfillment_requests
from oms_runtime import links
from oms_tools import samples

from .conftest import (
    LINK_KEY,
    NETWORK,
    OPS_EMAIL,
    TOKEN,
    System,
    eventually,
    free_port,
    read_until,
    run_id,
    wait_ready,
)
from .steps import in_stock, notices, order_view, receive

pytestmark = pytest.mark.timeout(300)

# The stuck check runs every second here and calls a fulfillment that its source has not accepted for 3.6 s stuck,
# so one order's episode is seen within seconds rather than after the 4 h of the default. Every other wait keeps
# its default, so no other order of this module is called stuck for anything but an unaccepted request.
# Besides the test's own token (every role, as a plain principal), one for finance and one that may only read.
FINANCE_TOKEN, VIEWER_TOKEN = "e2e-finance-token", "e2e-viewer-token"
SYSTEM_ENV = {
    "OMS_ORDER_STUCK_CHECK_INTERVAL_S": "1",
    "OMS_ORDER_STUCK_REQUESTED_HOURS": "0.001",
    "OMS_API_TOKENS": json.dumps(
        {
            TOKEN: "e2e-tester",
            FINANCE_TOKEN: {"principal": "fin", "roles": ["finance"]},
            VIEWER_TOKEN: {"principal": "watcher", "roles": ["viewer"]},
        }
    ),
}

CUSTOMER = "customer:c-1"  # samples' customer id: the actor of what the customer does through the link
CS = "e2e-tester"  # the principal of the test's token (conftest): customer service's actor
STORE = "STORE-BER"
STORE_SOURCE = {
    "code": STORE,
    "name": "Berlin store",
    "type": "store",
    "lat": 52.52,
    "lon": 13.41,
    "countries": ["DE"],
    "priority": 30,
    "cost_per_shipment": "5.00",
    "cost_per_unit": "0.50",
    "handling_days": 1,
}


@pytest.fixture(scope="module")
async def stores(system: System, network) -> None:
    """The demo network with a store that takes returns and may ship what it has to German addresses."""
    async with system.http() as http:
        response = await http.put(
            system.url("routing", "/network"), json={"sources": [*NETWORK["sources"], STORE_SOURCE]}
        )
        assert response.status_code == 200, response.text

        async def inventory_knows_the_store():
            r = await http.get(system.url("inventory", "/sources"))
            return r.status_code == 200 and any(s["code"] == STORE and s["active"] for s in r.json())

        await eventually(inventory_knows_the_store, what="inventory to know the store")


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def value_of(goods: Decimal, submitted) -> Decimal:
    """The issue's rule for units worth `goods` of an order: the goods, plus their share of tax, minus their share of
    discount (share = goods / subtotal, each rounded half-up to the cent); no shipping."""
    subtotal = sum((x.unit_price * x.quantity for x in submitted.data.lines), Decimal(0))
    d = submitted.data
    return goods + cents(d.tax_total * goods / subtotal) - cents(d.discount_total * goods / subtotal)


def of_order(order_id: uuid.UUID, *types: str):
    """A predicate on records: an event of one of `types` about this order."""

    def matches(record) -> bool:
        event = json.loads(record.value)
        return event["type"] in types and event["data"].get("order_id") == str(order_id)

    return matches


class Feed:
    """What the test reads from topics as it goes, kept: one poll may bring several events of the same order (a
    cancellation and its refund), and each is found by the step that looks for it, in the order they came."""

    def __init__(self, system: System, *topics: str) -> None:
        self.consumer = system.consumer(*topics)
        self.unread: list[dict] = []
        # Delivery is at least once (a rebalance of this very consumer re-reads what it had not committed): an event
        # is taken by its id once, as the services' inboxes do.
        self.seen: set[str] = set()

    async def __aenter__(self) -> Feed:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.consumer.stop()

    async def next(self, order_id: uuid.UUID, type_: str, timeout: float = 60) -> dict:
        """The next event of this type about this order, whole (type, data, ...)."""

        def take() -> dict | None:
            for i, event in enumerate(self.unread):
                if event["type"] == type_ and event["data"].get("order_id") == str(order_id):
                    return self.unread.pop(i)
            return None

        deadline = time.monotonic() + timeout
        while (found := take()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"no {type_} of {order_id} on {self.consumer.subscription()} within {timeout}s")
            for records in (await self.consumer.getmany(timeout_ms=500)).values():
                for event in map(json.loads, (r.value for r in records)):
                    if event["id"] not in self.seen:
                        self.seen.add(event["id"])
                        self.unread.append(event)
        return found

    async def event(self, order_id: uuid.UUID, type_: str, timeout: float = 60) -> dict:
        return (await self.next(order_id, type_, timeout))["data"]

    async def request(self, order_id: uuid.UUID) -> fulfillment.FulfillmentRequested:
        found = await self.next(order_id, fulfillment.FulfillmentRequested.TYPE)
        return fulfillment.FulfillmentRequested.model_validate(found)


async def everything_on(system: System, topic: str) -> list[dict]:
    """Every event on `topic` published up to now (to the end offsets of this moment)."""
    consumer = system.consumer(topic)
    await consumer.start()
    try:
        found: list[dict] = []
        while not consumer.assignment():  # the first polls join the group and get the partitions
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [json.loads(r.value) for r in records]
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while [p for p, end in ends.items() if await consumer.position(p) < end]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [json.loads(r.value) for r in records]
        return found
    finally:
        await consumer.stop()


async def cancel(
    system: System, order_id: uuid.UUID, lines: dict[str, int] | None, *, key: str, reason: str = "customer called"
) -> httpx.Response:
    """Customer service cancels `lines` {line_id: units} (None: everything not shipped) over HTTP."""
    body = {"lines": None if lines is None else [{"line_id": i, "quantity": n} for i, n in lines.items()]}
    async with system.http() as http:
        return await http.post(
            system.url("order", f"/orders/{order_id}/cancellations"),
            json=body | {"reason": reason},
            headers={"Idempotency-Key": key},
        )


async def queue(system: System, sku: str) -> list[dict]:
    async with system.http() as http:
        r = await http.get(system.url("inventory", f"/backorders/{sku}"))
    if r.status_code == 404:  # inventory has not heard of the SKU yet (its plan is on its way)
        return []
    assert r.status_code == 200, r.text
    return r.json()


async def waiting_in_queue(system: System, sku: str, order_id: uuid.UUID, quantity: int | None) -> None:
    """Inventory's queue of `sku` has `quantity` units of the order waiting (None: none at all)."""

    async def there():
        mine = [w["quantity"] for w in await queue(system, sku) if w["order_id"] == str(order_id)]
        return mine == ([] if quantity is None else [quantity])

    await eventually(there, timeout=60, what=f"{quantity} units of {order_id} waiting for {sku}")


async def stock_at(system: System, sku: str, source: str, **expected: int) -> None:
    """Inventory's stock of `sku` at `source` reaches `expected` (on_hand, reserved, available ...)."""

    async def reached():
        async with system.http() as http:
            r = await http.get(system.url("inventory", f"/stock/{sku}"))
        here = [s for s in r.json()["sources"] if s["source_code"] == source] if r.status_code == 200 else []
        return bool(here) and all(here[0][k] == v for k, v in expected.items())

    await eventually(reached, timeout=60, what=f"{sku} at {source} to be {expected}")


async def timeline(system: System, order_id: uuid.UUID) -> list[dict]:
    async with system.http() as http:
        r = await http.get(system.url("order", f"/orders/{order_id}/timeline"))
    assert r.status_code == 200, r.text
    return r.json()


async def all_notices(system: System, order_id: uuid.UUID, template: str) -> list[dict]:
    """Every message of this template the order's customer got or will get, whatever its delivery state."""
    async with system.http() as http:
        r = await http.get(system.url("notifications", "/notifications"), params={"order_id": str(order_id)})
    return [n for n in r.json() if n["template"] == template] if r.status_code == 200 else []


def text_of(message: dict) -> str:
    parsed = email.message_from_string(message["data"], policy=email.policy.default)
    return parsed.get_body(("plain",)).get_content()


async def mailed(system: System, to: str, *needles: str) -> list[str]:
    """The plain text of the mails the SMTP server received for `to` that contain every needle."""

    async def arrived():
        texts = [text_of(m) for m in system.mailbox.messages if to in m["to"]]
        return [t for t in texts if all(n in t for n in needles)]

    return await eventually(arrived, timeout=60, what=f"a mail to {to} with {needles}")


def money(view: dict, field: str) -> Decimal:
    return Decimal(view[field])


def units(view: dict) -> dict[str, dict[str, int]]:
    return {line["line_id"]: line["quantities"] for line in view["lines"]}


TOTALS = ("subtotal", "shipping_total", "tax_total", "discount_total", "grand_total", "refunded_total")


def money_of(view: dict) -> dict[str, Decimal]:
    return {field: Decimal(view[field]) for field in TOTALS}


async def order_when(system: System, order_id: uuid.UUID, check, what: str) -> dict:
    """The order's view once `check(view)` holds."""

    async def holds():
        order = await order_view(system, order_id)
        return order if check(order) else None

    return await eventually(holds, timeout=60, what=what)


async def keep_and_drop(system: System, name: str, stock: int):
    """An order of one unit of a SKU to keep (line 1, 10.00) and two of a SKU to drop (line 2, 5.00 each), with
    `stock` of each at WH-EAST: (keep, drop, the submitted order)."""
    rid = run_id()
    keep, drop = f"{name.upper()}-KEEP-{rid}", f"{name.upper()}-DROP-{rid}"
    await in_stock(system, "WH-EAST", {keep: stock, drop: 2})
    return keep, drop, samples.order_submitted(f"{name}-{rid}", [(keep, 1, "10.00"), (drop, 2, "5.00")])


async def requested_from_wh_east(system: System, name: str, quantity: int):
    """A paid order of `quantity` units (10.00 each) of a SKU that WH-EAST alone holds, requested from WH-EAST:
    (sku, the submitted order, the request)."""
    rid = run_id()
    sku = f"{name.upper()}-{rid}"
    await in_stock(system, "WH-EAST", {sku: quantity})
    submitted = samples.order_submitted(f"{name}-{rid}", [(sku, quantity, "10.00")])
    async with Feed(system, fulfillment_requests("WH-EAST").name) as warehouse:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        return sku, submitted, await warehouse.request(submitted.data.order_id)


async def test_cancelling_a_backordered_line_refunds_it_with_its_shares_and_the_last_line_refunds_shipping_too(
    system: System, network
):
    rid = run_id()
    first, second = f"CXL-FIRST-{rid}", f"CXL-SECOND-{rid}"
    submitted = samples.order_submitted(
        f"cancel-waiting-{rid}", [(first, 1, "12.00"), (second, 2, "7.50")], tax_total="4.35", discount_total="2.22"
    )
    order_id, paid = submitted.data.order_id, submitted.data.grand_total
    async with Feed(system, ORDER_EVENTS.name) as events:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        # Nothing of either SKU is in stock: both lines wait in their queues, nothing is requested from any source.
        await waiting_in_queue(system, first, order_id, 1)
        await waiting_in_queue(system, second, order_id, 2)
        order = await order_view(system, order_id, "awaiting_fulfillment")
        assert order["fulfillments"] == []

        answer = await cancel(system, order_id, {"2": 2}, key=f"ticket-{rid}")
        assert answer.status_code == 200, answer.text
        refund = value_of(Decimal("15.00"), submitted)  # 15.00 + 2.42 tax - 1.23 discount: no shipping, line 1 stays
        assert refund == Decimal("16.19")
        assert answer.json()["status"] == "cancelled" and Decimal(answer.json()["refunded"]) == refund

        cancelled = await events.event(order_id, "oms.order.lines_cancelled.v1")
        assert Decimal(cancelled["refund_amount"]) == refund
        assert Decimal(cancelled["grand_total"]) == paid - refund
        assert cancelled["actor"] == CS
        assert [(u["line_id"], u["quantity"], u["from"]) for u in cancelled["units"]] == [("2", 2, "backordered")]
        issued = await events.event(order_id, "oms.order.refund_issued.v1")
        assert (Decimal(issued["amount"]), issued["cause"]) == (refund, "cancellation")

        order = await order_view(system, order_id)
        assert units(order)["2"]["cancelled"] == 2 and units(order)["1"]["backordered"] == 1
        assert money(order, "grand_total") == paid - refund and money(order, "refunded_total") == refund
        assert order["status"] == "awaiting_fulfillment"
        # Inventory let the cancelled line go from its queue; the other line keeps its place.
        await waiting_in_queue(system, second, order_id, None)
        await waiting_in_queue(system, first, order_id, 1)
        [items_mail] = await notices(system, order_id, "lines_cancelled")
        [refund_mail] = await notices(system, order_id, "refund_issued")
        assert second in items_mail["body_text"] and str(paid - refund) in items_mail["body_text"]
        assert str(refund) in refund_mail["body_text"]
        await mailed(system, "ada@example.com", submitted.data.external_order_id, second, "cancel")

        # The same ticket again (a retry, a double click) answers the same cancellation and refunds nothing more.
        again = await cancel(system, order_id, {"2": 2}, key=f"ticket-{rid}")
        assert again.status_code == 200 and again.json()["cancellation_id"] == answer.json()["cancellation_id"]

        # The last line goes: nothing is left to ship, so shipping goes back too, and exactly what was paid.
        rest = await cancel(system, order_id, None, key=f"ticket-{rid}-rest", reason="customer does not want to wait")
        assert rest.status_code == 200, rest.text
        last = await events.event(order_id, "oms.order.lines_cancelled.v1")
        assert Decimal(last["refund_amount"]) == paid - refund  # the line with its shares, and the 4.99 shipping
        assert Decimal(last["refund_amount"]) == value_of(Decimal("12.00"), submitted) + Decimal("4.99")
        assert (Decimal(last["grand_total"]), last["status"]) == (Decimal("0.00"), "cancelled")
    order = await order_view(system, order_id, "cancelled")
    assert money(order, "refunded_total") == paid
    assert [Decimal(r["amount"]) for r in order["refunds"]] == [refund, paid - refund]
    assert len(order["cancellations"]) == 2
    await waiting_in_queue(system, first, order_id, None)
    [cancelled_mail] = await notices(system, order_id, "order_cancelled")
    assert str(paid - refund) in cancelled_mail["body_text"]
    await notices(system, order_id, "refund_issued", count=2)


async def test_a_channel_cancels_a_requested_line_the_source_confirms_and_its_reservation_is_released(
    system: System, network
):
    rid = run_id()
    keep, drop = f"REQ-KEEP-{rid}", f"REQ-DROP-{rid}"
    await in_stock(system, "WH-EAST", {keep: 3, drop: 3})
    submitted = samples.order_submitted(
        f"cancel-requested-{rid}", [(keep, 1, "10.00"), (drop, 2, "6.00")], tax_total="2.20"
    )
    order_id = submitted.data.order_id
    requests = Feed(system, fulfillment_requests("WH-EAST").name)
    async with requests as warehouse, Feed(system, ORDER_EVENTS.name) as events:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        request = await warehouse.request(order_id)
        await stock_at(system, drop, "WH-EAST", on_hand=3, reserved=2, available=1)

        # The units are at the source: they are asked of it, and nothing is cancelled or refunded until it answers.
        await system.publish(CHANNEL_ORDERS.name, samples.cancellation_requested(submitted, {"2": 2}))
        asked = await warehouse.next(order_id, fulfillment.FulfillmentCancelRequested.TYPE)
        asked = fulfillment.FulfillmentCancelRequested.model_validate(asked)
        assert asked.data.fulfillment_id == request.data.fulfillment_id
        assert [(x.line_id, x.quantity) for x in asked.data.lines] == [("2", 2)]
        order = await order_view(system, order_id)
        [pending] = order["cancellations"]
        assert pending["status"] == "pending" and pending["requested_by"] == "channel:web-eu:customer"
        assert money(order, "refunded_total") == 0

        await system.publish(FULFILLMENT_UPDATES.name, samples.cancelled(request, {"2": 2}, reason="as asked"))
        cancelled = await events.event(order_id, "oms.order.lines_cancelled.v1")
    refund = value_of(Decimal("12.00"), submitted)  # 12.00 + 12/22 of 2.20 tax; line 1 is still to ship
    assert Decimal(cancelled["refund_amount"]) == refund == Decimal("13.20")
    assert [(u["line_id"], u["quantity"], u["from"]) for u in cancelled["units"]] == [("2", 2, "requested")]
    order = await order_view(system, order_id)
    assert order["cancellations"][0]["status"] == "cancelled"
    assert units(order)["2"]["cancelled"] == 2 and units(order)["1"]["requested"] == 1
    assert money(order, "refunded_total") == refund and order["status"] == "awaiting_fulfillment"
    # The source's cancellation gave the two units back to the shelf; the kept line's reservation stays.
    await stock_at(system, drop, "WH-EAST", on_hand=3, reserved=0, available=3)
    await stock_at(system, keep, "WH-EAST", on_hand=3, reserved=1, available=2)
    [items_mail] = await notices(system, order_id, "lines_cancelled")
    assert drop in items_mail["body_text"] and keep not in items_mail["body_text"]
    [refund_mail] = await notices(system, order_id, "refund_issued")
    assert str(refund) in refund_mail["body_text"]

    # The rest of the fulfillment leaves: inventory settles what is still reserved for it, and nothing more.
    await system.publish(FULFILLMENT_UPDATES.name, samples.parcel(request, {"1": 1}, tracking_number=f"00340{rid}"))
    await order_view(system, order_id, "fulfilled")
    await stock_at(system, keep, "WH-EAST", on_hand=2, reserved=0, available=2)
    await stock_at(system, drop, "WH-EAST", on_hand=3, reserved=0, available=3)


async def test_shipped_units_are_never_cancelled_and_units_that_left_anyway_are_refused_to_the_requester(
    system: System, network
):
    rid = run_id()
    sent, late = f"SHIPPED-{rid}", f"LATE-{rid}"
    await in_stock(system, "WH-EAST", {sent: 2, late: 2})
    submitted = samples.order_submitted(f"refused-{rid}", [(sent, 1, "20.00"), (late, 1, "5.00")])
    order_id = submitted.data.order_id
    requests = Feed(system, fulfillment_requests("WH-EAST").name)
    async with requests as warehouse, Feed(system, ORDER_EVENTS.name) as events:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        request = await warehouse.request(order_id)
        await system.publish(
            FULFILLMENT_UPDATES.name, samples.parcel(request, {"1": 1}, tracking_number=f"00340{rid}1")
        )
        before = await order_view(system, order_id, "partially_fulfilled")

        # Customer service asks for the shipped line: 409 with the reason, and nothing is written.
        answer = await cancel(system, order_id, {"1": 1}, key=f"shipped-{rid}")
        assert answer.status_code == 409 and "already shipped" in answer.json()["detail"]
        after = await order_view(system, order_id)
        assert (units(after), money_of(after), after["cancellations"]) == (units(before), money_of(before), [])

        # A channel asks the same: refused by event with the reason, and the units and totals stay as they were.
        await system.publish(CHANNEL_ORDERS.name, samples.cancellation_requested(submitted, {"1": 1}))
        refusal = await events.event(order_id, "oms.order.cancellation_rejected.v1")
        assert "already shipped" in refusal["reason"] and refusal["lines"] == [{"line_id": "1", "quantity": 1}]
        after = await order_view(system, order_id)
        assert (units(after), money_of(after)) == (units(before), money_of(before))
        [refused] = after["cancellations"]
        assert refused["status"] == "refused"
        [refused_mail] = await notices(system, order_id, "cancellation_refused")
        assert sent in refused_mail["body_text"]

        # The other line is asked of the source, which ships it anyway: that cancellation is refused as well.
        await system.publish(CHANNEL_ORDERS.name, samples.cancellation_requested(submitted, {"2": 1}))
        await warehouse.next(order_id, fulfillment.FulfillmentCancelRequested.TYPE)
        await system.publish(
            FULFILLMENT_UPDATES.name, samples.parcel(request, {"2": 1}, tracking_number=f"00340{rid}2")
        )
        left = await events.event(order_id, "oms.order.cancellation_rejected.v1")
    assert "already left" in left["reason"] and left["lines"] == [{"line_id": "2", "quantity": 1}]
    order = await order_view(system, order_id, "fulfilled")
    assert {q["shipped"] for q in units(order).values()} == {1}
    assert money_of(order) == money_of(before) and order["refunds"] == []
    await notices(system, order_id, "cancellation_refused", count=2)


async def test_a_source_that_gives_up_a_fulfillment_has_it_replanned_at_another_source(system: System, network):
    rid = run_id()
    sku = f"REPLAN-{rid}"
    await in_stock(system, "WH-EAST", {sku: 1})
    submitted = samples.order_submitted(f"replan-{rid}", [(sku, 1, "30.00")])
    order_id = submitted.data.order_id
    east, west = Feed(system, fulfillment_requests("WH-EAST").name), Feed(system, fulfillment_requests("WH-WEST").name)
    async with east, west, Feed(system, ORDER_EVENTS.name) as events:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        first = await east.request(order_id)
        await stock_at(system, sku, "WH-EAST", reserved=1, available=0)
        # Only now does WH-WEST have the SKU: routing could not have planned it there first.
        await in_stock(system, "WH-WEST", {sku: 1})

        # WH-EAST finds its shelf empty and cancels on its own: nobody asked, so the unit is planned again elsewhere,
        # and it is written off at WH-EAST (not there).
        empty = samples.cancelled(
            first, {"1": 1}, reason="shelf empty", reason_code=fulfillment.ReasonCode.out_of_stock
        )
        await system.publish(FULFILLMENT_UPDATES.name, empty)
        replan = await events.event(order_id, "oms.order.replan_requested.v1")
        assert (replan["source_code"], replan["fulfillment_id"]) == ("WH-EAST", str(first.data.fulfillment_id))
        assert [(x["line_id"], x["quantity"]) for x in replan["lines"]] == [("1", 1)]
        second = await west.request(order_id)
    assert [(x.sku, x.quantity) for x in second.data.lines] == [(sku, 1)]
    await stock_at(system, sku, "WH-EAST", on_hand=0, reserved=0, available=0)
    await stock_at(system, sku, "WH-WEST", on_hand=1, reserved=1, available=0)
    order = await order_view(system, order_id, "awaiting_fulfillment")
    by_source = {f["source_code"]: f["status"] for f in order["fulfillments"]}
    assert by_source == {"WH-EAST": "cancelled", "WH-WEST": "requested"}
    assert units(order)["1"]["requested"] == 1 and order["refunds"] == [] and order["cancellations"] == []
    assert await all_notices(system, order_id, "lines_cancelled") == []


async def test_the_only_source_of_a_sku_out_of_stock_backorders_the_line_and_its_next_receipt_serves_it(
    system: System, network
):
    """A shelf found empty is written off where it was: the line waits for stock instead of being served at once
    from units that are not there, and is not sent back to that source until stock arrives there."""
    sku, submitted, first = await requested_from_wh_east(system, "empty-shelf", 1)
    order_id = submitted.data.order_id
    async with Feed(system, fulfillment_requests("WH-EAST").name) as east, Feed(system, ORDER_EVENTS.name) as events:
        assert (await east.request(order_id)).data.fulfillment_id == first.data.fulfillment_id  # read from the start
        await stock_at(system, sku, "WH-EAST", on_hand=1, reserved=1, available=0)

        empty = samples.cancelled(first, {"1": 1}, reason="not found", reason_code=fulfillment.ReasonCode.out_of_stock)
        await system.publish(FULFILLMENT_UPDATES.name, empty)
        replan = await events.event(order_id, "oms.order.replan_requested.v1")
        assert [(x["line_id"], x["quantity"]) for x in replan["lines"]] == [("1", 1)]
        # No source left with the SKU: routing backorders the line, and it waits; WH-EAST has nothing to give.
        await order_when(system, order_id, lambda o: units(o)["1"]["backordered"] == 1, "the line backordered")
        await waiting_in_queue(system, sku, order_id, 1)
        await stock_at(system, sku, "WH-EAST", on_hand=0, reserved=0, available=0)
        requested = [
            e
            for e in await everything_on(system, fulfillment_requests("WH-EAST").name)
            if e["type"] == fulfillment.FulfillmentRequested.TYPE and e["data"]["order_id"] == str(order_id)
        ]
        assert [e["data"]["fulfillment_id"] for e in requested] == [str(first.data.fulfillment_id)]
        [entry] = [e for e in await timeline(system, order_id) if e["kind"] == "replan_requested"]
        assert entry["details"]["reason_code"] == "out_of_stock" and "[out_of_stock]" in entry["note"]

        # The WMS finds more: the waiting line is served there, first in its queue.
        await receive(system, sku, "WH-EAST", 1)
        again = await east.request(order_id)
    assert again.data.fulfillment_id != first.data.fulfillment_id
    assert [(x.sku, x.quantity) for x in again.data.lines] == [(sku, 1)]
    await waiting_in_queue(system, sku, order_id, None)
    await stock_at(system, sku, "WH-EAST", on_hand=1, reserved=1, available=0)
    await order_when(system, order_id, lambda o: units(o)["1"]["requested"] == 1, "the line requested again")


async def test_a_source_that_gives_up_a_line_unit_by_unit_has_each_unit_replanned_elsewhere(system: System, network):
    sku, submitted, first = await requested_from_wh_east(system, "unit-by-unit", 3)
    order_id = submitted.data.order_id
    async with Feed(system, fulfillment_requests("WH-WEST").name) as west:
        await in_stock(system, "WH-WEST", {sku: 3})
        short = fulfillment.ReasonCode.out_of_stock

        await system.publish(FULFILLMENT_UPDATES.name, samples.cancelled(first, {"1": 1}, reason_code=short))
        one = await west.request(order_id)
        # Later the same line loses another unit: planned again too, never left open.
        await system.publish(FULFILLMENT_UPDATES.name, samples.cancelled(first, {"1": 1}, reason_code=short))
        two = await west.request(order_id)
    assert [(x.sku, x.quantity) for r in (one, two) for x in r.data.lines] == [(sku, 1), (sku, 1)]
    await stock_at(system, sku, "WH-EAST", on_hand=1, reserved=1, available=0)
    await stock_at(system, sku, "WH-WEST", on_hand=3, reserved=2, available=1)
    order = await order_when(system, order_id, lambda o: units(o)["1"]["requested"] == 3, "every unit requested")
    assert units(order)["1"]["open"] == 0
    assert order["refunds"] == [] and order["cancellations"] == []


async def test_a_source_update_with_an_unknown_reason_code_is_dead_lettered_with_the_field_error(
    system: System, network
):
    sku, submitted, request = await requested_from_wh_east(system, "bad-code", 1)
    order_id = submitted.data.order_id
    await stock_at(system, sku, "WH-EAST", on_hand=1, reserved=1)
    bad = json.loads(samples.cancelled(request, {"1": 1}).to_bytes())
    bad["data"]["reason_code"] = "eaten_by_mice"
    dlq = system.consumer(DEAD_LETTERS.name)
    await dlq.start()
    dead: dict[str, dict[str, str]] = {}
    try:
        await system.publish(FULFILLMENT_UPDATES.name, json.dumps(bad).encode(), key=str(order_id))

        def order_and_inventory(record) -> bool:
            headers = {k: v.decode() for k, v in record.headers}
            if record.key == str(order_id).encode():
                dead[headers["oms-service"]] = headers
            return {"order", "inventory"} <= set(dead)

        await read_until(dlq, order_and_inventory, timeout=60)
    finally:
        await dlq.stop()
    for service in ("order", "inventory"):
        assert dead[service]["oms-error-class"] == "ValidationError"
        assert "data.reason_code" in dead[service]["oms-error-message"]
    # Nothing moved: the unit is still reserved and requested.
    await stock_at(system, sku, "WH-EAST", on_hand=1, reserved=1, available=0)
    order = await order_view(system, order_id)
    assert units(order)["1"]["requested"] == 1


async def test_a_return_in_store_refunds_restocks_the_store_and_serves_a_backorder_waiting_for_that_sku(
    system: System, network, stores
):
    rid = run_id()
    sku = f"RETURN-{rid}"
    await in_stock(system, "WH-EAST", {sku: 2})
    bought = samples.order_submitted(f"bought-{rid}", [(sku, 2, "20.00")], tax_total="3.00", discount_total="1.00")
    waiting = samples.order_submitted(f"waits-{rid}", [(sku, 1, "20.00")])
    behind = samples.order_submitted(f"waits-behind-{rid}", [(sku, 1, "20.00")])
    warehouse, store = (
        Feed(system, fulfillment_requests("WH-EAST").name),
        Feed(system, fulfillment_requests(STORE).name),
    )
    async with warehouse, store, Feed(system, ORDER_EVENTS.name) as events:
        await system.publish(CHANNEL_ORDERS.name, bought, samples.payment_captured(bought))
        request = await warehouse.request(bought.data.order_id)
        await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(request), samples.delivered(request))
        await order_view(system, bought.data.order_id, "delivered")
        await stock_at(system, sku, "WH-EAST", on_hand=0, reserved=0)
        # Another customer orders the SKU now that none is left anywhere: the line waits in the queue; a third
        # customer after them waits behind.
        await system.publish(CHANNEL_ORDERS.name, waiting, samples.payment_captured(waiting))
        await waiting_in_queue(system, sku, waiting.data.order_id, 1)
        await system.publish(CHANNEL_ORDERS.name, behind, samples.payment_captured(behind))
        await waiting_in_queue(system, sku, behind.data.order_id, 1)

        # One of the two units comes back to the store, as good as new.
        await system.publish(CHANNEL_ORDERS.name, samples.return_received(bought, {"1": 1}, STORE))
        returned = await events.event(bought.data.order_id, "oms.order.lines_returned.v1")
        refund = await events.event(bought.data.order_id, "oms.order.refund_issued.v1")
        served = await store.request(waiting.data.order_id)

    # The same unit again, or more than is left: refused with the reason, the order unchanged.
    dlq = system.consumer(DEAD_LETTERS.name)
    await dlq.start()
    try:
        await system.publish(CHANNEL_ORDERS.name, samples.return_received(bought, {"1": 2}, STORE))
        dead = await read_until(dlq, lambda r: r.key == bought.key().encode(), timeout=60)
    finally:
        await dlq.stop()
    value = value_of(Decimal("20.00"), bought)  # 20.00 + 1.50 tax - 0.50 discount; shipping stays paid for
    assert Decimal(returned["refund_amount"]) == value == Decimal("21.00") and returned["source_code"] == STORE
    assert (Decimal(refund["amount"]), refund["cause"]) == (value, "return")
    assert [(x.sku, x.quantity) for x in served.data.lines] == [(sku, 1)]
    # The store's stock rose by the returned unit, which now is the waiting customer's.
    await stock_at(system, sku, STORE, on_hand=1, reserved=1, available=0)
    await waiting_in_queue(system, sku, waiting.data.order_id, None)
    await order_view(system, waiting.data.order_id, "awaiting_fulfillment")
    # First come, first served: the one unit went to the first in the queue; the one behind still waits.
    await waiting_in_queue(system, sku, behind.data.order_id, 1)
    assert units(await order_view(system, behind.data.order_id))["1"]["backordered"] == 1

    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["oms-service"] == "order" and headers["oms-original-topic"] == CHANNEL_ORDERS.name
    assert "only 1 shipped and not returned" in headers["oms-error-message"]
    order = await order_view(system, bought.data.order_id, "delivered")
    assert units(order)["1"]["returned"] == 1 and units(order)["1"]["delivered"] == 1
    assert [Decimal(r["amount"]) for r in order["refunds"]] == [value]
    [return_mail] = await notices(system, bought.data.order_id, "return_processed")
    assert sku in return_mail["body_text"]
    [refund_mail] = await notices(system, bought.data.order_id, "refund_issued")
    assert str(value) in refund_mail["body_text"]


async def test_a_stuck_order_raises_its_event_once_is_listed_and_the_operators_are_mailed(system: System, network):
    rid = run_id()
    sku = f"STUCK-{rid}"
    await in_stock(system, "WH-EAST", {sku: 2})
    stuck = samples.order_submitted(f"stuck-{rid}", [(sku, 1, "10.00")])
    marker = samples.order_submitted(f"stuck-marker-{rid}", [(sku, 1, "10.00")])
    order_id = stuck.data.order_id
    requests = Feed(system, fulfillment_requests("WH-EAST").name)
    async with requests as warehouse, Feed(system, ORDER_EVENTS.name) as events:
        # WH-EAST gets the request and never accepts it.
        await system.publish(CHANNEL_ORDERS.name, stuck, samples.payment_captured(stuck))
        request = await warehouse.request(order_id)
        alert = await events.event(order_id, "oms.order.stuck.v1")
        assert alert["kind"] == "requested_not_accepted"
        assert alert["fulfillment_id"] == str(request.data.fulfillment_id) and "WH-EAST" in alert["reason"]

        # A second order requested after that alert is called stuck only by a later run of the check, which saw the
        # first order still waiting: had it raised the first one again, that would be in the first order's timeline
        # (same transaction as its event) and on the topic (published before the second order's alert).
        await system.publish(CHANNEL_ORDERS.name, marker, samples.payment_captured(marker))
        await warehouse.request(marker.data.order_id)
        await events.event(marker.data.order_id, "oms.order.stuck.v1")
    raised = [
        e
        for e in await everything_on(system, ORDER_EVENTS.name)
        if e["type"] == "oms.order.stuck.v1" and e["data"]["order_id"] == str(order_id)
    ]
    assert len(raised) == 1
    assert [t["kind"] for t in await timeline(system, order_id)].count("stuck") == 1

    async with system.http() as http:
        listed = (await http.get(system.url("order", "/orders"), params={"stuck": "true", "limit": 500})).json()
        assert str(order_id) in {o["order_id"] for o in listed}
        [alarm] = (
            await http.get(
                system.url("notifications", "/notifications"),
                params={"template": "order_stuck", "order_id": str(order_id)},
            )
        ).json()
    assert alarm["recipient"] == OPS_EMAIL
    [mail] = await mailed(system, OPS_EMAIL, str(order_id))
    assert "WH-EAST" in mail

    # The source accepts at last: the order moved on, so it is no longer listed as stuck.
    await system.publish(FULFILLMENT_UPDATES.name, samples.accepted(request))

    async def cleared():
        async with system.http() as http:
            r = await http.get(system.url("order", "/orders"), params={"stuck": "true", "limit": 500})
        return str(order_id) not in {o["order_id"] for o in r.json()}

    await eventually(cleared, timeout=60, what="the stuck order to be cleared once accepted")


def link_in(text: str, order_id: uuid.UUID) -> str:
    [link] = re.findall(rf"http://\S+/customer/orders/{order_id}/backorders\?\S+", text)
    return link


def altered(link: str, **params: str) -> str:
    """The link with some of its query parameters changed."""
    parts = urlsplit(link)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | params
    return parts._replace(query=urlencode(query, safe=",")).geturl()


async def test_the_customers_link_cancels_what_waits_once_and_an_altered_or_expired_one_changes_nothing(
    system: System, network
):
    rid = run_id()
    here, later = f"LINK-HERE-{rid}", f"LINK-LATER-{rid}"
    await in_stock(system, "WH-EAST", {here: 1})
    submitted = samples.order_submitted(f"link-{rid}", [(here, 1, "10.00"), (later, 2, "8.00")])
    order_id = submitted.data.order_id
    await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
    await waiting_in_queue(system, later, order_id, 2)

    # The link as the customer gets it: in the backorder notice the SMTP server received.
    [notice] = await mailed(system, "ada@example.com", f"/customer/orders/{order_id}/backorders")
    link = link_in(notice, order_id)
    assert parse_qs(urlsplit(link).query)["lines"] == ["2"]
    before = await order_view(system, order_id)

    async with httpx.AsyncClient(timeout=10) as customer:  # no token: the link's signature is the credential
        page = await customer.get(link)
        assert page.status_code == 200 and later in page.text and here not in page.text
        # With its place in the queue, which the order service asked inventory for with its own token.
        assert "Place in the queue" in page.text and "cannot show the place" not in page.text

        sig = parse_qs(urlsplit(link).query)["sig"][0]
        other_line = altered(link, lines="1")
        more_lines = altered(link, lines="1,2")
        other_sig = altered(link, sig=("A" if sig[0] != "A" else "B") + sig[1:])
        # Signed with the right key, but its two weeks are over (a mail read too late).
        expired = f"{link.split('?')[0]}?" + urlencode(
            links.query(LINK_KEY.encode(), order_id, ["2"], datetime.now(UTC) - timedelta(minutes=1)), safe=","
        )
        for forged, code in ((other_line, 403), (more_lines, 403), (other_sig, 403), (expired, 410)):
            assert (await customer.get(forged)).status_code == code, forged
            assert (await customer.post(forged)).status_code == code, forged
        after = await order_view(system, order_id)
        assert (units(after), money_of(after), after["cancellations"]) == (units(before), money_of(before), [])

        done = await customer.post(link)
        assert done.status_code == 200 and later in done.text
        again = await customer.post(link)
        assert again.status_code == 200
    order = await order_view(system, order_id)
    [cancellation] = order["cancellations"]
    assert (cancellation["requested_by"], cancellation["via"], cancellation["status"]) == (
        CUSTOMER,
        "link",
        "cancelled",
    )
    assert units(order)["2"]["cancelled"] == 2 and units(order)["1"]["cancelled"] == 0
    refund = value_of(Decimal("16.00"), submitted)
    assert [Decimal(r["amount"]) for r in order["refunds"]] == [refund]
    await waiting_in_queue(system, later, order_id, None)
    [items_mail] = await notices(system, order_id, "lines_cancelled")
    assert later in items_mail["body_text"]


async def test_the_timeline_shows_every_actor_in_order(system: System, network):
    rid = run_id()
    here, waits, dropped = f"TL-HERE-{rid}", f"TL-WAITS-{rid}", f"TL-DROPPED-{rid}"
    await in_stock(system, "WH-EAST", {here: 1})
    submitted = samples.order_submitted(
        f"timeline-{rid}", [(here, 1, "10.00"), (waits, 2, "5.00"), (dropped, 1, "4.00")]
    )
    order_id = submitted.data.order_id
    async with Feed(system, fulfillment_requests("WH-EAST").name) as warehouse:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        request = await warehouse.request(order_id)
    await waiting_in_queue(system, waits, order_id, 2)
    await waiting_in_queue(system, dropped, order_id, 1)
    [notice] = await mailed(system, "ada@example.com", f"/customer/orders/{order_id}/backorders")

    async with system.http() as http:
        note = await http.post(
            system.url("order", f"/orders/{order_id}/notes"), json={"text": "Customer asked about the waiting items."}
        )
        assert note.status_code == 201 and note.json()["actor"] == CS
    answer = await cancel(system, order_id, {"3": 1}, key=f"timeline-{rid}")
    assert answer.status_code == 200, answer.text
    async with httpx.AsyncClient(timeout=10) as customer:
        assert (await customer.post(link_in(notice, order_id))).status_code == 200
    await system.publish(FULFILLMENT_UPDATES.name, samples.accepted(request), samples.shipped(request))
    order = await order_view(system, order_id, "fulfilled")
    assert units(order)["2"]["cancelled"] == 2 and units(order)["3"]["cancelled"] == 1

    entries = await timeline(system, order_id)
    assert [e["occurred_at"] for e in entries] == sorted(e["occurred_at"] for e in entries)
    # The stuck check may have called the request stuck while the source took its time (this module's short wait):
    # its entries are the service's own and are left out here.
    # Routing's plan changed no status of this order (inventory's reservation did, with the request), so routing
    # has no entry of its own here.
    story = [(e["kind"], e["actor"]) for e in entries if e["kind"] != "stuck"]
    actors = [actor for i, (_, actor) in enumerate(story) if i == 0 or story[i - 1][1] != actor]
    assert actors == [
        "channel:web-eu",
        "service:inventory",
        CS,
        CUSTOMER,
        "source:WH-EAST",
    ], story
    assert [kind for kind, actor in story if actor == CS] == [
        "note",
        "cancellation_requested",
        "units_cancelled",
        "refund",
    ]
    assert [kind for kind, actor in story if actor == CUSTOMER] == [
        "cancellation_requested",
        "units_cancelled",
        "refund",
    ]
    assert [
        (e["from_status"], e["to_status"]) for e in entries if e["actor"] == "source:WH-EAST" and e["kind"] == "status"
    ] == [("awaiting_fulfillment", "fulfilled")]


async def test_lines_nothing_can_serve_are_cancelled_and_refunded_and_the_customer_is_told(system: System, network):
    rid = run_id()
    here, never = f"DENY-HERE-{rid}", f"DENY-NEVER-{rid}"
    await in_stock(system, "WH-EAST", {here: 1})
    # Backorders denied: the line nobody has is cancelled and refunded, the rest ships.
    denied = samples.order_submitted(f"denied-{rid}", [(here, 1, "10.00"), (never, 1, "6.00")], backorder_policy="deny")
    # No source ships to Switzerland: nothing of this order can ever ship.
    swiss = samples.order_submitted(f"swiss-{rid}", [(here, 1, "10.00")], address=samples.DEMO_ADDRESSES["CH"])
    await system.publish(CHANNEL_ORDERS.name, denied, samples.payment_captured(denied))
    await system.publish(CHANNEL_ORDERS.name, swiss, samples.payment_captured(swiss))

    order = await order_view(system, denied.data.order_id, "awaiting_fulfillment")
    order = await order_when(
        system, denied.data.order_id, lambda o: units(o)["2"]["cancelled"] == 1, "the denied line to be cancelled"
    )
    refund = value_of(Decimal("6.00"), denied)
    assert [Decimal(r["amount"]) for r in order["refunds"]] == [refund]
    [items_mail] = await notices(system, denied.data.order_id, "lines_cancelled")
    assert never in items_mail["body_text"] and here not in items_mail["body_text"]
    await notices(system, denied.data.order_id, "refund_issued")

    order = await order_view(system, swiss.data.order_id, "cancelled")
    assert money(order, "refunded_total") == swiss.data.grand_total
    [cancelled_mail] = await notices(system, swiss.data.order_id, "order_cancelled")
    assert here in cancelled_mail["body_text"] and str(swiss.data.grand_total) in cancelled_mail["body_text"]
    await mailed(system, "ada@example.com", swiss.data.external_order_id, "CH")


@contextlib.asynccontextmanager
async def stopped(system: System, service: str):
    """The service down for the block (SIGTERM: it leaves its consumer groups as it would for a deploy), started
    again and ready after it; what was published meanwhile waits for it on its topics."""
    process = system.processes[service]
    process.terminate()
    await asyncio.to_thread(process.wait, 30)
    try:
        yield
    finally:
        system.start(service)
        await asyncio.to_thread(wait_ready, system, service)


async def test_units_cancelled_before_routing_planned_them_go_back_to_inventory_without_a_second_mail(
    system: System, network
):
    keep, drop, submitted = await keep_and_drop(system, "give-back", 1)
    order_id = submitted.data.order_id
    # Routing is down while the order is paid and the customer cancels a line at once, so it plans the paid order
    # as it was, both lines, when it comes back: the order service gives the cancelled units back to inventory.
    async with stopped(system, "routing"):
        await system.publish(
            CHANNEL_ORDERS.name,
            submitted,
            samples.payment_captured(submitted),
            samples.cancellation_requested(submitted, {"2": 2}),
        )
        await order_when(
            system, order_id, lambda o: units(o)["2"]["cancelled"] == 2, "line 2 cancelled before any plan"
        )
    requests = Feed(system, fulfillment_requests("WH-EAST").name)
    async with requests as warehouse, Feed(system, ORDER_EVENTS.name) as events:
        request = await warehouse.request(order_id)
        first = await events.event(order_id, "oms.order.lines_cancelled.v1")
        given_back = await events.event(order_id, "oms.order.lines_cancelled.v1")
    assert [(x.sku, x.quantity) for x in request.data.lines] == [(keep, 1)]
    assert first["actor"] == "channel:web-eu:customer" and Decimal(first["refund_amount"]) > 0
    assert given_back["actor"] == "service:order" and Decimal(given_back["refund_amount"]) == 0
    assert [(u["line_id"], u["quantity"], u["from"]) for u in given_back["units"]] == [("2", 2, "reserved")]
    await stock_at(system, drop, "WH-EAST", on_hand=2, reserved=0, available=2)

    # The parcel's mail comes after the give-back on the order's partition: by then notifications has read it.
    await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(request))
    await notices(system, order_id, "shipped")
    assert len(await all_notices(system, order_id, "lines_cancelled")) == 1
    assert len(await all_notices(system, order_id, "refund_issued")) == 1


async def test_bad_cancellations_are_refused_with_the_reason_and_a_repeated_one_applies_once(system: System, network):
    rid = run_id()
    sku = f"BAD-{rid}"
    submitted = samples.order_submitted(f"bad-{rid}", [(sku, 3, "4.00")])
    order_id = submitted.data.order_id
    await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
    await waiting_in_queue(system, sku, order_id, 3)

    # Over HTTP: an unknown order 404, an unknown line 422, more units than ordered 409; nothing changes.
    unknown = await cancel(system, uuid.uuid4(), {"1": 1}, key=f"bad-{rid}-1")
    assert unknown.status_code == 404
    assert (await cancel(system, order_id, {"9": 1}, key=f"bad-{rid}-2")).status_code == 422
    too_many = await cancel(system, order_id, {"1": 4}, key=f"bad-{rid}-3")
    assert too_many.status_code == 409 and "only 3 can still be cancelled" in too_many.json()["detail"]
    async with system.http() as http:
        refused = await http.post(
            system.url("order", f"/orders/{order_id}/cancellations"),
            json={"lines": [{"line_id": "1", "quantity": 1}], "reason": "x"},
            headers={"Authorization": "Bearer not-a-token"},
        )
        assert refused.status_code == 401

    # From a channel: the same request twice (a resend under the same event id) applies once.
    once = samples.cancellation_requested(submitted, {"1": 1})
    ghost = samples.order_submitted(f"never-submitted-{rid}", [(sku, 1, "4.00")])
    dlq = system.consumer(DEAD_LETTERS.name)
    await dlq.start()
    try:
        await system.publish(CHANNEL_ORDERS.name, once, once)
        # An order nobody submitted: dead-lettered with the reason; the consumer goes on with the next message.
        await system.publish(CHANNEL_ORDERS.name, samples.cancellation_requested(ghost, {"1": 1}))
        dead = await read_until(dlq, lambda r: r.key == ghost.key().encode(), timeout=60)
        # Behind the repeat on the same partition: when this one is applied, the repeat was read before it.
        await system.publish(CHANNEL_ORDERS.name, samples.cancellation_requested(submitted, {"1": 1}))
    finally:
        await dlq.stop()
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["oms-service"] == "order" and f"no order {ghost.key()}" in headers["oms-error-message"]

    order = await order_when(
        system, order_id, lambda o: len(o["cancellations"]) == 2, "the second channel cancellation"
    )
    assert units(order)["1"]["cancelled"] == 2 and units(order)["1"]["backordered"] == 1
    assert len(order["refunds"]) == 2
    await waiting_in_queue(system, sku, order_id, 1)


async def test_a_fulfillment_inventory_allocated_from_the_queue_and_its_source_rejected_is_replanned_elsewhere(
    system: System, network
):
    """Routing never planned a fulfillment that inventory made from its queue: the re-plan request carries what it
    needs (lines, source), and routing plans those lines without the source that rejected them."""
    rid = run_id()
    sku = f"ALLOC-REJ-{rid}"
    submitted = samples.order_submitted(f"alloc-rejected-{rid}", [(sku, 1, "15.00")])
    order_id = submitted.data.order_id
    await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
    await waiting_in_queue(system, sku, order_id, 1)
    east, west = Feed(system, fulfillment_requests("WH-EAST").name), Feed(system, fulfillment_requests("WH-WEST").name)
    async with east, west, Feed(system, ORDER_EVENTS.name) as events:
        await receive(system, sku, "WH-EAST", 1)
        allocated = await east.request(order_id)
        await in_stock(system, "WH-WEST", {sku: 1})
        await system.publish(FULFILLMENT_UPDATES.name, samples.rejected(allocated, reason="no staff today"))
        replan = await events.event(order_id, "oms.order.replan_requested.v1")
        second = await west.request(order_id)
    assert (replan["source_code"], replan["fulfillment_id"]) == ("WH-EAST", str(allocated.data.fulfillment_id))
    assert [(x.sku, x.quantity) for x in second.data.lines] == [(sku, 1)]
    await stock_at(system, sku, "WH-EAST", on_hand=1, reserved=0, available=1)
    await stock_at(system, sku, "WH-WEST", on_hand=1, reserved=1, available=0)
    order = await order_view(system, order_id, "awaiting_fulfillment")
    assert {f["source_code"]: f["status"] for f in order["fulfillments"]} == {
        "WH-EAST": "rejected",
        "WH-WEST": "requested",
    }


async def test_a_cancellation_of_units_inventory_is_still_reserving_waits_for_the_reservation_and_releases_it(
    system: System, network
):
    keep, drop, submitted = await keep_and_drop(system, "reserving", 2)
    order_id = submitted.data.order_id
    # Inventory is down: routing plans the order, the order service knows the shipment, nobody has reserved it yet.
    async with stopped(system, "inventory"):
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        await order_when(system, order_id, lambda o: units(o)["2"]["reserved"] == 2, "the plan to reach the order")
        answer = await cancel(system, order_id, {"2": 1}, key=f"reserving-{order_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "pending" and answer.json()["lines"][0]["pending"] == 1
    requests = Feed(system, fulfillment_requests("WH-EAST").name)
    async with requests as warehouse, Feed(system, ORDER_EVENTS.name) as events:
        request = await warehouse.request(order_id)
        cancelled = await events.event(order_id, "oms.order.lines_cancelled.v1")
    # The source is asked for what is left, and inventory gives back exactly the cancelled unit it reserved.
    assert sorted((x.sku, x.quantity) for x in request.data.lines) == sorted([(keep, 1), (drop, 1)])
    assert [(u["line_id"], u["quantity"], u["from"]) for u in cancelled["units"]] == [("2", 1, "reserved")]
    assert cancelled["units"][0]["fulfillment_id"] == str(request.data.fulfillment_id)
    assert Decimal(cancelled["refund_amount"]) == Decimal("5.00") and cancelled["actor"] == CS
    await stock_at(system, drop, "WH-EAST", on_hand=2, reserved=1, available=1)
    await stock_at(system, keep, "WH-EAST", on_hand=2, reserved=1, available=1)
    order = await order_view(system, order_id, "awaiting_fulfillment")
    assert order["cancellations"][0]["status"] == "cancelled"
    [mail] = await notices(system, order_id, "lines_cancelled")
    assert drop in mail["body_text"]

    await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(request))
    await order_view(system, order_id, "fulfilled")
    await stock_at(system, drop, "WH-EAST", on_hand=1, reserved=0, available=1)
    await stock_at(system, keep, "WH-EAST", on_hand=1, reserved=0, available=1)


async def test_a_whole_order_cancelled_while_one_line_waits_and_one_is_at_its_source_refunds_all_that_was_paid(
    system: System, network
):
    rid = run_id()
    here, later = f"WHOLE-HERE-{rid}", f"WHOLE-LATER-{rid}"
    await in_stock(system, "WH-EAST", {here: 1})
    submitted = samples.order_submitted(f"whole-{rid}", [(here, 1, "10.00"), (later, 1, "6.00")], tax_total="1.60")
    order_id, paid = submitted.data.order_id, submitted.data.grand_total
    requests = Feed(system, fulfillment_requests("WH-EAST").name)
    async with requests as warehouse, Feed(system, ORDER_EVENTS.name) as events:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        request = await warehouse.request(order_id)
        await waiting_in_queue(system, later, order_id, 1)

        # The channel cancels everything: the waiting line at once, the other when its source confirms.
        await system.publish(CHANNEL_ORDERS.name, samples.cancellation_requested(submitted, None))
        at_once = await events.event(order_id, "oms.order.lines_cancelled.v1")
        await warehouse.next(order_id, fulfillment.FulfillmentCancelRequested.TYPE)
        await system.publish(FULFILLMENT_UPDATES.name, samples.cancelled(request, {"1": 1}))
        last = await events.event(order_id, "oms.order.lines_cancelled.v1")
    assert Decimal(at_once["refund_amount"]) == value_of(Decimal("6.00"), submitted)  # shipping stays: line 1 may ship
    assert Decimal(last["refund_amount"]) == paid - Decimal(at_once["refund_amount"])  # the rest, shipping included
    assert last["status"] == "cancelled"
    order = await order_view(system, order_id, "cancelled")
    assert money(order, "refunded_total") == paid and money(order, "grand_total") == 0
    assert [f["status"] for f in order["fulfillments"]] == ["cancelled"]
    await waiting_in_queue(system, later, order_id, None)
    await stock_at(system, here, "WH-EAST", on_hand=1, reserved=0, available=1)
    await notices(system, order_id, "lines_cancelled")
    [cancelled_mail] = await notices(system, order_id, "order_cancelled")
    assert here in cancelled_mail["body_text"]
    await notices(system, order_id, "refund_issued", count=2)


async def test_an_unpaid_order_cancelled_by_its_channel_refunds_nothing_and_is_mailed_once(system: System, network):
    rid = run_id()
    submitted = samples.order_submitted(f"unpaid-{rid}", [(f"UNPAID-{rid}", 1, "10.00")])
    order_id = submitted.data.order_id
    await system.publish(CHANNEL_ORDERS.name, submitted, samples.cancellation_requested(submitted, None))
    order = await order_view(system, order_id, "cancelled")
    assert order["refunds"] == [] and money(order, "refunded_total") == 0
    [mail] = await notices(system, order_id, "order_cancelled")
    assert "You have not been charged" in mail["body_text"]
    # A payment captured for it afterwards is refused: the channel must not charge a cancelled order.
    dlq = system.consumer(DEAD_LETTERS.name)
    await dlq.start()
    try:
        await system.publish(CHANNEL_ORDERS.name, samples.payment_captured(submitted))
        dead = await read_until(dlq, lambda r: r.key == submitted.key().encode(), timeout=60)
    finally:
        await dlq.stop()
    assert dict(dead.headers)["oms-service"] == b"order"
    assert (await order_view(system, order_id))["status"] == "cancelled"
    assert len(await all_notices(system, order_id, "order_cancelled")) == 1


async def test_a_whole_order_returned_to_a_warehouse_is_refunded_in_full_and_only_resellable_units_restocked(
    system: System, network
):
    rid = run_id()
    sku = f"RETURNED-ALL-{rid}"
    await in_stock(system, "WH-EAST", {sku: 2})
    submitted = samples.order_submitted(f"returned-all-{rid}", [(sku, 2, "25.00")], tax_total="9.50")
    order_id, paid = submitted.data.order_id, submitted.data.grand_total
    async with Feed(system, fulfillment_requests("WH-EAST").name) as warehouse:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        request = await warehouse.request(order_id)
    await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(request), samples.delivered(request))
    await order_view(system, order_id, "delivered")
    await stock_at(system, sku, "WH-EAST", on_hand=0, reserved=0)

    # Both units come back in one parcel, one of them broken.
    returned = samples.return_received(submitted, {"1": 2}, "WH-EAST")
    both = [ReturnedLine(line_id="1", quantity=1, condition=c) for c in ("resellable", "damaged")]
    returned = returned.model_copy(update={"data": returned.data.model_copy(update={"lines": both})})
    await system.publish(CHANNEL_ORDERS.name, returned)
    order = await order_view(system, order_id, "refunded")
    # Nothing of the order is kept: all that was paid goes back, shipping too (docs: deviation 11).
    assert money(order, "refunded_total") == paid
    [mail] = await notices(system, order_id, "return_processed")
    assert "damaged" in mail["body_text"] and "good condition" in mail["body_text"]
    await notices(system, order_id, "refund_issued")
    # One return, one restock: the resellable unit is back on the shelf, the damaged one is not.
    await stock_at(system, sku, "WH-EAST", on_hand=1, reserved=0, available=1)


async def test_stock_running_low_at_a_source_alerts_the_operators(system: System, network):
    rid = run_id()
    sku = f"LOW-{rid}"
    await in_stock(system, "WH-EAST", {sku: 5})
    # Inventory's threshold is 5 (its default): the order's reservation takes WH-EAST from 5 available to 4.
    submitted = samples.order_submitted(f"low-{rid}", [(sku, 1, "10.00")])
    async with Feed(system, fulfillment_requests("WH-EAST").name) as warehouse:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        await warehouse.request(submitted.data.order_id)
    [mail] = await mailed(system, OPS_EMAIL, sku)
    assert "WH-EAST" in mail
    async with system.http() as http:
        alerts = (
            await http.get(system.url("notifications", "/notifications"), params={"template": "low_stock"})
        ).json()
    assert len([a for a in alerts if sku in a["body_text"]]) == 1


def as_(token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10)


async def test_customer_service_acts_as_its_principal_and_a_role_without_the_right_gets_403(system: System, network):
    rid = run_id()
    sku = f"ROLES-{rid}"
    submitted = samples.order_submitted(f"roles-{rid}", [(sku, 2, "9.00")])
    order_id = submitted.data.order_id
    await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
    await waiting_in_queue(system, sku, order_id, 2)
    before = await order_view(system, order_id)
    cancellations = system.url("order", f"/orders/{order_id}/cancellations")
    notes = system.url("order", f"/orders/{order_id}/notes")
    asked = {"lines": [{"line_id": "1", "quantity": 1}], "reason": "customer called"}

    # Finance may read and write notes, not cancel; a viewer may only read. Refused: 403 naming the roles held.
    async with as_(FINANCE_TOKEN) as finance, as_(VIEWER_TOKEN) as viewer:
        refused = await finance.post(cancellations, json=asked, headers={"Idempotency-Key": f"roles-{rid}-fin"})
        assert refused.status_code == 403 and "finance" in refused.json()["detail"]
        assert (
            await viewer.post(cancellations, json=asked, headers={"Idempotency-Key": f"roles-{rid}-v"})
        ).status_code == 403
        assert (await viewer.post(notes, json={"text": "I only look"})).status_code == 403
        assert (await viewer.get(system.url("order", f"/orders/{order_id}"))).status_code == 200
        note = await finance.post(notes, json={"text": "Refund to be checked against the invoice."})
        assert note.status_code == 201 and note.json()["actor"] == "fin"
    after = await order_view(system, order_id)
    assert (units(after), money_of(after), after["cancellations"]) == (units(before), money_of(before), [])
    await waiting_in_queue(system, sku, order_id, 2)

    # A name in the body is not the actor: the token's principal is.
    async with system.http() as http:
        done = await http.post(
            cancellations,
            json=asked | {"requested_by": "someone-else", "actor": "someone-else"},
            headers={"Idempotency-Key": f"roles-{rid}-cs"},
        )
    assert done.status_code == 200, done.text
    assert done.json()["requested_by"] == CS and done.json()["status"] == "cancelled"
    await waiting_in_queue(system, sku, order_id, 1)
    order = await order_view(system, order_id)
    assert units(order)["1"]["cancelled"] == 1 and money(order, "refunded_total") == Decimal("9.00")
    entries = await timeline(system, order_id)
    assert [e["actor"] for e in entries if e["kind"] == "note"] == ["fin"]
    assert {e["actor"] for e in entries if e["kind"] in ("cancellation_requested", "units_cancelled", "refund")} == {CS}
    assert "someone-else" not in json.dumps(entries)


async def test_a_failed_payment_cancels_the_order_and_the_customer_is_told_why(system: System, network):
    rid = run_id()
    submitted = samples.order_submitted(f"declined-{rid}", [(f"DECLINED-{rid}", 1, "30.00")])
    order_id = submitted.data.order_id
    captured = samples.payment_captured(submitted)
    authorized = channel.PaymentAuthorized(source=captured.source, subject=captured.subject, data=captured.data)
    async with Feed(system, ORDER_EVENTS.name) as events:
        await system.publish(CHANNEL_ORDERS.name, submitted, authorized)
        await order_view(system, order_id, "payment_processing")
        await system.publish(CHANNEL_ORDERS.name, samples.payment_failed(submitted, reason="insufficient funds"))
        changes = [await events.event(order_id, "oms.order.status_changed.v1") for _ in range(3)]
    assert [(c["from"], c["to"]) for c in changes] == [
        (None, "pending"),
        ("pending", "payment_processing"),
        ("payment_processing", "cancelled"),
    ]
    assert changes[-1]["cause_type"] == channel.PaymentFailed.TYPE and "insufficient funds" in changes[-1]["note"]
    order = await order_view(system, order_id, "cancelled")
    assert order["refunds"] == [] and money(order, "refunded_total") == 0
    [mail] = await notices(system, order_id, "payment_failed")
    assert "insufficient funds" in mail["body_text"] and "You have not been charged" in mail["body_text"]
    assert await all_notices(system, order_id, "order_cancelled") == []


async def test_malformed_cancellations_and_returns_are_dead_lettered_with_their_field_errors_and_change_nothing(
    system: System, network
):
    sku, submitted, request = await requested_from_wh_east(system, "malformed", 2)
    order_id = submitted.data.order_id
    await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(request), samples.delivered(request))
    before = await order_view(system, order_id, "delivered")
    await stock_at(system, sku, "WH-EAST", on_hand=0, reserved=0)

    # Zero units to cancel; a return in a condition nobody knows, without where it came back.
    zero = json.loads(samples.cancellation_requested(submitted, {"1": 1}).to_bytes())
    zero["data"]["lines"][0]["quantity"] = 0
    broken = json.loads(samples.return_received(submitted, {"1": 1}, "WH-EAST").to_bytes())
    broken["data"]["lines"][0]["condition"] = "smashed"
    del broken["data"]["source_code"]
    dlq = system.consumer(DEAD_LETTERS.name)
    await dlq.start()
    dead: list = []
    try:
        await system.publish(
            CHANNEL_ORDERS.name, json.dumps(zero).encode(), json.dumps(broken).encode(), key=submitted.key()
        )
        # Behind them on the order's partition: a good return, applied once the consumer went past the bad ones.
        await system.publish(CHANNEL_ORDERS.name, samples.return_received(submitted, {"1": 1}, "WH-EAST"))

        def two_of_this_order(record) -> bool:
            if record.key == submitted.key().encode():
                dead.append(record)
            return len(dead) == 2

        await read_until(dlq, two_of_this_order, timeout=60)
    finally:
        await dlq.stop()
    errors = {json.loads(r.value)["type"]: {k: v.decode() for k, v in r.headers} for r in dead}
    for headers in errors.values():
        assert headers["oms-service"] == "order" and headers["oms-error-class"] == "ValidationError"
    assert "data.lines.0.quantity" in errors[channel.CancellationRequested.TYPE]["oms-error-message"]
    returned = errors[channel.ReturnReceived.TYPE]["oms-error-message"]
    assert "data.lines.0.condition" in returned and "data.source_code" in returned

    # Only the good return did anything: one unit returned, refunded and back on the shelf.
    order = await order_when(system, order_id, lambda o: o["returns"], "the good return")
    assert order["cancellations"] == [] and len(order["returns"]) == 1
    assert units(order)["1"]["returned"] == 1 and units(order)["1"]["cancelled"] == 0
    assert [Decimal(r["amount"]) for r in order["refunds"]] == [Decimal("10.00")]
    assert money(before, "refunded_total") == 0
    await stock_at(system, sku, "WH-EAST", on_hand=1, reserved=0, available=1)


# Over HTTP, per order: a unit on each process, the first request sent again to the other one, and one more.
ASKED = (("one", "a"), ("two", "b"), ("two", "a"), ("one", "c"))


async def test_two_order_processes_and_concurrent_cancellations_lose_no_update_and_refund_nothing_twice(
    system: System, network
):
    """A second order-service process joins the first one's consumer groups (same database, its own HTTP port);
    for each order, four units asked of a line of three at once: by the channel and over both processes' HTTP,
    one request sent to both. Exactly three units go, each refunded once, the fourth is refused, and the last
    refund is what is left of what was paid."""
    rid = run_id()
    sku = f"TWINS-{rid}"
    orders = [samples.order_submitted(f"twins-{rid}-{i}", [(sku, 3, "5.00")]) for i in range(3)]
    for submitted in orders:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
    for submitted in orders:
        await waiting_in_queue(system, sku, submitted.data.order_id, 3)
    # Its own HTTP port; the same database and consumer groups as the first: the partitions are shared out.
    system.ports["order-twin"] = free_port()
    system.start("order", name="order-twin", OMS_ORDER_HTTP_PORT=str(system.ports["order-twin"]))
    try:
        await asyncio.to_thread(wait_ready, system, "order-twin")
        ports = {"one": system.ports["order"], "two": system.ports["order-twin"]}

        async def one_unit(instance: str, order_id: uuid.UUID, key: str) -> httpx.Response:
            async with system.http() as http:
                return await http.post(
                    f"http://127.0.0.1:{ports[instance]}/orders/{order_id}/cancellations",
                    json={"lines": [{"line_id": "1", "quantity": 1}], "reason": "customer called"},
                    headers={"Idempotency-Key": key},
                )

        calls = []
        for submitted in orders:
            order_id = submitted.data.order_id
            calls += [one_unit(instance, order_id, key) for instance, key in ASKED]
        channel_asks = [samples.cancellation_requested(s, {"1": 1}) for s in orders]
        answers, _ = await asyncio.gather(asyncio.gather(*calls), system.publish(CHANNEL_ORDERS.name, *channel_asks))

        for i, submitted in enumerate(orders):
            order_id, paid = submitted.data.order_id, submitted.data.grand_total
            mine = answers[4 * i : 4 * i + 4]
            assert {a.status_code for a in mine} <= {200, 409}, [a.text for a in mine]
            # Key "a" on both processes is one request: one answer, the same cancellation.
            assert mine[0].status_code == mine[2].status_code
            if mine[0].status_code == 200:
                assert mine[0].json()["cancellation_id"] == mine[2].json()["cancellation_id"]

            # The channel's request is always recorded, cancelled or refused; the HTTP ones may come first.
            order = await order_when(
                system,
                order_id,
                lambda o: (
                    units(o)["1"]["cancelled"] == 3
                    and any(
                        c["via"] == "channel" and c["status"] in ("cancelled", "refused") for c in o["cancellations"]
                    )
                ),
                f"the cancellations of {order_id} applied",
            )
            # Three units cancelled, each refunded once; the whole of what was paid, shipping included, and no more.
            assert units(order)["1"] == {**units(order)["1"], "cancelled": 3, "backordered": 0}
            assert sum(x["quantity"] for r in order["refunds"] for x in r["lines"]) == 3
            assert sum(Decimal(r["amount"]) for r in order["refunds"]) == money(order, "refunded_total") == paid
            assert order["status"] == "cancelled"
            # The fourth unit was refused: by HTTP (409, nothing written) or to the channel (a refused cancellation).
            refused_http = {key for (_, key), a in zip(ASKED, mine, strict=True) if a.status_code == 409}
            refused_channel = [c for c in order["cancellations"] if c["status"] == "refused"]
            assert len(refused_http) + len(refused_channel) == 1, (
                [a.text for a in mine],
                order["cancellations"],
            )
            await waiting_in_queue(system, sku, order_id, None)
            await notices(system, order_id, "order_cancelled")
            assert len(await all_notices(system, order_id, "refund_issued")) == len(order["refunds"])
    finally:
        twin = system.processes.pop("order-twin")
        twin.terminate()
        await asyncio.to_thread(twin.wait, 30)
