"""The customer's wait-or-cancel page behind the backorder notice's signed link, on the real app and database."""

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from oms_contracts.topics import CHANNEL_ORDERS, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_order import store
from oms_order.app import create_service
from oms_order.settings import OrderSettings
from oms_runtime import links
from oms_runtime.testing import deliver, take_outbox
from oms_tools import samples

KEY = "a customer link key of at least thirty-two bytes"


@pytest.fixture(scope="module")
def page_service(service_database, inventory):
    return create_service(
        OrderSettings(
            database_url=service_database("order"),
            customer_link_key=KEY,
            inventory_url=inventory.url,
            inventory_token="inventory-token",
        )
    )


@pytest.fixture
async def browser(page_service):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=page_service.http), base_url="http://o") as c:
        yield c


def link(order_id, lines, *, expires=None, key=KEY) -> str:
    expires = expires or datetime.now(UTC) + timedelta(days=14)
    query = links.query(key.encode(), order_id, lines, expires)
    return f"/customer/orders/{order_id}/backorders?" + "&".join(f"{k}={v}" for k, v in query.items())


async def waiting(service, name, locale="en"):
    """A TENT requested from WH-EAST and 3 LAMPs backordered, for a customer speaking `locale`."""
    submitted = samples.order_submitted(name, [("TENT", 1, "99.00"), ("LAMP", 3, "10.00")])
    customer = submitted.data.customer.model_copy(update={"locale": locale})
    submitted = submitted.model_copy(update={"data": submitted.data.model_copy(update={"customer": customer})})
    await deliver(service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = samples.fulfillment_planned(submitted, [("1", 1)], [("2", 3)])
    await deliver(service, ROUTING_PLANS, plan)
    await deliver(service, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))
    return submitted.data.order_id


async def units(service, order_id, line_id):
    async with service.database.connect() as conn:
        view = await store.order_view(conn, order_id)
    return {k: n for k, n in next(x for x in view["lines"] if x["line_id"] == line_id)["quantities"].items() if n}


async def test_the_page_shows_what_waits_live_with_its_place_and_a_form_to_cancel(page_service, browser, inventory):
    order_id = await waiting(page_service, "page-1")
    inventory.waiting = [
        {
            "order_id": str(order_id),
            "line_id": "2",
            "sku": "LAMP",
            "quantity": 3,
            "position": 2,
            "expected_date": "2026-12-10",
        }
    ]
    response = await browser.get(link(order_id, ["2"]))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "Items waiting for stock" in page and "LAMP" in page and "10 December 2026" in page
    assert '<form method="post"' in page and "Cancel these items" in page
    assert inventory.authorizations[-1] == "Bearer inventory-token"


async def test_the_page_speaks_german_to_a_german_customer(page_service, browser, inventory):
    order_id = await waiting(page_service, "page-de", locale="de_AT")
    inventory.waiting = [
        {
            "order_id": str(order_id),
            "line_id": "2",
            "sku": "LAMP",
            "quantity": 3,
            "position": 1,
            "expected_date": "2026-03-02",
        }
    ]
    page = (await browser.get(link(order_id, ["2"]))).text
    assert "Artikel, die auf Ware warten" in page and "2. März 2026" in page and "Diese Artikel stornieren" in page


async def test_posting_the_link_cancels_what_waits_as_the_customer_and_once(page_service, browser):
    order_id = await waiting(page_service, "page-cancel")
    url = link(order_id, ["2"])
    response = await browser.post(url)
    assert response.status_code == 200 and "Cancelled: 3 x LAMP." in response.text and "30.00 EUR" in response.text
    emitted = await take_outbox(page_service)
    assert [e.headers["ce-type"] for e in emitted] == ["oms.order.lines_cancelled.v1", "oms.order.refund_issued.v1"]
    cancelled = emitted[0].event.data
    assert cancelled.actor == "customer:c-1" and [(u.from_state, u.quantity) for u in cancelled.units] == [
        ("backordered", 3)
    ]
    assert await units(page_service, order_id, "2") == {"cancelled": 3}
    # The same link posted again: the same cancellation, applied once.
    again = await browser.post(url)
    assert again.status_code == 200 and "Cancelled: 3 x LAMP." in again.text
    assert await take_outbox(page_service) == []
    async with page_service.database.connect() as conn:
        timeline = await store.timeline(conn, order_id)
    assert {(row["kind"], row["actor"], row["cause_type"]) for row in timeline if row["kind"] != "status"} == {
        ("cancellation_requested", "customer:c-1", "link"),
        ("units_cancelled", "customer:c-1", "link"),
        ("refund", "customer:c-1", "link"),
    }


async def test_a_link_whose_items_no_longer_wait_cancels_nothing_and_says_so(page_service, browser):
    order_id = await waiting(page_service, "page-served")
    await deliver(
        page_service, INVENTORY_ALLOCATIONS, samples.backorder_allocated(order_id, [("2", "LAMP", 3)], "WH-WEST")
    )
    url = link(order_id, ["2"])
    shown = await browser.get(url)
    assert shown.status_code == 200 and "<form" not in shown.text and "no longer waiting" in shown.text
    response = await browser.post(url)
    assert response.status_code == 409 and "Nothing of these items waits any more" in response.text
    [refusal] = await take_outbox(page_service)
    assert refusal.headers["ce-type"] == "oms.order.cancellation_rejected.v1"
    assert refusal.event.data.requested_by == "customer:c-1"
    assert await units(page_service, order_id, "2") == {"requested": 3}


@pytest.mark.parametrize(
    ("alter", "status", "says"),
    [
        (lambda url, other: url.replace("lines=2", "lines=1%2C2"), 403, "This link is not valid"),
        (lambda url, other: url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"), 403, "This link is not valid"),
        (lambda url, other: url.replace(url.split("/")[3], other), 403, "Dieser Link ist ungültig"),
        (lambda url, other: url.split("?")[0], 403, "This link is not valid"),
    ],
)
async def test_a_forged_or_altered_link_gets_403_and_changes_nothing(page_service, browser, alter, status, says):
    order_id = await waiting(page_service, f"page-forged-{uuid.uuid4().hex[:6]}")
    url = alter(link(order_id, ["2"]), str(uuid.uuid4()))
    for method in ("GET", "POST"):
        response = await browser.request(method, url)
        assert response.status_code == status and says in response.text, (method, response.text)
    assert await take_outbox(page_service) == []
    assert await units(page_service, order_id, "2") == {"backordered": 3}


async def test_an_expired_link_gets_410_and_changes_nothing(page_service, browser):
    order_id = await waiting(page_service, "page-expired", locale="de")
    url = link(order_id, ["2"], expires=datetime.now(UTC) - timedelta(minutes=1))
    for method in ("GET", "POST"):
        response = await browser.request(method, url)
        assert response.status_code == 410 and "Dieser Link ist abgelaufen" in response.text
    assert await take_outbox(page_service) == []
    assert await units(page_service, order_id, "2") == {"backordered": 3}


async def test_a_link_signed_with_another_key_is_forged(page_service, browser):
    order_id = await waiting(page_service, "page-other-key")
    response = await browser.post(link(order_id, ["2"], key="another key that is also thirty-two bytes long"))
    assert response.status_code == 403 and await units(page_service, order_id, "2") == {"backordered": 3}


async def test_without_a_link_key_the_page_says_links_are_not_configured(service_database):
    unkeyed = create_service(OrderSettings(database_url=service_database("order")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=unkeyed.http), base_url="http://o") as client:
        response = await client.get(link(uuid.uuid4(), ["1"]))
    assert response.status_code == 503 and "Links are not configured" in response.text


async def test_the_openapi_documents_every_answer_of_the_page(browser):
    spec = (await browser.get("/openapi.json")).json()
    for method in ("get", "post"):
        answers = spec["paths"]["/customer/orders/{order_id}/backorders"][method]["responses"]
        assert {"200", "403", "404", "410", "422", "503"} <= set(answers)
        assert "security" not in spec["paths"]["/customer/orders/{order_id}/backorders"][method]
