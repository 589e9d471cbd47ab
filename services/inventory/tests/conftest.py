"""The inventory service on a fresh, migrated PostgreSQL database, and builders of the events it consumes.

Tests share one database per session, so each one works on SKUs and sources of its own (`fresh_sku`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest

from oms_contracts.common import Line, LineQuantity, SourceType
from oms_contracts.fulfillment import (
    FulfillmentAccepted,
    FulfillmentAcceptedData,
    FulfillmentCancelled,
    FulfillmentCancelledData,
    FulfillmentRejected,
    FulfillmentRejectedData,
    FulfillmentShipped,
    FulfillmentShippedData,
    ReasonCode,
)
from oms_contracts.inventory import (
    ReceiptExpected,
    ReceiptExpectedData,
    StockCounted,
    StockCountedData,
    StockReceived,
    StockReceivedData,
)
from oms_contracts.order import (
    CancelledUnits,
    LinesCancelled,
    LinesCancelledData,
    LinesReturned,
    LinesReturnedData,
    ReturnedUnits,
)
from oms_contracts.routing import (
    FulfillmentPlanned,
    FulfillmentPlannedData,
    PlannedShipment,
    Source,
    SourceDeactivated,
    SourceDeactivatedData,
    SourceUpserted,
    UnplannedLine,
)
from oms_inventory.app import create_service
from oms_inventory.settings import InventorySettings
from oms_runtime import Service

TOKEN = "inventory-test-token"
THRESHOLD = 5


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def settings(url: str) -> InventorySettings:
    return InventorySettings(database_url=url, api_tokens={TOKEN: "tester"}, low_stock_threshold=THRESHOLD)


@pytest.fixture(scope="session")
def inventory_url(service_database: Callable[..., str]) -> str:
    return service_database("inventory")


@pytest.fixture(scope="session")
async def inventory(inventory_url: str) -> AsyncIterator[Service]:
    service = create_service(settings(inventory_url))
    yield service
    await service.database.dispose()


@pytest.fixture(scope="session")
async def second_inventory(inventory_url: str) -> AsyncIterator[Service]:
    """Another instance of the service on the same database, as when two run in one consumer group."""
    service = create_service(settings(inventory_url))
    yield service
    await service.database.dispose()


@pytest.fixture
async def client(inventory: Service) -> AsyncIterator[httpx.AsyncClient]:
    """The service's HTTP API over ASGI, with a known token."""
    transport = httpx.ASGITransport(app=inventory.http)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://inventory", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield client


@pytest.fixture
def fresh_sku() -> str:
    return fresh("SKU")


@pytest.fixture
def fresh_source() -> str:
    return fresh("WH")


class Events:
    """The smallest valid events inventory consumes."""

    @staticmethod
    def source_upserted(
        code: str,
        *,
        active: bool = True,
        type: SourceType = SourceType.warehouse,
        countries: tuple[str, ...] = ("DE",),
        handling_days: int = 1,
        timezone: str = "UTC",
    ) -> SourceUpserted:
        source = Source(
            code=code,
            name=f"Source {code}",
            type=type,
            lat=52.5,
            lon=13.4,
            countries=list(countries),
            cost_per_shipment="4.00",
            cost_per_unit="0.50",
            active=active,
            handling_days=handling_days,
            timezone=timezone,
        )
        return SourceUpserted(source="/oms/routing", subject=code, data=source)

    @staticmethod
    def source_deactivated(code: str) -> SourceDeactivated:
        data = SourceDeactivatedData(code=code, deactivated_at=datetime.now(UTC))
        return SourceDeactivated(source="/oms/routing", subject=code, data=data)

    @staticmethod
    def received(
        sku: str, source_code: str, quantity: int, *, reason: str = "restock", reference: str | None = None
    ) -> StockReceived:
        data = StockReceivedData(
            sku=sku, source_code=source_code, quantity=quantity, reason=reason, reference=reference
        )
        return StockReceived(source="/wms", subject=sku, data=data)

    @staticmethod
    def expected(
        sku: str, source_code: str, quantity: int, expected_date: date, *, reference: str | None = None
    ) -> ReceiptExpected:
        data = ReceiptExpectedData(
            sku=sku, source_code=source_code, quantity=quantity, expected_date=expected_date, reference=reference
        )
        return ReceiptExpected(source="/purchasing", subject=sku, data=data)

    @staticmethod
    def lines_cancelled(order_id: uuid.UUID, *lines: tuple[str, int]) -> LinesCancelled:
        data = LinesCancelledData(
            order_id=order_id,
            lines=[LineQuantity(line_id=line_id, quantity=quantity) for line_id, quantity in lines],
            reason="customer changed their mind",
            actor="cs-demo",
            refund_amount="0.00",
            currency="EUR",
            grand_total="0.00",
        )
        return LinesCancelled(source="/oms/order", subject=str(order_id), data=data)

    @staticmethod
    def units_cancelled(
        order_id: uuid.UUID,
        *units: tuple[str, str, int, str, uuid.UUID | None],
        at: datetime | None = None,
    ) -> LinesCancelled:
        """Units the order service cancelled, each (line_id, sku, quantity, where it was, fulfillment_id), at `at`
        (now unless given)."""
        lines: dict[str, int] = {}
        for line_id, _, quantity, _, _ in units:
            lines[line_id] = lines.get(line_id, 0) + quantity
        data = LinesCancelledData(
            order_id=order_id,
            lines=[LineQuantity(line_id=line_id, quantity=quantity) for line_id, quantity in lines.items()],
            reason="customer changed their mind",
            actor="cs-demo",
            refund_amount="0.00",
            currency="EUR",
            grand_total="0.00",
            units=[
                CancelledUnits.model_validate(
                    {"line_id": line_id, "sku": sku, "quantity": quantity, "from": where, "fulfillment_id": shipment}
                )
                for line_id, sku, quantity, where, shipment in units
            ],
        )
        event = LinesCancelled(source="/oms/order", subject=str(order_id), data=data)
        return event if at is None else event.model_copy(update={"time": at})

    @staticmethod
    def returned(order_id: uuid.UUID, source_code: str, *lines: tuple[str, str, int, str]) -> LinesReturned:
        """A return the order service accepted at `source_code`: (line_id, sku, quantity, condition) lines."""
        data = LinesReturnedData(
            order_id=order_id,
            return_id=uuid.uuid4(),
            source_code=source_code,
            lines=[
                ReturnedUnits(line_id=line_id, sku=sku, quantity=quantity, condition=condition)
                for line_id, sku, quantity, condition in lines
            ],
            reason="did not fit",
            refund_amount="10.00",
            currency="EUR",
        )
        return LinesReturned(source="/oms/order", subject=str(order_id), data=data)

    @staticmethod
    def counted(sku: str, source_code: str, on_hand: int, *, at: datetime | None = None) -> StockCounted:
        """A count as of `at` (now unless given)."""
        data = StockCountedData(sku=sku, source_code=source_code, on_hand=on_hand, counted_at=at or datetime.now(UTC))
        return StockCounted(source="/wms", subject=sku, data=data)

    @staticmethod
    def shipment(source_code: str, *lines: tuple[str, str, int]) -> PlannedShipment:
        """A planned shipment of (line_id, sku, quantity) lines."""
        return PlannedShipment(
            shipment_id=uuid.uuid4(),
            source_code=source_code,
            source_type=SourceType.warehouse,
            lines=[Line(line_id=line_id, sku=sku, quantity=quantity) for line_id, sku, quantity in lines],
            estimated_ship_date=date(2026, 11, 23),
            estimated_delivery_date=date(2026, 11, 25),
            reason=f"{source_code}: test",
        )

    @staticmethod
    def plan(
        *shipments: PlannedShipment,
        backordered: tuple[tuple[str, str, int], ...] = (),
        order_id: uuid.UUID | None = None,
        ship_to_country: str | None = None,
        pickup_source: str | None = None,
        ship_complete: bool = False,
        planned_at: datetime | None = None,
        attempt: int = 1,
    ) -> FulfillmentPlanned:
        """A plan of `shipments`, with (line_id, sku, quantity) lines backordered under the given terms."""
        order_id = order_id or uuid.uuid4()
        data = FulfillmentPlannedData(
            order_id=order_id,
            plan_id=uuid.uuid4(),
            attempt=attempt,
            shipments=list(shipments),
            backordered_lines=[
                UnplannedLine(line_id=line_id, sku=sku, quantity=quantity, reason="no stock anywhere")
                for line_id, sku, quantity in backordered
            ],
            planned_at=planned_at or datetime.now(UTC),
            ship_to_country=ship_to_country,
            pickup_source=pickup_source,
            ship_complete=ship_complete,
        )
        return FulfillmentPlanned(source="/oms/routing", subject=str(order_id), data=data)

    @staticmethod
    def _ref(plan: FulfillmentPlanned, shipment: PlannedShipment) -> dict[str, Any]:
        return {
            "fulfillment_id": shipment.shipment_id,
            "order_id": plan.data.order_id,
            "source_code": shipment.source_code,
        }

    @classmethod
    def shipped(
        cls, plan: FulfillmentPlanned, shipment: PlannedShipment, lines: list[tuple[str, int]] | None = None
    ) -> FulfillmentShipped:
        """Every line of the shipment shipped, unless `lines` (line_id, quantity) says otherwise."""
        shipped = lines if lines is not None else [(line.line_id, line.quantity) for line in shipment.lines]
        data = FulfillmentShippedData(
            **cls._ref(plan, shipment),
            carrier="DHL",
            tracking_number="JJD000000001",
            shipped_at=datetime.now(UTC),
            lines=[LineQuantity(line_id=line_id, quantity=quantity) for line_id, quantity in shipped],
        )
        return FulfillmentShipped(source="/wms", subject=str(plan.data.order_id), data=data)

    @classmethod
    def rejected(
        cls, plan: FulfillmentPlanned, shipment: PlannedShipment, reason_code: ReasonCode = ReasonCode.other
    ) -> FulfillmentRejected:
        data = FulfillmentRejectedData(
            **cls._ref(plan, shipment), reason="out of stock on the shelf", reason_code=reason_code
        )
        return FulfillmentRejected(source="/wms", subject=str(plan.data.order_id), data=data)

    @classmethod
    def cancelled(
        cls,
        plan: FulfillmentPlanned,
        shipment: PlannedShipment,
        lines: list[tuple[str, int]],
        reason_code: ReasonCode = ReasonCode.other,
    ) -> FulfillmentCancelled:
        data = FulfillmentCancelledData(
            **cls._ref(plan, shipment),
            lines=[LineQuantity(line_id=line_id, quantity=quantity) for line_id, quantity in lines],
            reason_code=reason_code,
        )
        return FulfillmentCancelled(source="/wms", subject=str(plan.data.order_id), data=data)

    @classmethod
    def accepted(cls, plan: FulfillmentPlanned, shipment: PlannedShipment) -> FulfillmentAccepted:
        data = FulfillmentAcceptedData(**cls._ref(plan, shipment))
        return FulfillmentAccepted(source="/wms", subject=str(plan.data.order_id), data=data)


@pytest.fixture
def events() -> type[Events]:
    return Events
