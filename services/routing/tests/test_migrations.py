"""The hand-written migrations create exactly the tables the service's code describes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from oms_routing.store import metadata


@pytest.fixture(scope="module")
def migrated_url(service_database) -> str:
    return service_database("routing", "migrations")


async def test_migrations_on_a_fresh_database_match_the_store_metadata(migrated_url):
    url = migrated_url
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
            tables = await conn.run_sync(lambda sync: sorted(sync.dialect.get_table_names(sync)))
    finally:
        await engine.dispose()
    assert differences == []
    assert tables == [
        "alembic_version",
        "availability",
        "inbox",
        "network_version",
        "orders",
        "outbox",
        "parked_messages",
        "planned_shipments",
        "plans",
        "replanned_lines",
        "rule_chains",
        "shipments",
        "sources",
    ]


ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


def alembic(url: str, *args: str) -> None:
    env = {**os.environ, "OMS_ROUTING_DATABASE_URL": url.replace("postgresql://", "postgresql+asyncpg://", 1)}
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args],
        check=True,
        env=env,
        cwd=ALEMBIC_INI.parents[2],
        capture_output=True,
    )


async def test_upgrading_keeps_sources_counts_old_shipments_on_their_plans_day_and_their_lines_as_replanned(
    create_database,
):
    url = create_database("routing_upgrade")
    alembic(url, "upgrade", "0001")
    order_id, plan_id = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            INSERT INTO sources (code, name, type, lat, lon, countries, priority, cost_per_shipment, cost_per_unit,
                                 handling_days, active)
            VALUES ('WH-OLD', 'old', 'warehouse', 52.5, 13.4, '{DE}', 10, 4.20, 0.35, 1, true);
            """
        )
        await conn.execute(
            "INSERT INTO plans (plan_id, order_id, attempt, plan, planned_at) "
            "VALUES ($1, $2, 1, '{}', '2026-11-22T23:30:00Z')",
            plan_id,
            order_id,
        )
        await conn.execute(
            "INSERT INTO shipments (shipment_id, order_id, plan_id, source_code, lines) "
            "VALUES ($1, $2, $3, 'WH-OLD', '[]')",
            uuid.uuid4(),
            order_id,
            plan_id,
        )
        rejected = uuid.uuid4()
        await conn.execute(
            "INSERT INTO shipments (shipment_id, order_id, plan_id, source_code, lines, rejected_at) "
            "VALUES ($1, $2, $3, 'WH-OLD', $4::jsonb, now())",
            rejected,
            order_id,
            plan_id,
            '[{"line_id": "1", "sku": "A", "quantity": 2}, {"line_id": "2", "sku": "B", "quantity": 1}]',
        )

        alembic(url, "upgrade", "head")

        source = await conn.fetchrow(
            "SELECT timezone, cutoff_time, transit_days::text, daily_capacity FROM sources WHERE code = 'WH-OLD'"
        )
        assert dict(source) == {
            "timezone": "UTC",
            "cutoff_time": None,
            "transit_days": '{"express": 1, "standard": 3}',
            "daily_capacity": None,
        }
        days = await conn.fetch("SELECT DISTINCT planned_on FROM shipments WHERE plan_id = $1", plan_id)
        assert [r["planned_on"] for r in days] == [date(2026, 11, 22)]
        # The source's capacity counts the shipment still planned on that day, not the rejected one.
        counted = await conn.fetch("SELECT source_code, planned_on, shipments FROM planned_shipments")
        assert [tuple(r) for r in counted] == [("WH-OLD", date(2026, 11, 22), 1)]
        # A shipment rejected before was re-planned whole: asked again now, it plans nothing.
        replanned = await conn.fetch(
            "SELECT fulfillment_id, line_id, order_id, source_code, quantity FROM replanned_lines ORDER BY line_id"
        )
        assert [tuple(r) for r in replanned] == [
            (rejected, "1", order_id, "WH-OLD", 2),
            (rejected, "2", order_id, "WH-OLD", 1),
        ]
    finally:
        await conn.close()
    alembic(url, "downgrade", "0001")
