"""Wiring of the inventory service: settings, consumers, HTTP."""

from oms_inventory import api, handlers, metrics
from oms_inventory.settings import InventorySettings
from oms_runtime import Service

DESCRIPTION = "OMS inventory: stock per (sku, source), all-or-nothing shipment reservations, the backorder queue"


def create_service(settings: InventorySettings) -> Service:
    service = Service(settings, description=DESCRIPTION)
    handlers.subscribe(service, settings)
    metrics.register(service)
    service.http.include_router(api.router)
    return service


service = create_service(InventorySettings())
