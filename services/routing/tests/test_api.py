"""Routing's HTTP surface over ASGI, on a real PostgreSQL and, for topic creation, a real Kafka broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from oms_contracts import fulfillment_requests
from oms_contracts.inventory import StockLevelChanged
from oms_contracts.order import OrderPaid
from oms_contracts.routing import RuleChainSet, SourceDeactivated, SourceUpserted
from oms_contracts.topics import INVENTORY_STOCK, ORDER_EVENTS, ROUTING_NETWORK
from oms_routing.app import create_service
from oms_routing.settings import RoutingSettings
from oms_runtime import Service
from oms_runtime.testing import deliver, take_outbox

TOKEN = "routing-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# A token that may read but not edit the network.
VIEWER = {"Authorization": "Bearer routing-viewer-token"}


@pytest.fixture(scope="module")
def api_database(service_database) -> str:
    # Its own database: replacing the network here must not deactivate the handler tests' sources.
    return service_database("routing", "api")


@pytest.fixture(scope="module")
async def api_service(api_database: str, kafka_bootstrap: str) -> AsyncIterator[Service]:
    service = create_service(
        RoutingSettings(
            database_url=api_database,
            kafka_bootstrap=kafka_bootstrap,
            api_tokens={
                TOKEN: "tester",
                "routing-viewer-token": {"principal": "watcher", "roles": ["viewer", "cs"]},
            },
            request_topic_partitions=2,
        )
    )
    yield service
    await service.database.dispose()


@pytest.fixture
async def client(api_service: Service) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api_service.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://routing") as client:
        yield client


async def topics_on(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def source_json(code: str, **fields) -> dict:
    return {
        "code": code,
        "name": f"{code} site",
        "type": "warehouse",
        "lat": 52.5,
        "lon": 13.4,
        "countries": ["DE"],
        "priority": 100,
        "cost_per_shipment": "4.99",
        "cost_per_unit": "0.5",
        "handling_days": 1,
        "active": True,
        "timezone": "UTC",
        "cutoff_time": None,
        "transit_days": {"standard": 3, "express": 1},
        "daily_capacity": None,
    } | fields


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/network"),
        ("PUT", "/network"),
        ("GET", "/network/sources/WH-1"),
        ("PUT", "/network/sources/WH-1"),
        ("DELETE", "/network/sources/WH-1"),
        ("GET", f"/plans/{uuid.uuid4()}"),
        ("POST", "/simulate"),
        ("GET", "/rule-chains"),
        ("GET", "/rule-chains/web-eu"),
        ("PUT", "/rule-chains/web-eu"),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-token"}], ids=["no-token", "wrong-token"])
async def test_every_endpoint_answers_401_without_a_known_token(client, method, path, headers):
    response = await client.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_health_needs_no_token(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "routing"}


async def test_put_network_creates_request_topics_then_announces_the_sources(client, api_service, kafka_bootstrap):
    suffix = uuid.uuid4().hex[:6].upper()
    east, west, drop = f"WH-EAST-{suffix}", f"WH-WEST-{suffix}", f"DS-{suffix}"
    await take_outbox(api_service)

    response = await client.put(
        "/network",
        headers=AUTH,
        json={"sources": [source_json(west), source_json(east), source_json(drop, type="dropship")]},
    )

    assert response.status_code == 200, response.text
    assert [s["code"] for s in response.json()["sources"]] == sorted([east, west, drop])
    assert {fulfillment_requests(code).name for code in (east, west, drop)} <= await topics_on(kafka_bootstrap)
    emitted = await take_outbox(api_service)
    assert {e.topic for e in emitted} == {ROUTING_NETWORK.name}
    assert sorted((type(e.event), e.key) for e in emitted) == sorted(
        (SourceUpserted, code) for code in (east, west, drop)
    )
    assert emitted[0].event.data.cost_per_shipment == Decimal("4.99")

    # West changes, the dropship supplier is left out, east stands as it was.
    response = await client.put(
        "/network", headers=AUTH, json={"sources": [source_json(east), source_json(west, priority=1)]}
    )

    assert response.status_code == 200, response.text
    emitted = await take_outbox(api_service)
    assert sorted((e.event.type, e.key) for e in emitted) == sorted(
        [(SourceUpserted.TYPE, west), (SourceDeactivated.TYPE, drop)]
    )
    network = (await client.get("/network", headers=AUTH)).json()["sources"]
    assert {s["code"]: (s["active"], s["priority"]) for s in network} == {
        east: (True, 100),
        west: (True, 1),
        drop: (False, 100),
    }
    assert next(s for s in network if s["code"] == east) == source_json(east)


async def test_put_network_with_a_duplicate_code_is_422_naming_it_and_changes_nothing(client):
    before = (await client.get("/network", headers=AUTH)).json()
    code = f"WH-{uuid.uuid4().hex[:6]}"
    response = await client.put(
        "/network", headers=AUTH, json={"sources": [source_json(code), source_json("OTHER"), source_json(code)]}
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "sources"]
    assert repr(code) in error["msg"]
    assert (await client.get("/network", headers=AUTH)).json() == before


@pytest.mark.parametrize(
    ("field", "value", "loc"),
    [
        ("countries", ["XX"], ["body", "sources", 0, "countries", 0]),
        ("type", "warehouse-ish", ["body", "sources", 0, "type"]),
        ("code", "has space", ["body", "sources", 0, "code"]),
        ("cost_per_unit", 0.5, ["body", "sources", 0, "cost_per_unit"]),
        ("timezone", "Mars/Olympus", ["body", "sources", 0, "timezone"]),
        ("cutoff_time", "25:00", ["body", "sources", 0, "cutoff_time"]),
        ("daily_capacity", 0, ["body", "sources", 0, "daily_capacity"]),
        ("transit_days", {"standard": -1}, ["body", "sources", 0, "transit_days", "standard"]),
    ],
)
async def test_put_network_with_an_invalid_source_is_422_with_the_field(client, field, value, loc):
    response = await client.put("/network", headers=AUTH, json={"sources": [source_json("WH-X") | {field: value}]})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [loc]


async def test_plans_of_an_unknown_order_is_404(client):
    order_id = uuid.uuid4()
    response = await client.get(f"/plans/{order_id}", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"detail": f"no plan for order {order_id}"}


async def test_plans_of_a_planned_order_in_attempt_order(client, api_service, make_order):
    sku = f"SKU-{uuid.uuid4().hex[:8]}"
    order = make_order(uuid.uuid4(), [("1", sku, 1)])
    await deliver(api_service, ORDER_EVENTS, OrderPaid(source="/oms/order", subject=str(order.order_id), data=order))

    response = await client.get(f"/plans/{order.order_id}", headers=AUTH)

    assert response.status_code == 200
    body = response.json()
    assert body["order_id"] == str(order.order_id)
    assert [p["attempt"] for p in body["plans"]] == [1]
    assert body["plans"][0]["backordered_lines"][0]["reason"] == "no source has the item"


async def test_simulate_answers_the_plan_without_storing_or_publishing_it(client, api_service, make_order):
    suffix = uuid.uuid4().hex[:6].upper()
    code, sku = f"WH-SIM-{suffix}", f"SKU-{suffix}"
    current = (await client.get("/network", headers=AUTH)).json()["sources"]
    await client.put("/network", headers=AUTH, json={"sources": [*current, source_json(code)]})
    await deliver(
        api_service,
        INVENTORY_STOCK,
        StockLevelChanged.model_validate(
            {
                "source": "/oms/inventory",
                "subject": sku,
                "data": {
                    "sku": sku,
                    "source_code": code,
                    "on_hand": 3,
                    "reserved": 0,
                    "available": 3,
                    "changed_at": "2026-11-22T12:00:00Z",
                },
            }
        ),
    )
    await take_outbox(api_service)
    order = make_order(uuid.uuid4(), [("1", sku, 2)])

    response = await client.post("/simulate", headers=AUTH, json=order.model_dump(mode="json"))

    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["attempt"] == 1
    assert [s["source_code"] for s in plan["shipments"]] == [code]
    assert (await client.get(f"/plans/{order.order_id}", headers=AUTH)).status_code == 404
    assert await take_outbox(api_service) == []


async def test_simulate_with_an_invalid_order_is_422(client, make_order):
    body = make_order(uuid.uuid4(), [("1", "SKU-1", 1)]).model_dump(mode="json")
    body["lines"][0]["quantity"] = 0
    response = await client.post("/simulate", headers=AUTH, json=body)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "lines", 0, "quantity"]]


async def test_a_sources_calendar_and_capacity_are_stored_returned_and_announced(client, api_service):
    code = f"WH-CAL-{uuid.uuid4().hex[:6].upper()}"
    current = (await client.get("/network", headers=AUTH)).json()["sources"]
    await take_outbox(api_service)
    calendar = {
        "timezone": "Europe/Berlin",
        "cutoff_time": "14:30:00",
        "transit_days": {"standard": 2, "express": 1},
        "daily_capacity": 250,
    }

    response = await client.put("/network", headers=AUTH, json={"sources": [*current, source_json(code, **calendar)]})

    assert response.status_code == 200, response.text
    assert next(s for s in response.json()["sources"] if s["code"] == code) == source_json(code, **calendar)
    (announced,) = await take_outbox(api_service)
    assert announced.event.data.daily_capacity == 250
    assert str(announced.event.data.cutoff_time) == "14:30:00"


async def test_rule_chains_are_set_per_channel_stored_and_announced_once_per_change(client, api_service):
    channel = f"web-{uuid.uuid4().hex[:6]}"
    await take_outbox(api_service)
    inherited = (await client.get(f"/rule-chains/{channel}", headers=AUTH)).json()
    assert inherited["channel"] == channel
    assert inherited["defined_for"] in ("*", "settings")

    response = await client.put(f"/rule-chains/{channel}", headers=AUTH, json={"rules": ["nearest", "lowest_cost"]})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["channel"], body["defined_for"], body["set_by"]) == (channel, channel, "tester")
    assert body["rules"] == ["fewest_shipments", "nearest", "lowest_cost"]
    (announced,) = await take_outbox(api_service)
    assert (announced.topic, announced.key) == (ROUTING_NETWORK.name, f"rule-chain:{channel}")
    assert isinstance(announced.event, RuleChainSet)
    assert announced.event.data.channel == channel
    assert announced.event.data.rules == ["fewest_shipments", "nearest", "lowest_cost"]
    assert (await client.get(f"/rule-chains/{channel}", headers=AUTH)).json() == body
    listed = (await client.get("/rule-chains", headers=AUTH)).json()
    assert body in listed["channels"]

    again = await client.put(f"/rule-chains/{channel}", headers=AUTH, json={"rules": ["nearest", "lowest_cost"]})

    assert again.status_code == 200
    assert await take_outbox(api_service) == []  # nothing changed, nothing to announce


async def test_the_default_chain_is_channel_star_and_channels_without_their_own_follow_it(client, api_service):
    await take_outbox(api_service)
    response = await client.put("/rule-chains/*", headers=AUTH, json={"rules": ["fewest_shipments", "priority"]})
    assert response.status_code == 200, response.text
    (announced,) = await take_outbox(api_service)
    assert (announced.key, announced.event.data.channel) == ("rule-chain:*", None)
    other = (await client.get(f"/rule-chains/pos-{uuid.uuid4().hex[:6]}", headers=AUTH)).json()
    assert (other["rules"], other["defined_for"]) == (["fewest_shipments", "priority"], "*")
    assert (await client.get("/rule-chains", headers=AUTH)).json()["default"]["rules"] == [
        "fewest_shipments",
        "priority",
    ]


@pytest.mark.parametrize(
    ("rules", "loc", "message"),
    [
        (["nearest", "teleport"], ["body", "rules", 1], "Input should be"),
        (["nearest", "nearest"], ["body", "rules"], "repeated: nearest"),
        (["nearest", "fewest_shipments"], ["body", "rules"], "always comes first"),
        ([], ["body", "rules"], "at least 1 item"),
    ],
)
async def test_a_bad_rule_chain_is_422_naming_the_field_and_changes_nothing(client, api_service, rules, loc, message):
    channel = f"b2b-{uuid.uuid4().hex[:6]}"
    await client.put(f"/rule-chains/{channel}", headers=AUTH, json={"rules": ["priority"]})
    await take_outbox(api_service)

    response = await client.put(f"/rule-chains/{channel}", headers=AUTH, json={"rules": rules})

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc
    assert message in error["msg"]
    assert (await client.get(f"/rule-chains/{channel}", headers=AUTH)).json()["rules"] == [
        "fewest_shipments",
        "priority",
    ]
    assert await take_outbox(api_service) == []


async def test_a_channel_name_longer_than_the_contract_allows_is_422(client):
    response = await client.put(f"/rule-chains/{'x' * 65}", headers=AUTH, json={"rules": ["nearest"]})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["path", "channel"]]


async def test_simulate_uses_the_orders_own_chain_and_shows_it(client, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-NONE", 1)])
    body = order.model_dump(mode="json")
    body["options"]["routing_rules"] = ["lowest_cost", "nearest"]

    response = await client.post("/simulate", headers=AUTH, json=body)

    assert response.status_code == 200, response.text
    assert response.json()["rules"] == ["fewest_shipments", "lowest_cost", "nearest"]


async def test_simulate_with_an_unknown_rule_is_422_naming_the_field(client, make_order):
    body = make_order(uuid.uuid4(), [("1", "SKU-1", 1)]).model_dump(mode="json")
    body["options"]["routing_rules"] = ["nearest", "cheapest"]
    response = await client.post("/simulate", headers=AUTH, json=body)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "options", "routing_rules", 1]]


# Editing the network without losing another client's edit: versions (ETag / If-Match) and one source at a time.


def suffix() -> str:
    return uuid.uuid4().hex[:6].upper()


async def current_network(client) -> tuple[list[dict], str]:
    response = await client.get("/network", headers=AUTH)
    assert response.status_code == 200
    return response.json()["sources"], response.headers["etag"]


async def test_a_replacement_based_on_a_network_read_before_another_clients_edit_is_refused_and_loses_nothing(
    client, api_service
):
    mine, theirs = f"WH-MINE-{suffix()}", f"WH-THEIRS-{suffix()}"
    sources, read_as = await current_network(client)

    # Another client adds a source after this one read the network.
    added = await client.put(f"/network/sources/{theirs}", headers=AUTH, json=source_json(theirs))
    assert added.status_code == 201, added.text
    await take_outbox(api_service)

    # This client replaces the network as it read it, plus its own source: refused, nothing changes.
    stale = await client.put(
        "/network", headers=AUTH | {"If-Match": read_as}, json={"sources": [*sources, source_json(mine)]}
    )

    assert stale.status_code == 412
    assert stale.headers["etag"] == added.headers["etag"] != read_as
    assert "the network changed since it was read" in stale.json()["detail"]
    assert await take_outbox(api_service) == []
    network, _ = await current_network(client)
    assert {s["code"]: s["active"] for s in network if s["code"] in (mine, theirs)} == {theirs: True}

    # Read again, edit again: accepted, and the other client's source stands.
    sources, read_as = await current_network(client)
    again = await client.put(
        "/network", headers=AUTH | {"If-Match": read_as}, json={"sources": [*sources, source_json(mine)]}
    )
    assert again.status_code == 200, again.text
    assert again.headers["etag"] != read_as
    assert {s["code"]: s["active"] for s in again.json()["sources"] if s["code"] in (mine, theirs)} == {
        mine: True,
        theirs: True,
    }
    (announced,) = await take_outbox(api_service)
    assert (type(announced.event), announced.key) == (SourceUpserted, mine)


async def test_the_network_version_moves_only_when_an_edit_changes_something(client, api_service):
    sources, read_as = await current_network(client)

    unchanged = await client.put("/network", headers=AUTH | {"If-Match": read_as}, json={"sources": sources})
    any_version = await client.put("/network", headers=AUTH | {"If-Match": "*"}, json={"sources": sources})
    without = await client.put("/network", headers=AUTH, json={"sources": sources})

    assert [r.status_code for r in (unchanged, any_version, without)] == [200, 200, 200]
    assert {r.headers["etag"] for r in (unchanged, any_version, without)} == {read_as}
    assert await take_outbox(api_service) == []


async def test_one_source_is_created_replaced_and_deactivated_alone_each_change_announced_once(
    client, api_service, kafka_bootstrap
):
    code, bystander = f"3PL-{suffix()}", f"WH-BY-{suffix()}"
    await client.put(f"/network/sources/{bystander}", headers=AUTH, json=source_json(bystander))
    _, before = await current_network(client)
    await take_outbox(api_service)

    created = await client.put(f"/network/sources/{code}", headers=AUTH, json=source_json(code, type="3pl"))

    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/network/sources/{code}"
    assert created.json() == source_json(code, type="3pl")
    assert created.headers["etag"] != before
    assert fulfillment_requests(code).name in await topics_on(kafka_bootstrap)
    (announced,) = await take_outbox(api_service)
    assert (type(announced.event), announced.key, announced.event.data.type) == (SourceUpserted, code, "3pl")

    replaced = await client.put(f"/network/sources/{code}", headers=AUTH, json=source_json(code, priority=5))
    same = await client.put(f"/network/sources/{code}", headers=AUTH, json=source_json(code, priority=5))

    assert (replaced.status_code, same.status_code) == (200, 200)
    assert replaced.json()["priority"] == 5
    assert same.headers["etag"] == replaced.headers["etag"] != created.headers["etag"]
    (announced,) = await take_outbox(api_service)
    assert announced.event.data.priority == 5

    removed = await client.delete(f"/network/sources/{code}", headers=AUTH)
    again = await client.delete(f"/network/sources/{code}", headers=AUTH)

    assert (removed.status_code, again.status_code) == (200, 200)
    assert removed.json() == source_json(code, priority=5, active=False)
    assert again.headers["etag"] == removed.headers["etag"] != same.headers["etag"]
    (announced,) = await take_outbox(api_service)
    assert (type(announced.event), announced.key) == (SourceDeactivated, code)
    read = await client.get(f"/network/sources/{code}", headers=AUTH)
    assert (read.status_code, read.json()["active"], read.headers["etag"]) == (200, False, removed.headers["etag"])
    network, _ = await current_network(client)
    assert next(s for s in network if s["code"] == bystander)["active"]


async def test_a_source_not_in_the_network_is_404_to_read_or_deactivate(client, api_service):
    code = f"WH-NONE-{suffix()}"

    for response in (
        await client.get(f"/network/sources/{code}", headers=AUTH),
        await client.delete(f"/network/sources/{code}", headers=AUTH),
    ):
        assert response.status_code == 404
        assert response.json() == {"detail": f"no source {code!r} in the network"}
    assert await take_outbox(api_service) == []


@pytest.mark.parametrize(
    ("path_code", "body", "loc"),
    [
        ("WH-A", source_json("WH-B"), ["body", "code"]),
        ("has space", source_json("has space"), ["path", "code"]),
        ("WH-A", source_json("WH-A", countries=[]), ["body", "countries"]),
    ],
)
async def test_a_source_whose_code_or_fields_are_wrong_is_422_naming_the_field(
    client, api_service, path_code, body, loc
):
    response = await client.put(f"/network/sources/{path_code}", headers=AUTH, json=body)

    assert response.status_code == 422
    assert loc in [e["loc"] for e in response.json()["detail"]]
    assert await take_outbox(api_service) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/network"), ("PUT", "/network/sources/WH-1"), ("DELETE", "/network/sources/WH-1")],
)
async def test_editing_the_network_needs_the_admin_role(client, api_service, method, path):
    sources, _ = await current_network(client)
    body = {"sources": sources} if path == "/network" else source_json("WH-1")

    response = await client.request(method, path, headers=VIEWER, json=body)

    assert response.status_code == 403
    assert "needs one of admin" in response.json()["detail"]
    assert (await client.get("/network", headers=VIEWER)).status_code == 200
    assert await take_outbox(api_service) == []


async def test_the_openapi_document_tells_the_version_check_and_the_answers_of_each_network_edit(client):
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]

    put = paths["/network"]["put"]
    assert {"200", "401", "403", "412", "422", "503"} <= set(put["responses"])
    assert "If-Match" in {p["name"] for p in put["parameters"]}
    assert "ETag" in paths["/network"]["get"]["responses"]["200"]["headers"]
    one = paths["/network/sources/{code}"]
    assert {"200", "201", "401", "403", "422", "503"} <= set(one["put"]["responses"])
    assert {"200", "401", "403", "404", "422"} <= set(one["delete"]["responses"])
    assert {"200", "401", "404", "422"} <= set(one["get"]["responses"])
