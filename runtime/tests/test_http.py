"""The HTTP surface every service shares: health, readiness naming what is down, and bearer-token principals."""

import httpx
import pytest
from fastapi import APIRouter

from oms_runtime import Principal

UNREACHABLE_DATABASE = "postgresql+asyncpg://oms:oms@127.0.0.1:1/nowhere"


def client(service) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http), base_url="http://probe")


async def test_healthz_answers_while_the_process_is_up(make_service):
    service = make_service(UNREACHABLE_DATABASE)
    async with client(service) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "probe"}


async def test_readyz_answers_200_when_the_database_and_the_broker_are_reachable(
    make_service, database_url, kafka_bootstrap
):
    service = make_service(database_url, bootstrap=kafka_bootstrap)
    async with service.lifespan(service.http), client(service) as http:
        response = await http.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "service": "probe"}


async def test_readyz_answers_503_naming_the_database_when_it_is_unreachable(make_service, kafka_bootstrap):
    service = make_service(UNREACHABLE_DATABASE, bootstrap=kafka_bootstrap)
    async with service.lifespan(service.http), client(service) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert list(body["problems"]) == ["database"]


async def test_readyz_answers_503_naming_kafka_when_the_service_has_no_broker_connection(make_service, database_url):
    service = make_service(database_url)  # not started: its relay has no producer
    async with client(service) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert list(response.json()["problems"]) == ["kafka"]


@pytest.fixture
def guarded(make_service):
    service = make_service(UNREACHABLE_DATABASE, api_tokens={"cs-token": "cs-agent"})
    router = APIRouter()

    @router.get("/whoami")
    async def whoami(who: Principal) -> dict[str, str]:
        return {"principal": who}

    service.http.include_router(router)
    return service


async def test_an_endpoint_behind_principal_refuses_a_request_without_a_token(guarded):
    async with client(guarded) as http:
        response = await http.get("/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"] == "missing bearer token"


async def test_an_endpoint_behind_principal_refuses_an_unknown_token(guarded):
    async with client(guarded) as http:
        response = await http.get("/whoami", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert response.json()["detail"] == "unknown bearer token"


async def test_an_endpoint_behind_principal_gets_the_principal_of_a_known_token(guarded):
    async with client(guarded) as http:
        response = await http.get("/whoami", headers={"Authorization": "Bearer cs-token"})
    assert response.status_code == 200
    assert response.json() == {"principal": "cs-agent"}
