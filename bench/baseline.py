"""The baseline: the brief's synchronous per-line routing (`routeOrder`), as written, on the same PostgreSQL.

Per order, in one transaction: read the order, read its lines, then per line: find one warehouse location with enough
available stock (a query); if found, insert a fulfillment line; else find the best dropship supplier (a query) and
insert a fulfillment line; else insert a backorder. As in the brief, nothing is reserved (`findAvailable` only
reads), which flatters the baseline. The same catalogue and stock as the benchmark's system (bench/orders.py: every
SKU at two warehouses and the 3PL; the dropship supplier carries everything too), the same orders (one to three lines).

Closed loop, as a synchronous checkout would call it: `workers` connections each route one order after another,
for `seconds`. Reports orders routed per second and the latency of routeOrder per order.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import asyncpg

from bench import orders, stats

DATABASE = "bench_baseline"
SCHEMA = """
CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'paid');
CREATE TABLE order_lines (id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders, sku text NOT NULL,
  product_id text NOT NULL, quantity int NOT NULL);
CREATE INDEX ON order_lines (order_id);
CREATE TABLE inventory (location_id text NOT NULL, sku text NOT NULL, available int NOT NULL,
  PRIMARY KEY (sku, location_id));
CREATE TABLE supplier_products (supplier_id text NOT NULL, product_id text NOT NULL, available int NOT NULL,
  cost numeric NOT NULL, PRIMARY KEY (product_id, supplier_id));
CREATE TABLE fulfillment_lines (id bigserial PRIMARY KEY, order_id bigint NOT NULL, order_line_id bigint NOT NULL,
  source text NOT NULL, source_id text NOT NULL, status text NOT NULL);
CREATE TABLE backorders (id bigserial PRIMARY KEY, order_id bigint NOT NULL, order_line_id bigint NOT NULL,
  product_id text NOT NULL, quantity int NOT NULL, status text NOT NULL);
"""


async def prepare(url: str, count: int, seed: int) -> None:
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(url.rpartition("/")[0] + "/" + DATABASE)
    try:
        await conn.execute(SCHEMA)
        await conn.copy_records_to_table(
            "inventory",
            records=[(code, orders.sku(i), orders.UNITS) for i in range(orders.SKUS) for code in orders.STOCKED_AT],
        )
        await conn.copy_records_to_table(
            "supplier_products", records=[("DROP-ACME", orders.sku(i), orders.UNITS, 10) for i in range(orders.SKUS)]
        )
        rng = random.Random(seed)
        order_rows, line_rows = [], []
        line_id = 0
        for order_id in range(count):
            order_rows.append((order_id,))
            for s in rng.sample(range(orders.SKUS), rng.choice((1, 1, 2, 2, 3))):
                line_rows.append((line_id, order_id, orders.sku(s), orders.sku(s), rng.choice((1, 1, 1, 2, 3))))
                line_id += 1
        await conn.copy_records_to_table("orders", records=order_rows, columns=["id"])
        await conn.copy_records_to_table("order_lines", records=line_rows)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def route_order(conn: asyncpg.Connection, order_id: int) -> None:
    """routeOrder from the brief, one statement per step."""
    async with conn.transaction():
        await conn.fetchrow("SELECT id, status FROM orders WHERE id = $1", order_id)
        lines = await conn.fetch("SELECT id, sku, product_id, quantity FROM order_lines WHERE order_id = $1", order_id)
        for line in lines:
            stock = await conn.fetchrow(
                "SELECT location_id FROM inventory WHERE sku = $1 AND available >= $2 LIMIT 1",
                line["sku"],
                line["quantity"],
            )
            if stock is not None:
                await conn.execute(
                    "INSERT INTO fulfillment_lines (order_id, order_line_id, source, source_id, status) "
                    "VALUES ($1, $2, 'warehouse', $3, 'pending')",
                    order_id,
                    line["id"],
                    stock["location_id"],
                )
                continue
            supplier = await conn.fetchrow(
                "SELECT supplier_id FROM supplier_products WHERE product_id = $1 AND available >= $2 "
                "ORDER BY cost LIMIT 1",
                line["product_id"],
                line["quantity"],
            )
            if supplier is not None:
                await conn.execute(
                    "INSERT INTO fulfillment_lines (order_id, order_line_id, source, source_id, status) "
                    "VALUES ($1, $2, 'dropship', $3, 'pending')",
                    order_id,
                    line["id"],
                    supplier["supplier_id"],
                )
                continue
            await conn.execute(
                "INSERT INTO backorders (order_id, order_line_id, product_id, quantity, status) "
                "VALUES ($1, $2, $3, $4, 'pending')",
                order_id,
                line["id"],
                line["product_id"],
                line["quantity"],
            )


async def run(url: str, workers: int, seconds: float, seed: int = 7, orders_available: int = 200_000) -> dict[str, Any]:
    await prepare(url, orders_available, seed)
    db = url.rpartition("/")[0] + "/" + DATABASE
    next_order = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal next_order
        conn = await asyncpg.connect(db)
        try:
            while time.monotonic() < deadline and next_order < orders_available:
                order_id = next_order
                next_order += 1
                started = time.perf_counter()
                await route_order(conn, order_id)
                latencies.append(time.perf_counter() - started)
        finally:
            await conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.monotonic() - started
    s = stats.summary(latencies)
    return {
        "workers": workers,
        "seconds": round(elapsed, 1),
        "orders": len(latencies),
        "orders_per_s": len(latencies) / elapsed,
        "latency_s": s,
    }
