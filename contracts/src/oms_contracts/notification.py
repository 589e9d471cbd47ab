"""What notifications publishes on `oms.notifications.v1`, keyed by order_id: a record of every message."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Literal

from pydantic import Field

from .envelope import CloudEvent
from .types import Contract, NonEmptyStr, Text, UtcDatetime


class NotificationChannel(StrEnum):
    email = "email"
    webhook = "webhook"


class NotificationData(Contract):
    notification_id: uuid.UUID
    order_id: uuid.UUID | None = None
    template: NonEmptyStr
    channel: NotificationChannel
    recipient: str = Field(min_length=1, max_length=320, description="An email address or a webhook URL")
    subject: str | None = Field(default=None, max_length=300)
    cause_event_id: uuid.UUID
    attempts: int = Field(ge=1)


class NotificationSentData(NotificationData):
    sent_at: UtcDatetime


class NotificationFailedData(NotificationData):
    failed_at: UtcDatetime
    error: Text
    outcome_unknown: bool = Field(
        default=False,
        description="True when the message may have reached its recipient after all: its sender lost track of it "
        "between handing it to the mail server and recording the answer. It is not sent again (at most once); the "
        "mail server's log for its Message-ID says whether it went out",
    )


class _NotificationEvent(CloudEvent):
    data: NotificationData

    def key(self) -> str:
        return str(self.data.order_id or self.data.notification_id)


class NotificationSent(_NotificationEvent):
    type: Literal["oms.notification.sent.v1"] = "oms.notification.sent.v1"
    data: NotificationSentData


class NotificationFailed(_NotificationEvent):
    type: Literal["oms.notification.failed.v1"] = "oms.notification.failed.v1"
    data: NotificationFailedData
