"""Configuration from the environment: one environment file configures every service."""

import ssl
from pathlib import Path
from typing import ClassVar

import certifi
import pytest
from faststream.security import SASLScram512
from pydantic import ValidationError

from oms_runtime import ApiGrant, Role, ServiceSettings, service_field
from oms_runtime.kafka import KafkaSettings, client_options


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


def test_a_token_may_name_a_principal_with_roles_and_a_plain_string_keeps_every_role(monkeypatch):
    monkeypatch.setenv(
        "OMS_API_TOKENS",
        '{"ana-token": {"principal": "ana", "roles": ["cs"]}, "old-token": "ops", "mute-token": {"principal": "m",'
        ' "roles": []}}',
    )
    settings = ProbeSettings()
    assert settings.grant("ana-token") == ApiGrant(principal="ana", roles=frozenset({Role.cs}))
    assert settings.grant("old-token") == ApiGrant(principal="ops", roles=frozenset(Role))
    assert settings.grant("mute-token").roles == frozenset()
    assert settings.grant("nobody") is None


@pytest.mark.parametrize(
    ("grant", "named"),
    [('{"principal": "ana", "roles": ["support"]}', "roles"), ('{"roles": ["cs"]}', "principal")],
)
def test_a_token_with_an_unknown_role_or_without_a_principal_is_refused_by_name(monkeypatch, grant, named):
    monkeypatch.setenv("OMS_API_TOKENS", f'{{"secret-token": {grant}}}')
    with pytest.raises(ValidationError) as refused:
        ProbeSettings()
    assert named in str(refused.value) and "OMS_API_TOKENS" in str(refused.value)
    assert "secret-token" not in str(refused.value), "the error names the principal, never the token"


# Kafka security: one set of settings, every client built from it -------------------------------------------------


def _some_ca_pem() -> str:
    """One real CA certificate (PEM), the first of certifi's bundle."""
    bundle = Path(certifi.where()).read_text()
    end = "-----END CERTIFICATE-----"
    return bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)] + "\n"


KAFKA_VARIABLES = (
    "OMS_KAFKA_BOOTSTRAP",
    "OMS_KAFKA_SECURITY_PROTOCOL",
    "OMS_KAFKA_SASL_MECHANISM",
    "OMS_KAFKA_SASL_USERNAME",
    "OMS_KAFKA_SASL_PASSWORD",
    "OMS_KAFKA_SSL_CAFILE",
    "OMS_KAFKA_SSL_CERTFILE",
    "OMS_KAFKA_SSL_KEYFILE",
    "OMS_KAFKA_SSL_KEY_PASSWORD",
)


@pytest.fixture
def kafka_environment(monkeypatch):
    for name in KAFKA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_security_settings_every_client_connects_in_plaintext(kafka_environment):
    settings = ProbeSettings()
    assert settings.kafka_security() is None
    assert client_options(settings) == {"bootstrap_servers": "127.0.0.1:9092"}


def test_sasl_settings_give_faststream_and_aiokafka_the_same_login(kafka_environment):
    kafka_environment.setenv("OMS_KAFKA_BOOTSTRAP", "kafka-1:9094,kafka-2:9094")
    kafka_environment.setenv("OMS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    kafka_environment.setenv("OMS_KAFKA_SASL_USERNAME", "oms-probe")
    kafka_environment.setenv("OMS_KAFKA_SASL_PASSWORD", "s3cret-probe-password")
    settings = ProbeSettings()
    security = settings.kafka_security()
    assert isinstance(security, SASLScram512)
    assert (security.username, security.password, security.use_ssl) == ("oms-probe", "s3cret-probe-password", False)
    assert client_options(settings) == {
        "bootstrap_servers": "kafka-1:9094,kafka-2:9094",
        "security_protocol": "SASL_PLAINTEXT",
        "ssl_context": None,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "oms-probe",
        "sasl_plain_password": "s3cret-probe-password",
    }


def test_sasl_over_tls_checks_the_broker_against_the_given_ca(kafka_environment, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(_some_ca_pem())
    settings = KafkaSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="oms-probe",
        kafka_sasl_password="s3cret-probe-password",
        kafka_ssl_cafile=ca,
    )
    options = client_options(settings)
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-256")
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert options["ssl_context"].check_hostname
    assert len(options["ssl_context"].get_ca_certs()) == 1


def test_sasl_without_a_username_or_password_is_a_configuration_error_that_names_the_variable(kafka_environment):
    kafka_environment.setenv("OMS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="OMS_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs OMS_KAFKA_SASL_USERNAME"):
        ProbeSettings()
    kafka_environment.setenv("OMS_KAFKA_SASL_USERNAME", "oms-probe")
    with pytest.raises(ValidationError, match="needs OMS_KAFKA_SASL_PASSWORD"):
        ProbeSettings()


def test_a_login_without_a_sasl_protocol_is_refused_rather_than_silently_unused(kafka_environment):
    kafka_environment.setenv("OMS_KAFKA_SASL_USERNAME", "oms-probe")
    kafka_environment.setenv("OMS_KAFKA_SASL_PASSWORD", "s3cret-probe-password")
    with pytest.raises(ValidationError, match="OMS_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not log in") as refused:
        ProbeSettings()
    assert "s3cret-probe-password" not in str(refused.value)


def test_tls_files_without_a_tls_protocol_or_that_do_not_exist_are_refused(kafka_environment, tmp_path):
    kafka_environment.setenv("OMS_KAFKA_SSL_CAFILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match="kafka_ssl_cafile"):
        ProbeSettings()
    (tmp_path / "ca.pem").write_text(_some_ca_pem())
    kafka_environment.setenv("OMS_KAFKA_SSL_CAFILE", str(tmp_path / "ca.pem"))
    with pytest.raises(ValidationError, match="does not use TLS"):
        ProbeSettings()


def test_unknown_protocols_and_mechanisms_are_refused(kafka_environment):
    kafka_environment.setenv("OMS_KAFKA_SECURITY_PROTOCOL", "SASL")
    with pytest.raises(ValidationError, match="kafka_security_protocol"):
        ProbeSettings()
    kafka_environment.setenv("OMS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    kafka_environment.setenv("OMS_KAFKA_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ValidationError, match="kafka_sasl_mechanism"):
        ProbeSettings()


def test_the_password_is_never_shown_by_the_settings(kafka_environment):
    settings = KafkaSettings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="oms-probe", kafka_sasl_password="s3cret-pw"
    )
    assert "s3cret-pw" not in repr(settings)
    assert "s3cret-pw" not in str(settings.model_dump())
