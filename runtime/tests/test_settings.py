"""Configuration from the environment: one environment file configures every service."""

from typing import ClassVar

import pytest
from pydantic import ValidationError

from oms_runtime import ServiceSettings, service_field


class ProbeSettings(ServiceSettings):
    service: ClassVar[str] = "probe"
    database_url: str = service_field("probe", "database_url", "postgresql+asyncpg://localhost/oms_probe")
    http_port: int = service_field("probe", "http_port", 8089)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in (
        "OMS_PROBE_DATABASE_URL",
        "OMS_DATABASE_URL",
        "OMS_PROBE_HTTP_PORT",
        "OMS_HTTP_PORT",
        "OMS_API_TOKENS",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_service_database_url_wins_over_the_shared_one(monkeypatch):
    monkeypatch.setenv("OMS_DATABASE_URL", "postgresql+asyncpg://db/shared")
    assert ProbeSettings().database_url == "postgresql+asyncpg://db/shared"
    monkeypatch.setenv("OMS_PROBE_DATABASE_URL", "postgresql+asyncpg://db/probe")
    assert ProbeSettings().database_url == "postgresql+asyncpg://db/probe"


def test_a_service_field_falls_back_to_its_default():
    settings = ProbeSettings()
    assert (settings.database_url, settings.http_port) == ("postgresql+asyncpg://localhost/oms_probe", 8089)


def test_a_keyword_argument_sets_a_service_field(monkeypatch):
    monkeypatch.setenv("OMS_PROBE_DATABASE_URL", "postgresql+asyncpg://db/probe")
    assert ProbeSettings(database_url="postgresql+asyncpg://db/given").database_url == "postgresql+asyncpg://db/given"


def test_api_tokens_are_read_as_a_json_object_of_token_to_principal(monkeypatch):
    monkeypatch.setenv("OMS_API_TOKENS", '{"demo-cs-token": "cs-demo", "ops-token": "ops"}')
    assert ProbeSettings().api_tokens == {"demo-cs-token": "cs-demo", "ops-token": "ops"}


def test_no_api_tokens_means_none_are_accepted(monkeypatch):
    assert ProbeSettings().api_tokens == {}
    monkeypatch.setenv("OMS_API_TOKENS", "")
    assert ProbeSettings().api_tokens == {}


def test_api_tokens_that_are_not_json_are_refused_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("OMS_API_TOKENS", "{secret-token: cs-demo}")
    with pytest.raises(ValidationError) as refused:
        ProbeSettings()
    assert "OMS_API_TOKENS must be a JSON object of token to principal" in str(refused.value)
    assert "secret-token" not in str(refused.value), "the error does not print the tokens"


def test_api_tokens_that_are_json_but_not_an_object_are_refused(monkeypatch):
    monkeypatch.setenv("OMS_API_TOKENS", '["demo-cs-token"]')
    with pytest.raises(ValidationError) as refused:
        ProbeSettings()
    assert "api_tokens" in str(refused.value)
