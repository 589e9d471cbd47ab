"""Events as a channel, a WMS or a 3PL would publish them: for the demo, the CLI and the tests."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from oms_contracts import channel, fulfillment, inventory
from oms_contracts.common import Address, Customer, LineQuantity, OrderOptions, PricedLine
from oms_contracts.types import utc_now

BERLIN = Address(
    name="Ada Lovelace",
    line1="Unter den Linden 1",
    city="Berlin",
    postal_code="10117",
    country="DE",
    lat=52.517,
    lon=13.389,
)


def order_submitted(
    external_order_id: str,
    lines: list[tuple[str, int, str]],
    *,
    channel_name: str = "web-eu",
    currency: str = "EUR",
    address: Address = BERLIN,
    email: str = "ada@example.com",
    shipping_total: str = "4.99",
    tax_total: str = "0.00",
    discount_total: str = "0.00",
    ship_complete: bool = False,
    backorder_policy: str = "allow",
) -> channel.OrderSubmitted:
    """An order of `lines` = [(sku, quantity, unit price)], totals made to add up."""
    priced = [
        PricedLine(line_id=str(i), sku=sku, quantity=qty, unit_price=Decimal(price))
        for i, (sku, qty, price) in enumerate(lines, start=1)
    ]
    subtotal = sum((p.unit_price * p.quantity for p in priced), Decimal(0))
    grand_total = subtotal + Decimal(shipping_total) + Decimal(tax_total) - Decimal(discount_total)
    data = channel.OrderSubmittedData(
        channel=channel_name,
        external_order_id=external_order_id,
        placed_at=utc_now(),
        currency=currency,
        customer=Customer(id="c-1", email=email, name=address.name, phone="+49 30 1234567", locale="en"),
        shipping_address=address,
        lines=priced,
        shipping_total=Decimal(shipping_total),
        tax_total=Decimal(tax_total),
        discount_total=Decimal(discount_total),
        grand_total=grand_total,
        options=OrderOptions(ship_complete=ship_complete, backorder_policy=backorder_policy),
    )
    return channel.OrderSubmitted(source=f"/channels/{channel_name}", subject=str(data.order_id), data=data)


def payment_captured(submitted: channel.OrderSubmitted, *, amount: Decimal | None = None) -> channel.PaymentCaptured:
    d = submitted.data
    return channel.PaymentCaptured(
        source=f"/channels/{d.channel}",
        subject=str(d.order_id),
        data=channel.PaymentData(
            channel=d.channel,
            external_order_id=d.external_order_id,
            amount=d.grand_total if amount is None else amount,
            currency=d.currency,
            payment_ref=f"pay-{d.external_order_id}",
        ),
    )


def stock_received(sku: str, source_code: str, quantity: int) -> inventory.StockReceived:
    return inventory.StockReceived(
        source=f"/wms/{source_code}",
        subject=sku,
        data=inventory.StockReceivedData(
            sku=sku, source_code=source_code, quantity=quantity, reason="restock", reference="demo"
        ),
    )


def shipped(request: fulfillment.FulfillmentRequested, *, carrier: str = "DHL") -> fulfillment.FulfillmentShipped:
    """The source's answer to a fulfillment request: everything shipped in one parcel."""
    d = request.data
    tracking = f"00340{d.fulfillment_id.int % 10**13:013d}"
    return fulfillment.FulfillmentShipped(
        source=f"/sources/{d.source_code}",
        subject=str(d.order_id),
        data=fulfillment.FulfillmentShippedData(
            fulfillment_id=d.fulfillment_id,
            order_id=d.order_id,
            source_code=d.source_code,
            carrier=carrier,
            service="Paket",
            tracking_number=tracking,
            tracking_url=f"https://www.dhl.de/en/privatkunden.html?piececode={tracking}",
            shipped_at=datetime.now(UTC),
            lines=[LineQuantity(line_id=x.line_id, quantity=x.quantity) for x in d.lines],
        ),
    )
