"""Hub lane modes that survive a restart.

A lane the hub closed (or put in manual) stays so after the daemon restarts, until the hub sends
``lane.mode auto``: reopening a lane somebody closed on purpose is not the daemon's call. The
modes live in ``<state_dir>/lane_modes.json`` (``{"L1": "closed"}``), rewritten atomically
(temporary file, fsync, rename) on every change.

An unreadable file cannot tell which lanes were closed, so every lane starts in ``manual`` (no
automatic release; the barrier stays under officers' control) and the problem is logged with the
fix. Lanes absent from the file are ``auto``; entries for lanes no longer configured are ignored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Final, cast, get_args

from gate_controller.core.atomic import write_atomic
from gate_controller.lane.machine import HubMode

__all__ = ["HUB_MODES", "LaneModeStore"]

log = logging.getLogger(__name__)

HUB_MODES: Final[tuple[str, ...]] = get_args(HubMode)


class LaneModeStore:
    """The persisted ``lane.mode`` of each lane. Blocking file I/O: call from a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._modes: dict[str, HubMode] = {}

    def load(self, lanes: Iterable[str]) -> dict[str, HubMode]:
        """Modes for the configured ``lanes`` (``auto`` unless stored otherwise)."""
        lanes = list(lanes)
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as err:
            return self._unreadable(lanes, f"cannot read it: {err}")
        if not isinstance(raw, dict) or not all(
                isinstance(k, str) and v in HUB_MODES for k, v in raw.items()):
            return self._unreadable(lanes, f"expected an object of lane id -> one of {', '.join(HUB_MODES)}")
        for lane in sorted(set(raw) - set(lanes)):
            log.warning("%s: lane %s is not configured; its stored mode %s is ignored", self.path, lane, raw[lane])
        self._modes = {lane: cast(HubMode, raw.get(lane, "auto")) for lane in lanes}
        for lane, mode in self._modes.items():
            if mode != "auto":
                log.warning("lane %s: starts in hub mode %s, as the hub left it (lane.mode auto reopens it)",
                            lane, mode)
        return dict(self._modes)

    def _unreadable(self, lanes: list[str], why: str) -> dict[str, HubMode]:
        log.error("%s: %s; every lane starts in hub mode manual (no automatic release). Fix: send lane.mode "
                  "from the hub for each lane, or delete the file to start all lanes in auto", self.path, why)
        self._modes = dict.fromkeys(lanes, "manual")
        return dict(self._modes)

    def save(self, lane: str, mode: HubMode) -> None:
        """Record ``mode`` for ``lane`` durably (no write when it is already stored)."""
        if mode not in HUB_MODES:
            raise ValueError(f"unknown lane mode {mode!r}")
        if self._modes.get(lane) == mode and self.path.exists():
            return
        self._modes[lane] = mode
        data = json.dumps({k: v for k, v in sorted(self._modes.items()) if v != "auto"}, indent=1) + "\n"
        write_atomic(self.path, data.encode("utf-8"), durable=True)
