"""The loop behind every background worker (the outbox relay, the notification sender): run a pass whenever woken
and at least every `interval` seconds; a failed pass is logged and retried with backoff, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .database import is_transient

log = logging.getLogger(__name__)


async def run_when_woken(
    wake: asyncio.Event,
    work: Callable[[], Awaitable[None]],
    *,
    interval: float,
    what: str,
    running: Callable[[], bool] = lambda: True,
) -> None:
    backoff = 0.1
    while running():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=interval)
        wake.clear()
        try:
            await work()
            backoff = 0.1
        except Exception as error:
            level = logging.WARNING if is_transient(error) else logging.ERROR
            log.log(level, "%s failed, retrying in %.1fs: %r", what, backoff, error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            wake.set()
