"""The HTTP surface every service shares: health, readiness naming what is down, and bearer-token principals."""

from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter

from oms_runtime import Principal, Role, require_role

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


@pytest.fixture
def by_role(make_service):
    service = make_service(
        UNREACHABLE_DATABASE,
        api_tokens={
            "legacy-token": "old-timer",
            "cs-token": {"principal": "ana", "roles": ["cs"]},
            "finance-token": {"principal": "fin", "roles": ["finance", "viewer"]},
            "admin-token": {"principal": "root", "roles": ["admin"]},
            "nothing-token": {"principal": "nobody", "roles": []},
        },
    )
    router = APIRouter()

    @router.post("/cancellations")
    async def cancel(who: Annotated[str, require_role(Role.cs)]) -> dict[str, str]:
        return {"principal": who}

    @router.get("/whoami")
    async def whoami(who: Principal) -> dict[str, str]:
        return {"principal": who}

    service.http.include_router(router)
    return service


@pytest.mark.parametrize(
    ("token", "status", "principal"),
    [("cs-token", 200, "ana"), ("admin-token", 200, "root"), ("legacy-token", 200, "old-timer")],
)
async def test_a_route_that_requires_a_role_gives_the_principal_of_a_token_holding_it_or_admin(
    by_role, token, status, principal
):
    async with client(by_role) as http:
        response = await http.post("/cancellations", headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.json()) == (status, {"principal": principal})


@pytest.mark.parametrize("token", ["finance-token", "nothing-token"])
async def test_a_token_without_the_role_gets_403_naming_what_is_needed(by_role, token):
    async with client(by_role) as http:
        response = await http.post("/cancellations", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert "needs one of admin, cs" in response.json()["detail"]


async def test_a_route_that_requires_a_role_still_answers_401_without_a_known_token(by_role):
    async with client(by_role) as http:
        missing = await http.post("/cancellations")
        unknown = await http.post("/cancellations", headers={"Authorization": "Bearer nope"})
    assert (missing.status_code, unknown.status_code) == (401, 401)
    assert missing.headers["www-authenticate"] == "Bearer"


async def test_principal_keeps_working_for_tokens_with_roles(by_role):
    async with client(by_role) as http:
        response = await http.get("/whoami", headers={"Authorization": "Bearer nothing-token"})
    assert response.json() == {"principal": "nobody"}
