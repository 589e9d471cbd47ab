"""Events as a channel, a WMS or a 3PL would publish them: for the demo, the CLI and the tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from oms_contracts import channel, fulfillment, inventory, routing
from oms_contracts.common import Address, Customer, Line, LineQuantity, OrderOptions, PricedLine, ReturnedLine
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

# One plausible customer address per country the demo ships to; no demo source serves CH, so nothing there can
# ship.
DEMO_ADDRESSES: dict[str, Address] = {
    "DE": BERLIN,
    "AT": Address(
        name="Lise Meitner",
        line1="Stephansplatz 1",
        city="Wien",
        postal_code="1010",
        country="AT",
        lat=48.2085,
        lon=16.3731,
    ),
    "NL": Address(
        name="Aletta Jacobs",
        line1="Dam 1",
        city="Amsterdam",
        postal_code="1012 JS",
        country="NL",
        lat=52.3731,
        lon=4.8926,
    ),
    "BE": Address(
        name="Marie Popelin",
        line1="Grand-Place 1",
        city="Bruxelles",
        postal_code="1000",
        country="BE",
        lat=50.8467,
        lon=4.3525,
    ),
    "FR": Address(
        name="Marie Curie",
        line1="1 Rue de Rivoli",
        city="Paris",
        postal_code="75001",
        country="FR",
        lat=48.8559,
        lon=2.3580,
    ),
    "LU": Address(
        name="Anne Beffort",
        line1="Place Guillaume II 1",
        city="Luxembourg",
        postal_code="1648",
        country="LU",
        lat=49.6101,
        lon=6.1310,
    ),
    "PL": Address(
        name="Irena Sendler",
        line1="Plac Zamkowy 1",
        city="Warszawa",
        postal_code="00-277",
        country="PL",
        lat=52.2477,
        lon=21.0137,
    ),
    "DK": Address(
        name="Karen Blixen",
        line1="Rådhuspladsen 1",
        city="København",
        postal_code="1550",
        country="DK",
        lat=55.6761,
        lon=12.5683,
    ),
    "CH": Address(
        name="Emilie Kempin",
        line1="Bahnhofstrasse 1",
        city="Zürich",
        postal_code="8001",
        country="CH",
        lat=47.3667,
        lon=8.5393,
    ),
}


def demo_email(address: Address) -> str:
    return f"{address.name.split()[0].lower()}@example.com"


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


def payment_failed(submitted: channel.OrderSubmitted, *, reason: str = "card declined") -> channel.PaymentFailed:
    d = submitted.data
    return channel.PaymentFailed(
        source=f"/channels/{d.channel}",
        subject=str(d.order_id),
        data=channel.PaymentFailedData(
            channel=d.channel,
            external_order_id=d.external_order_id,
            amount=d.grand_total,
            currency=d.currency,
            payment_ref=f"pay-{d.external_order_id}",
            reason=reason,
        ),
    )


def cancellation_requested(
    submitted: channel.OrderSubmitted,
    lines: dict[str, int] | None = None,
    *,
    reason: str = "changed my mind",
    requested_by: str = "customer",
) -> channel.CancellationRequested:
    """A channel asks to cancel `lines` {line_id: units} of an order, or the whole order (None)."""
    d = submitted.data
    return channel.CancellationRequested(
        source=f"/channels/{d.channel}",
        subject=str(d.order_id),
        data=channel.CancellationRequestedData(
            channel=d.channel,
            external_order_id=d.external_order_id,
            lines=None if lines is None else [LineQuantity(line_id=i, quantity=n) for i, n in lines.items()],
            reason=reason,
            requested_by=requested_by,
        ),
    )


def return_received(
    submitted: channel.OrderSubmitted,
    lines: dict[str, int | tuple[int, str]],
    source_code: str,
    *,
    reason: str = "did not fit",
) -> channel.ReturnReceived:
    """A parcel came back to `source_code` (a warehouse, or a store): `lines` {line_id: units or (units,
    condition)}, resellable unless said otherwise."""
    d = submitted.data
    returned = []
    for line_id, what in lines.items():
        n, condition = what if isinstance(what, tuple) else (what, "resellable")
        returned.append(ReturnedLine(line_id=line_id, quantity=n, condition=condition))
    return channel.ReturnReceived(
        source=f"/channels/{d.channel}",
        subject=str(d.order_id),
        data=channel.ReturnReceivedData(
            channel=d.channel,
            external_order_id=d.external_order_id,
            lines=returned,
            source_code=source_code,
            reason=reason,
        ),
    )


def stock_received(
    sku: str, source_code: str, quantity: int, *, reason: str = "restock", reference: str = "demo"
) -> inventory.StockReceived:
    """A receipt of `quantity` units of `sku` at a source, as its WMS (or the returns desk) reports it."""
    return inventory.StockReceived(
        source=f"/wms/{source_code}",
        subject=sku,
        data=inventory.StockReceivedData(
            sku=sku, source_code=source_code, quantity=quantity, reason=reason, reference=reference
        ),
    )


def receipt_expected(
    sku: str, source_code: str, quantity: int, expected_date: date, *, reference: str | None = None
) -> inventory.ReceiptExpected:
    """Stock announced by purchasing (e.g. a purchase order) for a source: it dates the lines waiting for it; the
    receipt with the same `reference` settles it."""
    return inventory.ReceiptExpected(
        source=f"/purchasing/{source_code}",
        subject=sku,
        data=inventory.ReceiptExpectedData(
            sku=sku, source_code=source_code, quantity=quantity, expected_date=expected_date, reference=reference
        ),
    )


@dataclass(frozen=True)
class Carrier:
    name: str
    service: str
    prefix: str
    url: str  # with {tracking}

    def tracking_number(self, fulfillment_id: uuid.UUID) -> str:
        return f"{self.prefix}{fulfillment_id.int % 10**13:013d}"

    def tracking_url(self, tracking: str) -> str:
        return self.url.format(tracking=tracking)


DHL = Carrier("DHL", "Paket", "00340", "https://www.dhl.de/en/privatkunden.html?piececode={tracking}")
# The carrier a demo source hands a parcel to, by destination country (DHL elsewhere).
CARRIERS: dict[str, Carrier] = {
    "DE": DHL,
    "AT": Carrier(
        "Österreichische Post", "Paket Premium", "1000", "https://www.post.at/s/sendungssuche?snr={tracking}"
    ),
    "NL": Carrier("PostNL", "Pakket", "3SOMS", "https://jouw.postnl.nl/track-and-trace/{tracking}"),
    "BE": Carrier("bpost", "bpack 24h", "3232", "https://track.bpost.cloud/btr/web/#/search?itemCode={tracking}"),
    "FR": Carrier(
        "Colissimo", "Colissimo Domicile", "6A", "https://www.laposte.fr/outils/suivre-vos-envois?code={tracking}"
    ),
}


def accepted(request: fulfillment.FulfillmentRequested) -> fulfillment.FulfillmentAccepted:
    """The source's first answer to a fulfillment request: it will ship."""
    d = request.data
    return fulfillment.FulfillmentAccepted(
        source=f"/sources/{d.source_code}",
        subject=str(d.order_id),
        data=fulfillment.FulfillmentAcceptedData(
            fulfillment_id=d.fulfillment_id, order_id=d.order_id, source_code=d.source_code
        ),
    )


def shipped(
    request: fulfillment.FulfillmentRequested, *, carrier: str | Carrier | None = None
) -> fulfillment.FulfillmentShipped:
    """The source's answer to a fulfillment request: everything shipped in one parcel.

    `carrier` defaults to the demo carrier of the destination country (DHL for Germany and anywhere unlisted); a
    plain name keeps DHL's tracking scheme under that name."""
    d = request.data
    if carrier is None:
        chosen = CARRIERS.get(d.ship_to.country, DHL)
    elif isinstance(carrier, str):
        chosen = Carrier(carrier, DHL.service, DHL.prefix, DHL.url)
    else:
        chosen = carrier
    tracking = chosen.tracking_number(d.fulfillment_id)
    return fulfillment.FulfillmentShipped(
        source=f"/sources/{d.source_code}",
        subject=str(d.order_id),
        data=fulfillment.FulfillmentShippedData(
            fulfillment_id=d.fulfillment_id,
            order_id=d.order_id,
            source_code=d.source_code,
            carrier=chosen.name,
            service=chosen.service,
            tracking_number=tracking,
            tracking_url=chosen.tracking_url(tracking),
            shipped_at=datetime.now(UTC),
            lines=[LineQuantity(line_id=x.line_id, quantity=x.quantity) for x in d.lines],
        ),
    )


def parcel(
    request: fulfillment.FulfillmentRequested, lines: dict[str, int], *, tracking_number: str, carrier: Carrier = DHL
) -> fulfillment.FulfillmentShipped:
    """Part of a fulfillment request leaves in one parcel: `lines` = {line_id: units}, under its own tracking."""
    d = request.data
    return fulfillment.FulfillmentShipped(
        source=f"/sources/{d.source_code}",
        subject=str(d.order_id),
        data=fulfillment.FulfillmentShippedData(
            fulfillment_id=d.fulfillment_id,
            order_id=d.order_id,
            source_code=d.source_code,
            carrier=carrier.name,
            service=carrier.service,
            tracking_number=tracking_number,
            tracking_url=carrier.tracking_url(tracking_number),
            shipped_at=datetime.now(UTC),
            lines=[LineQuantity(line_id=line_id, quantity=n) for line_id, n in lines.items()],
        ),
    )


def rejected(
    request: fulfillment.FulfillmentRequested,
    *,
    reason: str = "no staff",
    reason_code: fulfillment.ReasonCode = fulfillment.ReasonCode.other,
) -> fulfillment.FulfillmentRejected:
    """The source will not ship any of a fulfillment request (`reason_code` out_of_stock or damaged: the units are
    not on its shelf)."""
    d = request.data
    return fulfillment.FulfillmentRejected(
        source=f"/sources/{d.source_code}",
        subject=str(d.order_id),
        data=fulfillment.FulfillmentRejectedData(
            fulfillment_id=d.fulfillment_id,
            order_id=d.order_id,
            source_code=d.source_code,
            reason=reason,
            reason_code=reason_code,
        ),
    )


def cancelled(
    request: fulfillment.FulfillmentRequested,
    lines: dict[str, int],
    *,
    reason: str | None = None,
    reason_code: fulfillment.ReasonCode = fulfillment.ReasonCode.other,
) -> fulfillment.FulfillmentCancelled:
    """The source will not ship `lines` {line_id: units} of a fulfillment request: its answer to a cancel request
    (`reason_code` customer_request), or its own decision (a shelf found empty: out_of_stock)."""
    d = request.data
    return fulfillment.FulfillmentCancelled(
        source=f"/sources/{d.source_code}",
        subject=str(d.order_id),
        data=fulfillment.FulfillmentCancelledData(
            fulfillment_id=d.fulfillment_id,
            order_id=d.order_id,
            source_code=d.source_code,
            lines=[LineQuantity(line_id=line_id, quantity=n) for line_id, n in lines.items()],
            reason=reason,
            reason_code=reason_code,
        ),
    )


def delivered(request: fulfillment.FulfillmentRequested) -> fulfillment.FulfillmentDelivered:
    """The carrier delivered what the source shipped of a fulfillment request."""
    d = request.data
    return fulfillment.FulfillmentDelivered(
        source=f"/sources/{d.source_code}",
        subject=str(d.order_id),
        data=fulfillment.FulfillmentDeliveredData(
            fulfillment_id=d.fulfillment_id, order_id=d.order_id, source_code=d.source_code, delivered_at=utc_now()
        ),
    )


def backorder_allocated(
    order_id: uuid.UUID,
    lines: list[tuple[str, str, int]],
    source_code: str,
    *,
    ship_by: date | None = None,
    shipment_id: uuid.UUID | None = None,
) -> inventory.BackorderAllocated:
    """Stock that arrived at `source_code` went to an order's waiting lines: `lines` = [(line_id, sku, units)]."""
    return inventory.BackorderAllocated(
        source="/oms/inventory",
        subject=str(order_id),
        data=inventory.BackorderAllocatedData(
            order_id=order_id,
            shipment_id=shipment_id or uuid.uuid4(),
            source_code=source_code,
            lines=[Line(line_id=line_id, sku=sku, quantity=n) for line_id, sku, n in lines],
            ship_by=ship_by,
        ),
    )


def fulfillment_planned(
    submitted: channel.OrderSubmitted,
    in_stock: list[tuple[str, int]],
    waiting: Iterable[tuple[str, int]] = (),
    *,
    source_code: str = "WH-EAST",
) -> routing.FulfillmentPlanned:
    """Routing's plan for an order: one shipment of `in_stock` [(line_id, units)] from `source_code` (none when
    empty), `waiting` [(line_id, units)] backordered."""
    d = submitted.data
    sku = {x.line_id: x.sku for x in d.lines}
    shipments = []
    if in_stock:
        shipments.append(
            routing.PlannedShipment(
                shipment_id=uuid.uuid4(),
                source_code=source_code,
                source_type="warehouse",
                lines=[Line(line_id=i, sku=sku[i], quantity=n) for i, n in in_stock],
                estimated_ship_date=date.today() + timedelta(days=1),
                estimated_delivery_date=date.today() + timedelta(days=3),
                reason=f"{source_code}: the items in stock",
            )
        )
    return routing.FulfillmentPlanned(
        source="/oms/routing",
        subject=str(d.order_id),
        data=routing.FulfillmentPlannedData(
            order_id=d.order_id,
            plan_id=uuid.uuid4(),
            attempt=1,
            shipments=shipments,
            backordered_lines=[
                routing.UnplannedLine(line_id=i, sku=sku[i], quantity=n, reason="out of stock") for i, n in waiting
            ],
            planned_at=utc_now(),
            ship_to_country=d.shipping_address.country,
        ),
    )


def shipment_reserved(plan: routing.FulfillmentPlanned) -> inventory.ShipmentReserved:
    """Inventory's reservation of a plan's (first) shipment."""
    s = plan.data.shipments[0]
    return inventory.ShipmentReserved(
        source="/oms/inventory",
        subject=str(plan.data.order_id),
        data=inventory.ShipmentReservedData(
            order_id=plan.data.order_id,
            shipment_id=s.shipment_id,
            plan_id=plan.data.plan_id,
            source_code=s.source_code,
            lines=s.lines,
            ship_by=s.estimated_ship_date,
        ),
    )


def reservation_rejected(plan: routing.FulfillmentPlanned, *, available: int = 0) -> inventory.ReservationRejected:
    """Inventory could not reserve a plan's (first) shipment: each of its SKUs had only `available` units."""
    s = plan.data.shipments[0]
    return inventory.ReservationRejected(
        source="/oms/inventory",
        subject=str(plan.data.order_id),
        data=inventory.ReservationRejectedData(
            order_id=plan.data.order_id,
            shipment_id=s.shipment_id,
            plan_id=plan.data.plan_id,
            source_code=s.source_code,
            lines=s.lines,
            shortages=[inventory.Shortage(sku=x.sku, requested=x.quantity, available=available) for x in s.lines],
        ),
    )
