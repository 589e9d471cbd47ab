"""What inventory's backorder queue says about an order's waiting lines: their live position and expected date.

Asked on every read of the order's single view, since both change with every receipt and every line served ahead;
the order service does not keep a copy. A slow or failed answer never fails the view: it says so instead."""

from __future__ import annotations

import uuid
from datetime import date

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from oms_runtime import telemetry


class QueuePlace(BaseModel):
    """One waiting line as inventory's `GET /backorders?order_id=` reports it (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    order_id: uuid.UUID
    line_id: str
    sku: str
    quantity: int
    position: int | None = None
    expected_date: date | None = None


_PLACES = TypeAdapter(list[QueuePlace])


class Unavailable(Exception):
    """Inventory could not tell where the order's lines wait; the message says why, for the person reading."""


async def places(
    base_url: str, order_id: uuid.UUID, authorization: str | None, timeout: float
) -> dict[str, QueuePlace]:
    """The order's waiting lines in inventory's queues, by line id. The caller's token is forwarded: inventory
    decides what the caller may see."""
    headers = telemetry.inject()
    if authorization:
        headers["Authorization"] = authorization
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
            response = await client.get("/backorders", params={"order_id": str(order_id)}, headers=headers)
        response.raise_for_status()
        found = _PLACES.validate_json(response.content)
    except httpx.TimeoutException:
        raise Unavailable(f"inventory did not answer within {timeout:g} s") from None
    except httpx.HTTPStatusError as error:
        raise Unavailable(f"inventory answered {error.response.status_code}") from None
    except httpx.HTTPError as error:
        raise Unavailable(f"inventory could not be reached ({type(error).__name__})") from None
    except ValidationError as error:
        raise Unavailable(f"inventory's answer was not understood ({error.error_count()} errors)") from None
    return {place.line_id: place for place in found if place.order_id == order_id}
