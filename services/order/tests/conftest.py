from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from oms_order.app import create_service
from oms_order.settings import OrderSettings


@pytest.fixture(scope="session")
def order_service(service_database):
    """The order service's consumers and HTTP app on a fresh, migrated database (no broker needed)."""
    return create_service(OrderSettings(database_url=service_database("order"), api_tokens={"cs-token": "cs-agent"}))


class InventoryServer:
    """A real HTTP server on a free local port answering `GET /backorders?order_id=` in inventory's shape, with what
    a test puts in `waiting`; it records the Authorization header of each request. `answer` switches it to an error
    status, or to never answering ("hang")."""

    def __init__(self) -> None:
        self.waiting: list[dict] = []
        self.answer: int | str = 200
        self.authorizations: list[str | None] = []
        self.released = asyncio.Event()
        app = FastAPI()

        @app.get("/backorders")
        async def backorders(order_id: uuid.UUID, request: Request):
            self.authorizations.append(request.headers.get("authorization"))
            if self.answer == "hang":
                await self.released.wait()
            if self.answer != 200:
                return JSONResponse({"detail": "inventory is having a bad day"}, status_code=500)
            return [entry for entry in self.waiting if entry["order_id"] == str(order_id)]

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        # Listening before the server starts: a request that comes early waits in the backlog, never refused.
        self.socket.listen()
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))

    async def __aenter__(self) -> InventoryServer:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        return self

    async def __aexit__(self, *_) -> None:
        self.released.set()
        self.server.should_exit = True
        await self.task


@pytest.fixture(scope="module")
async def inventory():
    async with InventoryServer() as server:
        yield server


@pytest.fixture
def inventory_server():
    """Make a server of one's own (e.g. to take it down)."""
    return InventoryServer
