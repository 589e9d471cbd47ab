"""HTTP: what customer service and operators ask the notifications service (bearer auth on everything but health)."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from oms_contracts.notification import NotificationChannel
from oms_runtime import Principal

from . import store
from .domain import Audience, Status, Template

router = APIRouter(tags=["notifications"])


class NotificationView(BaseModel):
    """One message, as its reader got it (or will, once sent)."""

    id: uuid.UUID
    order_id: uuid.UUID | None = Field(description="The order it is about; null for a low-stock alert")
    template: Template
    audience: Audience = Field(description="customer: the order's customer; operators: OMS_NOTIFICATIONS_OPS_EMAIL")
    locale: str = Field(
        description="The customer's locale; the message is in German for de, de-DE, de_AT…, else English"
    )
    channel: NotificationChannel
    recipient: str = Field(description="The address; for operators, every address the alert went to, comma-separated")
    recipient_name: str | None
    subject: str
    body_text: str = Field(description="The plain-text body, word for word what the reader reads")
    status: Status
    attempts: int = Field(description="Tries to hand the message to the mail server so far")
    cause_event_id: uuid.UUID = Field(description="The event that called for the message")
    created_at: datetime
    sent_at: datetime | None
    failed_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When a pending message is tried next")
    last_error: str | None = Field(
        description="Why the last try did not get through; for an unknown outcome, what was lost and where to look"
    )
    claimed_at: datetime | None = Field(description="When a sender last took the message to send it")
    claimed_by: str | None = Field(description="Which sender (host:pid:random) last took it")


class Problem(BaseModel):
    detail: str


class ValidationProblem(BaseModel):
    detail: list[dict] | str = Field(
        description="What is wrong with the query: FastAPI's list of field errors, or a sentence"
    )


@router.get(
    "/notifications",
    summary="The messages about an order, made from one template, or in one status",
    description=(
        "`order_id` alone: every message to that order's customer, in the order they go out. `template` and/or "
        "`status` (with `order_id` or without): the messages matching them all, newest first, at most `limit`; "
        "operators' alerts (order_stuck, low_stock) are listed by template, and `status=unknown` lists every mail "
        "whose sender lost track of it (it may or may not have reached the customer; it is never sent again). A "
        "status alone may be `failed` or `unknown`. At least one of the three is required."
    ),
    responses={
        status.HTTP_401_UNAUTHORIZED: {"model": Problem, "description": "No bearer token, or an unknown one"},
        status.HTTP_404_NOT_FOUND: {
            "model": Problem,
            "description": "An order is named and nothing matches; for an order without any message the detail "
            "says whether some wait for the order's contact (its order.accepted not consumed yet)",
        },
        status.HTTP_422_UNPROCESSABLE_CONTENT: {
            "model": ValidationProblem,
            "description": "None of order_id, template and status; a status alone other than failed or unknown; an "
            "order_id that is not a UUID, an unknown template or status, or a limit out of range",
        },
    },
)
async def list_notifications(
    request: Request,
    who: Principal,
    order_id: uuid.UUID | None = Query(default=None, description="The order's id"),
    template: Template | None = Query(default=None, description="Only messages made from this template"),
    status_: Status | None = Query(default=None, alias="status", description="Only messages in this status"),
    limit: int = Query(
        default=100, ge=1, le=1000, description="With template or status: at most this many, newest first"
    ),
) -> list[NotificationView]:
    if order_id is None and template is None and status_ is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give order_id, template, status, or several")
    if status_ is not None and order_id is None and template is None and status_ not in store.STATUSES_TO_LOOK_AT:
        looked_at = " or ".join(sorted(s.value for s in store.STATUSES_TO_LOOK_AT))
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"status alone may be {looked_at}; add order_id or template"
        )
    async with request.app.state.service.database.connect() as conn:
        if template is None and status_ is None:
            rows = await store.notifications_of_order(conn, order_id)
        else:
            rows = await store.notifications_matching(conn, limit, template, order_id, status_)
        waiting = 0 if rows or order_id is None else await store.count_awaiting_contact(conn, order_id)
    if not rows and order_id is not None:
        detail = f"no message about order {order_id} yet"
        if template is not None or status_ is not None:
            which = " ".join(x.value for x in (status_, template) if x is not None)
            detail = f"no {which} message about order {order_id}"
        elif waiting:
            detail += f"; {waiting} wait for the customer's contact, which comes with the order's acceptance"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail)
    return [NotificationView.model_validate(row._mapping) for row in rows]
