from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from oms_contracts import order_id_for
from oms_contracts.order import OrderAccepted
from oms_notifications.app import create_service
from oms_notifications.settings import NotificationsSettings
from oms_runtime import Service

TOKEN = "test-token"


def accepted_order(
    external_order_id: str = "1001",
    *,
    email: str = "ada@example.com",
    name: str = "Ada Lovelace",
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
                "customer": {"id": "c-1", "email": email, "name": name, "locale": "en"},
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


@pytest.fixture(scope="session")
def settings(service_database: Callable[[str], str]) -> NotificationsSettings:
    return NotificationsSettings(database_url=service_database("notifications"), api_tokens={TOKEN: "cs-test"})


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
        await raw.execute("TRUNCATE notifications, order_contacts, outbox, inbox")
        yield raw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MailServer:
    """An SMTP server's behaviour for a test: accept everything, or refuse recipients (all, or only `refused`) with
    a given reply."""

    def __init__(self, refuse_with: str | None = None, refused: set[str] | None = None, delay: float = 0.0) -> None:
        self.refuse_with = refuse_with
        self.refused = refused
        self.delay = delay
        self.received: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

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
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., tuple[MailServer, int]]]:
    """Start a real SMTP server (aiosmtpd) on 127.0.0.1 and a free port: `server, port = smtp_server(...)`."""
    controllers: list[Controller] = []

    def start(
        refuse_with: str | None = None, refused: set[str] | None = None, delay: float = 0.0, port: int | None = None
    ) -> tuple[MailServer, int]:
        mail = MailServer(refuse_with, refused, delay)
        controller = Controller(mail, hostname="127.0.0.1", port=port or free_port())
        controller.start()
        controllers.append(controller)
        return mail, controller.port

    yield start
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


@pytest.fixture
def order_accepted() -> Callable[..., OrderAccepted]:
    """Build an `oms.order.accepted.v1` event: `order_accepted("1001", email=..., lines=[...])`."""
    return accepted_order
