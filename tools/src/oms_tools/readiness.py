"""Waiting until inventory accepts receipts for the sources the demo stock names.

Inventory refuses a receipt for a source it has not heard of: it learns the network from oms.routing.network.v1,
which routing publishes after `PUT /network` returns. So `oms demo stock` right after `oms demo network` would race
that topic; instead it asks inventory (`GET /sources`) until it knows every source."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import httpx

from .errors import FAILED, ToolError

Echo = Callable[..., None]


async def wait_until_inventory_knows(url: str, token: str, codes: Iterable[str], *, seconds: float, echo: Echo) -> None:
    """Return once inventory at `url` lists every source in `codes` as active."""
    wanted = set(codes)
    deadline = time.monotonic() + seconds
    told = False
    async with httpx.AsyncClient(timeout=5, headers={"Authorization": f"Bearer {token}"}) as client:
        while True:
            known, problem = await _known_sources(client, url)
            missing = sorted(wanted - known)
            if not missing:
                if told:
                    echo("inventory knows every source", err=True)
                return
            if time.monotonic() >= deadline:
                raise ToolError(
                    f"inventory at {url} does not know source(s) {', '.join(missing)} after {seconds:g}s"
                    f"{f' ({problem})' if problem else ''}: load the network first (oms demo network) and check that "
                    "the inventory service runs, or --no-wait to publish anyway",
                    FAILED,
                )
            if not told:
                echo(f"waiting for inventory to know {', '.join(missing)} (up to {seconds:g}s)...", err=True)
                told = True
            await asyncio.sleep(0.5)


async def _known_sources(client: httpx.AsyncClient, url: str) -> tuple[set[str], str | None]:
    try:
        response = await client.get(f"{url}/sources")
    except httpx.TransportError as error:
        return set(), f"cannot reach it: {error or type(error).__name__}"
    if response.status_code == 401:
        raise ToolError(f"inventory at {url} refused the token (401)", FAILED)
    if not response.is_success:
        return set(), f"GET /sources answered {response.status_code}"
    return {s["code"] for s in response.json() if s.get("active")}, None
