"""Reconnect delays: capped exponential backoff with "equal jitter" (STYLE 8).

Half of each delay is fixed and half random, so a gate whose links all drop at once (a switch
restart) does not reconnect them in lockstep, and a peer that is down is probed at most about
once per cap. Used by the PLC driver and the hub link; ``firmware_bridge`` has its own copy
because it never imports ``gate_controller``.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, *, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect attempt ``attempt + 1`` (``attempt`` 0 waits about ``initial_s``)."""
    base = min(max_s, initial_s * 2.0 ** min(attempt, 30))
    return base / 2 + rng.uniform(0.0, base / 2)
