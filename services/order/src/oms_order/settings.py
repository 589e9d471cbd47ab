from typing import ClassVar

from pydantic import Field

from oms_runtime import ServiceSettings, service_field


class OrderSettings(ServiceSettings):
    service: ClassVar[str] = "order"
    database_url: str = service_field("order", "database_url", "postgresql+asyncpg://oms:oms@127.0.0.1:5432/oms_order")
    http_port: int = service_field("order", "http_port", 8081)
    # Where the order's single view asks for the live queue position of backordered units (OMS_ORDER_INVENTORY_URL).
    inventory_url: str = service_field("order", "inventory_url", "http://127.0.0.1:8083")
    # Short: the view shows the order without positions rather than keep customer service waiting.
    inventory_timeout_s: float = Field(default=1.0, gt=0, validation_alias="OMS_ORDER_INVENTORY_TIMEOUT_S")
