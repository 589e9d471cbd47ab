"""Configuration from the environment (pydantic-settings). Every service subclasses ServiceSettings."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from .kafka import KafkaSettings


class ServiceSettings(KafkaSettings):
    """What every service needs. A subclass names the service and its database and HTTP port defaults.

    Shared values read OMS_<NAME> (OMS_KAFKA_BOOTSTRAP ...); per-service values read OMS_<SERVICE>_<NAME> first
    (OMS_ORDER_DATABASE_URL, OMS_ORDER_HTTP_PORT), so one environment file can configure all four services. How the
    service reaches Kafka (OMS_KAFKA_BOOTSTRAP, OMS_KAFKA_SECURITY_PROTOCOL, OMS_KAFKA_SASL_* ...) is KafkaSettings'.
    """

    # populate_by_name: `OrderSettings(database_url=...)` (tests, tools) sets the field; without it the keyword is
    # silently ignored, because per-service fields are read through their OMS_<SERVICE>_<NAME> aliases.
    # hide_input_in_errors: a mistyped value may hold secrets (API tokens, a database password); errors name the
    # field and the problem, never the value.
    model_config = SettingsConfigDict(
        env_prefix="OMS_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    service: ClassVar[str]

    database_url: str
    http_host: str = "127.0.0.1"
    http_port: int
    # token -> principal, e.g. {"demo-cs-token": "cs-demo"}; empty means every authenticated endpoint answers 401.
    # NoDecode: the validator below parses the JSON, so that a mistake is reported by name and an empty value is {}.
    api_tokens: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    log_level: str = "INFO"
    # Largest batch a consumer takes at once, and how long it waits to fill one.
    batch_max_records: int = Field(default=500, ge=1)
    batch_timeout_ms: int = Field(default=10, ge=0)
    # Traces: OTLP over HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set (standard OpenTelemetry variable), and/or
    # one JSON span per line into this file (what the end-to-end test reads).
    trace_file: str | None = None
    db_pool_size: int = Field(default=10, ge=1)
    # How long the inbox remembers an applied event (OMS_INBOX_RETENTION: seconds or ISO 8601, e.g. P7D), and how
    # often it forgets older ones. Far longer than any redelivery: Kafka redelivers only uncommitted offsets.
    inbox_retention: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    inbox_prune_interval_s: float = Field(default=3600.0, gt=0)
    # How long the relay keeps messages for a topic Kafka does not have (or will not let it write to) before it parks
    # them: a topic created a moment ago may be unknown for a few seconds.
    relay_unknown_topic_grace_s: float = Field(default=60.0, gt=0)
    # The most of an original record's value a dead letter keeps (a larger one is cut and says so in its headers):
    # below the broker's default message.max.bytes (1 MB), with room for the key and the headers.
    dead_letter_max_bytes: int = Field(default=900_000, ge=1)
    # How often the gauges behind GET /metrics are refreshed (consumer end offsets, the outbox, a service's own
    # queries such as orders by status): a scrape reads what the last refresh found and never queries anything.
    metrics_refresh_s: float = Field(default=15.0, gt=0)

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens_from_json(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as error:
                raise ValueError(f"OMS_API_TOKENS must be a JSON object of token to principal: {error}") from error
        return value


def service_field(service: str, name: str, default: Any) -> Any:
    """A field read from OMS_<SERVICE>_<NAME>, falling back to OMS_<NAME>, then to `default`."""
    return Field(
        default=default,
        validation_alias=AliasChoices(f"OMS_{service.upper()}_{name.upper()}", f"OMS_{name.upper()}"),
    )
