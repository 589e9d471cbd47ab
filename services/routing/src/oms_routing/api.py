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
from fastapi import APIRouter, Header, HTTPException, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
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
from oms_contracts.types import SourceCode
from oms_runtime import Principal, Role, Service, Transaction, require_role
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
Code = Annotated[SourceCode, Path(description="The source's code")]

# Editing the network: who may do it. Reading it needs only a known token.
Admin = Annotated[str, require_role(Role.admin)]

_FORBIDDEN = {"model": Problem, "description": "The token's roles do not allow this: editing the network needs admin"}
_TOPICS_DOWN = {
    "model": Problem,
    "description": "The source's request topic could not be created (Kafka unreachable); nothing changed",
}
_ETAG = {"ETag": {"description": "The network's version after the answer: send it as If-Match to PUT /network"}}
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="The ETag of the network as the client read it (GET /network). Given, the network is replaced "
        "only if it is still that version, else 412 and nothing changes. Optional, so that clients from before "
        "versions keep working; a client that may race another should always send it.",
    ),
]


def _service(request: Request) -> Service:
    return request.app.state.service


@contextlib.asynccontextmanager
async def _publishing(service: Service) -> AsyncIterator[tuple[asyncpg.Connection, Transaction]]:
    """One transaction whose emitted events go to the outbox with it; the relay is woken after the commit."""
    async with service.database.transaction() as conn:
        tx = Transaction(conn, service.name)
        yield conn, tx
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


def etag(version: int) -> str:
    """The network's version as an entity tag (strong: one version is one network)."""
    return f'"network-{version}"'


def _still(if_match: str | None, version: int) -> bool:
    """Whether `If-Match` allows changing the network as it stands at `version` (RFC 9110: any listed tag, or `*`
    for any current network)."""
    if if_match is None:
        return True
    listed = [tag.strip() for tag in if_match.split(",")]
    return "*" in listed or etag(version) in listed


def _stale(version: int) -> HTTPException:
    return HTTPException(
        status.HTTP_412_PRECONDITION_FAILED,
        f"the network changed since it was read (it is {etag(version)} now): GET /network, apply the edit to what it "
        "holds and send that with its ETag; or change one source with PUT /network/sources/{code}",
        {"ETag": etag(version)},
    )


async def _create_request_topics(settings: RoutingSettings, codes: list[str]) -> None:
    """The sources' request topics exist before the sources are announced, so no request is ever sent to a topic
    that does not exist. Idempotent: a request topic lost since is restored."""
    try:
        await ensure_topics(
            settings,
            [fulfillment_requests(code) for code in codes],
            partitions=settings.request_topic_partitions,
            replication_factor=settings.request_topic_replication,
        )
    except (KafkaError, OSError, TimeoutError) as error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"the sources' request topics could not be created: {error!r}"
        ) from error


async def _apply(pg: asyncpg.Connection, tx: Transaction, change: domain.NetworkChange, version: int, who: str) -> int:
    """Store and announce an edit of the network; returns the network's version after it (raised when it changed)."""
    if not change:
        return version
    await store.upsert_sources(pg, change.upserted)
    await store.deactivate_sources(pg, change.deactivated)
    for source in change.upserted:
        tx.emit(SourceUpserted(source=SOURCE, subject=source.code, data=source))
    now = datetime.now(UTC)
    for code in change.deactivated:
        gone = SourceDeactivatedData(code=code, deactivated_at=now)
        tx.emit(SourceDeactivated(source=SOURCE, subject=code, data=gone))
    return await store.new_network_version(pg, who)


@router.get(
    "/network",
    summary="The fulfillment network, every source by code",
    responses={status.HTTP_200_OK: {"headers": _ETAG}},
)
async def get_network(request: Request, response: Response, who: Principal) -> Network:
    async with _service(request).database.autocommit() as pg:
        version, sources = await store.versioned_network(pg)
    response.headers["ETag"] = etag(version)
    return Network(sources=sources)


@router.put(
    "/network",
    summary="Replace the fulfillment network",
    description="Sources missing from the body are deactivated, never deleted: everything another client added since "
    "you read the network is deactivated too. Send `If-Match` with the ETag you read, so that such a race is "
    "refused (412) instead; to add or change one source, PUT /network/sources/{code}, which touches no other. Every "
    "source's request topic exists before the source is announced on oms.routing.network.v1. Needs the admin role.",
    responses={
        status.HTTP_200_OK: {"headers": _ETAG},
        status.HTTP_403_FORBIDDEN: _FORBIDDEN,
        status.HTTP_412_PRECONDITION_FAILED: {
            "model": Problem,
            "description": "If-Match names a version the network no longer is; nothing changed. The ETag header "
            "holds the current version",
            "headers": _ETAG,
        },
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "model": Problem,
            "description": "The sources' request topics could not be created (Kafka unreachable); nothing changed",
        },
    },
)
async def put_network(
    body: Network, request: Request, response: Response, who: Admin, if_match: IfMatch = None
) -> Network:
    service = _service(request)
    if if_match is not None:
        # A stale edit is refused before any topic is created for it.
        async with service.database.autocommit() as pg:
            version, _ = await store.versioned_network(pg)
        if not _still(if_match, version):
            raise _stale(version)
    await _create_request_topics(service.settings, [source.code for source in body.sources])  # type: ignore[arg-type]
    async with _publishing(service) as (pg, tx):
        version, current = await store.lock_network(pg)
        if not _still(if_match, version):
            raise _stale(version)
        version = await _apply(pg, tx, domain.network_change(current, body.sources), version, who)
        result = await store.network(pg)
    response.headers["ETag"] = etag(version)
    return Network(sources=result)


@router.get(
    "/network/sources/{code}",
    summary="One source of the network",
    responses={
        status.HTTP_200_OK: {"headers": _ETAG},
        status.HTTP_404_NOT_FOUND: {"model": Problem, "description": "No source with this code in the network"},
    },
)
async def get_source(code: Code, request: Request, response: Response, who: Principal) -> Source:
    async with _service(request).database.autocommit() as pg:
        version, sources = await store.versioned_network(pg)
    found = next((s for s in sources if s.code == code), None)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no source {code!r} in the network")
    response.headers["ETag"] = etag(version)
    return found


@router.put(
    "/network/sources/{code}",
    summary="Create or replace one source",
    description="Only this source changes: another client's edits of other sources stand (this is what `oms demo "
    "network` uses). 201 when the source is new, 200 when it was there (changed or not; nothing is announced when it "
    "did not change). Its request topic exists before it is announced on oms.routing.network.v1. Raises the "
    "network's version (ETag) when it changes anything. `active: false` keeps it in the network, inactive. Needs the "
    "admin role.",
    status_code=status.HTTP_200_OK,
    responses={
        status.HTTP_200_OK: {"description": "The source was there: replaced", "headers": _ETAG},
        status.HTTP_201_CREATED: {
            "model": Source,
            "description": "The source is new",
            "headers": {**_ETAG, "Location": {"description": "Where the source is read: /network/sources/{code}"}},
        },
        status.HTTP_403_FORBIDDEN: _FORBIDDEN,
        status.HTTP_503_SERVICE_UNAVAILABLE: _TOPICS_DOWN,
    },
)
async def put_source(code: Code, body: Source, request: Request, response: Response, who: Admin) -> Source:
    if body.code != code:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "code"),
                    "msg": f"the body's code {body.code!r} is not the path's {code!r}",
                    "input": body.code,
                }
            ]
        )
    service = _service(request)
    await _create_request_topics(service.settings, [code])  # type: ignore[arg-type]
    async with _publishing(service) as (pg, tx):
        version, current = await store.lock_source(pg, code)
        version = await _apply(pg, tx, domain.source_change(current, body), version, who)
        stored = await store.source(pg, code)
    if current is None:
        response.status_code = status.HTTP_201_CREATED
        response.headers["Location"] = f"/network/sources/{code}"
    response.headers["ETag"] = etag(version)
    return stored


@router.delete(
    "/network/sources/{code}",
    summary="Deactivate one source",
    description="The source stays in the network, inactive (shipments already planned from it still need its name "
    "and request topic), and is announced as deactivated; no other source changes. Deactivating an inactive source "
    "changes nothing. Raises the network's version (ETag) when it changes anything. Needs the admin role.",
    responses={
        status.HTTP_200_OK: {"description": "The source as it now stands, inactive", "headers": _ETAG},
        status.HTTP_403_FORBIDDEN: _FORBIDDEN,
        status.HTTP_404_NOT_FOUND: {"model": Problem, "description": "No source with this code in the network"},
    },
)
async def delete_source(code: Code, request: Request, response: Response, who: Admin) -> Source:
    service = _service(request)
    async with _publishing(service) as (pg, tx):
        version, current = await store.lock_source(pg, code)
        if current is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no source {code!r} in the network")
        version = await _apply(pg, tx, domain.source_removal(current), version, who)
        stored = await store.source(pg, code)
    response.headers["ETag"] = etag(version)
    return stored


@router.get("/rule-chains", summary="The default rule chain and every channel's own")
async def get_rule_chains(request: Request, who: Principal) -> RuleChains:
    service = _service(request)
    async with service.database.autocommit() as pg:
        stored = await store.stored_rule_chains(pg)
    settings: RoutingSettings = service.settings  # type: ignore[assignment]
    return RuleChains(
        default=_chain_view(domain.DEFAULT_CHANNEL, stored, settings),
        channels=[_chain_view(channel, stored, settings) for channel in stored if channel != domain.DEFAULT_CHANNEL],
    )


@router.get("/rule-chains/{channel}", summary="The rule chain a channel's orders are ranked by")
async def get_rule_chain(channel: Channel, request: Request, who: Principal) -> RuleChain:
    service = _service(request)
    async with service.database.autocommit() as pg:
        stored = await store.stored_rule_chains(pg, [channel, domain.DEFAULT_CHANNEL])
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
    async with _service(request).database.autocommit() as pg:
        made = await store.plans_of(pg, order_id)
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
    async with service.database.autocommit() as pg:
        loaded = await load_planning(pg, [order], settings, planned_at)
    return domain.plan(
        domain.RoutedOrder(order).first_plan(),
        loaded.network,
        loaded.availability,
        planned_at=planned_at,
        max_attempts=settings.max_plan_attempts,
        chains=loaded.chains,
    )
