"""HTTP: what customer service asks the notifications service (bearer auth on everything but health)."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from oms_contracts.notification import NotificationChannel
from oms_runtime import Principal

from . import store
from .domain import Status

router = APIRouter(tags=["notifications"])


class NotificationView(BaseModel):
    """One message about an order, as the customer got it (or will, once sent)."""

    id: uuid.UUID
    template: str = Field(description="order_confirmation, split_prewarning, backorder_notice, shipped, delivered")
    locale: str = Field(
        description="The customer's locale; the message is in German for de, de-DE, de_AT…, else English"
    )
    channel: NotificationChannel
    recipient: str
    recipient_name: str | None
    subject: str
    body_text: str = Field(description="The plain-text body, word for word what the customer reads")
    status: Status
    attempts: int = Field(description="Tries to hand the message to the mail server so far")
    cause_event_id: uuid.UUID = Field(description="The event that called for the message")
    created_at: datetime
    sent_at: datetime | None
    failed_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When a pending message is tried next")
    last_error: str | None


class Problem(BaseModel):
    detail: str


@router.get(
    "/notifications",
    summary="Every message about an order, in the order they go out to the customer",
    responses={
        status.HTTP_401_UNAUTHORIZED: {"model": Problem, "description": "No bearer token, or an unknown one"},
        status.HTTP_404_NOT_FOUND: {
            "model": Problem,
            "description": "No message about this order yet; the detail says whether some wait for the order's "
            "contact (its order.accepted not consumed yet)",
        },
    },
)
async def notifications_of_order(
    request: Request, who: Principal, order_id: uuid.UUID = Query(description="The order's id")
) -> list[NotificationView]:
    async with request.app.state.service.database.connect() as conn:
        rows = await store.notifications_of_order(conn, order_id)
        waiting = 0 if rows else await store.count_awaiting_contact(conn, order_id)
    if not rows:
        detail = f"no message about order {order_id} yet"
        if waiting:
            detail += f"; {waiting} wait for the customer's contact, which comes with the order's acceptance"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail)
    return [NotificationView.model_validate(row._mapping) for row in rows]
