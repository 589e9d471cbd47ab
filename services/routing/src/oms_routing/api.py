"""Routing's HTTP surface: the fulfillment network, an order's plans, and what the engine would plan now."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiokafka.errors import KafkaError
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, field_validator

from oms_contracts import fulfillment_requests
from oms_contracts.order import OrderPaidData
from oms_contracts.routing import (
    FulfillmentPlannedData,
    Source,
    SourceDeactivated,
    SourceDeactivatedData,
    SourceUpserted,
)
from oms_runtime import Principal, Service, Transaction
from oms_runtime.database import driver
from oms_runtime.outbox import append
from oms_runtime.topics import ensure_topics

from . import domain, store
from .handlers import SOURCE
from .settings import RoutingSettings

router = APIRouter(tags=["routing"])


class Network(BaseModel):
    sources: list[Source]

    @field_validator("sources")
    @classmethod
    def _unique_codes(cls, sources: list[Source]) -> list[Source]:
        duplicates = domain.duplicate_codes(sources)
        if duplicates:
            raise ValueError(f"duplicate source code {', '.join(repr(code) for code in duplicates)}")
        return sources


class Plans(BaseModel):
    order_id: uuid.UUID
    plans: list[FulfillmentPlannedData]


def _service(request: Request) -> Service:
    return request.app.state.service


@router.get("/network", summary="The fulfillment network, every source by code")
async def get_network(request: Request, who: Principal) -> Network:
    async with _service(request).database.connect() as conn:
        return Network(sources=await store.network(await driver(conn)))


@router.put(
    "/network",
    summary="Replace the fulfillment network",
    description="Sources missing from the body are deactivated, never deleted. Every source's request topic exists "
    "before the source is announced on oms.routing.network.v1.",
)
async def put_network(body: Network, request: Request, who: Principal) -> Network:
    service = _service(request)
    settings: RoutingSettings = service.settings  # type: ignore[assignment]
    # Every listed source, not only new ones: creation is idempotent, and a request topic lost since is restored.
    try:
        await ensure_topics(
            settings.kafka_bootstrap,
            [fulfillment_requests(source.code) for source in body.sources],
            partitions=settings.request_topic_partitions,
            replication_factor=settings.request_topic_replication,
        )
    except (KafkaError, OSError, TimeoutError) as error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"the sources' request topics could not be created: {error!r}"
        ) from error
    async with service.database.transaction() as conn:
        pg = await driver(conn)
        change = domain.network_change(await store.lock_network(pg), body.sources)
        await store.upsert_sources(pg, change.upserted)
        await store.deactivate_sources(pg, change.deactivated)
        tx = Transaction(conn, service.name)
        for source in change.upserted:
            tx.emit(SourceUpserted(source=SOURCE, subject=source.code, data=source))
        now = datetime.now(UTC)
        for code in change.deactivated:
            gone = SourceDeactivatedData(code=code, deactivated_at=now)
            tx.emit(SourceDeactivated(source=SOURCE, subject=code, data=gone))
        await append(conn, tx.outbox)
        result = await store.network(pg)
    service.relay.wake()
    return Network(sources=result)


@router.get("/plans/{order_id}", summary="Every plan made for an order, in attempt order")
async def get_plans(order_id: uuid.UUID, request: Request, who: Principal) -> Plans:
    async with _service(request).database.connect() as conn:
        made = await store.plans_of(await driver(conn), order_id)
    if not made:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plan for order {order_id}")
    return Plans(order_id=order_id, plans=made)


@router.post(
    "/simulate",
    summary="The plan routing would make for a paid order now",
    description="Nothing is stored or published: the answer is what the engine decides with today's network and "
    "availability projection, as a first attempt.",
)
async def simulate(order: OrderPaidData, request: Request, who: Principal) -> FulfillmentPlannedData:
    service = _service(request)
    settings: RoutingSettings = service.settings  # type: ignore[assignment]
    async with service.database.connect() as conn:
        pg = await driver(conn)
        network = await store.active_network(pg)
        stock = await store.availability_of(pg, (line.sku for line in order.lines))
    return domain.plan(
        domain.RoutedOrder(order).first_plan(),
        network,
        stock,
        planned_at=datetime.now(UTC),
        max_attempts=settings.max_plan_attempts,
    )
