"""HTTP: what customer service asks the notifications service (bearer auth on everything but health)."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from oms_contracts.notification import NotificationChannel
from oms_runtime import Principal

from . import store
from .domain import Status

router = APIRouter(tags=["notifications"])


class NotificationView(BaseModel):
    id: uuid.UUID
    template: str
    channel: NotificationChannel
    recipient: str
    subject: str
    status: Status
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None


@router.get("/notifications", summary="Every notification about an order, oldest first")
async def notifications_of_order(
    request: Request, who: Principal, order_id: uuid.UUID = Query(description="The order's id")
) -> list[NotificationView]:
    async with request.app.state.service.database.connect() as conn:
        rows = await store.notifications_of_order(conn, order_id)
    return [NotificationView.model_validate(row._mapping) for row in rows]
