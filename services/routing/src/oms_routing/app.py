"""The routing service: wiring only."""

from oms_contracts.topics import ROUTING_NETWORK, ROUTING_PLANS
from oms_runtime import Service

from . import api, handlers
from .settings import RoutingSettings

DESCRIPTION = (
    "Owns the fulfillment network and plans every paid order asynchronously: which source ships which lines, "
    "re-planned without a source that will not ship its lines."
)


def create_service(settings: RoutingSettings) -> Service:
    service = Service(settings, description=DESCRIPTION)
    handlers.register(service)
    service.publishes(ROUTING_PLANS)
    service.publishes(ROUTING_NETWORK)
    service.http.include_router(api.router)
    return service


service = create_service(RoutingSettings())
