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


async def test_a_batch_is_saved_in_the_statement_that_records_it_in_the_inbox_whatever_tables_it_writes(
    order_service, monkeypatch
):
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

    writes = [q for q in sent if q.split()[0] in ("WITH", "INSERT", "UPDATE")]
    assert len(writes) == 1
    tables = ("orders", "order_lines", "fulfillments", "parcels", "order_timeline", "inbox", "outbox")
    assert all(f"INTO {table} " in writes[0] or f"UPDATE {table} " in writes[0] for table in tables)
    loaded, _ = await load_counting(order_service, monkeypatch, submitted)
    [fulfillment] = loaded[submitted.data.order_id].fulfillments.values()
    assert fulfillment.shipped_at is not None and len(fulfillment.parcels) == 1


def scans(node: dict) -> list[dict]:
    """The plan's nodes that read a table or an index."""
    found = [node] if "Scan" in node["Node Type"] and "Function" not in node["Node Type"] else []
    for child in node.get("Plans", []):
        found += scans(child)
    return found


async def test_the_load_looks_up_each_orders_fulfillments_parcels_and_cancellations_in_the_plan_the_pool_keeps(
    order_service, monkeypatch
):
    """The pool's connections keep a statement's generic plan, costed for ten keys and on the tables as they are. Most
    orders of a batch have no fulfillment, parcel or cancellation yet, so the load asks whether they do; asked with
    EXISTS, the planner read those tables whole through their index and hashed them (1,760 pages per order at 10
    orders/s), and the cached plan did so for every batch. Each of the load's statements must look them up by key."""
    submitted = samples.order_submitted("load-plan", [("TENT", 2, "7.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = samples.fulfillment_planned(submitted, [("1", 2)], [], source_code="WH-EAST")
    await deliver(order_service, ROUTING_PLANS, plan)
    [_, request] = await deliver(order_service, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))
    await deliver(order_service, FULFILLMENT_UPDATES, samples.shipped(request.event))
    _, selects = await load_counting(order_service, monkeypatch, submitted)
    assert len(selects) == 4  # the order, its lines and flags, its fulfillments, its parcels

    keys = "{" + str(submitted.data.order_id) + "}"
    async with order_service.database.autocommit() as pg:
        assert await pg.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        looked_up = []
        for i, statement in enumerate(selects):
            await pg.execute(f"PREPARE load_{i} (uuid[]) AS {statement}")
            [[shown]] = await pg.fetch(f"EXPLAIN (FORMAT JSON) EXECUTE load_{i} ('{keys}')")
            await pg.execute(f"DEALLOCATE load_{i}")
            for scan in scans(shown[0]["Plan"]):
                assert scan["Node Type"] != "Seq Scan", (statement, scan)
                index = scan.get("Index Name", "")
                if any(table in index for table in ("fulfillments", "parcels", "cancellations")):
                    assert "Index Cond" in scan, (statement, scan)
                    looked_up.append(index)
    assert {"ix_fulfillments_order_id", "ix_parcels_order_id", "ix_cancellations_order_id"} <= set(looked_up)
