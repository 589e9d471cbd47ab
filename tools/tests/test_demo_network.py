"""`oms demo network` against the real routing service (its HTTP app on a real PostgreSQL and Kafka): it loads the
demo sources one at a time and never deactivates a source another client added."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from oms_routing.app import create_service
from oms_routing.settings import RoutingSettings
from oms_tools.errors import FAILED

ADMIN = "routing-admin-token"
VIEWER = "routing-viewer-token"
DEMO_CODES = {"WH-EAST", "WH-WEST", "STORE-MUC", "3PL-NL", "DROP-ACME"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def routing_url(service_database, oms_topics) -> Iterator[str]:
    """The routing service's HTTP app served on a free port (no consumers or relay: the outbox keeps what it emits)."""
    service = create_service(
        RoutingSettings(
            database_url=service_database("routing", "demo_network"),
            kafka_bootstrap=oms_topics,
            api_tokens={
                ADMIN: {"principal": "ops", "roles": ["admin"]},
                VIEWER: {"principal": "watcher", "roles": ["viewer"]},
            },
            request_topic_partitions=1,
        )
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(service.http, port=port, lifespan="off", log_config=None))

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            await service.database.dispose()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    for _ in range(600):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "the routing app did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join()


def _another_clients_source(code: str) -> dict:
    return {
        "code": code,
        "name": "a 3PL another client added",
        "type": "3pl",
        "lat": 51.9,
        "lon": 4.5,
        "countries": ["NL"],
        "cost_per_shipment": "5.00",
        "cost_per_unit": "0.40",
    }


def _network(url: str) -> dict[str, bool]:
    response = httpx.get(f"{url}/network", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    return {s["code"]: s["active"] for s in response.json()["sources"]}


def test_loading_the_demo_network_never_deactivates_a_source_another_client_added(oms, routing_url):
    added = httpx.put(
        f"{routing_url}/network/sources/3PL-OTHER",
        json=_another_clients_source("3PL-OTHER"),
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert added.status_code == 201, added.text

    first = oms("demo", "network", "--url", routing_url, "--token", ADMIN)
    again = oms("demo", "network", "--url", routing_url, "--token", ADMIN)

    assert first.exit_code == 0, first.output
    assert "5 sources from" in first.stdout and "5 created, 0 replaced" in first.stdout
    assert again.exit_code == 0, again.output
    assert "0 created, 5 replaced" in again.stdout
    assert _network(routing_url) == {"3PL-OTHER": True} | dict.fromkeys(DEMO_CODES, True)


def test_loading_the_demo_network_needs_a_token_that_may_edit_the_network(oms, routing_url):
    result = oms("demo", "network", "--url", routing_url, "--token", VIEWER)

    assert result.exit_code == FAILED
    assert "answered 403 Forbidden" in result.stderr
    assert "needs one of admin" in result.stderr
