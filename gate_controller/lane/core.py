"""The state every part of a lane's machine shares, and the bookkeeping of passages.

`LaneCore` holds the lane's PLC view, its passages and its mode, and does what every part needs:
moving a passage between phases, committing it to the journal, publishing it when it is over and
emitting events. The loops-and-evidence part (tracking.py) and the barrier-and-outputs part
(barrier.py) build on it; `Lane` (machine.py) puts them together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from gate_controller.config import LaneConfig
from gate_controller.core.ports import (
    Decider,
    EventSeverity,
    EventType,
    OcrObservation,
    TransactionJournal,
)
from gate_controller.core.timestamps import WallClock, utc_now
from gate_controller.lane.passage import (
    Decided,
    HubMode,
    Mode,
    Passage,
    Phase,
    QueueItem,
    always_healthy,
)
from gate_controller.lane.transaction import TransactionRecord
from gate_controller.plc.driver import (
    PlcBusRegistry,
    PlcDriver,
    PlcImage,
)

log = logging.getLogger("gate_controller.lane.machine")

_LIVENESS_S = 2.0


class LaneCore:
    """State and passage bookkeeping of one lane (see `Lane`)."""

    def __init__(
        self,
        config: LaneConfig,
        *,
        site: str,
        gate: str,
        decider: Decider,
        journal: TransactionJournal,
        healthy: Callable[[], bool] = always_healthy,
        buses: PlcBusRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: WallClock = utc_now,
        hub_mode: HubMode = "auto",
        tick_s: float = 0.05,
        plc_clock: Callable[[], float] = time.monotonic,
        journal_timeout_s: float = 10.0,
    ) -> None:
        self._config = config
        self._site = site
        self._gate = gate
        self._decider = decider
        self._journal = journal
        self._healthy = healthy
        self._buses = buses
        self._clock = clock
        self._wall = wall_clock
        self._plc_clock = plc_clock
        self._tick_s = tick_s
        # A wedged outbox must not wedge the lane's own safety handling (estop, lowering, faults):
        # a commit that takes longer counts as failed (for open_transaction: the barrier stays down).
        self._journal_timeout_s = journal_timeout_s
        self._hub_mode: HubMode = hub_mode
        self._queue: asyncio.Queue[QueueItem] = asyncio.Queue()
        self._driver = self._make_driver(config)
        self._driver_task: asyncio.Task[None] | None = None
        self._pending_plc: LaneConfig | None = None
        self._running = False
        self._stopping = False
        self._finished: asyncio.Event | None = None
        self._last_tick = plc_clock()
        # PLC view
        self._link_up = False
        self._link_was_down = False
        self._image: PlcImage | None = None
        self._faults: set[str] = set()
        self._barrier_fault_latched: str | None = None
        self._reconcile_pending = False
        self._force_rewrite = False
        self._output_retry_at = 0.0
        self._rewrite_at = 0.0
        self._travel: tuple[bool, float] | None = None
        self._entry_fell_at: float | None = None
        self._stop_fell_at: float | None = None
        self._started_at = clock()
        self._safety_clear_since: float | None = None
        # image review out of its depth: REVIEW_UNFAMILIAR at most once per UNFAMILIAR_ALARM_S
        self._unfamiliar_alarm_at: float | None = None
        self._unfamiliar_since_alarm = 0
        # passages
        self._current: Passage | None = None
        self._arriving: Passage | None = None
        self._buffer: deque[OcrObservation] = deque(maxlen=256)
        # mode bookkeeping
        self._mode = Mode.FAULT
        self._mode_epoch = 0
        self._physical_manual = False
        self.counters: dict[str, int] = {
            "passages": 0, "released": 0, "stopped": 0, "cancelled": 0, "operator": 0, "faults": 0,
            "review_unfamiliar": 0,
        }

    @property
    def id(self) -> str:
        return self._config.id

    @property
    def config(self) -> LaneConfig:
        return self._config

    @property
    def driver(self) -> PlcDriver:
        return self._driver

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def phase(self) -> Phase:
        return self._current.phase if self._current is not None else (
            Phase.ARRIVING if self._arriving is not None else Phase.IDLE)

    def _make_driver(self, config: LaneConfig) -> PlcDriver:
        return PlcDriver(config.plc, name=config.id, listener=self._queue.put_nowait,
                         healthy=self._heartbeat_allowed, buses=self._buses, clock=self._plc_clock)

    def _heartbeat_allowed(self) -> bool:
        """The heartbeat needs the daemon's pipeline *and* this lane's own loop to be alive."""
        return self._plc_clock() - self._last_tick <= _LIVENESS_S and self._healthy()

    def _to_phase(self, passage: Passage, phase: Phase) -> None:
        log.debug("lane %s: %s %s -> %s", self.id, passage.id, passage.phase.value, phase.value)
        passage.phase = phase
        passage.since = self._clock()

    def _new_passage(self, now: float, *, ambiguous: bool = False) -> Passage:
        record = TransactionRecord(site=self._site, gate=self._gate, lane=self.id,
                                   arrived_at=self._wall(), arrived_mono=now)
        self.counters["passages"] += 1
        return Passage(record=record, phase=Phase.ARRIVING, arrived=now, arrival_base=now, since=now,
                        ambiguous=ambiguous)

    def _distrust(self, passage: Passage) -> None:
        """Which vehicle this passage is became unknown: it is cancelled, never decided or carried out."""
        passage.ambiguous = True
        passage.early = passage.early_at = None
        if passage.decider is not None:
            passage.decider.cancel()
            passage.decider = None

    def _front_gone_unseen(self, passage: Passage) -> None:
        """``passage`` ends without its vehicle seen going on: the one behind, admitted while it had
        left the stop line, may have it still in front of it in the scan zone."""
        behind = self._arriving
        if behind is not None and behind.front_unseen is passage:
            behind.front_unseen = None
            if not passage.safety_seen:
                log.warning("lane %s: %s ended without its vehicle seen past the barrier: %s behind it "
                            "cannot be told from it, cancelled", self.id, passage.id, behind.id)
                self._distrust(behind)

    def _abort(self, passage: Passage) -> None:
        self._front_gone_unseen(passage)
        passage.authorized_up = False
        passage.aborted = True
        self._to_phase(passage, Phase.LOWERING)

    def _safety_clear_for(self, seconds: float) -> bool:
        image = self._image
        if image is None or image.loop_safety or self._safety_clear_since is None:
            return False
        return self._clock() - self._safety_clear_since >= seconds

    async def _open(self, passage: Passage) -> bool:
        """Commit the decided transaction before anything moves for it."""
        try:
            async with asyncio.timeout(self._journal_timeout_s):
                await self._journal.open_transaction(passage.record.as_record())
        except Exception:
            log.exception("lane %s: cannot commit %s to the journal: the barrier stays down", self.id, passage.id)
            return False
        return True

    async def _finish(self, passage: Passage, *, cancelled: bool) -> None:
        """Publish a passage's transaction and take it off the lane."""
        self._front_gone_unseen(passage)
        if passage.decider is not None:
            passage.decider.cancel()
            passage.decider = None
        now, wall = self._clock(), self._wall()
        if cancelled:
            passage.record.cancel(now=wall, now_mono=now)
            self.counters["cancelled"] += 1
        else:
            passage.record.complete(now=wall, now_mono=now)
        passage.phase = Phase.COMPLETE
        if passage is self._arriving:
            self._arriving = None
        if passage is self._current:
            self._current = None
            self._promote(now)
        try:
            async with asyncio.timeout(self._journal_timeout_s):
                await self._journal.complete_transaction(passage.record.as_record())
        except Exception:
            log.exception("lane %s: cannot commit the completed transaction %s", self.id, passage.id)
        log.info("lane %s: %s complete (%s%s)", self.id, passage.id, passage.record.action,
                 ", cancelled" if cancelled else "")

    async def _publish_cancelled(self, passage: Passage) -> None:
        passage.record.cancel(now=self._wall(), now_mono=self._clock())
        self.counters["cancelled"] += 1
        try:
            async with asyncio.timeout(self._journal_timeout_s):
                await self._journal.complete_transaction(passage.record.as_record())
        except Exception:
            log.exception("lane %s: cannot commit the cancelled transaction %s", self.id, passage.id)

    def _promote(self, now: float) -> None:
        """The barrier is free again: the vehicle behind may become the current passage."""
        nxt = self._arriving
        if nxt is None:
            return
        nxt.arrival_base = now
        # With the passage in front complete, whoever is on the stop loop is the vehicle behind
        # (its edge may have merged with the tail of the one in front).
        if self._image is not None and self._image.inputs["loop_stop"]:
            self._arriving = None
            self._current = nxt
            nxt.stop_pending = False
            nxt.at_stop = nxt.at_stop or now
            if nxt.ambiguous:
                return  # published as cancelled by the next timer check
            self._reached_stop_line(nxt)

    def _reached_stop_line(self, passage: Passage) -> None:
        """The current passage's vehicle is at the stop line: collect, wait for, or carry out its decision."""
        if passage.early is not None and passage.decision_epoch != self._mode_epoch:
            # The lane left automatic mode after that decision started: decide again, now.
            log.info("lane %s: %s decided before a mode change: deciding again", self.id, passage.id)
            passage.early = passage.early_at = passage.decision_started = None
        if passage.early is not None:
            self._to_phase(passage, Phase.DECIDING)
            self._queue.put_nowait(Decided(passage, passage.early))  # handled before the next timer step
        elif passage.decision_started is not None:
            self._to_phase(passage, Phase.DECIDING)  # the decider is still at work
        else:
            self._to_phase(passage, Phase.COLLECTING)

    async def _event(self, type_: EventType, code: str, severity: EventSeverity, active: bool,
                     detail: Mapping[str, Any]) -> None:
        try:
            async with asyncio.timeout(self._journal_timeout_s):
                await self._journal.emit_event(lane=self.id, type=type_, code=code, severity=severity,
                                               active=active, detail=dict(detail))
        except Exception:
            log.exception("lane %s: cannot commit event %s", self.id, code)
