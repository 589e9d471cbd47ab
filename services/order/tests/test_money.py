"""What cancellations take off an order and what refunds give back: exact cents, never more than was paid."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oms_order import money
from oms_order.money import Totals

D = Decimal


def test_half_up_rounds_halves_away_from_zero_to_the_cent():
    assert [money.half_up(D(x)) for x in ("1.005", "1.004", "2.675", "0.125", "7")] == [
        D("1.01"),
        D("1.00"),
        D("2.68"),
        D("0.13"),
        D("7.00"),
    ]


def test_a_share_is_the_goods_with_their_part_of_tax_and_discount_and_no_shipping():
    submitted = Totals(D("100.00"), D("4.99"), D("19.00"), D("10.00"))
    assert money.share(submitted, D("25.00")) == Totals(D("25.00"), D(0), D("4.75"), D("2.50"))
    # 19.00 * 33.33 / 100 = 6.3327 -> 6.33; 10.00 * 33.33 / 100 = 3.333 -> 3.33
    assert money.share(submitted, D("33.33")) == Totals(D("33.33"), D(0), D("6.33"), D("3.33"))


def test_a_share_never_takes_more_tax_or_discount_than_is_left_nor_goes_below_zero():
    submitted = Totals(D("3.00"), D(0), D("0.01"), D("5.00"))
    left = Totals(D("2.00"), D(0), D("0.00"), D("1.00"))
    taken = money.share(submitted, D("1.00"), left=left)
    assert taken.tax == 0 and taken.discount == D("1.00") and taken.grand == 0
    assert money.share(Totals(D("1.00"), D(0), D(0), D("9.00")), D("1.00")).grand == 0


def test_orders_of_free_lines_share_nothing():
    assert money.share(Totals(D(0), D("4.99"), D("1.00"), D(0)), D(0)) == money.NOTHING


def test_the_last_units_take_everything_that_is_left_shipping_included():
    submitted = Totals(D("40.00"), D("4.99"), D("7.60"), D("2.00"))
    left = Totals(D("20.00"), D("4.99"), D("3.80"), D("1.00"))
    assert money.taken_off(submitted, left, D("20.00"), everything=True) == left
    assert money.taken_off(submitted, left, D("20.00"), everything=False).shipping == 0


@pytest.mark.parametrize(
    ("value", "paid", "refunded", "last", "refund"),
    [
        ("10.005", "50.00", "0", False, "10.01"),
        ("30.00", "50.00", "25.00", False, "25.00"),  # never more than is left of the payment
        ("10.00", "50.00", "25.00", True, "25.00"),  # the last refund takes the remainder
        ("10.00", None, "0", False, "0"),  # nothing paid, nothing refunded
        ("10.00", None, "0", True, "0"),
        ("10.00", "50.00", "50.00", False, "0"),
    ],
)
def test_a_refund_is_the_value_capped_by_what_is_left_and_the_last_takes_the_remainder(
    value, paid, refunded, last, refund
):
    got = money.refund(D(value), paid=D(paid) if paid else None, refunded=D(refunded), last=last)
    assert got == D(refund)


amounts = st.decimals(min_value=0, max_value=500, places=2)


@st.composite
def orders(draw):
    """An order's lines (price, units) and totals whose grand total is not negative."""
    lines = draw(st.lists(st.tuples(st.decimals(min_value=0, max_value=200, places=2), st.integers(1, 5)), min_size=1))
    goods = sum((price * n for price, n in lines), D(0))
    shipping, tax = draw(amounts), draw(amounts)
    discount = draw(st.decimals(min_value=0, max_value=goods + shipping + tax, places=2))
    return lines, Totals(goods, shipping, tax, discount)


@settings(max_examples=500, deadline=None)
@given(orders(), st.data())
def test_units_taken_off_one_by_one_in_any_order_bring_the_totals_to_exactly_zero_and_refund_exactly_what_was_paid(
    order, data
):
    lines, submitted = order
    units = [price for price, n in lines for _ in range(n)]
    order_of = data.draw(st.permutations(range(len(units))))
    # Cancellations of one unit or several at once, some of them returns (after shipping) that take nothing off.
    left, refunded, paid = submitted, D(0), submitted.grand
    taken_units = 0
    while taken_units < len(units):
        n = data.draw(st.integers(1, len(units) - taken_units))
        batch = [units[i] for i in order_of[taken_units : taken_units + n]]
        taken_units += n
        goods = sum(batch, D(0))
        everything = taken_units == len(units)
        taken = money.taken_off(submitted, left, goods, everything=everything)
        assert min(taken.goods, taken.shipping, taken.tax, taken.discount) >= 0
        assert taken.grand >= 0
        left = left - taken
        assert min(left.goods, left.shipping, left.tax, left.discount) >= 0
        refund = money.refund(taken.grand, paid=paid, refunded=refunded, last=everything)
        assert 0 <= refund <= paid - refunded
        if not everything:
            assert refund == min(money.half_up(taken.grand), paid - refunded)
        refunded += refund
    assert left == Totals(D(0), D(0), D(0), D(0)) and left.grand == 0
    assert refunded == paid


@settings(max_examples=300, deadline=None)
@given(orders(), st.data())
def test_refunds_never_exceed_what_was_paid_whatever_is_asked(order, data):
    _, submitted = order
    paid, refunded = submitted.grand, D(0)
    for _ in range(data.draw(st.integers(1, 10))):
        value = data.draw(st.decimals(min_value=0, max_value=1000, places=4))
        refunded += money.refund(value, paid=paid, refunded=refunded, last=data.draw(st.booleans()))
        assert refunded <= paid
