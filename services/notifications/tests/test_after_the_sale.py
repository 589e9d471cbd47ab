"""The domain's decisions after the sale: the customer's signed wait-or-cancel link."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

from oms_notifications.domain import Contact, Links, tell
from oms_runtime.links import LinkCheck, verify

ORDER = uuid.uuid4()
CONTACT = Contact(
    order_id=ORDER,
    email="ada@example.com",
    name="Ada",
    locale="en",
    channel="web-eu",
    external_order_id="1001",
)
KEY = b"k" * 32
LINKS = Links("https://shop.example/oms/", KEY, timedelta(days=14))


def told(*events, contacts=None, links=LINKS):
    return tell(list(events), {ORDER: CONTACT} if contacts is None else contacts, links)


# The customer's signed wait-or-cancel link.


def test_the_backorder_notice_carries_a_link_the_order_service_accepts_for_exactly_its_lines(
    inventory_backorder_queued,
):
    queued = inventory_backorder_queued(ORDER, [("SKU-A", 1, None), ("SKU-B", 2, None)])

    [notice] = told(queued).notices

    url = urlsplit(notice.values["cancel_url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"https://shop.example/oms/customer/orders/{ORDER}/backorders"
    params = dict(parse_qsl(url.query))
    assert verify(KEY, ORDER, params, now=queued.time) == (LinkCheck.valid, ["1", "2"])
    assert notice.values["cancel_until"] == queued.time + timedelta(days=14)


def test_the_link_expires_after_its_lifetime_and_fails_for_another_order_or_key(inventory_backorder_queued):
    queued = inventory_backorder_queued(ORDER)
    [notice] = told(queued).notices
    params = dict(parse_qsl(urlsplit(notice.values["cancel_url"]).query))

    assert verify(KEY, ORDER, params, now=queued.time + timedelta(days=14))[0] is LinkCheck.expired
    assert verify(KEY, uuid.uuid4(), params, now=queued.time)[0] is LinkCheck.forged
    assert verify(b"x" * 32, ORDER, params, now=queued.time)[0] is LinkCheck.forged


def test_the_same_queued_backorder_always_makes_the_same_link(inventory_backorder_queued):
    queued = inventory_backorder_queued(ORDER)

    assert told(queued).notices[0].values["cancel_url"] == told(queued).notices[0].values["cancel_url"]


def test_without_a_link_key_the_backorder_notice_has_no_link(inventory_backorder_queued):
    [notice] = told(inventory_backorder_queued(ORDER), links=Links()).notices

    assert (notice.values["cancel_url"], notice.values["cancel_until"]) == (None, None)
