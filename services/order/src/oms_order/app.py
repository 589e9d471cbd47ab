"""Wiring of the order service: settings, consumers, HTTP."""

from oms_contracts.topics import ORDER_EVENTS, fulfillment_requests
from oms_runtime import Service

from . import api, handlers, metrics
from .settings import OrderSettings

DESCRIPTION = (
    "Owns each order's lifecycle, its lines, its fulfillments and the audit timeline. Consumes channel orders and "
    "payments, routing plans, inventory allocations and fulfillment updates; publishes order events and fulfillment "
    "requests on each source's own topic."
)


def create_service(settings: OrderSettings) -> Service:
    service = Service(settings, description=DESCRIPTION)
    handlers.register(service)
    metrics.register(service)
    service.publishes(ORDER_EVENTS)
    service.publishes(
        fulfillment_requests("{source_code}"), "Fulfillment requests; one topic per source, named by its code"
    )
    service.http.include_router(api.router)
    return service


service = create_service(OrderSettings())
