"""Drift alarms: per lane, the review's recent behaviour against configured bounds.

Over the last ``inference.drift.window`` reviewed scans of each lane the monitor keeps the share
called suspect, the share without a verdict (``unavailable``), and the distance of the recent
input statistics from the active model's envelope (`inference.adaptation.Envelope`; none when
the model carries no envelope). When a lane with at least ``drift.min_scans`` scans in its window
has a figure out of bounds, a ``MODEL_DRIFT`` alarm is raised for that lane (``detail``: the
figures, the bounds and which ones are out); when every figure is back in bounds it is cleared.
A scanner whose source ages, a detector that loses its calibration, a new traffic mix or a model
gone wrong all show here long before complaints do.

The windows start afresh when the model changes: the figures describe the model that runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gate_controller.config.schema import DriftConfig
from gate_controller.lifecycle.fleet import EmitEvent
from inference.adaptation.envelope import ENVELOPE_FILE, Envelope
from inference.errors import ModelError
from inference.result import ReviewResult

__all__ = ["DriftMonitor", "LaneFigures"]

log = logging.getLogger(__name__)


@dataclass
class _Lane:
    recent: collections.deque[tuple[str, Mapping[str, float] | None]]
    alarm: bool = False


@dataclass(frozen=True)
class LaneFigures:
    window: int
    suspect_share: float
    unavailable_share: float
    input_distance: float | None
    input_statistic: str | None
    out_of_bounds: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {"window": self.window, "suspect_share": round(self.suspect_share, 4),
                "unavailable_share": round(self.unavailable_share, 4),
                "input_distance": None if self.input_distance is None else round(self.input_distance, 3),
                "drift": bool(self.out_of_bounds)}


class DriftMonitor:
    def __init__(self, config: DriftConfig, *, emit: EmitEvent, model_path: Callable[[], Path | None]) -> None:
        self.config = config
        self._emit = emit
        self._model_path = model_path
        self._lanes: dict[str, _Lane] = {}
        self._model: tuple[str | None, str | None] | None = None
        self.envelope: Envelope | None = None
        self._background: set[asyncio.Task[None]] = set()

    def reconfigure(self, config: DriftConfig) -> None:
        if config.window != self.config.window:
            for lane in self._lanes.values():
                lane.recent = collections.deque(lane.recent, maxlen=config.window)
        self.config = config

    def _load_envelope(self) -> None:
        path = self._model_path()
        candidate = path / ENVELOPE_FILE if path is not None and path.is_dir() else None
        self.envelope = None
        if candidate is not None and candidate.is_file():
            try:
                self.envelope = Envelope.load(candidate)
            except ModelError as err:
                log.error("drift: %s; the input distance is not monitored", err)  # noqa: TRY400

    # ------------------------------------------------------------------ figures

    def figures(self, lane: str) -> LaneFigures:
        state = self._lanes.get(lane)
        recent = list(state.recent) if state is not None else []
        n = len(recent)
        suspect = sum(v == "suspect" for v, _ in recent) / n if n else 0.0
        unavailable = sum(v == "unavailable" for v, _ in recent) / n if n else 0.0
        distance: float | None = None
        statistic: str | None = None
        if self.envelope is not None:
            stats = [s for v, s in recent if s is not None and v != "unavailable"]
            if stats:
                distance, statistic = self.envelope.distance(stats)
        out: list[str] = []
        if n >= self.config.min_scans:
            if suspect > self.config.max_suspect_share:
                out.append("suspect_share")
            if unavailable > self.config.max_unavailable_share:
                out.append("unavailable_share")
            if distance is not None and distance > self.config.max_input_distance:
                out.append("input_distance")
        return LaneFigures(window=n, suspect_share=suspect, unavailable_share=unavailable, input_distance=distance,
                           input_statistic=statistic, out_of_bounds=tuple(out))

    def all_figures(self) -> dict[str, dict[str, Any]]:
        return {lane: self.figures(lane).as_dict() for lane in sorted(self._lanes)}

    # ------------------------------------------------------------------ observation

    def observe(self, lane: str, result: ReviewResult) -> None:
        """One review of a lane (GateDecider.on_review)."""
        model = (result.model, result.version)
        if result.verdict != "unavailable" and model != self._model:
            if self._model is not None:
                log.info("drift: model now %s %s; the lanes' windows start afresh", *model)
                for state in self._lanes.values():
                    state.recent.clear()
            self._model = model
            self._load_envelope()
        state = self._lanes.setdefault(lane, _Lane(collections.deque(maxlen=self.config.window)))
        stats = result.extra.get("input")
        state.recent.append((result.verdict, stats if isinstance(stats, Mapping) else None))
        figures = self.figures(lane)
        if figures.out_of_bounds and not state.alarm:
            state.alarm = True
            self._spawn(self._event(lane, figures, active=True))
        elif state.alarm and not figures.out_of_bounds and figures.window >= self.config.min_scans:
            state.alarm = False
            self._spawn(self._event(lane, figures, active=False))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="model-drift-event")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _event(self, lane: str, figures: LaneFigures, *, active: bool) -> None:
        c = self.config
        detail = {**figures.as_dict(), "out_of_bounds": list(figures.out_of_bounds),
                  "input_statistic": figures.input_statistic, "model": self._model[0] if self._model else None,
                  "version": self._model[1] if self._model else None,
                  "bounds": {"max_suspect_share": c.max_suspect_share, "max_unavailable_share": c.max_unavailable_share,
                             "max_input_distance": c.max_input_distance}}
        if active:
            log.warning("lane %s: review drift: %s", lane, ", ".join(figures.out_of_bounds))
        else:
            log.info("lane %s: review back within its bounds", lane)
        try:
            await self._emit(lane=lane, type="alarm", code="MODEL_DRIFT", severity="warning" if active else "info",
                             active=active, detail=detail)
        except Exception as err:  # the figures stay in telemetry even when the event cannot be stored
            log.error("cannot record MODEL_DRIFT: %s", err)  # noqa: TRY400

    async def wait_idle(self) -> None:
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
