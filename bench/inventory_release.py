"""Releasing a restock against 10,000 waiting lines, on real PostgreSQL: how long the receipt's batch takes through
inventory's real consumer path (inbox, handler, outbox, commit) and how many SQL statements it sends.

    .venv/bin/python bench/inventory_release.py [--lines 10000] [--runs 3]

PostgreSQL: OMS_BENCH_POSTGRES_URL, else OMS_TEST_POSTGRES_URL (what `make test` exports), else the `make test`
server at postgresql://oms:oms@127.0.0.1:15432/postgres. A role that may create databases: the benchmark makes a
fresh one, migrates it, and drops it at the end. No broker is needed (records are handed to the consumer directly,
as the handler tests do)."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy import event

from oms_contracts.common import SourceType
from oms_contracts.inventory import StockReceived, StockReceivedData
from oms_contracts.routing import FulfillmentPlanned, FulfillmentPlannedData, Source, SourceUpserted, UnplannedLine
from oms_contracts.topics import INVENTORY_RECEIPTS, ROUTING_NETWORK, ROUTING_PLANS
from oms_inventory.app import create_service
from oms_inventory.settings import InventorySettings
from oms_runtime import Service
from oms_runtime.testing import deliver, record, take_outbox

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql://oms:oms@127.0.0.1:15432/postgres"


@dataclass(frozen=True)
class Scenario:
    name: str
    abroad: int  # waiting lines first in the queue that the restocked source may not serve (another country)
    restock: int


def scenarios(lines: int) -> list[Scenario]:
    return [
        Scenario(f"restock of {lines:,} units, every one of {lines:,} waiting lines served", 0, lines),
        Scenario(f"restock of 100 units, the first 100 of {lines:,} waiting lines served", 0, 100),
        Scenario(f"restock of 10 units for the last 10 of {lines:,} lines (the rest ship abroad)", lines - 10, 10),
    ]


class Statements:
    """Counts every statement asyncpg sends, on every connection of the service's pool."""

    def __init__(self, service: Service) -> None:
        self.count = 0
        self.on = False

        @event.listens_for(service.database.engine.sync_engine, "connect")
        def _listen(dbapi_connection, _record) -> None:
            dbapi_connection.driver_connection.add_query_logger(self._logged)

    def _logged(self, _query) -> None:
        if self.on:
            self.count += 1


def source(code: str) -> SourceUpserted:
    data = Source(
        code=code,
        name=code,
        type=SourceType.warehouse,
        lat=52.5,
        lon=13.4,
        countries=["DE"],
        cost_per_shipment="4.00",
        cost_per_unit="0.50",
    )
    return SourceUpserted(source="/bench", subject=code, data=data)


def backordered(sku: str, country: str) -> FulfillmentPlanned:
    order_id = uuid.uuid4()
    data = FulfillmentPlannedData(
        order_id=order_id,
        plan_id=uuid.uuid4(),
        attempt=1,
        backordered_lines=[UnplannedLine(line_id="1", sku=sku, quantity=1, reason="no stock anywhere")],
        planned_at=datetime.now(UTC),
        ship_to_country=country,
    )
    return FulfillmentPlanned(source="/bench", subject=str(order_id), data=data)


def received(sku: str, source_code: str, quantity: int) -> StockReceived:
    data = StockReceivedData(sku=sku, source_code=source_code, quantity=quantity, reason="restock")
    return StockReceived(source="/bench", subject=sku, data=data)


async def queue_lines(service: Service, sku: str, lines: int, abroad: int) -> None:
    plans = [backordered(sku, "FR" if i < abroad else "DE") for i in range(lines)]
    for start in range(0, lines, 1000):
        await deliver(service, ROUTING_PLANS, *plans[start : start + 1000])


async def restock(service: Service, statements: Statements, sku: str, source_code: str, units: int):
    consumer = next(c for c in service.consumers if c.topic.name == INVENTORY_RECEIPTS.name)
    message = received(sku, source_code, units)

    class _NoPartitions:
        def assignment(self):
            return set()

        def seek(self, *_):
            pass

    statements.count, statements.on = 0, True
    started = time.perf_counter()
    await consumer.consume([record(INVENTORY_RECEIPTS.name, message.to_bytes(), message.key())], _NoPartitions())
    elapsed = time.perf_counter() - started
    statements.on = False
    emitted = await take_outbox(service)
    allocated = sum(1 for e in emitted if e.headers.get("ce-type") == "oms.inventory.backorder_allocated.v1")
    return elapsed, statements.count, allocated


async def fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"oms_bench_inventory_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = f"{admin_url.rpartition('/')[0]}/{name}"
    sqlalchemy_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    # Before anything else runs: blocking here holds up nothing.
    subprocess.run(  # noqa: ASYNC221
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "services/inventory/alembic.ini"), "upgrade", "head"],
        check=True,
        cwd=ROOT,
        env={**os.environ, "OMS_INVENTORY_DATABASE_URL": sqlalchemy_url},
        capture_output=True,
    )
    return name, sqlalchemy_url


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def main(lines: int, runs: int) -> None:
    admin_url = os.environ.get("OMS_BENCH_POSTGRES_URL") or os.environ.get("OMS_TEST_POSTGRES_URL") or DEFAULT_URL
    name, url = await fresh_database(admin_url)
    service = create_service(InventorySettings(database_url=url, api_tokens={}))
    statements = Statements(service)
    try:
        await deliver(service, ROUTING_NETWORK, source("WH-BENCH"))
        # Warm the connection's statement cache, as a running service's would be.
        await queue_lines(service, "WARM-UP", 10, 0)
        await restock(service, statements, "WARM-UP", "WH-BENCH", 10)
        print(f"inventory release, {runs} run(s) each, PostgreSQL {admin_url.rpartition('@')[2]}")
        for scenario in scenarios(lines):
            times, counts, served = [], set(), set()
            for run in range(runs):
                sku = f"BENCH-{run}-{uuid.uuid4().hex[:6]}"
                await queue_lines(service, sku, lines, scenario.abroad)
                elapsed, count, allocated = await restock(service, statements, sku, "WH-BENCH", scenario.restock)
                times.append(elapsed)
                counts.add(count)
                served.add(allocated)
            print(
                f"- {scenario.name}: median {statistics.median(times) * 1000:.0f} ms "
                f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}), "
                f"{'/'.join(map(str, sorted(counts)))} statements, {'/'.join(map(str, sorted(served)))} shipments"
            )
    finally:
        await service.database.dispose()
        await drop_database(admin_url, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000, help="waiting lines in the SKU's queue")
    parser.add_argument("--runs", type=int, default=3, help="restocks measured per scenario")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.lines, arguments.runs))
