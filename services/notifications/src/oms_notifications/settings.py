import json
from datetime import timedelta
from typing import Annotated, ClassVar, Self

from pydantic import EmailStr, Field, SecretStr, TypeAdapter, field_validator, model_validator
from pydantic_settings import NoDecode

from oms_contracts.notification import NotificationData
from oms_runtime import ServiceSettings, service_field
from oms_runtime.links import MIN_KEY_BYTES

from .domain import Links

PositiveInt = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(gt=0)]

# An operators' mail is recorded, and announced in notification events, with all its recipients in one field.
_RECIPIENT_LENGTH = next(
    m.max_length for m in NotificationData.model_fields["recipient"].metadata if hasattr(m, "max_length")
)
_ADDRESSES: TypeAdapter[list[EmailStr]] = TypeAdapter(list[EmailStr])

# A try on a new connection waits for up to eight answers (connect, EHLO, STARTTLS and EHLO again, login, MAIL,
# RCPT, DATA and its end), each up to smtp_timeout; twice that, since a try starts only in a claim's first half,
# and some more for the recording.
CLAIM_TIMEOUT_PER_SMTP_TIMEOUT = 20


class NotificationsSettings(ServiceSettings):
    service: ClassVar[str] = "notifications"
    database_url: str = service_field(
        "notifications", "database_url", "postgresql+asyncpg://oms:oms@127.0.0.1:5432/oms_notifications"
    )
    http_port: int = service_field("notifications", "http_port", 8084)

    # The SMTP server every mail goes through (a mail catcher on 1025 in local runs).
    smtp_host: str = service_field("notifications", "smtp_host", "127.0.0.1")
    smtp_port: int = service_field("notifications", "smtp_port", 1025)
    smtp_username: str | None = service_field("notifications", "smtp_username", None)
    smtp_password: SecretStr | None = service_field("notifications", "smtp_password", None)
    smtp_starttls: bool = service_field("notifications", "smtp_starttls", False)
    smtp_timeout: Seconds = service_field("notifications", "smtp_timeout", 10.0)
    mail_from: str = service_field("notifications", "mail_from", "OMS <orders@oms.local>")

    # Retries: 2^attempts seconds between tries, capped; a message still undelivered after max_attempts fails.
    max_attempts: PositiveInt = service_field("notifications", "max_attempts", 8)
    retry_cap_seconds: Seconds = service_field("notifications", "retry_cap_seconds", 900.0)
    # How many due messages one sender pass claims, and over how many SMTP connections it sends them at once. Each
    # connection waits for the server's answer to every command, so the connections bound the mails per second: eight
    # fell behind 200 mails/s (100 orders/s) on the 2-core bench box, 32 kept up (docs/performance.md, steps 16 and
    # 33), and a relay across a network answers slower still. At most one message per connection can be left
    # `unknown` by a crash; a relay that takes fewer connections from one client wants this lowered.
    send_batch_size: PositiveInt = service_field("notifications", "send_batch_size", 100)
    smtp_connections: PositiveInt = service_field("notifications", "smtp_connections", 32)
    # A message claimed longer ago than this and still `sending` was lost by its sender (stopped, or cut off from
    # the database, between claiming and recording): it becomes `unknown`, never sent again. A sender hands a
    # claimed message over only in the first half of this time; a try takes a few SMTP round trips, each bounded
    # by smtp_timeout, hence at least CLAIM_TIMEOUT_PER_SMTP_TIMEOUT times smtp_timeout.
    claim_timeout_seconds: Seconds = service_field("notifications", "claim_timeout_seconds", 600.0)

    # Where the order service answers the public: the customer's wait-or-cancel page, an order's single view.
    order_public_url: str = service_field("notifications", "order_public_url", "http://127.0.0.1:8081")
    # The key that signs customers' links, shared with the order service that checks them (OMS_CUSTOMER_LINK_KEY,
    # its UTF-8 bytes, at least 32). Unset: the backorder notice carries no link and asks the customer to reply.
    customer_link_key: SecretStr | None = None
    # How long a wait-or-cancel link stays valid, from when the backorder was queued.
    customer_link_days: PositiveInt = service_field("notifications", "customer_link_days", 14)
    # The operators' addresses (stuck orders, low stock): a JSON list or comma-separated; empty, no operators' mail.
    ops_email: Annotated[list[str], NoDecode] = service_field("notifications", "ops_email", [])

    @field_validator("customer_link_key", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("customer_link_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"OMS_CUSTOMER_LINK_KEY needs at least {MIN_KEY_BYTES} bytes")
        return value

    @field_validator("ops_email", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [a for a in text.split(",") if a.strip()]
        addresses = [str(a).strip() for a in _ADDRESSES.validate_python(value)]
        if len(", ".join(addresses)) > _RECIPIENT_LENGTH:
            raise ValueError(
                f"OMS_NOTIFICATIONS_OPS_EMAIL: the addresses together must fit {_RECIPIENT_LENGTH} characters (one "
                "mail goes to them all and is recorded with them); use a distribution list"
            )
        return addresses

    @model_validator(mode="after")
    def _claims_outlive_a_try(self) -> Self:
        least = CLAIM_TIMEOUT_PER_SMTP_TIMEOUT * self.smtp_timeout
        if self.claim_timeout_seconds < least:
            raise ValueError(
                f"OMS_NOTIFICATIONS_CLAIM_TIMEOUT_SECONDS must be at least {CLAIM_TIMEOUT_PER_SMTP_TIMEOUT} times "
                f"OMS_NOTIFICATIONS_SMTP_TIMEOUT ({least:g} s): a claim must outlive the try it holds"
            )
        return self

    @property
    def links(self) -> Links:
        key = self.customer_link_key.get_secret_value().encode() if self.customer_link_key else None
        return Links(self.order_public_url, key, timedelta(days=self.customer_link_days))
