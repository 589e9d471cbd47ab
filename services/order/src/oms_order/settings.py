from typing import ClassVar

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, field_validator

from oms_runtime import ServiceSettings, service_field
from oms_runtime.links import MIN_KEY_BYTES


class OrderSettings(ServiceSettings):
    service: ClassVar[str] = "order"
    database_url: str = service_field("order", "database_url", "postgresql+asyncpg://oms:oms@127.0.0.1:5432/oms_order")
    http_port: int = service_field("order", "http_port", 8081)
    # Where the order's single view asks for the live queue position of backordered units (OMS_ORDER_INVENTORY_URL).
    inventory_url: str = service_field("order", "inventory_url", "http://127.0.0.1:8083")
    # Short: the view shows the order without positions rather than keep customer service waiting.
    inventory_timeout_s: float = Field(default=1.0, gt=0, validation_alias="OMS_ORDER_INVENTORY_TIMEOUT_S")
    # The token the customer's wait-or-cancel page shows inventory (the customer has none); unset: the page shows
    # what waits without its place in the queue (OMS_ORDER_INVENTORY_TOKEN).
    inventory_token: SecretStr | None = Field(default=None, validation_alias="OMS_ORDER_INVENTORY_TOKEN")
    # The key notifications signs customers' links with (OMS_CUSTOMER_LINK_KEY, its UTF-8 bytes, at least 32).
    # Unset: the wait-or-cancel page answers 503 "links are not configured" (and start-up says so).
    customer_link_key: SecretStr | None = None
    # The stuck-order check: how often it looks, and how long each wait may last before an operator is alerted.
    stuck_check_interval_s: PositiveFloat = service_field("order", "stuck_check_interval_s", 60.0)
    stuck_paid_minutes: PositiveInt = service_field("order", "stuck_paid_minutes", 30)  # paid, no request yet
    stuck_requested_hours: PositiveFloat = service_field("order", "stuck_requested_hours", 4.0)  # not accepted
    stuck_accepted_hours: PositiveFloat = service_field("order", "stuck_accepted_hours", 24.0)  # not shipped
    stuck_backorder_days: PositiveInt = service_field("order", "stuck_backorder_days", 1)  # past its expected date
    stuck_no_progress_hours: PositiveFloat = service_field("order", "stuck_no_progress_hours", 24.0)

    @field_validator("customer_link_key", "inventory_token", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("customer_link_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"OMS_CUSTOMER_LINK_KEY needs at least {MIN_KEY_BYTES} bytes")
        return value

    @property
    def link_key(self) -> bytes | None:
        return self.customer_link_key.get_secret_value().encode() if self.customer_link_key else None
