"""The CloudEvents 1.0 structured-mode envelope every message travels in."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .types import Contract, UtcDatetime, utc_now

CONTENT_TYPE = "application/cloudevents+json"
# The validation context of a record read from a topic (`Topic.parse`): see `CloudEvent._an_id_of_its_own`.
READ_FROM_A_TOPIC = {"read_from_a_topic": True}


class CloudEvent(Contract):
    """One event. Subclasses pin `type` to a Literal (the discriminator) and `data` to their payload model."""

    specversion: Literal["1.0"] = "1.0"
    # The default is for events being made; one read from a topic must bring its own (`_an_id_of_its_own`).
    id: uuid.UUID = Field(default_factory=uuid.uuid4, validate_default=True)
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

    @field_validator("id", mode="before")
    @classmethod
    def _an_id_of_its_own(cls, value: Any, info: ValidationInfo) -> Any:
        """CloudEvents require an id, and the inbox knows an event by it: an event read from a topic without one is
        refused, never given a new one at each read (each redelivery of it would be a new event, applied again).
        Read from JSON a given id is text, so a UUID object here is the default standing in for a missing one."""
        if isinstance(value, uuid.UUID) and info.context and info.context.get("read_from_a_topic"):
            raise PydanticCustomError("missing", "Field required")
        return value

    def key(self) -> str:
        """The Kafka record key: what keeps related events in one partition, in order."""
        return self.subject or str(self.id)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    def headers(self) -> list[tuple[str, str]]:
        """Kafka headers published beside the record besides `ce-type`, for consumers to filter on before decoding.
        Not part of the contract: the body says the same."""
        return []
