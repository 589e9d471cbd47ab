"""Routing's tests run the real service code on a fresh, migrated PostgreSQL database per module kind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from oms_contracts.common import Address, BackorderPolicy, Line, OrderOptions, ShippingMethod, SourceType
from oms_contracts.order import OrderPaidData
from oms_contracts.routing import Source
from oms_routing.app import create_service
from oms_routing.settings import RoutingSettings
from oms_runtime import Service

TOKEN = "routing-test-token"
BERLIN = (52.517, 13.389)


def source(code: str, type_: SourceType = SourceType.warehouse, **fields) -> Source:
    """A source near Berlin shipping to Germany, unless told otherwise."""
    values = {
        "code": code,
        "name": f"{code} site",
        "type": type_,
        "lat": BERLIN[0],
        "lon": BERLIN[1],
        "countries": ["DE"],
        "priority": 100,
        "cost_per_shipment": Decimal("4.00"),
        "cost_per_unit": Decimal("0.50"),
        "handling_days": 1,
        "active": True,
    }
    return Source.model_validate(values | fields)


def paid_order(order_id, lines: list[tuple[str, str, int]], **fields) -> OrderPaidData:
    """A paid order shipping to Berlin; lines as (line_id, sku, quantity)."""
    values = {
        "order_id": order_id,
        "channel": "web-eu",
        "placed_at": datetime(2026, 11, 22, 10, tzinfo=UTC),
        "currency": "EUR",
        "amount": Decimal("44.97"),
        "lines": [Line(line_id=i, sku=s, quantity=q) for i, s, q in lines],
        "shipping_address": Address(
            name="Ada L", line1="Unter den Linden 1", city="Berlin", country="DE", lat=BERLIN[0], lon=BERLIN[1]
        ),
        "shipping_method": ShippingMethod.standard,
        "options": OrderOptions(backorder_policy=BackorderPolicy.allow),
    }
    return OrderPaidData.model_validate(values | fields)


@pytest.fixture(scope="session")
def make_source() -> Callable[..., Source]:
    return source


@pytest.fixture(scope="session")
def make_order() -> Callable[..., OrderPaidData]:
    return paid_order


def _settings(url: str, **fields) -> RoutingSettings:
    return RoutingSettings(database_url=url, api_tokens={TOKEN: "tester"}, **fields)


@pytest.fixture(scope="session")
def routing_database(service_database: Callable[[str, str], str]) -> str:
    return service_database("routing", "")


@pytest.fixture(scope="session")
async def routing(routing_database: str) -> AsyncIterator[Service]:
    """The service whose consumers the handler tests deliver to (no broker: `deliver` runs the consumer path)."""
    service = create_service(_settings(routing_database, max_plan_attempts=3))
    yield service
    await service.database.dispose()
