"""What a cancellation takes off an order, and what a cancellation or a return gives back. Pure arithmetic, no I/O.

An order's amounts are its goods (unit price x units), shipping, tax and discount; the grand total is goods +
shipping + tax - discount. Taking units off an order takes their goods, their share of tax and of discount (share =
their goods / the submitted goods, each rounded half-up to the cent), and shipping only with the last units, when
nothing of the order is left; then simply everything still on it, so the totals end at exactly zero. A return gives
back the same share of goods, tax and discount, never shipping.

A refund is that value, never more than is left of the payment; the refund after which every unit of the order is
cancelled or returned takes exactly what is left, so a fully cancelled or returned paid order refunds what was paid,
to the cent (shipping included: nothing of the order is kept). Nothing paid, nothing refunded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
ZERO = Decimal(0)


def half_up(amount: Decimal) -> Decimal:
    """To the cent, halves away from zero (the currency's minor unit; every OMS currency has two decimals)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Totals:
    """An order's amounts, as submitted or as they stand after cancellations."""

    goods: Decimal
    shipping: Decimal
    tax: Decimal
    discount: Decimal

    @property
    def grand(self) -> Decimal:
        return self.goods + self.shipping + self.tax - self.discount

    def __sub__(self, other: Totals) -> Totals:
        return Totals(
            self.goods - other.goods,
            self.shipping - other.shipping,
            self.tax - other.tax,
            self.discount - other.discount,
        )


NOTHING = Totals(ZERO, ZERO, ZERO, ZERO)


def share(submitted: Totals, goods: Decimal, *, left: Totals | None = None) -> Totals:
    """The value of `goods` worth of an order's lines: the goods, their share of tax and of discount (each rounded
    half-up), no shipping. `left` bounds each share by what is still on the order, so rounding never takes more tax
    or discount off than there is; the discount never makes the value negative."""
    if submitted.goods <= 0 or goods <= 0:
        return Totals(max(goods, ZERO), ZERO, ZERO, ZERO)
    tax = half_up(submitted.tax * goods / submitted.goods)
    discount = half_up(submitted.discount * goods / submitted.goods)
    if left is not None:
        tax, discount = min(tax, left.tax), min(discount, left.discount)
    return Totals(goods, ZERO, tax, min(discount, goods + tax))


def taken_off(submitted: Totals, left: Totals, goods: Decimal, *, everything: bool) -> Totals:
    """What cancelling `goods` worth of units takes off the order's totals `left`: their share (see `share`), or,
    when `everything` that is left goes, all of `left`, shipping included."""
    if everything:
        return left
    return share(submitted, goods, left=left)


def refund(value: Decimal, *, paid: Decimal | None, refunded: Decimal, last: bool) -> Decimal:
    """What goes back for units worth `value`: nothing before payment; the value rounded half-up, never more than is
    left of the payment; all that is left when these are the `last` units the order keeps."""
    if paid is None:
        return ZERO
    left = max(paid - refunded, ZERO)
    if last:
        return left
    return max(min(half_up(value), left), ZERO)
