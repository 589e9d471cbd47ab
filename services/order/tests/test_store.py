"""How the order service loads orders (store.load) on a real PostgreSQL: everything an order has, read with only the
statements it needs."""

from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_order import store
from oms_runtime import metrics
from oms_runtime.database import driver
from oms_runtime.testing import deliver
from oms_tools import samples


async def load_counting(service, monkeypatch, *orders):
    """The orders as store.load reads them, and the statements it sent."""
    sent: list[str] = []
    real = metrics.statement_done
    monkeypatch.setattr(metrics, "statement_done", lambda query, *rest: (sent.append(query), real(query, *rest)))
    async with service.database.transaction() as conn:
        loaded = await store.load(await driver(conn), [o.data.order_id for o in orders])
    monkeypatch.setattr(metrics, "statement_done", real)
    return loaded, [" ".join(q.split()) for q in sent if q.split()[0] == "SELECT"]


async def test_an_order_is_loaded_whole_reading_only_the_tables_it_has_rows_in(order_service, monkeypatch):
    # One order only paid; one shipped (a fulfillment and its parcel) with a lamp cancelled before (a cancellation).
    paid = samples.order_submitted("load-paid", [("TENT", 1, "7.00")])
    shipped = samples.order_submitted("load-shipped", [("TENT", 2, "7.00"), ("LAMP", 1, "10.00")])
    for submitted in (paid, shipped):
        await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = samples.fulfillment_planned(shipped, [("1", 2)], [("2", 1)], source_code="WH-EAST")
    await deliver(order_service, ROUTING_PLANS, plan)
    await deliver(order_service, CHANNEL_ORDERS, samples.cancellation_requested(shipped, {"2": 1}))
    [_, request] = await deliver(order_service, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))
    await deliver(order_service, FULFILLMENT_UPDATES, samples.shipped(request.event))

    loaded, selects = await load_counting(order_service, monkeypatch, paid)
    [order] = loaded.values()
    assert len(selects) == 2  # the order (locked); its lines, saying it has nothing else
    assert [x.sku for x in order.lines.values()] == ["TENT"] and not order.fulfillments and not order.cancellations
    assert order.accepted_at is not None

    # With the shipped one, its fulfillments, parcels and cancellations too (of it alone).
    loaded, selects = await load_counting(order_service, monkeypatch, paid, shipped)
    assert [
        next(t for t in ("orders", "order_lines", "fulfillments", "parcels", "cancellations") if t in s)
        for s in selects
    ] == ["orders", "order_lines", "fulfillments", "parcels", "cancellations"]
    whole = loaded[shipped.data.order_id]
    [fulfillment] = whole.fulfillments.values()
    assert fulfillment.fulfillment_id == request.event.data.fulfillment_id and fulfillment.shipped_at is not None
    assert len(fulfillment.parcels) == 1
    assert [c.via for c in whole.cancellations.values()] == ["channel"]
    assert not loaded[paid.data.order_id].fulfillments and not loaded[paid.data.order_id].cancellations


async def test_a_batch_is_saved_in_one_statement_whatever_tables_it_writes(order_service, monkeypatch):
    submitted = samples.order_submitted("save-once", [("TENT", 2, "7.00"), ("LAMP", 1, "10.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = samples.fulfillment_planned(submitted, [("1", 2), ("2", 1)], [], source_code="WH-EAST")
    await deliver(order_service, ROUTING_PLANS, plan)
    [_, request] = await deliver(order_service, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))

    sent: list[str] = []
    real = metrics.statement_done
    monkeypatch.setattr(metrics, "statement_done", lambda query, *rest: (sent.append(query), real(query, *rest)))
    # A shipment updates the order and its lines, and writes its fulfillment, a parcel and timeline rows.
    await deliver(order_service, FULFILLMENT_UPDATES, samples.shipped(request.event))
    monkeypatch.setattr(metrics, "statement_done", real)

    writes = [q for q in sent if q.split()[0] in ("WITH", "INSERT", "UPDATE") and " inbox " not in f" {q} "]
    writes = [q for q in writes if "INTO outbox" not in q]
    assert len(writes) == 1
    assert all(
        f"{table} " in writes[0] for table in ("orders", "order_lines", "fulfillments", "parcels", "order_timeline")
    )
    loaded, _ = await load_counting(order_service, monkeypatch, submitted)
    [fulfillment] = loaded[submitted.data.order_id].fulfillments.values()
    assert fulfillment.shipped_at is not None and len(fulfillment.parcels) == 1


def test_statements_sent_together_have_their_parameters_numbered_on():
    together = store._together(("INSERT INTO a SELECT $1, $2", "UPDATE b SET x = $1 WHERE y = $3 OR z = $2"))
    assert together == (
        "WITH w0 AS (INSERT INTO a SELECT $1, $2),\nw1 AS (UPDATE b SET x = $3 WHERE y = $5 OR z = $4)\nSELECT 1"
    )
