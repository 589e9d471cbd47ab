"""How every Kafka client of the OMS connects: bootstrap servers and security (SASL, TLS), from one set of settings.

The services' FastStream broker, the outbox relay's producer, the admin client that creates topics and every client
the `oms` command builds take their connection from here, so a broker that demands SASL or TLS needs only the
environment:

    OMS_KAFKA_BOOTSTRAP            host:port[,host:port...]
    OMS_KAFKA_SECURITY_PROTOCOL    PLAINTEXT (default) | SASL_PLAINTEXT | SASL_SSL | SSL
    OMS_KAFKA_SASL_MECHANISM       SCRAM-SHA-512 (default) | SCRAM-SHA-256 | PLAIN
    OMS_KAFKA_SASL_USERNAME        the principal this process logs in as (User:<name> in ACLs)
    OMS_KAFKA_SASL_PASSWORD
    OMS_KAFKA_SSL_CAFILE           CA bundle (PEM) the broker's certificate is checked against; system CAs if unset
    OMS_KAFKA_SSL_CERTFILE         client certificate (PEM), for brokers that authenticate clients by certificate
    OMS_KAFKA_SSL_KEYFILE          its private key (PEM), unless the certificate file holds it
    OMS_KAFKA_SSL_KEY_PASSWORD     the key's passphrase, if it has one
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]

_SASL_SECURITY = {"SCRAM-SHA-512": SASLScram512, "SCRAM-SHA-256": SASLScram256, "PLAIN": SASLPlaintext}
_AUTHENTICATION_ERRORS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    UnsupportedSaslMechanismError,
)
_AUTHORIZATION_ERRORS = (TopicAuthorizationFailedError, GroupAuthorizationFailedError, ClusterAuthorizationFailedError)


class KafkaSettings(BaseSettings):
    """Where the broker is and how to log in. ServiceSettings extends it; the `oms` command reads it alone."""

    # hide_input_in_errors: a refused value may be a password; errors name the variable and the problem only.
    model_config = SettingsConfigDict(
        env_prefix="OMS_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = None
    kafka_ssl_certfile: FilePath | None = None
    kafka_ssl_keyfile: FilePath | None = None
    kafka_ssl_key_password: SecretStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        # Each mistake here would otherwise show up later as a broker that "cannot be reached" or a client that
        # silently connects without logging in.
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol in ("SSL", "SASL_SSL")
        if sasl and not (self.kafka_sasl_username or "").strip():
            raise ValueError(
                f"OMS_KAFKA_SECURITY_PROTOCOL={protocol} needs OMS_KAFKA_SASL_USERNAME, the principal to log in as"
            )
        if sasl and not (self.kafka_sasl_password and self.kafka_sasl_password.get_secret_value()):
            raise ValueError(f"OMS_KAFKA_SECURITY_PROTOCOL={protocol} needs OMS_KAFKA_SASL_PASSWORD")
        if not sasl and (self.kafka_sasl_username or self.kafka_sasl_password):
            raise ValueError(
                f"OMS_KAFKA_SASL_USERNAME/PASSWORD are set but OMS_KAFKA_SECURITY_PROTOCOL={protocol} does not log "
                "in: use SASL_PLAINTEXT or SASL_SSL"
            )
        tls_files = (
            self.kafka_ssl_cafile,
            self.kafka_ssl_certfile,
            self.kafka_ssl_keyfile,
            self.kafka_ssl_key_password,
        )
        if not tls and any(tls_files):
            raise ValueError(
                f"OMS_KAFKA_SSL_* are set but OMS_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS: use SSL or "
                "SASL_SSL"
            )
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("OMS_KAFKA_SSL_KEYFILE needs OMS_KAFKA_SSL_CERTFILE, the certificate it belongs to")
        return self

    def kafka_security(self) -> BaseSecurity | None:
        """The FastStream security object (what KafkaBroker(security=...) takes); None for PLAINTEXT."""
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return None
        ssl_context = None
        if protocol in ("SSL", "SASL_SSL"):
            password = self.kafka_ssl_key_password
            ssl_context = create_ssl_context(
                cafile=self.kafka_ssl_cafile,
                certfile=self.kafka_ssl_certfile,
                keyfile=self.kafka_ssl_keyfile,
                password=password.get_secret_value() if password else None,
            )
        if protocol == "SSL":
            return BaseSecurity(ssl_context=ssl_context, use_ssl=True)
        assert self.kafka_sasl_username and self.kafka_sasl_password  # the validator saw to it
        return _SASL_SECURITY[self.kafka_sasl_mechanism](
            self.kafka_sasl_username,
            self.kafka_sasl_password.get_secret_value(),
            ssl_context=ssl_context,
            use_ssl=protocol == "SASL_SSL",
        )


Kafka = KafkaSettings | str
"""A connection: settings, or only a bootstrap address (PLAINTEXT; what tests against the plaintext broker pass)."""


def client_options(kafka: Kafka) -> dict[str, Any]:
    """The keyword arguments of every aiokafka client (producer, consumer, admin): servers, protocol, TLS, login.

    Built by FastStream's own mapping of its security objects, so the relay and the tools log in exactly as the
    services' FastStream broker does."""
    if isinstance(kafka, str):
        return {"bootstrap_servers": kafka}
    return {"bootstrap_servers": kafka.kafka_bootstrap, **parse_security(kafka.kafka_security())}


def bootstrap_of(kafka: Kafka) -> str:
    return kafka if isinstance(kafka, str) else kafka.kafka_bootstrap


def security_of(kafka: Kafka) -> BaseSecurity | None:
    return None if isinstance(kafka, str) else kafka.kafka_security()


async def kafka_problem(kafka: Kafka, error: BaseException, *, timeout: float = 2.0) -> str:
    """What a failed Kafka call means, for readiness and operators: never a password, an address or a traceback.

    A client that cannot bootstrap only says "Unable to bootstrap" (aiokafka logs the reason and moves on), so when
    the error itself does not tell, one connection of our own, with the same login, tells a refused login from a
    broker that does not answer."""
    if isinstance(error, _AUTHENTICATION_ERRORS):
        return "authentication failed"
    if isinstance(error, _AUTHORIZATION_ERRORS):
        return f"not authorized ({type(error).__name__})"
    options = client_options(kafka)
    servers = options.pop("bootstrap_servers")
    try:
        host, port, _ = collect_hosts(servers)[0]
        connection = await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=int(timeout * 1000), **options), timeout
        )
    except _AUTHENTICATION_ERRORS:
        return "authentication failed"
    except Exception:
        return "unreachable"
    connection.close()
    # The broker answers and accepts the login: the failure was elsewhere (e.g. the client is not started yet).
    return f"not ready ({type(error).__name__})"
