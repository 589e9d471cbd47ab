import os
import subprocess
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from oms_order.store import metadata

ROOT = Path(__file__).resolve().parents[3]
ALEMBIC_INI = ROOT / "services" / "order" / "alembic.ini"


async def test_the_migrations_create_exactly_the_tables_of_the_store(service_database):
    engine = create_async_engine(service_database("order", "migrations"))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
            version = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert diff == []
    assert version == "0005"


def _alembic(url: str, *args: str) -> None:
    env = {**os.environ, "OMS_ORDER_DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args], check=True, env=env, cwd=ROOT)


async def _insert_order(conn, order_id: uuid.UUID, external_id: str, status: str) -> None:
    """An order row as every revision so far stores it."""
    await conn.execute(
        sa.text(
            "INSERT INTO orders (order_id, channel, external_order_id, status, currency, placed_at, customer, "
            "shipping_address, shipping_method, options, shipping_total, tax_total, discount_total, "
            "grand_total) VALUES (:id, 'web', :ext, :status, 'EUR', now(), '{}', '{}', 'standard', '{}', 0, 0, 0, 10)"
        ),
        {"id": order_id, "ext": external_id, "status": status},
    )


async def test_orders_stored_before_parcels_stay_valid_through_the_upgrade_and_back(create_database):
    url = create_database("order_0001").replace("postgresql://", "postgresql+asyncpg://", 1)
    _alembic(url, "upgrade", "0001")
    order_id, shipped_id, planned_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await _insert_order(conn, order_id, "1", "partially_fulfilled")
            await conn.execute(
                sa.text(
                    "INSERT INTO order_lines VALUES (:id, '1', 'A', 2, 1, 'shipped'), (:id, '2', 'B', 3, 1, 'open'), "
                    "(:id, '3', 'C', 1, 1, 'backordered')"
                ),
                {"id": order_id},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO fulfillments (fulfillment_id, order_id, source_code, status, lines, carrier, "
                    "tracking_number, shipped_at) VALUES "
                    '(:s, :id, \'WH\', \'shipped\', \'[{"line_id": "1", "sku": "A", "quantity": 2}]\', \'DHL\', '
                    "'T-1', now()), "
                    '(:p, :id, \'WH\', \'planned\', \'[{"line_id": "2", "sku": "B", "quantity": 3}]\', NULL, '
                    "NULL, NULL)"
                ),
                {"id": order_id, "s": shipped_id, "p": planned_id},
            )
        _alembic(url, "upgrade", "head")
        async with engine.connect() as conn:
            lines = (await conn.execute(sa.text("SELECT * FROM order_lines ORDER BY line_id"))).mappings().all()
            parcels = (await conn.execute(sa.text("SELECT * FROM parcels"))).mappings().all()
        units = [
            {k.removeprefix("quantity_"): v for k, v in x.items() if k.startswith("quantity_") and v} for x in lines
        ]
        assert units == [{"shipped": 2}, {"reserved": 3}, {"backordered": 1}]
        assert [x["state"] for x in lines] == ["shipped", "reserved", "backordered"]
        [parcel] = parcels
        assert (parcel["fulfillment_id"], parcel["carrier"], parcel["tracking_number"]) == (shipped_id, "DHL", "T-1")
        assert parcel["lines"] == [{"line_id": "1", "sku": "A", "quantity": 2}]

        _alembic(url, "downgrade", "0001")
        async with engine.connect() as conn:
            back = await conn.execute(
                sa.text("SELECT carrier, tracking_number FROM fulfillments WHERE fulfillment_id = :s"),
                {"s": shipped_id},
            )
            assert back.one() == ("DHL", "T-1")
    finally:
        await engine.dispose()


async def test_lines_stored_before_backorder_counts_count_what_entered_the_backorder_as_planned(create_database):
    url = create_database("order_0002").replace("postgresql://", "postgresql+asyncpg://", 1)
    _alembic(url, "upgrade", "0002")
    order_id = uuid.uuid4()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await _insert_order(conn, order_id, "2", "awaiting_fulfillment")
            # Line 1: 2 units still wait, 3 were allocated; line 2: requested from its plan's shipment.
            await conn.execute(
                sa.text(
                    "INSERT INTO order_lines (order_id, line_id, sku, quantity, unit_price, state, "
                    "quantity_backordered, quantity_requested) VALUES "
                    "(:id, '1', 'A', 5, 1, 'backordered', 2, 3), (:id, '2', 'B', 1, 1, 'requested', 0, 1)"
                ),
                {"id": order_id},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO fulfillments (fulfillment_id, order_id, plan_id, source_code, status, lines) VALUES "
                    '(:a, :id, NULL, \'WH\', \'requested\', \'[{"line_id": "1", "sku": "A", "quantity": 3}]\'), '
                    '(:p, :id, :plan, \'WH\', \'requested\', \'[{"line_id": "2", "sku": "B", "quantity": 1}]\')'
                ),
                {"id": order_id, "a": uuid.uuid4(), "p": uuid.uuid4(), "plan": uuid.uuid4()},
            )
        _alembic(url, "upgrade", "head")
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT line_id, backorder_planned, backorder_announced, backorder_entered FROM order_lines "
                    "ORDER BY line_id"
                )
            )
            assert [tuple(row) for row in rows] == [("1", 5, 0, 5), ("2", 0, 0, 0)]
        _alembic(url, "downgrade", "0002")
    finally:
        await engine.dispose()


async def test_inbox_rows_from_before_the_inbox_kept_sources_stay_as_any_source_through_the_upgrade_and_back(
    create_database,
):
    url = create_database("order_inbox").replace("postgresql://", "postgresql+asyncpg://", 1)
    _alembic(url, "upgrade", "0003")
    event_id = uuid.uuid4()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("INSERT INTO inbox (consumer, event_id) VALUES ('c', :id)"), {"id": event_id})
        _alembic(url, "upgrade", "head")
        async with engine.begin() as conn:
            rows = (await conn.execute(sa.text("SELECT consumer, source, event_id FROM inbox"))).all()
            assert [tuple(r) for r in rows] == [("c", "", event_id)]
            # The same id from another source is another event now.
            await conn.execute(
                sa.text("INSERT INTO inbox (consumer, source, event_id) VALUES ('c', '/oms/x', :id)"), {"id": event_id}
            )
        _alembic(url, "downgrade", "0003")
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT consumer, event_id FROM inbox"))).all() == [("c", event_id)]
    finally:
        await engine.dispose()


async def test_orders_stored_before_the_after_sale_revision_keep_their_totals_as_submitted_and_their_timeline(
    create_database,
):
    url = create_database("order_0004").replace("postgresql://", "postgresql+asyncpg://", 1)
    _alembic(url, "upgrade", "0004")
    order_id, accepted_id = uuid.uuid4(), uuid.uuid4()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await _insert_order(conn, order_id, "3", "awaiting_fulfillment")
            await conn.execute(
                sa.text(
                    "INSERT INTO order_timeline (order_id, from_status, to_status, actor, occurred_at) VALUES "
                    "(:id, NULL, 'pending', 'channel:web', '2026-12-01T10:00:00Z'), "
                    "(:id, 'pending', 'awaiting_fulfillment', 'service:inventory', '2026-12-01T11:00:00Z')"
                ),
                {"id": order_id},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO fulfillments (fulfillment_id, order_id, source_code, status, lines) VALUES "
                    "(:f, :id, 'WH', 'accepted', '[]')"
                ),
                {"id": order_id, "f": accepted_id},
            )
        _alembic(url, "upgrade", "head")
        async with engine.connect() as conn:
            order = (await conn.execute(sa.text("SELECT * FROM orders"))).mappings().one()
            kinds = (await conn.execute(sa.text("SELECT kind FROM order_timeline ORDER BY id"))).scalars().all()
            accepted_at = await conn.scalar(sa.text("SELECT accepted_at FROM fulfillments"))
        assert (order["submitted_shipping_total"], order["submitted_tax_total"], order["submitted_discount_total"]) == (
            order["shipping_total"],
            order["tax_total"],
            order["discount_total"],
        )
        assert order["refunded_total"] == 0 and order["status_since"].hour == 11
        assert kinds == ["status", "status"] and accepted_at is not None
        _alembic(url, "downgrade", "0004")
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT count(*) FROM order_timeline")) == 2
    finally:
        await engine.dispose()
