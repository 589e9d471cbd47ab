"""Routing's HTTP surface: the fulfillment network, the rule chains, an order's plans, and what the engine would
plan now."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
from aiokafka.errors import KafkaError
from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, Field, field_validator

from oms_contracts import fulfillment_requests
from oms_contracts.common import RoutingRule, check_rule_chain
from oms_contracts.order import OrderPaidData
from oms_contracts.routing import (
    FulfillmentPlannedData,
    RuleChainData,
    RuleChainSet,
    Source,
    SourceDeactivated,
    SourceDeactivatedData,
    SourceUpserted,
)
from oms_runtime import Principal, Service, Transaction
from oms_runtime.database import driver
from oms_runtime.http import Problem
from oms_runtime.outbox import append
from oms_runtime.topics import ensure_topics

from . import domain, store
from .handlers import SOURCE, load_planning
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


class RuleChainBody(BaseModel):
    rules: list[RoutingRule] = Field(
        min_length=1,
        max_length=len(RoutingRule),
        description="Rules in order, each breaking the ties of the ones before; fewest_shipments comes first "
        "(it is put there when left out)",
    )

    @field_validator("rules")
    @classmethod
    def _chain(cls, rules: list[RoutingRule]) -> list[RoutingRule]:
        return check_rule_chain(rules)


class RuleChain(BaseModel):
    channel: str = Field(description="The sales channel; `*` for the default")
    rules: list[RoutingRule]
    defined_for: str = Field(
        description="Whose chain this is: the channel's own, `*` (the default set over HTTP) or `settings`"
    )
    set_by: str | None = None
    set_at: datetime | None = None


class RuleChains(BaseModel):
    default: RuleChain
    channels: list[RuleChain] = Field(description="Every channel with a chain of its own")


Channel = Annotated[str, Path(min_length=1, max_length=64, description="A sales channel, or `*` for the default")]


def _service(request: Request) -> Service:
    return request.app.state.service


@contextlib.asynccontextmanager
async def _publishing(service: Service) -> AsyncIterator[tuple[asyncpg.Connection, Transaction]]:
    """One transaction whose emitted events go to the outbox with it; the relay is woken after the commit."""
    async with service.database.transaction() as conn:
        tx = Transaction(conn, service.name)
        yield await driver(conn), tx
        await append(conn, tx.outbox)
    service.relay.wake()


def _chain_view(channel: str, stored: dict[str, store.StoredRuleChain], settings: RoutingSettings) -> RuleChain:
    """The chain that applies to `channel`: its own, else the default stored for `*`, else the settings'."""
    own = stored.get(channel) or stored.get(domain.DEFAULT_CHANNEL)
    if own is None:
        return RuleChain(
            channel=channel, rules=list(domain.normalized_chain(settings.default_rule_chain)), defined_for="settings"
        )
    return RuleChain(channel=channel, rules=own.rules, defined_for=own.channel, set_by=own.set_by, set_at=own.set_at)


@router.get("/network", summary="The fulfillment network, every source by code")
async def get_network(request: Request, who: Principal) -> Network:
    async with _service(request).database.connect() as conn:
        return Network(sources=await store.network(await driver(conn)))


@router.put(
    "/network",
    summary="Replace the fulfillment network",
    description="Sources missing from the body are deactivated, never deleted. Every source's request topic exists "
    "before the source is announced on oms.routing.network.v1.",
    responses={
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "model": Problem,
            "description": "The sources' request topics could not be created (Kafka unreachable); nothing changed",
        }
    },
)
async def put_network(body: Network, request: Request, who: Principal) -> Network:
    service = _service(request)
    settings: RoutingSettings = service.settings  # type: ignore[assignment]
    # Every listed source, not only new ones: creation is idempotent, and a request topic lost since is restored.
    try:
        await ensure_topics(
            settings,
            [fulfillment_requests(source.code) for source in body.sources],
            partitions=settings.request_topic_partitions,
            replication_factor=settings.request_topic_replication,
        )
    except (KafkaError, OSError, TimeoutError) as error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"the sources' request topics could not be created: {error!r}"
        ) from error
    async with _publishing(service) as (pg, tx):
        change = domain.network_change(await store.lock_network(pg), body.sources)
        await store.upsert_sources(pg, change.upserted)
        await store.deactivate_sources(pg, change.deactivated)
        for source in change.upserted:
            tx.emit(SourceUpserted(source=SOURCE, subject=source.code, data=source))
        now = datetime.now(UTC)
        for code in change.deactivated:
            gone = SourceDeactivatedData(code=code, deactivated_at=now)
            tx.emit(SourceDeactivated(source=SOURCE, subject=code, data=gone))
        result = await store.network(pg)
    return Network(sources=result)


@router.get("/rule-chains", summary="The default rule chain and every channel's own")
async def get_rule_chains(request: Request, who: Principal) -> RuleChains:
    service = _service(request)
    async with service.database.connect() as conn:
        stored = await store.stored_rule_chains(await driver(conn))
    settings: RoutingSettings = service.settings  # type: ignore[assignment]
    return RuleChains(
        default=_chain_view(domain.DEFAULT_CHANNEL, stored, settings),
        channels=[_chain_view(channel, stored, settings) for channel in stored if channel != domain.DEFAULT_CHANNEL],
    )


@router.get("/rule-chains/{channel}", summary="The rule chain a channel's orders are ranked by")
async def get_rule_chain(channel: Channel, request: Request, who: Principal) -> RuleChain:
    service = _service(request)
    async with service.database.connect() as conn:
        stored = await store.stored_rule_chains(await driver(conn), [channel, domain.DEFAULT_CHANNEL])
    return _chain_view(channel, stored, service.settings)  # type: ignore[arg-type]


@router.put(
    "/rule-chains/{channel}",
    summary="Set a channel's rule chain (`*`: the default)",
    description="Stored and announced as routing.rule_chain_set.v1 on oms.routing.network.v1 when it changes. An "
    "order's own options.routing_rules still override it.",
)
async def put_rule_chain(channel: Channel, body: RuleChainBody, request: Request, who: Principal) -> RuleChain:
    service = _service(request)
    wanted = store.StoredRuleChain(channel, list(domain.normalized_chain(body.rules)), who, datetime.now(UTC))
    async with _publishing(service) as (pg, tx):
        changed = await store.set_rule_chain(pg, wanted)
        if changed is not None:
            data = RuleChainData(
                channel=None if channel == domain.DEFAULT_CHANNEL else channel,
                rules=changed.rules,
                set_by=changed.set_by,
                set_at=changed.set_at,
            )
            tx.emit(RuleChainSet(source=SOURCE, subject=channel, data=data))
        stored = await store.stored_rule_chains(pg, [channel])
    return _chain_view(channel, stored, service.settings)  # type: ignore[arg-type]


@router.get(
    "/plans/{order_id}",
    summary="Every plan made for an order, in attempt order",
    responses={status.HTTP_404_NOT_FOUND: {"model": Problem, "description": "No plan made for this order yet"}},
)
async def get_plans(order_id: uuid.UUID, request: Request, who: Principal) -> Plans:
    async with _service(request).database.connect() as conn:
        made = await store.plans_of(await driver(conn), order_id)
    if not made:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plan for order {order_id}")
    return Plans(order_id=order_id, plans=made)


@router.post(
    "/simulate",
    summary="The plan routing would make for a paid order now",
    description="Nothing is stored or published: the answer is what the engine decides with today's network, "
    "availability projection and shipments planned today, as a first attempt. The chain is the order's "
    "options.routing_rules, else its channel's, else the default; the plan's `rules` shows the one used.",
)
async def simulate(order: OrderPaidData, request: Request, who: Principal) -> FulfillmentPlannedData:
    service = _service(request)
    settings: RoutingSettings = service.settings  # type: ignore[assignment]
    planned_at = datetime.now(UTC)
    async with service.database.connect() as conn:
        loaded = await load_planning(await driver(conn), [order], settings, planned_at)
    return domain.plan(
        domain.RoutedOrder(order).first_plan(),
        loaded.network,
        loaded.availability,
        planned_at=planned_at,
        max_attempts=settings.max_plan_attempts,
        chains=loaded.chains,
    )
