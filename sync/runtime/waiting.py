"""Waiting on asyncio events: sleep until told to stop, or relay the first of several events."""

from __future__ import annotations

import asyncio
import contextlib


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, but wake as soon as `stop` is set. True when stopping."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await stop.wait()
    return stop.is_set()


async def set_when_any(target: asyncio.Event, *sources: asyncio.Event) -> None:
    """Set `target` as soon as one of `sources` is set."""
    waits = [asyncio.ensure_future(source.wait()) for source in sources]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        target.set()
    finally:
        for waiting in waits:
            waiting.cancel()
