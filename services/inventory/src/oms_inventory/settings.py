from typing import Annotated, ClassVar

from pydantic import Field

from oms_runtime import ServiceSettings, service_field


class InventorySettings(ServiceSettings):
    service: ClassVar[str] = "inventory"
    database_url: str = service_field(
        "inventory", "database_url", "postgresql+asyncpg://oms:oms@127.0.0.1:5432/oms_inventory"
    )
    http_port: int = service_field("inventory", "http_port", 8083)
    # `inventory.low_stock.v1` goes out when a (sku, source)'s available units drop below this, from at or above it.
    low_stock_threshold: int = service_field("inventory", "low_stock_threshold", 5)
    # How long a cancellation that overtook its plan is remembered (a tombstone) for that plan to come; a plan
    # later than that is not coming, or its consumer has been stopped for days (an incident of its own).
    tombstone_days: int = service_field("inventory", "tombstone_days", 7)
    # How long a receipt, count, expected receipt or return for a source inventory has not heard of yet waits for the
    # network to announce it (the network event may simply come later, on its own topic) before it is dead-lettered
    # with the reason; and how often that is checked.
    held_receipt_grace_s: Annotated[float, Field(ge=0)] = service_field("inventory", "held_receipt_grace_s", 600.0)
    held_receipt_check_s: Annotated[float, Field(gt=0)] = service_field("inventory", "held_receipt_check_s", 10.0)
