"""The HTTP surface every service shares: health, readiness naming what is down, and bearer-token principals."""

import logging
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel

from oms_runtime import Principal, Role, http, require_role

UNREACHABLE_DATABASE = "postgresql+asyncpg://oms:oms@127.0.0.1:1/nowhere"


def client(service) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http), base_url="http://probe")


async def test_healthz_answers_while_the_process_is_up(make_service):
    service = make_service(UNREACHABLE_DATABASE)
    async with client(service) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "probe"}


async def ready_answer(http, wait_until, expected: dict) -> httpx.Response:
    """Poll /readyz until it answers `expected` (the service starts in the background)."""
    answers = []

    async def answered() -> bool:
        answers.append(await http.get("/readyz"))
        return answers[-1].json() == expected

    await wait_until(answered, f"/readyz answering {expected}")
    return answers[-1]


async def test_readyz_answers_200_when_the_database_and_the_broker_are_reachable(
    make_service, database_url, kafka_bootstrap, wait_until
):
    service = make_service(database_url, bootstrap=kafka_bootstrap)
    async with service.lifespan(service.http), client(service) as http:
        response = await ready_answer(http, wait_until, {"status": "ready", "service": "probe"})
    assert response.status_code == 200, response.text


async def test_readyz_says_database_unreachable_in_plain_words_and_logs_the_detail(
    make_service, kafka_bootstrap, caplog, wait_until
):
    """/readyz answers anyone: the address of the database (and the password in its URL) is for the log only."""
    service = make_service(UNREACHABLE_DATABASE, bootstrap=kafka_bootstrap)
    expected = {"status": "unavailable", "problems": {"database": "database unreachable"}}
    with caplog.at_level(logging.WARNING, logger="oms_runtime.service"):
        async with service.lifespan(service.http), client(service) as http:
            response = await ready_answer(http, wait_until, expected)
            again = await http.get("/readyz")
    assert response.status_code == 503
    assert again.json() == expected
    for secret in ("127.0.0.1", ":1", "nowhere", "oms:oms", "Error", "errno"):
        assert secret not in response.text
    details = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not ready")]
    assert "database: ConnectionRefusedError" in details[-1], "the log says what the answer does not"
    assert len(details) == len(set(details)), "once each time it changes, not at every probe"


async def test_readyz_names_kafka_and_the_consumers_before_the_service_has_started(make_service, database_url):
    service = make_service(database_url)  # not started: no producer, no consumers
    async with client(service) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["problems"] == {
        "kafka": "kafka not connected yet",
        "consumers": "consumers not started yet",
    }


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


def test_a_token_is_compared_with_every_configured_token_and_no_prefix_matches(monkeypatch):
    """Constant time: which token matched, or how much of one, must not show in how long the answer takes. Every
    configured token is compared (as a fixed-length digest), also after a match."""
    tokens = {"alpha-token": "alpha", "beta-token": "beta", "gamma-token": "gamma"}
    compared = []
    compare = http.hmac.compare_digest

    def counting(a, b):
        compared.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(http.hmac, "compare_digest", counting)
    assert http.principal_of(tokens, "alpha-token") == "alpha"
    assert len(compared) == len(tokens), "no early exit after the first token matched"
    assert {lengths for lengths in compared} == {(32, 32)}, "digests of one length, whatever the tokens' lengths"
    for near_miss in ("alpha", "alpha-token ", "alpha-toke", "", "ALPHA-TOKEN"):
        assert http.principal_of(tokens, near_miss) is None
    assert http.principal_of({}, "alpha-token") is None


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


async def test_a_body_of_bytes_that_are_not_utf8_gets_422_with_the_field_errors_not_a_server_error(make_service):
    # Found by tests/fuzz: sent as text/plain (so not parsed as JSON), the body reached the validation error as bytes,
    # and FastAPI's handler failed to echo them (500).
    service = make_service(UNREACHABLE_DATABASE)
    router = APIRouter()

    class Note(BaseModel):
        text: str

    @router.post("/notes")
    async def note(body: Note) -> dict[str, str]:
        return {"text": body.text}

    service.http.include_router(router)
    async with client(service) as http:
        for content_type in ("text/plain", "application/xml", "application/json"):
            response = await http.post(
                "/notes", content=b'\xff\xfe{"text": "hi"}', headers={"content-type": content_type}
            )
            assert response.status_code == 422, (content_type, response.text)
            assert response.json()["detail"][0]["loc"][0] == "body"
        # A lone surrogate in a JSON string: valid JSON, not encodable as UTF-8 when the error echoes it.
        response = await http.post(
            "/notes", content=b'{"text": "\\ud800", "x": 1', headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        response = await http.post(
            "/notes", content=b'{"text": ["\\ud800"]}', headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["input"] == ["?"]
        # NaN and Infinity: Python's JSON parser takes them, JSON cannot carry them back in the echo.
        response = await http.post(
            "/notes", content=b'{"text": [NaN, -Infinity, 1.5]}', headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["input"] == ["nan", "-inf", 1.5]


async def test_a_nul_in_the_path_or_the_query_gets_422_naming_it_before_any_route_runs(make_service):
    # Found by tests/fuzz: GET /stock/%00 reached PostgreSQL, which cannot hold a NUL in text (500).
    service = make_service(UNREACHABLE_DATABASE)
    router = APIRouter()
    reached = []

    @router.get("/stock/{sku}")
    async def stock(sku: str, source: str | None = None) -> dict[str, str | None]:
        reached.append(sku)
        return {"sku": sku, "source": source}

    service.http.include_router(router)
    async with client(service) as http:
        for path in ("/stock/%00", "/stock/A%00B", "/stock/SKU-A?source=%00", "/stock/SKU-A?%00=x"):
            response = await http.get(path)
            assert response.status_code == 422, (path, response.text)
            assert "NUL" in response.json()["detail"]
        assert reached == []
        assert (await http.get("/stock/SKU-A?source=WH-1")).json() == {"sku": "SKU-A", "source": "WH-1"}
