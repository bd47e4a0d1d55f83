"""Owner tasks that stop when asked, even where a library swallowed the cancellation.

Used by every owner loop that awaits a library which may swallow a cancellation (the PLC driver
over pymodbus, the lane, ``smartgate doctor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

__all__ = ["raise_if_cancelling", "stop_task"]

log = logging.getLogger(__name__)


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed.

    Python 3.11's `asyncio.wait_for` (which pymodbus awaits every response with) returns the result
    instead of raising when a cancellation lands in the same loop turn as the response; the task
    then keeps running with ``cancelling() > 0``. Owner loops call this once per turn so that a
    cancelled task still stops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_task(task: asyncio.Task[None], *, name: str) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a cancellation was swallowed."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        if not task.done():
            log.warning("%s did not stop on cancellation; cancelling again", name)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()
