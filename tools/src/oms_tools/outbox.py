"""`oms outbox`: the messages a service's relay parked (it could never publish them), shown, put back, or dropped.

The command talks to the service's own database, as the service does: its URL comes from `--database-url`, else
from the service's own variable (OMS_ORDER_DATABASE_URL ...), else OMS_DATABASE_URL, else the local default that
`make run` uses."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from .errors import FAILED, UNREACHABLE, ToolError


class ServiceName(StrEnum):
    order = "order"
    routing = "routing"
    inventory = "inventory"
    notifications = "notifications"


_PAYLOAD_CHARS = 600
_INDENT = " " * 12


def database_url(service: ServiceName, explicit: str | None) -> str:
    """The service's database, as a libpq URL for asyncpg (the services' SQLAlchemy form is accepted too)."""
    url = (
        explicit
        or os.environ.get(f"OMS_{service.value.upper()}_DATABASE_URL")
        or os.environ.get("OMS_DATABASE_URL")
        or f"postgresql://oms:oms@127.0.0.1:5432/oms_{service.value}"
    )
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _where(url: str) -> str:
    """The database as a person may see it in an error: host, port and name, never the password."""
    _, _, location = url.partition("@")
    return location or url.partition("://")[2]


@contextlib.asynccontextmanager
async def transaction(url: str) -> AsyncIterator[asyncpg.Connection]:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as error:
        raise ToolError(f"cannot reach the database at {_where(url)} ({type(error).__name__})", UNREACHABLE) from None
    except asyncpg.PostgresError as error:
        raise ToolError(f"the database at {_where(url)} refused: {error}", FAILED) from None
    try:
        async with conn.transaction():
            yield conn
    except asyncpg.UndefinedTableError:
        raise ToolError(
            f"the database at {_where(url)} has no parked_messages table: apply the service's migrations "
            "(make migrate)",
            FAILED,
        ) from None
    finally:
        await conn.close()


def _field(name: str, value: str) -> str:
    lines = value.splitlines() or [""]
    return "\n".join([f"  {name:<10}{lines[0]}", *(f"{_INDENT}{line}" for line in lines[1:])])


def _headers(stored: Any) -> dict[str, str]:
    pairs = json.loads(stored) if isinstance(stored, str) else stored
    return {name: value for name, value in pairs}


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def format_parked(row: Any, *, full: bool = False) -> str:
    """One parked message as a block: where it was going, why it could not go, and what it is."""
    payload = bytes(row["payload"])
    text = payload.decode("utf-8", "replace")
    if not full and len(text) > _PAYLOAD_CHARS:
        text = f"{text[:_PAYLOAD_CHARS]}… ({len(payload)} bytes; --full shows all)"
    key = row["key"] if row["key"] is not None else "-"
    if not full and len(key) > 200:
        key = f"{key[:200]}… ({len(key)} characters)"
    rows = [
        f"── parked message {row['id']}",
        _field("topic", row["topic"]),
        _field("key", key),
        _field("type", _headers(row["headers"]).get("ce-type", "-")),
        _field("error", f"{row['error_class']}: {row['error_message']}"),
        _field("written", _when(row["created_at"])),
        _field("parked", f"{_when(row['parked_at'])} after {row['attempts']} tries"),
        _field("size", f"{len(payload)} bytes"),
        _field("payload", text or "(empty)"),
    ]
    return "\n".join(rows) + "\n"
