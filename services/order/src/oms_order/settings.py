from typing import ClassVar

from oms_runtime import ServiceSettings, service_field


class OrderSettings(ServiceSettings):
    service: ClassVar[str] = "order"
    database_url: str = service_field("order", "database_url", "postgresql+asyncpg://oms:oms@127.0.0.1:5432/oms_order")
    http_port: int = service_field("order", "http_port", 8081)
