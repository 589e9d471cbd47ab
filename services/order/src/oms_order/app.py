"""Wiring of the order service: settings, consumers, HTTP, the stuck-order check."""

import asyncio
import logging
from datetime import UTC, datetime

from oms_contracts.topics import ORDER_EVENTS, fulfillment_requests
from oms_runtime import Service

from . import api, customer, handlers, metrics, writes
from .settings import OrderSettings
from .stuck import Waits

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Owns each order's lifecycle, its lines, its fulfillments, cancellations, refunds, returns and the audit timeline. "
    "Consumes channel orders, payments, cancellations and returns, routing plans, inventory allocations and "
    "fulfillment updates; publishes order events and fulfillment requests (and cancel requests) on each source's "
    "own topic."
)


def create_service(settings: OrderSettings) -> Service:
    service = Service(settings, description=DESCRIPTION)
    handlers.register(service)
    metrics.register(service)
    service.publishes(ORDER_EVENTS)
    service.publishes(
        fulfillment_requests("{source_code}"),
        "Fulfillment requests and cancel requests; one topic per source, named by its code",
    )
    service.http.include_router(api.router)
    service.http.include_router(customer.router)
    waits = Waits.from_settings(settings)

    @service.on_startup
    async def say_what_is_not_configured() -> None:
        if settings.customer_link_key is None:
            log.warning(
                "OMS_CUSTOMER_LINK_KEY is not set: links are not configured, the customer's wait-or-cancel page "
                "answers 503"
            )

    @service.worker
    async def check_stuck_orders() -> None:
        """Every `stuck_check_interval_s`: raise order.stuck.v1 once per episode of an order without progress."""
        while True:
            try:
                raised = await writes.check_stuck(service, waits, datetime.now(UTC))
                if raised:
                    log.info("%d stuck order episode(s) raised", raised)
            except Exception as error:  # a failed pass is retried at the next; the service goes on
                log.warning("stuck-order check failed, trying again in %gs: %r", settings.stuck_check_interval_s, error)
            await asyncio.sleep(settings.stuck_check_interval_s)

    return service


service = create_service(OrderSettings())
