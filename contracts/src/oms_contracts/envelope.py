"""The CloudEvents 1.0 structured-mode envelope every message travels in."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Literal

from pydantic import Field

from .types import Contract, UtcDatetime, utc_now

CONTENT_TYPE = "application/cloudevents+json"


class CloudEvent(Contract):
    """One event. Subclasses pin `type` to a Literal (the discriminator) and `data` to their payload model."""

    specversion: Literal["1.0"] = "1.0"
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    source: str = Field(min_length=1, max_length=200, description="URI-reference of the producer, e.g. /oms/order")
    time: UtcDatetime = Field(default_factory=utc_now)
    subject: str | None = Field(default=None, max_length=200)
    datacontenttype: Literal["application/json"] = "application/json"
    data: Contract

    # The event type string, readable from the class without an instance.
    TYPE: ClassVar[str]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("type")
        if field is not None and isinstance(field.default, str):
            cls.TYPE = field.default

    def key(self) -> str:
        """The Kafka record key: what keeps related events in one partition, in order."""
        return self.subject or str(self.id)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()
