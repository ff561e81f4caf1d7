"""asyncio helpers the agent's long-lived loops share."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event`` at most ``timeout`` seconds. Unlike 3.11's ``wait_for``, a cancel that
    races the event is never swallowed (gh-86296), so cancelled loops really stop."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
