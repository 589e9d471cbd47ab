from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oms_notifications.domain import (
    OPERATOR_TEMPLATES,
    Contact,
    Language,
    Links,
    Notice,
    Template,
    alert,
    contact_of,
    order_confirmation,
    tell,
)
from oms_notifications.rendering import MAX_SUBJECT_LENGTH, _environment, long_date, money, render


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


def test_money_is_written_the_german_way_in_german():
    assert money(Decimal("1234.5"), "EUR", Language.de) == "1.234,50 EUR"
    assert money(Decimal("19.99"), "EUR", Language.de) == "19,99 EUR"


def test_dates_are_written_out_in_the_customers_language():
    assert long_date(date(2026, 12, 1), Language.en) == "Tuesday, 1 December 2026"
    assert long_date(date(2026, 12, 1), Language.de) == "Dienstag, 1. Dezember 2026"
    assert long_date(date(2027, 3, 7), Language.de) == "Sonntag, 7. März 2027"
    assert long_date(datetime(2026, 11, 22, 23, 59, tzinfo=UTC), Language.en) == "Sunday, 22 November 2026"


# One notice of every template, for an order whose customer typed markup into their name.
ORDER = uuid.uuid4()
NAME = "Ada <b>&</b> Co"
# No link key: the backorder notice says to reply (the signed link is tested on its own below).
LINKS = Links()


CUSTOMER_TEMPLATES = [t for t in Template if t not in OPERATOR_TEMPLATES]


@pytest.fixture(scope="session")
def every_notice(
    order_accepted,
    fulfillment_planned,
    inventory_backorder_queued,
    fulfillment_shipped,
    fulfillment_delivered,
    order_lines_cancelled,
    order_status_changed,
    order_cancellation_rejected,
    order_lines_returned,
    order_refund_issued,
):
    """`every_notice("de")`: a notice of every customer template, by template, for a customer writing in that
    language."""

    def write(language: str) -> dict[Template, Notice]:
        locale = {"en": "en-GB", "de": "de_AT"}[language]
        accepted = order_accepted("WEB-1001", name=NAME, locale=locale)
        contact = contact_of(accepted.data)
        order_id = contact.order_id
        events = [
            accepted,
            fulfillment_planned(order_id, backordered=[("SKU-<i>", 1)], unfulfillable=[("SKU-GONE", 1)]),
            inventory_backorder_queued(order_id, [("SKU-<i>", 1, date(2026, 12, 1)), ("SKU-LATER", 2, None)]),
            fulfillment_shipped(order_id),
            fulfillment_delivered(order_id),
            order_lines_cancelled(order_id, [("2", 1)], refund="1234.5", grand_total="39.98", reason="<i>gone</i>"),
            order_cancellation_rejected(order_id, [("1", 2)], reason="already shipped <i>today</i>"),
            order_lines_returned(order_id),
            order_refund_issued(order_id, "1234.5", refunded_total="2000", cause="return"),
        ]
        notices = {n.template: n for n in tell(events, {order_id: contact}, LINKS).notices}
        # Two ways an order ends, each for an order of its own (one "cancelled" per order).
        for ending in (
            order_lines_cancelled(order_id, [("1", 2)], refund="52.47", grand_total="0.00", status="cancelled"),
            order_status_changed(order_id, "payment_processing", note="payment failed: card <i>declined</i>"),
        ):
            [notice] = tell([ending], {order_id: contact}, LINKS).notices
            notices[notice.template] = notice
        return notices

    return write


@pytest.fixture(params=["en", "de"])
def notices(request, every_notice) -> dict[Template, Notice]:
    return every_notice(request.param)


def test_there_is_a_message_of_every_customer_template(notices):
    assert set(notices) == set(CUSTOMER_TEMPLATES)


@pytest.mark.parametrize("template", CUSTOMER_TEMPLATES)
def test_every_subject_names_the_order_number_on_one_line(notices, template):
    subject = render(notices[template]).subject

    assert "WEB-1001" in subject
    assert "\n" not in subject


@pytest.mark.parametrize("template", CUSTOMER_TEMPLATES)
def test_every_html_body_is_a_complete_document_in_its_language_that_escapes_what_came_from_outside(notices, template):
    notice = notices[template]
    html = render(notice).html

    assert html.startswith("<!DOCTYPE html>")
    assert f'<html lang="{notice.language.value}">' in html
    assert html.rstrip().endswith("</html>")
    assert "<b>" not in html and "<i>" not in html
    assert "Ada &lt;b&gt;&amp;&lt;/b&gt; Co" in html
    assert "WEB-1001" in html


@pytest.mark.parametrize("template", CUSTOMER_TEMPLATES)
def test_every_plain_text_body_is_readable_text_with_what_came_from_outside_as_is(notices, template):
    text = render(notices[template]).text

    assert NAME in text
    assert "WEB-1001" in text
    assert not re.search(r"&[a-z]+;|&#\d+;|</?(p|ul|li|h\d|strong|br|a)\b", text)
    assert "\n\n\n" not in text
    assert text.endswith("\n")


@pytest.mark.parametrize("language", ["en", "de"])
def test_the_confirmation_greets_in_the_customers_language(every_notice, language):
    notice = every_notice(language)[Template.order_confirmation]

    rendered = render(notice)

    if language == "de":
        assert rendered.subject == "Ihre Bestellung WEB-1001 ist bestätigt"
        assert f"Hallo {NAME}," in rendered.text
        assert "- 2 x SKU-RED-MUG zu je 19,99 EUR = 39,98 EUR" in rendered.text
        assert "Gesamt: 52,47 EUR" in rendered.text
        assert "vom Sonntag, 22. November 2026" in rendered.text
        assert "Standardversand an" in rendered.text
    else:
        assert rendered.subject == "Your order WEB-1001 is confirmed"
        assert f"Hello {NAME}," in rendered.text
        assert "placed on Sunday, 22 November 2026" in rendered.text
        assert "Total: 52.47 EUR" in rendered.text


def test_german_pickup_confirmation_names_the_store(order_accepted):
    rendered = render(
        order_confirmation(order_accepted(shipping_method="pickup", pickup_source="STORE-BERLIN", locale="de"))
    )

    for body in (rendered.text, rendered.html):
        assert "Abholung im Geschäft in STORE-BERLIN" in body


def test_english_prewarning_counts_the_parcels_and_dates_each_then_lists_what_follows(every_notice):
    rendered = render(every_notice("en")[Template.split_prewarning])

    assert rendered.subject == "Your order WEB-1001 will arrive in 2 parcels"
    assert "Parcel 1 of 2, expected to arrive on Tuesday, 1 December 2026:\n- 2 x SKU-RED-MUG\n" in rendered.text
    assert "Parcel 2 of 2, expected to arrive on Wednesday, 2 December 2026:\n- 1 x SKU-TEA-500G\n" in rendered.text
    assert "To follow later (not in stock right now; we will ship them as soon as they arrive):\n- 1 x SKU-<i>\n" in (
        rendered.text
    )
    assert "Cannot be supplied" in rendered.text and "- 1 x SKU-GONE" in rendered.text
    assert "Tuesday, 1 December 2026" in rendered.html


def test_german_prewarning_counts_the_parcels_and_dates_each_then_lists_what_follows(every_notice):
    rendered = render(every_notice("de")[Template.split_prewarning])

    assert rendered.subject == "Ihre Bestellung WEB-1001 kommt in 2 Paketen"
    assert "Paket 1 von 2, voraussichtliche Zustellung am Dienstag, 1. Dezember 2026:\n- 2 x SKU-RED-MUG\n" in (
        rendered.text
    )
    assert "Folgt später (derzeit nicht vorrätig; wir versenden diese Artikel, sobald sie eintreffen):\n" in (
        rendered.text
    )
    assert "Nicht lieferbar" in rendered.text
    assert "Mittwoch, 2. Dezember 2026" in rendered.html


def test_backorder_notice_dates_what_is_expected_promises_to_ship_on_arrival_and_says_how_to_cancel(notices):
    notice = notices[Template.backorder_notice]
    rendered = render(notice)

    if notice.language is Language.de:
        assert rendered.subject == "Einige Artikel Ihrer Bestellung WEB-1001 kommen später"
        assert "- 1 x SKU-<i>: voraussichtlich vorrätig ab Dienstag, 1. Dezember 2026\n" in rendered.text
        assert "- 2 x SKU-LATER: Eingangsdatum noch offen\n" in rendered.text
        assert "Wir versenden sie, sobald sie eintreffen" in rendered.text
        assert "stornieren: Antworten Sie einfach auf diese E-Mail oder" in rendered.text
        assert "Kundenservice" in rendered.html
    else:
        assert rendered.subject == "Some items of your order WEB-1001 will ship later"
        assert "- 1 x SKU-<i>: expected in stock by Tuesday, 1 December 2026\n" in rendered.text
        assert "- 2 x SKU-LATER: arrival date not known yet\n" in rendered.text
        assert "We will ship them as soon as they arrive" in rendered.text
        assert "you may cancel these items: reply to this email or contact our customer service" in rendered.text
        assert "customer service" in rendered.html
    assert "SKU-&lt;i&gt;" in rendered.html


def test_shipped_mail_links_the_tracking_page_and_names_carrier_and_tracking_number(notices):
    notice = notices[Template.shipped]
    rendered = render(notice)
    url = "https://www.dhl.de/track?piececode=00340434161094042557"

    assert f'<a href="{url}">' in rendered.html
    assert url in rendered.text
    assert "00340434161094042557" in rendered.text and "00340434161094042557" in rendered.html
    assert "DHL (Paket)" in rendered.text
    if notice.language is Language.de:
        assert rendered.subject == "Ein Teil Ihrer Bestellung WEB-1001 ist unterwegs"
        assert "In diesem Paket:\n- 2 x SKU-RED-MUG\n" in rendered.text
        assert "Noch ausstehend:\n- 1 x SKU-TEA-500G\n" in rendered.text
    else:
        assert rendered.subject == "Part of your order WEB-1001 is on its way"
        assert "In this parcel:\n- 2 x SKU-RED-MUG\n" in rendered.text
        assert "Still to come:\n- 1 x SKU-TEA-500G\n" in rendered.text


@pytest.mark.parametrize("locale", ["en", "de"])
def test_the_last_parcel_says_it_completes_the_order_and_a_parcel_without_a_link_still_names_its_number(
    fulfillment_shipped, locale
):
    contact = Contact(ORDER, "ada@example.com", "Ada", locale, "web-eu", "WEB-1001")
    [notice] = tell([fulfillment_shipped(ORDER, to_come=(), tracking_url=None)], {ORDER: contact}).notices

    rendered = render(notice)

    assert "<a href" not in rendered.html
    assert "00340434161094042557" in rendered.text
    if locale == "de":
        assert rendered.subject == "Ihre Bestellung WEB-1001 ist unterwegs"
        assert "Mit diesem Paket ist Ihre Bestellung vollständig." in rendered.text
        assert "Noch ausstehend" not in rendered.text
    else:
        assert rendered.subject == "Your order WEB-1001 is on its way"
        assert "this parcel completes your order" in rendered.text
        assert "Still to come" not in rendered.text


@pytest.mark.parametrize(
    ("status", "english", "german"),
    [
        ("delivered", "That completes your order.", "Damit ist Ihre Bestellung vollständig geliefert."),
        ("fulfilled", "The rest of your order is on its way.", "Der Rest Ihrer Bestellung ist unterwegs zu Ihnen."),
        (
            "partially_fulfilled",
            "We will let you know when the rest of your order ships.",
            "Wir sagen Ihnen Bescheid, sobald der Rest Ihrer Bestellung versandt wird.",
        ),
    ],
)
def test_delivered_mail_lists_what_arrived_and_says_what_is_left(fulfillment_delivered, status, english, german):
    for locale, words in (("en", english), ("de", german)):
        contact = Contact(ORDER, "ada@example.com", "Ada", locale, "web-eu", "WEB-1001")
        [notice] = tell([fulfillment_delivered(ORDER, status=status)], {ORDER: contact}).notices

        rendered = render(notice)

        assert words in rendered.text
        assert "- 2 x SKU-RED-MUG\n" in rendered.text
        assert "00340434161094042557" in rendered.text
        complete = status == "delivered"
        if locale == "de":
            assert rendered.subject == (
                "Ihre Bestellung WEB-1001 wurde zugestellt"
                if complete
                else "Ein Paket Ihrer Bestellung WEB-1001 wurde zugestellt"
            )
        else:
            assert rendered.subject == (
                "Your order WEB-1001 has been delivered"
                if complete
                else "A parcel of your order WEB-1001 has been delivered"
            )


# Properties: whatever the parcel or plan, the plain text lists exactly its items under the right heading.

skus = st.from_regex(r"[A-Z0-9<>&'-]([A-Z0-9 <>&'-]{0,14}[A-Z0-9<>&'-])?", fullmatch=True)
items = st.lists(st.tuples(skus, st.integers(min_value=1, max_value=999)), min_size=1, max_size=6)
languages = st.sampled_from(["en", "de-DE"])


def listed(text: str) -> dict[str, list[tuple[str, int]]]:
    """The items of a plain-text body by the heading they stand under: `Heading:` then `- 3 x SKU` lines."""
    sections: dict[str, list[tuple[str, int]]] = {}
    heading = None
    for line in text.splitlines():
        item = re.fullmatch(r"- (\d+) x (.+)", line)
        if item and heading is not None:
            sections[heading].append((item[2], int(item[1])))
        elif line.endswith(":"):
            heading = line
            sections[heading] = []
        else:
            heading = None
    return sections


@given(parcel=items, to_come=st.lists(st.tuples(skus, st.integers(1, 999)), max_size=6), locale=languages)
def test_a_shipped_mail_lists_exactly_the_parcels_items_and_the_items_to_come(
    fulfillment_shipped, parcel, to_come, locale
):
    contact = Contact(ORDER, "ada@example.com", "Ada", locale, "web-eu", "1001")
    [notice] = tell([fulfillment_shipped(ORDER, parcel, to_come)], {ORDER: contact}).notices

    text = render(notice).text

    sections = listed(text)
    in_parcel, still_to_come = ("In diesem Paket:", "Noch ausstehend:") if locale == "de-DE" else (
        "In this parcel:", "Still to come:")  # fmt: skip
    assert sections[in_parcel] == list(parcel)
    assert sections.get(still_to_come, []) == list(to_come)
    assert sum(len(found) for found in sections.values()) == len(parcel) + len(to_come)


@given(
    shipments=st.lists(items, min_size=2, max_size=5),
    backordered=st.lists(st.tuples(skus, st.integers(1, 999)), max_size=4),
    locale=languages,
)
def test_a_prewarning_lists_exactly_each_parcels_items_and_what_follows(
    fulfillment_planned, shipments, backordered, locale
):
    contact = Contact(ORDER, "ada@example.com", "Ada", locale, "web-eu", "1001")
    # Distinct delivery dates, so that the parcels' order in the mail is the plan's.
    deliveries = [date(2026, 12, 1 + n) for n in range(len(shipments))]
    plan = fulfillment_planned(ORDER, shipments, backordered=backordered, deliveries=deliveries)
    [notice] = tell([plan], {ORDER: contact}).notices

    sections = listed(render(notice).text)

    parcels = [found for heading, found in sections.items() if heading.startswith(("Parcel ", "Paket "))]
    assert parcels == [list(s) for s in shipments]
    follows = [found for heading, found in sections.items() if heading.startswith(("To follow", "Folgt später"))]
    assert follows == ([list(backordered)] if backordered else [])


# After the sale, in both languages: amounts and dates the customer's way.


def test_lines_cancelled_mail_lists_the_items_the_refund_and_the_new_total(notices):
    notice = notices[Template.lines_cancelled]
    rendered = render(notice)

    if notice.language is Language.de:
        assert rendered.subject == "Artikel Ihrer Bestellung WEB-1001 wurden storniert"
        assert "storniert:\n\n- 1 x SKU-TEA-500G\n\nGrund: <i>gone</i>\n" in rendered.text
        assert "Wir erstatten Ihnen dafür 1.234,50 EUR" in rendered.text
        assert "Ihre Bestellung kostet jetzt 39,98 EUR." in rendered.text
        assert "1.234,50 EUR" in rendered.html
    else:
        assert rendered.subject == "Items of your order WEB-1001 have been cancelled"
        assert "cancelled these items of your order WEB-1001:\n\n- 1 x SKU-TEA-500G\n\nReason: <i>gone</i>\n" in (
            rendered.text
        )
        assert "We will refund 1,234.50 EUR for them" in rendered.text
        assert "Your order now comes to 39.98 EUR." in rendered.text
        assert "1,234.50 EUR" in rendered.html
    assert "&lt;i&gt;gone&lt;/i&gt;" in rendered.html


@pytest.mark.parametrize(("language", "words"), [("en", "You will not be charged for them."), ("de", "nicht belastet")])
def test_lines_cancelled_before_payment_says_nothing_is_charged_instead_of_a_refund(
    order_accepted, order_lines_cancelled, language, words
):
    contact = contact_of(order_accepted(locale=language).data)

    [notice] = tell([order_lines_cancelled(contact.order_id, refund="0.00")], {contact.order_id: contact}).notices
    rendered = render(notice)

    assert words in rendered.text and words in rendered.html
    assert "refund" not in rendered.text and "erstatten" not in rendered.text


def test_order_cancelled_mail_gives_the_reason_the_items_and_the_refund(notices):
    notice = notices[Template.order_cancelled]
    rendered = render(notice)

    if notice.language is Language.de:
        assert rendered.subject == "Ihre Bestellung WEB-1001 wurde storniert"
        assert "Stornierte Artikel:\n- 2 x SKU-RED-MUG\n" in rendered.text
        assert "Wir erstatten Ihnen 52,47 EUR" in rendered.text
    else:
        assert rendered.subject == "Your order WEB-1001 has been cancelled"
        assert "Reason: customer asked\n" in rendered.text
        assert "Cancelled items:\n- 2 x SKU-RED-MUG\n" in rendered.text
        assert "We will refund 52.47 EUR" in rendered.text
    assert "52" in rendered.html


@pytest.mark.parametrize(
    ("language", "reason", "not_charged"),
    [
        ("en", "Reason: changed my mind", "You have not been charged"),
        ("de", "Grund: changed my mind", "nichts berechnet"),
    ],
)
def test_order_cancelled_before_payment_has_the_reason_and_no_refund(
    order_accepted, order_status_changed, language, reason, not_charged
):
    contact = contact_of(order_accepted(locale=language).data)
    change = order_status_changed(contact.order_id, "pending", note="cancelled: changed my mind", cause_type="http")

    [notice] = tell([change], {contact.order_id: contact}).notices
    rendered = render(notice)

    assert notice.template is Template.order_cancelled
    assert reason in rendered.text and not_charged in rendered.text
    assert "EUR" not in rendered.text
    assert "\n\n\n" not in rendered.text


def test_payment_failed_mail_says_why_and_that_nothing_was_charged(notices):
    notice = notices[Template.payment_failed]
    rendered = render(notice)

    if notice.language is Language.de:
        assert rendered.subject == "Ihre Bestellung WEB-1001 wurde storniert: Die Zahlung ist nicht erfolgt"
        assert "Die Meldung des Zahlungsanbieters: card <i>declined</i>\n" in rendered.text
        assert "Ihnen wurde nichts berechnet." in rendered.text
    else:
        assert rendered.subject == "Your order WEB-1001 has been cancelled: the payment did not go through"
        assert "What the payment provider told us: card <i>declined</i>\n" in rendered.text
        assert "You have not been charged." in rendered.text
    assert "card &lt;i&gt;declined&lt;/i&gt;" in rendered.html
    assert "EUR" not in rendered.text


def test_cancellation_refused_mail_names_what_stays_and_why(notices):
    notice = notices[Template.cancellation_refused]
    rendered = render(notice)

    if notice.language is Language.de:
        assert rendered.subject == "Einige Artikel Ihrer Bestellung WEB-1001 konnten nicht storniert werden"
        assert "Diese konnten wir nicht stornieren:\n\n- 2 x SKU-RED-MUG\n\nWarum: already shipped <i>today</i>\n" in (
            rendered.text
        )
    else:
        assert rendered.subject == "Some items of your order WEB-1001 could not be cancelled"
        assert "We could not cancel these:\n\n- 2 x SKU-RED-MUG\n\nWhy: already shipped <i>today</i>\n" in (
            rendered.text
        )
    assert "already shipped &lt;i&gt;today&lt;/i&gt;" in rendered.html


def test_return_processed_mail_words_each_items_condition_for_a_customer(notices):
    notice = notices[Template.return_processed]
    rendered = render(notice)

    if notice.language is Language.de:
        assert rendered.subject == "Ihre Rücksendung zur Bestellung WEB-1001 ist eingegangen"
        expected = ["- 1 x SKU-RED-MUG, in einwandfreiem Zustand\n", "- 1 x SKU-TEA-500G, beschädigt\n", "27,49 EUR"]
    else:
        assert rendered.subject == "We have received your return for order WEB-1001"
        expected = ["- 1 x SKU-RED-MUG, in good condition\n", "- 1 x SKU-TEA-500G, damaged\n", "27.49 EUR"]
    for words in expected:
        assert words in rendered.text
    assert "resellable" not in rendered.text and "resellable" not in rendered.html


def test_refund_mail_gives_the_amount_what_for_and_the_total_refunded(notices):
    notice = notices[Template.refund_issued]
    rendered = render(notice)

    if notice.language is Language.de:
        assert rendered.subject == "Erstattung von 1.234,50 EUR für Ihre Bestellung WEB-1001"
        assert "wir haben Ihnen 1.234,50 EUR für Ihre Rücksendung aus Ihrer Bestellung WEB-1001" in rendered.text
        assert "Bisher zu dieser Bestellung erstattet: 2.000,00 EUR\n" in rendered.text
    else:
        assert rendered.subject == "Refund of 1,234.50 EUR for your order WEB-1001"
        assert "we have refunded 1,234.50 EUR for your return of your order WEB-1001" in rendered.text
        assert "Refunded on this order so far: 2,000.00 EUR\n" in rendered.text


@pytest.mark.parametrize(
    ("language", "until"),
    [
        ("en", "the link works until Saturday, 12 December 2026"),
        ("de", "der Link gilt bis Samstag, 12. Dezember 2026"),
    ],
)
def test_backorder_notice_with_a_link_key_offers_the_signed_wait_or_cancel_link_and_says_until_when(
    order_accepted, inventory_backorder_queued, language, until
):
    contact = contact_of(order_accepted(locale=language).data)
    links = Links("https://shop.example", b"k" * 32)

    [notice] = tell([inventory_backorder_queued(contact.order_id)], {contact.order_id: contact}, links).notices
    rendered = render(notice)

    url = notice.values["cancel_url"]
    assert url.startswith(f"https://shop.example/customer/orders/{contact.order_id}/backorders?lines=1&expires=")
    assert f"{until}):\n{url}\n" in rendered.text
    assert f'<a href="{url.replace("&", "&amp;")}">' in rendered.html
    assert "reply" not in rendered.text and "Antworten" not in rendered.text


# The operators' alerts: English, every fact an operator acts on, escaped in HTML.


def test_a_stuck_order_alert_names_kind_reason_age_and_links_the_single_view(order_accepted, order_stuck):
    contact = contact_of(order_accepted("WEB-7").data)
    event = order_stuck(contact.order_id, kind="paid_not_planned", reason="paid <b>31 min</b> ago", age_hours=0.52)
    [notice] = alert([event], ["ops@example.com"], Links("https://oms.example"), {contact.order_id: contact})

    rendered = render(notice)

    view = f"https://oms.example/orders/{contact.order_id}"
    assert rendered.subject == "Stuck order WEB-7: paid, not planned for 1 h"
    assert f"Order {contact.order_id} (web-eu order WEB-7) is stuck: paid, not planned.\n" in rendered.text
    assert "What has not happened: paid <b>31 min</b> ago\n" in rendered.text
    assert "Status: awaiting_fulfillment, since Monday, 30 November 2026, 08:28 UTC (0.5 hours)\n" in rendered.text
    assert f"Single view: {view}\nTimeline: {view}/timeline\n" in rendered.text
    assert "paid &lt;b&gt;31 min&lt;/b&gt; ago" in rendered.html and "<b>" not in rendered.html
    assert f'<a href="{view}">' in rendered.html
    assert '<html lang="en">' in rendered.html


def test_a_stuck_order_alert_without_contact_or_kind_still_reads_well(order_stuck):
    order_id = uuid.uuid4()
    event = order_stuck(order_id, kind=None, reason=None)
    [notice] = alert([event], ["ops@example.com"], Links(), {})

    rendered = render(notice)

    assert rendered.subject == f"Stuck order {order_id}: no progress for 26 h"
    assert f"Order {order_id} is stuck: no progress.\n" in rendered.text
    assert "What has not happened" not in rendered.text
    assert "\n\n\n" not in rendered.text


def test_a_low_stock_alert_names_sku_source_what_is_left_and_the_threshold(inventory_low_stock):
    [notice] = alert([inventory_low_stock("SKU-<x>", "WH-1", 2, 5)], ["ops@example.com"], Links(), {})

    rendered = render(notice)

    assert rendered.subject == "Low stock: SKU-<x> at WH-1 (2 available)"
    assert "SKU-<x> is running low at WH-1: 2 available, the low-stock threshold is 5.\n" in rendered.text
    assert "SKU-&lt;x&gt;" in rendered.html and "<x>" not in rendered.html


def test_a_templates_dotted_name_on_a_dict_is_its_key_and_a_dicts_methods_still_work():
    """A notice's values are dicts: `x.name` is the key `name`, even where a dict method has that name, and a method
    no key shadows is still there (`what_for.get(cause, "")`)."""
    template = _environment.from_string('{{ line.items }} {{ line.sku }} {{ kinds.get("a", "none") }}')

    assert template.render(line={"items": 3, "sku": "SKU-1"}, kinds={}) == "3 SKU-1 none"
