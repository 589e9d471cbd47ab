from __future__ import annotations

from decimal import Decimal

from oms_notifications.domain import order_confirmation
from oms_notifications.rendering import MAX_SUBJECT_LENGTH, money, render


def test_confirmation_subject_names_the_order_number(order_accepted):
    rendered = render(order_confirmation(order_accepted("WEB-1001")))

    assert rendered.subject == "Your order WEB-1001 is confirmed"


def test_confirmation_lists_lines_totals_address_and_order_number_in_both_bodies(order_accepted):
    rendered = render(order_confirmation(order_accepted("WEB-1001")))

    for body in (rendered.text, rendered.html):
        assert "SKU-RED-MUG" in body
        assert "SKU-TEA-500G" in body
        assert "19.99 EUR" in body
        assert "39.98 EUR" in body
        assert "52.47 EUR" in body  # grand total
        assert "4.99 EUR" in body  # shipping
        assert "Unter den Linden 1" in body
        assert "10117 Berlin" in body
        assert "Standard delivery" in body
        assert "WEB-1001" in body
    assert "- 2 x SKU-RED-MUG at 19.99 EUR = 39.98 EUR" in rendered.text


def test_tax_and_discount_appear_only_when_there_are_some(order_accepted):
    plain = render(order_confirmation(order_accepted()))
    with_both = render(order_confirmation(order_accepted(tax_total="3.00", discount_total="5.00")))

    assert "Tax" not in plain.text and "Discount" not in plain.text
    assert "Tax: 3.00 EUR" in with_both.text
    assert "Discount: -5.00 EUR" in with_both.text
    assert "Total: 50.47 EUR" in with_both.text


def test_pickup_confirmation_names_the_store(order_accepted):
    rendered = render(order_confirmation(order_accepted(shipping_method="pickup", pickup_source="STORE-BERLIN")))

    for body in (rendered.text, rendered.html):
        assert "Pickup in store at STORE-BERLIN" in body
        assert "Unter den Linden 1" not in body


def test_html_body_escapes_what_the_customer_typed(order_accepted):
    rendered = render(order_confirmation(order_accepted(name="Ada <script>alert(1)</script> & Co")))

    assert "<script>" not in rendered.html
    assert "Ada &lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in rendered.html


def test_plain_text_body_keeps_what_the_customer_typed_as_is(order_accepted):
    rendered = render(order_confirmation(order_accepted(name="Ada & Bob <Co>")))

    assert "Hello Ada & Bob <Co>," in rendered.text


def test_html_body_is_a_complete_document_in_the_customers_language(order_accepted):
    rendered = render(order_confirmation(order_accepted()))

    assert rendered.html.startswith("<!DOCTYPE html>")
    assert '<html lang="en">' in rendered.html
    assert rendered.html.rstrip().endswith("</html>")


def test_subject_is_one_line_within_the_limit_whatever_the_order_number(order_accepted):
    rendered = render(order_confirmation(order_accepted("X" * 200)))

    assert "\n" not in rendered.subject
    assert len(rendered.subject) <= MAX_SUBJECT_LENGTH


def test_money_shows_cents_groups_thousands_and_keeps_extra_precision():
    assert money(Decimal("5"), "EUR") == "5.00 EUR"
    assert money(Decimal("19.9"), "USD") == "19.90 USD"
    assert money(Decimal("1234.5"), "EUR") == "1,234.50 EUR"
    assert money(Decimal("0.1234"), "EUR") == "0.1234 EUR"
