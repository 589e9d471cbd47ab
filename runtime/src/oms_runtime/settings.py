"""Configuration from the environment (pydantic-settings). Every service subclasses ServiceSettings."""

from __future__ import annotations

import json
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from .kafka import KafkaSettings


class Role(StrEnum):
    """What a token may do over HTTP. A service's endpoints say which roles they need (`http.require_role`)."""

    viewer = "viewer"  # reads: every GET
    cs = "cs"  # customer service: reads, cancellations, notes
    finance = "finance"  # reads, notes
    admin = "admin"  # everything


class ApiGrant(BaseModel):
    """A token's principal and its roles: `{"principal": "ana", "roles": ["cs"]}` in OMS_API_TOKENS."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    principal: str = Field(min_length=1, max_length=200)
    roles: frozenset[Role] = Field(description="An empty list grants nothing but being known (every route: 403)")


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
    # token -> principal with roles, e.g. {"ana-token": {"principal": "ana", "roles": ["cs"]}}; a plain string,
    # {"demo-cs-token": "cs-demo"}, is a principal with every role (what such tokens could do before roles existed).
    # Empty means every authenticated endpoint answers 401. NoDecode: the validator below parses the JSON, so that a
    # mistake is reported by name and an empty value is {}.
    api_tokens: Annotated[dict[str, str | ApiGrant], NoDecode] = Field(default_factory=dict)
    log_level: str = "INFO"
    # Largest batch a consumer takes at once, and how long a poll (and the broker, a fetch) waits for the first
    # record: a batch is handed over as soon as records have arrived, so this is only how often an idle subscription
    # asks again. Below 3 s an idle service burns more (1 s: about twice as much); above it, heartbeats dominate.
    batch_max_records: int = Field(default=500, ge=1)
    batch_timeout_ms: int = Field(default=3000, ge=100)
    # Traces: OTLP over HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set (standard OpenTelemetry variable), and/or
    # one JSON span per line into this file (what the end-to-end test reads).
    trace_file: str | None = None
    db_pool_size: int = Field(default=10, ge=1)
    # Objects a service may allocate (net of those freed) before Python collects its youngest generation: Python's
    # 700 made the collector about half of a service's CPU at 300 orders/s (docs/performance.md, step 28). A batch
    # makes tens of thousands of short-lived objects; collected every 700, many outlive a collection or two and end in
    # the oldest generation, whose full collections were most of that time. Each collection is a pause: a lower value
    # (10,000) makes them shorter for a little more CPU.
    gc_threshold: int = Field(default=50_000, ge=100)
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
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"OMS_API_TOKENS must be a JSON object of token to principal or to "
                    f'{{"principal": ..., "roles": [...]}}: {error}'
                ) from error
        if isinstance(value, dict):
            value = {token: _grant(grant) for token, grant in value.items()}
        return value

    def grant(self, token: str) -> ApiGrant | None:
        """Who a token stands for and what it may do; None for an unknown token."""
        found = self.api_tokens.get(token)
        if isinstance(found, str):
            return ApiGrant(principal=found, roles=frozenset(Role))
        return found


def _grant(value: object) -> object:
    """A token's grant checked here, so that an error names the principal and never the token (the dict key)."""
    if not isinstance(value, dict):
        return value
    try:
        return ApiGrant.model_validate(value)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'grant'}: {e['msg']}" for e in error.errors(include_input=False)
        )
        raise ValueError(
            f"OMS_API_TOKENS: the grant of principal {value.get('principal')!r} is invalid: {problems}"
        ) from None


def service_field(service: str, name: str, default: Any) -> Any:
    """A field read from OMS_<SERVICE>_<NAME>, falling back to OMS_<NAME>, then to `default`."""
    return Field(
        default=default,
        validation_alias=AliasChoices(f"OMS_{service.upper()}_{name.upper()}", f"OMS_{name.upper()}"),
    )
