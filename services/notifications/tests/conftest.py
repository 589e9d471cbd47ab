from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller

from oms_contracts import CloudEvent, order_id_for
from oms_contracts.inventory import BackorderQueued, LowStock, StockLevelChanged
from oms_contracts.order import (
    CancellationRejected,
    LinesCancelled,
    LinesReturned,
    OrderAccepted,
    OrderFulfillmentDelivered,
    OrderFulfillmentShipped,
    OrderStuck,
    RefundIssued,
    StatusChanged,
)
from oms_contracts.routing import FulfillmentPlanned
from oms_notifications.app import create_service
from oms_notifications.settings import NotificationsSettings
from oms_runtime import Service

TOKEN = "test-token"
# The operators and the customer-link key of the session's service.
OPERATORS = ["ops@example.com", "oncall@example.com"]
LINK_KEY = "a-test-key-of-more-than-32-bytes-for-customer-links"
PAYMENT_FAILED = "oms.channel.payment_failed.v1"


def accepted_order(
    external_order_id: str = "1001",
    *,
    email: str = "ada@example.com",
    name: str = "Ada Lovelace",
    locale: str = "en",
    lines: list[dict[str, Any]] | None = None,
    shipping_method: str = "standard",
    pickup_source: str | None = None,
    tax_total: str = "0.00",
    discount_total: str = "0.00",
) -> OrderAccepted:
    lines = lines or [
        {"line_id": "1", "sku": "SKU-RED-MUG", "quantity": 2, "unit_price": "19.99"},
        {"line_id": "2", "sku": "SKU-TEA-500G", "quantity": 1, "unit_price": "7.50"},
    ]
    subtotal = sum((Decimal(line["unit_price"]) * line["quantity"] for line in lines), Decimal(0))
    grand_total = subtotal + Decimal("4.99") + Decimal(tax_total) - Decimal(discount_total)
    order_id = order_id_for("web-eu", external_order_id)
    return OrderAccepted.model_validate(
        {
            "source": "/oms/order",
            "subject": str(order_id),
            "data": {
                "order_id": str(order_id),
                "channel": "web-eu",
                "external_order_id": external_order_id,
                "placed_at": "2026-11-22T10:00:00Z",
                "currency": "EUR",
                "customer": {"id": "c-1", "email": email, "name": name, "locale": locale},
                "shipping_address": {
                    "name": name,
                    "line1": "Unter den Linden 1",
                    "city": "Berlin",
                    "postal_code": "10117",
                    "country": "DE",
                },
                "shipping_method": shipping_method,
                "pickup_source": pickup_source,
                "lines": lines,
                "subtotal": format(subtotal, "f"),
                "shipping_total": "4.99",
                "tax_total": tax_total,
                "discount_total": discount_total,
                "grand_total": format(grand_total, "f"),
                "options": {"ship_complete": False, "backorder_policy": "allow"},
            },
        }
    )


E = TypeVar("E", bound=CloudEvent)

# Items as (sku, quantity); line ids are made up from their place.
Items = Sequence[tuple[str, int]]

PLANNED_AT = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def _lines(items: Items, first_line: int = 1) -> list[dict[str, Any]]:
    return [{"line_id": str(first_line + n), "sku": sku, "quantity": q} for n, (sku, q) in enumerate(items)]


def _event(model: type[E], source: str, order_id: uuid.UUID, at: datetime, data: dict[str, Any]) -> E:
    return model.model_validate(
        {
            "source": source,
            "subject": str(order_id),
            "time": at.isoformat(),
            "data": {"order_id": str(order_id), **data},
        }
    )


def planned(
    order_id: uuid.UUID,
    shipments: Sequence[Items] = ((("SKU-RED-MUG", 2),), (("SKU-TEA-500G", 1),)),
    *,
    backordered: Items = (),
    unfulfillable: Items = (),
    attempt: int = 1,
    deliveries: Sequence[date] | None = None,
    time: datetime | None = None,
) -> FulfillmentPlanned:
    """`oms.routing.fulfillment_planned.v1`: one shipment per entry of `shipments`, the n-th delivered on
    `deliveries[n]` (by default 1 December 2026 plus n days)."""
    deliveries = deliveries or [date(2026, 12, 1) + timedelta(days=n) for n in range(len(shipments))]
    line = 1
    planned_shipments = []
    for n, items in enumerate(shipments):
        planned_shipments.append(
            {
                "shipment_id": str(uuid.uuid4()),
                "source_code": f"WH-{n + 1}",
                "source_type": "warehouse",
                "lines": _lines(items, line),
                "estimated_ship_date": str(deliveries[n] - timedelta(days=2)),
                "estimated_delivery_date": str(deliveries[n]),
                "reason": f"WH-{n + 1}: the nearest with these items",
            }
        )
        line += len(items)
    unplanned = [{**entry, "reason": "not in stock"} for entry in _lines(backordered, line)]
    line += len(backordered)
    data = {
        "plan_id": str(uuid.uuid4()),
        "attempt": attempt,
        "shipments": planned_shipments,
        "backordered_lines": unplanned,
        "unfulfillable_lines": [{**e, "reason": "no source"} for e in _lines(unfulfillable, line)],
        "planned_at": PLANNED_AT.isoformat(),
        "ship_to_country": "DE",
    }
    return _event(FulfillmentPlanned, "/oms/routing", order_id, time or PLANNED_AT, data)


def backorder_queued(
    order_id: uuid.UUID, items: Sequence[tuple[str, int, date | None]] = (("SKU-TEA-500G", 1, None),)
) -> BackorderQueued:
    """`oms.inventory.backorder_queued.v1`: (sku, quantity, expected date or None) per waiting line."""
    lines = [
        {
            "line_id": str(n + 1),
            "sku": sku,
            "quantity": q,
            "position": n + 1,
            "expected_date": expected and str(expected),
        }
        for n, (sku, q, expected) in enumerate(items)
    ]
    return _event(BackorderQueued, "/oms/inventory", order_id, PLANNED_AT + timedelta(seconds=1), {"lines": lines})


def parcel_shipped(
    order_id: uuid.UUID,
    items: Items = (("SKU-RED-MUG", 2),),
    to_come: Items = (("SKU-TEA-500G", 1),),
    *,
    carrier: str = "DHL",
    service: str | None = "Paket",
    tracking_number: str = "00340434161094042557",
    tracking_url: str | None = "https://www.dhl.de/track?piececode=00340434161094042557",
    at: datetime | None = None,
) -> OrderFulfillmentShipped:
    """`oms.order.fulfillment_shipped.v1`: a parcel with `items`, and `to_come` still to ship."""
    at = at or PLANNED_AT + timedelta(days=1)
    data = {
        "fulfillment_id": str(uuid.uuid4()),
        "source_code": "WH-1",
        "carrier": carrier,
        "service": service,
        "tracking_number": tracking_number,
        "tracking_url": tracking_url,
        "shipped_at": at.isoformat(),
        "lines": _lines(items),
        "to_come": _lines(to_come, len(items) + 1),
        "status": "partially_fulfilled" if to_come else "fulfilled",
    }
    return _event(OrderFulfillmentShipped, "/oms/order", order_id, at, data)


def parcel_delivered(
    order_id: uuid.UUID,
    items: Items = (("SKU-RED-MUG", 2),),
    *,
    status: str = "delivered",
    tracking_numbers: Sequence[str] = ("00340434161094042557",),
    at: datetime | None = None,
) -> OrderFulfillmentDelivered:
    """`oms.order.fulfillment_delivered.v1`: a fulfillment with `items` delivered; `status` is the order's after."""
    at = at or PLANNED_AT + timedelta(days=3)
    data = {
        "fulfillment_id": str(uuid.uuid4()),
        "source_code": "WH-1",
        "delivered_at": at.isoformat(),
        "lines": _lines(items),
        "tracking_numbers": list(tracking_numbers),
        "status": status,
    }
    return _event(OrderFulfillmentDelivered, "/oms/order", order_id, at, data)


# After the sale: what the order service tells of cancellations, refunds, returns and stuck orders.

AFTER_SALE = PLANNED_AT + timedelta(days=2)


def cancelled_lines(
    order_id: uuid.UUID,
    lines: Sequence[tuple[str, int]] = (("2", 1),),
    *,
    refund: str = "7.50",
    grand_total: str = "44.97",
    status: str | None = "awaiting_fulfillment",
    reason: str = "customer asked",
    actor: str = "customer:c-1",
    units: Sequence[tuple[str, str, int, str]] = (),
    at: datetime | None = None,
) -> LinesCancelled:
    """`oms.order.lines_cancelled.v1`: (line id, quantity) cancelled; `units` as (line id, sku, quantity, from)."""
    data = {
        "lines": [{"line_id": line_id, "quantity": q} for line_id, q in lines],
        "reason": reason,
        "actor": actor,
        "refund_amount": refund,
        "currency": "EUR",
        "grand_total": grand_total,
        "units": [{"line_id": i, "sku": sku, "quantity": q, "from": f} for i, sku, q, f in units],
        "status": status,
    }
    return _event(LinesCancelled, "/oms/order", order_id, at or AFTER_SALE, data)


def status_changed(
    order_id: uuid.UUID,
    from_status: str | None = "payment_processing",
    to_status: str = "cancelled",
    *,
    note: str | None = "payment failed: card declined",
    cause_type: str | None = PAYMENT_FAILED,
    at: datetime | None = None,
) -> StatusChanged:
    """`oms.order.status_changed.v1`, by default a failed payment cancelling the order."""
    at = at or AFTER_SALE
    data = {
        "from": from_status,
        "to": to_status,
        "actor": "channel:web-eu",
        "note": note,
        "at": at.isoformat(),
        "cause_type": cause_type,
    }
    return _event(StatusChanged, "/oms/order", order_id, at, data)


def refund(
    order_id: uuid.UUID,
    amount: str = "7.50",
    *,
    refunded_total: str | None = "7.50",
    cause: str | None = "cancellation",
    at: datetime | None = None,
) -> RefundIssued:
    data = {
        "refund_id": str(uuid.uuid4()),
        "amount": amount,
        "currency": "EUR",
        "reason": "cancelled by the customer",
        "cause": cause,
        "refunded_total": refunded_total,
    }
    return _event(RefundIssued, "/oms/order", order_id, at or AFTER_SALE + timedelta(seconds=1), data)


def returned_lines(
    order_id: uuid.UUID,
    lines: Sequence[tuple[str, str, int, str]] = (
        ("1", "SKU-RED-MUG", 1, "resellable"),
        ("2", "SKU-TEA-500G", 1, "damaged"),
    ),
    *,
    refund: str = "27.49",
    source_code: str = "STORE-BERLIN",
) -> LinesReturned:
    """`oms.order.lines_returned.v1`: (line id, sku, quantity, condition) per returned line."""
    data = {
        "return_id": str(uuid.uuid4()),
        "source_code": source_code,
        "lines": [{"line_id": i, "sku": sku, "quantity": q, "condition": c} for i, sku, q, c in lines],
        "reason": "does not fit",
        "refund_amount": refund,
        "currency": "EUR",
    }
    return _event(LinesReturned, "/oms/order", order_id, AFTER_SALE + timedelta(days=5), data)


def rejected_cancellation(
    order_id: uuid.UUID,
    lines: Sequence[tuple[str, int]] = (("1", 2),),
    *,
    requested_by: str = "customer:c-1",
    reason: str = "already shipped: the parcel left WH-1 before the source could stop it",
) -> CancellationRejected:
    data = {
        "cancellation_id": str(uuid.uuid4()),
        "lines": [{"line_id": line_id, "quantity": q} for line_id, q in lines],
        "reason": reason,
        "requested_by": requested_by,
    }
    return _event(CancellationRejected, "/oms/order", order_id, AFTER_SALE, data)


def stuck(
    order_id: uuid.UUID,
    *,
    kind: str | None = "accepted_not_shipped",
    reason: str | None = "accepted by WH-1 26 hours ago, not shipped",
    age_hours: float = 26.0,
    fulfillment_id: uuid.UUID | None = None,
) -> OrderStuck:
    data = {
        "status": "awaiting_fulfillment",
        "since": (AFTER_SALE - timedelta(hours=age_hours)).isoformat(),
        "age_hours": age_hours,
        "kind": kind,
        "reason": reason,
        "fulfillment_id": str(fulfillment_id) if fulfillment_id else None,
    }
    return _event(OrderStuck, "/oms/order", order_id, AFTER_SALE, data)


def low(sku: str = "SKU-RED-MUG", source_code: str = "WH-1", available: int = 2, threshold: int = 5) -> LowStock:
    return LowStock.model_validate(
        {
            "source": "/oms/inventory",
            "time": AFTER_SALE.isoformat(),
            "data": {"sku": sku, "source_code": source_code, "available": available, "threshold": threshold},
        }
    )


def level_changed(sku: str = "SKU-RED-MUG", available: int = 40) -> StockLevelChanged:
    return StockLevelChanged.model_validate(
        {
            "source": "/oms/inventory",
            "data": {
                "sku": sku,
                "source_code": "WH-1",
                "on_hand": available + 2,
                "reserved": 2,
                "available": available,
                "changed_at": AFTER_SALE.isoformat(),
            },
        }
    )


@pytest.fixture(scope="session")
def settings(service_database: Callable[[str], str]) -> NotificationsSettings:
    return NotificationsSettings(
        database_url=service_database("notifications"),
        api_tokens={TOKEN: "cs-test"},
        ops_email=OPERATORS,
        customer_link_key=LINK_KEY,
    )


@pytest.fixture(scope="session")
async def service(settings: NotificationsSettings) -> AsyncIterator[Service]:
    service = create_service(settings)
    yield service
    await service.database.dispose()


@pytest.fixture
async def pg(service: Service) -> AsyncIterator[Any]:
    """A clean database (every test starts without notifications) and a connection to look into it."""
    async with service.database.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        await raw.execute("TRUNCATE notifications, notices_awaiting_contact, order_contacts, outbox, inbox")
        yield raw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MailServer:
    """An SMTP server's behaviour for a test: accept everything, or refuse recipients (all, or only `refused`) with
    a given reply. With `hold`, it takes each message and then answers only once the test sets `hold` (the server
    runs in a thread of its own): `taken` is set as soon as it has a message. `on_data` runs as each one arrives."""

    def __init__(
        self,
        refuse_with: str | None = None,
        refused: set[str] | None = None,
        delay: float = 0.0,
        hold: threading.Event | None = None,
        on_data: Callable[[], None] | None = None,
    ) -> None:
        self.refuse_with = refuse_with
        self.refused = refused
        self.delay = delay
        self.hold = hold
        self.on_data = on_data
        self.taken = threading.Event()
        self.received: list[EmailMessage] = []
        self.recipients: list[list[str]] = []
        self.greetings = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        self.greetings += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if self.refuse_with and (self.refused is None or address in self.refused):
            return self.refuse_with
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.received.append(message_from_bytes(envelope.original_content or envelope.content, policy=policy.default))
        self.recipients.append(list(envelope.rcpt_tos))
        if self.on_data is not None:
            self.on_data()
        self.taken.set()
        if self.hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.hold.wait)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., tuple[MailServer, int]]]:
    """Start a real SMTP server (aiosmtpd) on 127.0.0.1 and a free port: `server, port = smtp_server(...)`."""
    controllers: list[Controller] = []
    servers: list[MailServer] = []

    def start(
        refuse_with: str | None = None,
        refused: set[str] | None = None,
        delay: float = 0.0,
        port: int | None = None,
        hold: threading.Event | None = None,
        on_data: Callable[[], None] | None = None,
    ) -> tuple[MailServer, int]:
        mail = MailServer(refuse_with, refused, delay, hold, on_data)
        controller = Controller(mail, hostname="127.0.0.1", port=port or free_port())
        controller.start()
        controllers.append(controller)
        servers.append(mail)
        return mail, controller.port

    yield start
    for mail in servers:
        if mail.hold is not None:
            mail.hold.set()
    for controller in controllers:
        controller.stop()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens: an SMTP server that is down."""
    return free_port()


class Clock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


# Builders of the events the service consumes (session-scoped: hypothesis tests use them too).


@pytest.fixture(scope="session")
def order_accepted() -> Callable[..., OrderAccepted]:
    """Build an `oms.order.accepted.v1` event: `order_accepted("1001", email=..., locale="de", lines=[...])`."""
    return accepted_order


@pytest.fixture(scope="session")
def fulfillment_planned() -> Callable[..., FulfillmentPlanned]:
    return planned


@pytest.fixture(scope="session")
def inventory_backorder_queued() -> Callable[..., BackorderQueued]:
    return backorder_queued


@pytest.fixture(scope="session")
def fulfillment_shipped() -> Callable[..., OrderFulfillmentShipped]:
    return parcel_shipped


@pytest.fixture(scope="session")
def fulfillment_delivered() -> Callable[..., OrderFulfillmentDelivered]:
    return parcel_delivered


@pytest.fixture(scope="session")
def order_lines_cancelled() -> Callable[..., LinesCancelled]:
    return cancelled_lines


@pytest.fixture(scope="session")
def order_status_changed() -> Callable[..., StatusChanged]:
    return status_changed


@pytest.fixture(scope="session")
def order_refund_issued() -> Callable[..., RefundIssued]:
    return refund


@pytest.fixture(scope="session")
def order_lines_returned() -> Callable[..., LinesReturned]:
    return returned_lines


@pytest.fixture(scope="session")
def order_cancellation_rejected() -> Callable[..., CancellationRejected]:
    return rejected_cancellation


@pytest.fixture(scope="session")
def order_stuck() -> Callable[..., OrderStuck]:
    return stuck


@pytest.fixture(scope="session")
def inventory_low_stock() -> Callable[..., LowStock]:
    return low


@pytest.fixture(scope="session")
def stock_level_changed() -> Callable[..., StockLevelChanged]:
    return level_changed
