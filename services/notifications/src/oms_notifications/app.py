"""Wiring of the notifications service: its consumers, its sender, its HTTP endpoints."""

from __future__ import annotations

import logging

from oms_contracts.topics import NOTIFICATIONS
from oms_runtime import Service

from . import handlers
from .api import router
from .sender import Sender
from .settings import NotificationsSettings

log = logging.getLogger(__name__)


def create_service(settings: NotificationsSettings) -> Service:
    service = Service(
        settings,
        description="Tells customers and operators what happened to their orders: email over SMTP, each message "
        "recorded with its delivery state.",
    )
    sender = Sender.from_settings(service.database, settings, after_commit=service.relay.wake)
    # A batch that queued mail wakes the sender instead of leaving it to its tick.
    handlers.register(service, settings.links, settings.ops_email, queued=sender.wake)

    @service.on_startup
    async def say_what_is_not_configured() -> None:
        # Once, where an operator reads the start-up: both are valid choices, neither should be a surprise.
        if settings.customer_link_key is None:
            log.warning(
                "OMS_CUSTOMER_LINK_KEY is not set: backorder notices carry no wait-or-cancel link and ask the "
                "customer to reply instead"
            )
        if not settings.ops_email:
            log.warning("OMS_NOTIFICATIONS_OPS_EMAIL is not set: no mail to operators (stuck orders, low stock)")

    service.worker(sender.run)
    service.publishes(NOTIFICATIONS)
    service.http.include_router(router)
    return service


service = create_service(NotificationsSettings())
