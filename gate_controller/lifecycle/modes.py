"""Which lanes' image review runs in shadow mode: the config, overridden by the hub's ``review.mode``.

In ``shadow`` the review runs and is published (transaction, preview) but never decides: every
scan of the lane is decided ``manual`` with reason ``REVIEW_SHADOW`` (docs/commissioning.md).
The hub's ``review.mode`` overrides the config and survives restarts in
``<state_dir>/review_modes.json``; an override equal to the configured mode is dropped, so a
config change is not masked by an old command. An unreadable file puts every lane in shadow:
a lane that may have been taken out of live by the hub must not silently decide again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final, Literal, cast

from gate_controller.core.atomic import write_atomic

__all__ = ["REVIEW_MODES", "ReviewModes"]

log = logging.getLogger(__name__)

ReviewMode = Literal["live", "shadow"]
REVIEW_MODES: Final = ("live", "shadow")


class ReviewModes:
    """Blocking file I/O in `load`/`set`: call from a thread in async code; `shadow` is cheap."""

    def __init__(self, path: Path, configured: Mapping[str, ReviewMode]) -> None:
        self.path = Path(path)
        self._configured = dict(configured)
        self._overrides: dict[str, ReviewMode] = {}

    def load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as err:
            self._unreadable(f"cannot read it: {err}")
            return
        if not isinstance(raw, dict) or not all(isinstance(k, str) and v in REVIEW_MODES for k, v in raw.items()):
            self._unreadable("expected an object of lane id -> live or shadow")
            return
        self._overrides = {k: cast(ReviewMode, v) for k, v in raw.items() if k in self._configured}
        for lane, mode in sorted(self._overrides.items()):
            log.info("lane %s: review %s, as the hub set it (config says %s)", lane, mode, self._configured[lane])

    def _unreadable(self, why: str) -> None:
        log.error("%s: %s; every lane's review starts in shadow (officers decide). Fix: send review.mode from "
                  "the hub, or delete the file to use the configured modes", self.path, why)
        shadow: ReviewMode = "shadow"
        self._overrides = dict.fromkeys(self._configured, shadow)

    def reconfigure(self, configured: Mapping[str, ReviewMode]) -> None:
        """A config reload: the hub's overrides still apply on top."""
        self._configured = dict(configured)

    def mode(self, lane: str) -> ReviewMode:
        return self._overrides.get(lane, self._configured.get(lane, "live"))

    def shadow(self, lane: str) -> bool:
        return self.mode(lane) == "shadow"

    def modes(self, lanes: Iterable[str] | None = None) -> dict[str, ReviewMode]:
        return {lane: self.mode(lane) for lane in (lanes if lanes is not None else self._configured)}

    def set(self, lane: str, mode: ReviewMode) -> bool:
        """Record the hub's ``review.mode`` durably; True when the lane's mode changed."""
        if mode not in REVIEW_MODES:
            raise ValueError(f"unknown review mode {mode!r}")
        before = self.mode(lane)
        if self._configured.get(lane) == mode:
            self._overrides.pop(lane, None)
        else:
            self._overrides[lane] = mode
        data = json.dumps(dict(sorted(self._overrides.items())), indent=1) + "\n"
        write_atomic(self.path, data.encode("utf-8"), durable=True)
        return before != mode
