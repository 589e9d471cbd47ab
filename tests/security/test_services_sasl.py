"""The services connect with SASL from their settings. The routing service, logged in as its own principal with only
the ACLs `oms acl grant-service routing` gives it, creates a new source's request topic, announces the source,
consumes a paid order and publishes its plan; with a wrong password it is not let in (it serves HTTP and keeps
trying), and its readiness says so without ever showing the password."""

from __future__ import annotations

import contextlib
import logging
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaConnectionError

from oms_contracts import fulfillment_requests
from oms_contracts.common import Address, BackorderPolicy, Line, OrderOptions, ShippingMethod
from oms_contracts.order import OrderPaid, OrderPaidData
from oms_contracts.topics import ORDER_EVENTS, ROUTING_NETWORK, ROUTING_PLANS
from oms_routing.app import create_service
from oms_routing.settings import RoutingSettings
from oms_runtime import Service
from oms_runtime.kafka import KafkaSettings, client_options
from oms_tools.kafka import existing_topics, producer, send

from .conftest import SecureBroker, eventually

TOKEN = "sasl-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def routing_database(service_database: Callable[[str, str], str]) -> str:
    return service_database("routing", "sasl")


def routing(database_url: str, login: KafkaSettings) -> Service:
    settings = RoutingSettings(
        database_url=database_url, api_tokens={TOKEN: "tester"}, request_topic_partitions=1, **dict(login)
    )
    return create_service(settings)


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


def http(service: Service) -> httpx.AsyncClient:
    # ASGI in-process: the HTTP surface without a port; the lifespan (Kafka clients) is run by the test.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http), base_url="http://routing")


def source_json(code: str) -> dict:
    return {
        "code": code,
        "name": f"{code} site",
        "type": "3pl",
        "lat": 52.5,
        "lon": 13.4,
        "countries": ["DE"],
        "priority": 100,
        "cost_per_shipment": "4.99",
        "cost_per_unit": "0.5",
        "handling_days": 1,
        "active": True,
    }


def order_paid(order_id: uuid.UUID) -> OrderPaid:
    data = OrderPaidData(
        order_id=order_id,
        channel="web-eu",
        placed_at=datetime(2026, 11, 22, 10, tzinfo=UTC),
        currency="EUR",
        amount=Decimal("19.99"),
        lines=[Line(line_id="1", sku="SASL-SKU", quantity=1)],
        shipping_address=Address(name="Ada L", line1="Unter den Linden 1", city="Berlin", country="DE"),
        shipping_method=ShippingMethod.standard,
        options=OrderOptions(backorder_policy=BackorderPolicy.allow),
    )
    return OrderPaid(source="/oms/order", subject=str(order_id), data=data)


async def first_record(login: KafkaSettings, topic: str, matches: Callable[[ConsumerRecord], bool]) -> ConsumerRecord:
    """The first record of `topic` that matches, read from the beginning without a consumer group."""
    reader = AIOKafkaConsumer(
        topic, **client_options(login), group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=100
    )
    await reader.start()
    try:
        found: list[ConsumerRecord] = []

        async def arrived() -> bool:
            for records in (await reader.getmany(timeout_ms=200)).values():
                found.extend(r for r in records if matches(r))
            return bool(found)

        await eventually(arrived, f"a matching record on {topic}", within=60)
        return found[0]
    finally:
        await reader.stop()


async def test_routing_logged_in_as_its_principal_creates_a_request_topic_consumes_and_publishes(
    secure_kafka: SecureBroker, routing_database: str
):
    service = routing(routing_database, secure_kafka.login("oms-routing"))
    code = f"3PL-{uuid.uuid4().hex[:6].upper()}"
    order_id = uuid.uuid4()
    try:
        async with service.lifespan(service.http), http(service) as client:
            # The service starts in the background: ready once its producer and consumers run.
            await eventually(lambda: _ready(client), "routing ready on the SASL broker", within=60)

            # CREATE on the request topics' prefix, then WRITE on the network topic through the outbox relay.
            put = await client.put("/network", json={"sources": [source_json(code)]}, headers=AUTH)
            assert put.status_code == 200, put.text
            assert fulfillment_requests(code).name in await existing_topics(secure_kafka.admin)
            await first_record(secure_kafka.admin, ROUTING_NETWORK.name, lambda r: r.key == code.encode())

            # READ on the order events in its own group, WRITE on the plans.
            async with producer(secure_kafka.login("oms-order"), "oms-test-order") as order_service:
                await send(order_service, ORDER_EVENTS.name, order_paid(order_id))
            plan = await first_record(secure_kafka.admin, ROUTING_PLANS.name, lambda r: r.key == str(order_id).encode())
            assert ROUTING_PLANS.parse(plan.value).data.order_id == order_id
    finally:
        await service.database.dispose()


async def test_a_wrong_password_is_refused_and_readiness_says_authentication_failed_without_the_password(
    secure_kafka: SecureBroker, routing_database: str, caplog: pytest.LogCaptureFixture
):
    # Everything aiokafka logs is searched for the password (and an in-process `oms` command may have muted it).
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="aiokafka")
    wrong = f"not-the-password-{secrets.token_urlsafe(12)}"
    service = routing(routing_database, secure_kafka.login("oms-routing", wrong))
    try:
        # The broker refuses the login: the relay's producer never starts and no consumer does, so nothing is
        # consumed or published; the service serves HTTP and keeps trying in the background.
        answers: list[httpx.Response] = []
        async with service.lifespan(service.http), http(service) as client:

            async def refused() -> bool:
                answers.append(await client.get("/readyz"))
                return answers[-1].json().get("problems") == {
                    "kafka": "kafka authentication failed",
                    "consumers": "consumers not started yet",
                }

            await eventually(refused, "readiness saying the login was refused", within=60)
            failure = service.relay.connect_error
        assert isinstance(failure, KafkaConnectionError)
        assert "Authentication failed" in caplog.text  # aiokafka's log line says why it could not bootstrap
        assert answers[-1].status_code == 503
        for told in (answers[-1].text, str(failure), repr(failure), caplog.text, repr(service.settings)):
            assert wrong not in told
    finally:
        if service.relay.producer is not None:
            with contextlib.suppress(Exception):
                await service.relay.producer.stop()
        await service.database.dispose()
