"""One lane's state machine: loops and evidence in, a decision, barrier and signs out.

A passage goes ``idle -> arriving -> collecting -> deciding -> released | stopped -> passing ->
lowering -> complete`` (docs/lane-states.md has the diagram and every timeout). On top of the
passage sits the lane *mode*: ``automatic``, ``manual`` (estop, key switch or the hub), ``fault``
(PLC link lost, PLC watchdog tripped, a failed verification) and ``closed``. Modes never skip the
bookkeeping of a passage; they decide what may actuate:

* the barrier goes up only for a passage whose decision is ``release`` (taken in automatic mode
  with nothing else happening since the decision started) or for an authenticated operator
  ``open``, and only after the transaction is durably in the journal;
* it goes down only after ``loop_safety`` has been clear for ``clear_s`` (and the driver checks
  the input again right before writing);
* under ``estop``/``local_manual`` nothing but ``alarm`` is written;
* after a reconnect or a return from local control every point is read, a raised barrier with no
  vehicle under it is lowered (its passage closes as CANCELLED), and every coil and register is
  written again before the lane resumes.

Everything that changes the lane happens in the lane's own task (`run`): PLC events, OCR and
scan observations, decisions and hub commands all arrive through one queue, so no two of them
interleave half-way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from gate_controller.config import LaneConfig
from gate_controller.core.errors import PlcError, PlcInterlockError, PlcVerificationError
from gate_controller.core.ports import (
    CommandRefused,
    Decider,
    DecisionOutcome,
    EventSeverity,
    EventType,
    OcrObservation,
    PassageEvidence,
    ScanObservation,
    TransactionJournal,
)
from gate_controller.core.timestamps import WallClock, utc_now
from gate_controller.lane.transaction import Action, TransactionRecord
from gate_controller.plc.driver import (
    DisplayMessage,
    LaneStateCode,
    PlcBusRegistry,
    PlcDriver,
    PlcEvent,
    PlcImage,
    PlcInputsChanged,
    PlcLinkDown,
    PlcLinkUp,
    raise_if_cancelling,
    stop_task,
)

__all__ = ["HubMode", "Lane", "LaneSnapshot", "Mode", "Phase"]

log = logging.getLogger(__name__)

HubMode = Literal["auto", "manual", "closed"]


class Phase(StrEnum):
    """Where the lane's current passage is."""

    IDLE = "idle"
    ARRIVING = "arriving"
    COLLECTING = "collecting"
    DECIDING = "deciding"
    RELEASED = "released"
    STOPPED = "stopped"
    PASSING = "passing"
    LOWERING = "lowering"
    COMPLETE = "complete"


class Mode(StrEnum):
    """What the lane may do; anything but automatic forbids an automatic release."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"
    FAULT = "fault"
    CLOSED = "closed"


_LANE_STATE = {Mode.AUTOMATIC: LaneStateCode.AUTOMATIC, Mode.MANUAL: LaneStateCode.MANUAL,
               Mode.FAULT: LaneStateCode.FAULT, Mode.CLOSED: LaneStateCode.CLOSED}
_SIGNAL_COILS = ("light_red", "light_green", "sign_inspection", "scan_permit", "alarm")
_OUTPUT_RETRY_S = 0.5
_REWRITE_RETRY_S = 1.0
_LIVENESS_S = 2.0


def _always() -> bool:
    return True


@dataclass(frozen=True)
class LaneSnapshot:
    """What status and telemetry show of a lane."""

    lane: str
    state: str
    """The mode when it is not automatic, else the phase (``idle``, ``collecting``, ...)."""
    mode: str
    phase: str
    hub_mode: str
    transaction_id: str | None
    next_transaction_id: str | None
    plc_connected: bool
    faults: tuple[str, ...]
    inputs: Mapping[str, bool | int] | None
    counters: Mapping[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "lane": self.lane, "state": self.state, "mode": self.mode, "phase": self.phase,
            "hub_mode": self.hub_mode, "transaction_id": self.transaction_id,
            "next_transaction_id": self.next_transaction_id, "plc_connected": self.plc_connected,
            "faults": list(self.faults), "inputs": dict(self.inputs) if self.inputs is not None else None,
            "counters": dict(self.counters),
        }


@dataclass
class _Passage:
    """One vehicle, from its arrival on the entry loop until its transaction is published."""

    record: TransactionRecord
    phase: Phase
    arrived: float
    arrival_base: float
    since: float
    ambiguous: bool = False
    at_stop: float | None = None
    stop_pending: bool = False
    stop_clear_since: float | None = None
    container_reads: list[OcrObservation] = field(default_factory=list)
    plate_reads: list[OcrObservation] = field(default_factory=list)
    scan: ScanObservation | None = None
    last_read: float | None = None
    ocr_closed: bool = False
    decider: asyncio.Task[None] | None = None
    decision_started: float | None = None
    decision_epoch: int = 0
    outcome: DecisionOutcome | None = None
    authorized_up: bool = False
    aborted: bool = False
    released_at: float | None = None
    safety_seen: bool = False
    safety_clear_since: float | None = None
    exit_seen: bool = False

    @property
    def id(self) -> str:
        return self.record.transaction_id


@dataclass(frozen=True)
class _Observation:
    item: OcrObservation | ScanObservation


@dataclass(frozen=True)
class _Decided:
    passage: _Passage
    outcome: DecisionOutcome


@dataclass(frozen=True)
class _Call:
    action: Callable[[], Awaitable[None]]
    done: asyncio.Future[None]


@dataclass(frozen=True)
class _StopRequest:
    pass


_Item = _Observation | _Decided | _Call | _StopRequest | PlcEvent


class Lane:
    """The state machine of one lane, owner of its PLC driver.

    Wire it from the daemon: create one per configured lane, run `run` as a named task, feed
    `observe_ocr` / `observe_scan` with what the firmware links deliver for this lane, route hub
    commands to `barrier_command` / `set_mode`, call `apply_config` on reload and `snapshot` for
    status and telemetry. `stop` (or cancelling `run`) leaves the lane safe.
    """

    def __init__(
        self,
        config: LaneConfig,
        *,
        site: str,
        gate: str,
        decider: Decider,
        journal: TransactionJournal,
        healthy: Callable[[], bool] = _always,
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
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
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
        # passages
        self._current: _Passage | None = None
        self._arriving: _Passage | None = None
        self._buffer: deque[OcrObservation] = deque(maxlen=256)
        # mode bookkeeping
        self._mode = Mode.FAULT
        self._mode_epoch = 0
        self._physical_manual = False
        self.counters: dict[str, int] = {
            "passages": 0, "released": 0, "stopped": 0, "cancelled": 0, "operator": 0, "faults": 0,
        }

    # ================================================================== public API

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

    def observe_ocr(self, observation: OcrObservation) -> None:
        """One OCR read from a link of this lane (``received`` on the daemon's monotonic clock)."""
        self._queue.put_nowait(_Observation(observation))

    def observe_scan(self, observation: ScanObservation) -> None:
        """A finished scan transfer from this lane's scanner."""
        self._queue.put_nowait(_Observation(observation))

    async def barrier_command(self, *, action: Literal["open", "close"], reason: str, operator: str) -> None:
        """An authenticated hub ``barrier`` command; raises `CommandRefused` when it cannot be done.

        ``open`` is audited as its own transaction (``by: operator``, action release,
        MANUAL_OVERRIDE) committed to the journal before the barrier moves; the passage it
        supersedes is published first. ``close`` is audited the same way with action manual.
        """
        if action not in ("open", "close"):
            raise CommandRefused(f"unknown barrier action {action!r}")
        await self._call(lambda: self._operator_barrier(action, reason, operator))

    async def set_mode(self, mode: HubMode) -> None:
        """The hub's ``lane.mode``: auto, manual (every decision becomes manual) or closed.

        ``auto`` also acknowledges a latched barrier fault once the barrier reads consistent.
        """
        if mode not in ("auto", "manual", "closed"):
            raise CommandRefused(f"unknown lane mode {mode!r}")
        await self._call(lambda: self._set_hub_mode(mode))

    async def apply_config(self, config: LaneConfig) -> None:
        """Hot-apply a reloaded lane config.

        Timeouts and evidence rules apply at once. A changed PLC section replaces the driver only
        when no passage needs the barrier (idle, arriving, collecting, deciding or stopped with the
        barrier down), so a reload never drops a raised barrier or a vehicle under it; the new
        driver then goes through the same reconnect reconciliation as after a link loss.
        """
        if config.id != self._config.id:
            raise ValueError(f"config for lane {config.id!r} applied to lane {self._config.id!r}")
        if not self._running:
            self._apply_now(config)
            return
        await self._call(lambda: self._reload(config))

    @property
    def hub_mode(self) -> HubMode:
        """The mode the hub last set with ``lane.mode`` (auto, manual or closed)."""
        return self._hub_mode

    def snapshot(self) -> LaneSnapshot:
        image = self._driver.image if self._link_up else None
        mode = self._mode
        phase = self.phase
        return LaneSnapshot(
            lane=self.id,
            state=phase.value if mode is Mode.AUTOMATIC else mode.value,
            mode=mode.value,
            phase=phase.value,
            hub_mode=self._hub_mode,
            transaction_id=self._current.id if self._current is not None else (
                self._arriving.id if self._arriving is not None else None),
            next_transaction_id=self._arriving.id if self._current is not None and self._arriving else None,
            plc_connected=self._link_up,
            faults=tuple(sorted(self._faults)),
            inputs=image.as_dict() if image is not None else None,
            counters=dict(self.counters),
        )

    async def run(self) -> None:
        """The lane's owner task: runs the PLC driver and the state machine until `stop`."""
        if self._running:
            raise RuntimeError(f"lane {self.id} is already running")
        self._running = True
        self._stopping = False
        self._finished = asyncio.Event()
        self._started_at = self._clock()
        self._start_driver()
        try:
            await self._main_loop()
        finally:
            try:
                async with asyncio.timeout(3.0):
                    await self._shutdown()
            except (TimeoutError, PlcError) as err:
                log.warning("lane %s: shutdown did not finish cleanly: %s", self.id, err)
            finally:
                await self._stop_driver()
                self._running = False
                self._refuse_queued_calls()
                self._finished.set()

    def _refuse_queued_calls(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Call) and not item.done.done():
                item.done.set_exception(CommandRefused(f"lane {self.id} stopped"))

    async def stop(self) -> None:
        """Finish safely: publish open passages, lower the barrier if nothing is under it, go offline."""
        if not self._running:
            return
        self._queue.put_nowait(_StopRequest())
        assert self._finished is not None
        await self._finished.wait()

    # ================================================================== plumbing

    def _make_driver(self, config: LaneConfig) -> PlcDriver:
        return PlcDriver(config.plc, name=config.id, listener=self._queue.put_nowait,
                         healthy=self._heartbeat_allowed, buses=self._buses, clock=self._plc_clock)

    def _heartbeat_allowed(self) -> bool:
        """The heartbeat needs the daemon's pipeline *and* this lane's own loop to be alive."""
        return self._plc_clock() - self._last_tick <= _LIVENESS_S and self._healthy()

    def _start_driver(self) -> None:
        self._driver_task = asyncio.create_task(self._driver.run(), name=f"plc-{self.id}")

    async def _stop_driver(self) -> None:
        task, self._driver_task = self._driver_task, None
        if task is not None:
            await stop_task(task, name=f"lane {self.id} PLC driver")

    async def _call(self, action: Callable[[], Awaitable[None]]) -> None:
        if not self._running or self._stopping:
            raise CommandRefused(f"lane {self.id} is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Call(action, done))
        await done

    async def _main_loop(self) -> None:
        while True:
            raise_if_cancelling()
            try:
                item: _Item | None = await asyncio.wait_for(self._queue.get(), timeout=self._tick_s)
            except TimeoutError:
                item = None
            self._last_tick = self._plc_clock()
            if isinstance(item, _StopRequest):
                self._stopping = True
                return
            if item is not None:
                await self._handle(item)
                # Drain what is already queued before the timers run (a poll often brings several).
                while not self._queue.empty():
                    queued = self._queue.get_nowait()
                    if isinstance(queued, _StopRequest):
                        self._stopping = True
                        return
                    await self._handle(queued)
            await self._step()

    async def _handle(self, item: _Item) -> None:
        if isinstance(item, _Call):
            try:
                await item.action()
            except CommandRefused as err:
                if not item.done.done():
                    item.done.set_exception(err)
            except Exception as err:
                log.exception("lane %s: command failed", self.id)
                if not item.done.done():
                    item.done.set_exception(CommandRefused(f"command failed: {err}"))
            else:
                if not item.done.done():
                    item.done.set_result(None)
        elif isinstance(item, _Observation):
            self._attach(item.item)
        elif isinstance(item, _Decided):
            await self._on_decided(item.passage, item.outcome)
        elif isinstance(item, PlcLinkUp):
            await self._on_link_up(item.image)
        elif isinstance(item, PlcLinkDown):
            await self._on_link_down(item.reason)
        elif isinstance(item, PlcInputsChanged):
            await self._on_inputs(item.image, item.changed)
        await self._update_mode()

    async def _step(self) -> None:
        """Timers, barrier travel, faults, outputs; runs after every event and every tick."""
        if not self._link_up and not self._link_was_down and self._clock() - self._started_at >= 2.0:
            self._link_was_down = True
            await self._event("alarm", "LINK_DOWN", "error", True, self._link_detail("no connection yet"))
        if self._pending_plc is not None and self._plc_swap_safe():
            await self._swap_driver(self._pending_plc)
        if self._reconcile_pending and self._link_up:
            self._reconcile()
        await self._check_barrier_fault_cleared()
        await self._check_travel()
        await self._check_timers()
        await self._update_mode()
        await self._sync_outputs()
        await self._update_mode()

    # ================================================================== modes

    def _compute_mode(self) -> Mode:
        image = self._image
        if not self._link_up or image is None:
            return Mode.FAULT
        if image.estop or image.local_manual:
            return Mode.MANUAL
        if self._faults - {"link"}:
            return Mode.FAULT
        if self._hub_mode == "closed":
            return Mode.CLOSED
        if self._hub_mode == "manual":
            return Mode.MANUAL
        return Mode.AUTOMATIC

    async def _update_mode(self) -> None:
        image = self._image
        physical = bool(self._link_up and image is not None and (image.estop or image.local_manual))
        if self._physical_manual and not physical and self._link_up:
            # Back from local control: the PLC may be anywhere; read, reconcile, rewrite.
            self._reconcile_pending = True
        self._physical_manual = physical
        mode = self._compute_mode()
        if mode is self._mode:
            return
        previous, self._mode = self._mode, mode
        if mode is not Mode.AUTOMATIC:
            self._mode_epoch += 1
        if physical or not self._link_up:
            self._travel = None  # nothing we command moves now; reconciliation re-commands
        cause = self._mode_cause()
        log.info("lane %s: mode %s -> %s (%s)", self.id, previous.value, mode.value, cause)
        await self._event("state", "LANE_MODE", "info", True,
                          {"mode": mode.value, "previous": previous.value, "cause": cause})

    def _mode_cause(self) -> str:
        image = self._image
        if not self._link_up or image is None:
            return "plc_link"
        if image.estop:
            return "estop"
        if image.local_manual:
            return "key_switch"
        if self._faults - {"link"}:
            return ",".join(sorted(self._faults - {"link"}))
        return "hub" if self._hub_mode != "auto" else "auto"

    async def _set_hub_mode(self, mode: HubMode) -> None:
        self._hub_mode = mode
        if mode == "auto" and self._barrier_fault_latched is not None:
            image = self._image
            if image is not None and self._barrier_consistent(image):
                await self._clear_barrier_fault("acknowledged")
            else:
                raise CommandRefused("barrier fault persists: the limit switches do not match the command")
        if mode == "auto" and "verify" in self._faults:
            self._force_rewrite = True

    # ================================================================== PLC events

    async def _on_link_up(self, image: PlcImage) -> None:
        before = self._image  # the last image seen before the link went down (None at first connect)
        self._link_up = True
        self._image = image
        self._faults.discard("link")
        self._reconcile_pending = True
        if self._link_was_down:
            self._link_was_down = False
            await self._event("alarm", "LINK_DOWN", "error", False, self._link_detail("reconnected"))
        if image.watchdog_tripped != ("watchdog" in self._faults):
            await self._watchdog_changed(image.watchdog_tripped)
        # A vehicle kept moving while the link was down: the loop edges it made were never seen.
        # Replay the net change of each loop (entry, stop, safety order, as a vehicle makes them)
        # so a passage in progress follows its vehicle instead of waiting for an edge that is past;
        # an estop pressed or released meanwhile is reported too.
        if before is not None:
            missed = frozenset(name for name in ("loop_entry", "loop_stop", "loop_safety", "estop")
                               if before.inputs.get(name) != image.inputs.get(name))
            if missed:
                log.info("lane %s: loops changed while the PLC link was down (%s): replaying", self.id,
                         ", ".join(sorted(missed)))
                self._image = before
                await self._on_inputs(image, missed)

    async def _on_link_down(self, reason: str) -> None:
        self._link_up = False
        self._faults.add("link")
        self._travel = None
        self.counters["faults"] += 1
        if not self._link_was_down:
            self._link_was_down = True
            await self._event("alarm", "LINK_DOWN", "error", True, self._link_detail(reason))

    def _link_detail(self, reason: str) -> dict[str, Any]:
        plc = self._config.plc
        endpoint = f"{plc.host}:{plc.port}" if plc.transport == "tcp" else str(plc.serial_url)
        return {"link": f"plc-{self.id}", "endpoint": endpoint, "unit_id": plc.unit_id, "reason": reason}

    async def _on_inputs(self, image: PlcImage, changed: frozenset[str]) -> None:
        previous = self._image
        self._image = image
        if previous is None or not self._link_up:
            return
        now = self._clock()
        if "estop" in changed:
            await self._event("alarm", "ESTOP", "critical", image.estop, {})
        if "plc_watchdog" in changed:
            await self._watchdog_changed(image.watchdog_tripped)
        if "loop_entry" in changed:
            if image.inputs["loop_entry"]:
                await self._entry_rose(now)
            else:
                self._entry_fell_at = now
        if "loop_stop" in changed:
            if image.inputs["loop_stop"]:
                await self._stop_rose(now)
            else:
                self._stop_fell(now)
        if "loop_safety" in changed:
            if image.inputs["loop_safety"]:
                self._safety_rose(now)
            else:
                self._safety_clear_since = now
                cur = self._current
                if cur is not None and cur.phase is Phase.PASSING:
                    cur.safety_clear_since = now
        if "exit_loop" in changed and image.inputs.get("exit_loop"):
            cur = self._current
            if cur is not None and cur.phase is Phase.PASSING:
                cur.exit_seen = True

    async def _watchdog_changed(self, tripped: bool) -> None:
        if tripped and "watchdog" not in self._faults:
            self._faults.add("watchdog")
            self.counters["faults"] += 1
            log.error("lane %s: PLC watchdog tripped (host heartbeat stale)", self.id)
            await self._event("alarm", "PLC_WATCHDOG", "error", True, {})
        elif not tripped and "watchdog" in self._faults:
            self._faults.discard("watchdog")
            log.info("lane %s: PLC watchdog cleared", self.id)
            await self._event("alarm", "PLC_WATCHDOG", "error", False, {})
            self._reconcile_pending = True

    def _reconcile(self) -> None:
        """After (re)connect or local control: fit the passage to what the PLC shows, rewrite all."""
        self._reconcile_pending = False
        image = self._image
        assert image is not None
        now = self._clock()
        self._travel = None
        # Whatever happened under the arm while we were not looking, clear_s starts again now.
        self._safety_clear_since = None if image.loop_safety else now
        cur = self._current
        if cur is not None:
            if cur.phase is Phase.RELEASED:
                if image.loop_safety:
                    self._to_phase(cur, Phase.PASSING)
                    cur.safety_seen = True
                else:
                    # Register map rule 7: a raised barrier with no vehicle under it comes down.
                    log.warning("lane %s: %s released but not passing after reconnect: lowering", self.id, cur.id)
                    self._abort(cur)
            elif cur.phase is Phase.PASSING and not image.loop_safety and cur.safety_clear_since is None:
                cur.safety_clear_since = now
            if cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED) and not image.inputs["loop_stop"]:
                cur.stop_clear_since = cur.stop_clear_since or now
        self._force_rewrite = True
        self._output_retry_at = 0.0

    # ================================================================== loops -> passages

    async def _entry_rose(self, now: float) -> None:
        if self._entry_fell_at is not None and now - self._entry_fell_at < self._config.timeouts.entry_gap_s:
            return  # a gap between tractor and trailer, not a new vehicle
        cur = self._current
        if (cur is not None and self._arriving is None and cur.stop_clear_since is not None
                and cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED, Phase.RELEASED)
                and not cur.safety_seen):
            # The vehicle that left the stop line without passing is reversing out over the entry
            # loop; nobody can enter the lane behind it while it does.
            log.info("lane %s: %s reversed out of the lane", self.id, cur.id)
            if cur.phase is Phase.RELEASED:
                self._abort(cur)
            else:
                await self._finish(cur, cancelled=cur.phase is not Phase.STOPPED)
            return
        ambiguous = False
        if self._arriving is not None:
            # One vehicle in the scan zone at a time: a second arrival before the first reached the
            # stop line means a back-out or a tailgater; neither passage can be trusted.
            log.warning("lane %s: entry loop again before %s reached the stop line", self.id, self._arriving.id)
            await self._finish(self._arriving, cancelled=True)
            ambiguous = True
        passage = self._new_passage(now, ambiguous=ambiguous)
        if self._current is not None:
            self._current.ocr_closed = True  # reads from now on belong to the new vehicle
        self._arriving = passage
        # Reads of the pre-arrival window belong to the vehicle now arriving.
        horizon = now - self._config.timeouts.pre_arrival_s
        for obs in list(self._buffer):
            if obs.received >= horizon:
                self._add_read(passage, obs)
        self._buffer.clear()
        log.info("lane %s: vehicle arriving, transaction %s%s", self.id, passage.id,
                 " (ambiguous)" if ambiguous else "")

    def _new_passage(self, now: float, *, ambiguous: bool = False) -> _Passage:
        record = TransactionRecord(site=self._site, gate=self._gate, lane=self.id,
                                   arrived_at=self._wall(), arrived_mono=now)
        self.counters["passages"] += 1
        return _Passage(record=record, phase=Phase.ARRIVING, arrived=now, arrival_base=now, since=now,
                        ambiguous=ambiguous)

    async def _stop_rose(self, now: float) -> None:
        cur = self._current
        gap = self._stop_fell_at is not None and now - self._stop_fell_at < self._config.timeouts.entry_gap_s
        if cur is not None:
            if cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED, Phase.RELEASED):
                cur.stop_clear_since = None  # the same vehicle rolled back onto the loop
                return
            if gap:
                return  # the trailer of the vehicle passing the barrier
            # The previous vehicle is under the barrier or gone: this is the next one.
            if self._arriving is not None:
                self._arriving.stop_pending = True
                self._arriving.at_stop = now
            else:
                await self._vehicle_without_arrival(now)
            return
        passage = self._arriving
        if passage is None:
            await self._vehicle_without_arrival(now)
            return
        self._arriving = None
        if passage.ambiguous:
            self._current = passage
            await self._finish(passage, cancelled=True)
            return
        passage.at_stop = now
        self._current = passage
        self._to_phase(passage, Phase.COLLECTING)

    async def _vehicle_without_arrival(self, now: float) -> None:
        """A vehicle at the stop line that never crossed the entry loop: its evidence is unknown."""
        log.warning("lane %s: vehicle at the stop line without an arrival: transaction cancelled", self.id)
        passage = self._new_passage(now, ambiguous=True)
        await self._publish_cancelled(passage)

    def _stop_fell(self, now: float) -> None:
        self._stop_fell_at = now
        cur = self._current
        if cur is not None and cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED, Phase.RELEASED):
            cur.stop_clear_since = now

    def _safety_rose(self, now: float) -> None:
        self._safety_clear_since = None
        cur = self._current
        if cur is None:
            return
        if cur.phase is Phase.RELEASED and cur.authorized_up:
            cur.safety_seen = True
            cur.stop_clear_since = None
            self._to_phase(cur, Phase.PASSING)
        elif cur.phase is Phase.PASSING:
            cur.safety_clear_since = None
        elif cur.phase is Phase.LOWERING:
            log.warning("lane %s: vehicle under the barrier while it is lowering (PLC interlock holds it)", self.id)

    def _to_phase(self, passage: _Passage, phase: Phase) -> None:
        log.debug("lane %s: %s %s -> %s", self.id, passage.id, passage.phase.value, phase.value)
        passage.phase = phase
        passage.since = self._clock()

    # ================================================================== evidence

    def _attach(self, obs: OcrObservation | ScanObservation) -> None:
        accepting = [p for p in (self._current, self._arriving)
                     if p is not None and p.phase in (Phase.ARRIVING, Phase.COLLECTING)]
        if isinstance(obs, ScanObservation):
            # The scanner sits between the entry loop and the stop line, so a scan can only belong
            # to a vehicle that had arrived before the scan ended.
            candidates = [p for p in accepting if p.arrived <= obs.scan_end]
            if not candidates:
                log.warning("lane %s: scan %s ended with no vehicle collecting evidence: ignored",
                            self.id, obs.scan_id)
                return
            target = max(candidates, key=lambda p: p.arrived)
            if target.scan is not None:
                log.warning("lane %s: second scan %s for %s replaces %s", self.id, obs.scan_id, target.id,
                            target.scan.scan_id)
            target.scan = obs
            return
        readers = [p for p in accepting if not p.ocr_closed]
        before = [p for p in readers if p.arrived <= obs.received]
        if before:
            self._add_read(max(before, key=lambda p: p.arrived), obs)
            return
        early = [p for p in readers if obs.received >= p.arrived - self._config.timeouts.pre_arrival_s]
        if early:
            self._add_read(min(early, key=lambda p: p.arrived), obs)
            return
        self._buffer.append(obs)
        horizon = self._clock() - self._config.timeouts.pre_arrival_s
        while self._buffer and self._buffer[0].received < horizon:
            self._buffer.popleft()

    def _add_read(self, passage: _Passage, obs: OcrObservation) -> None:
        if obs.kind == "plate":
            passage.plate_reads.append(obs)
        else:
            passage.container_reads.append(obs)
        passage.last_read = max(passage.last_read or obs.received, obs.received)

    def _evidence_complete(self, passage: _Passage, now: float) -> bool:
        assert passage.at_stop is not None
        if self._config.scanner and passage.scan is None:
            return False
        if passage.ocr_closed:
            return True
        quiet_since = max(passage.at_stop, passage.last_read or passage.at_stop)
        return now - quiet_since >= self._config.timeouts.ocr_settle_s

    # ================================================================== decisions

    def _start_decision(self, passage: _Passage) -> None:
        self._to_phase(passage, Phase.DECIDING)
        passage.ocr_closed = True
        passage.decision_started = self._clock()
        passage.decision_epoch = self._mode_epoch
        evidence = PassageEvidence(
            lane=self.id,
            transaction_id=passage.id,
            has_scanner=self._config.scanner,
            max_containers=self._config.max_containers,
            container_reads=tuple(passage.container_reads),
            plate_reads=tuple(passage.plate_reads),
            scan=passage.scan,
            plc_fault=self._mode is Mode.FAULT,
        )
        passage.decider = asyncio.create_task(self._decide(passage, evidence), name=f"decide-{passage.id}")

    async def _decide(self, passage: _Passage, evidence: PassageEvidence) -> None:
        outcome: DecisionOutcome | None = None
        try:
            async with asyncio.timeout(self._config.timeouts.decision_s):
                outcome = await self._decider.decide(evidence)
        except TimeoutError:
            outcome = None
        except Exception:
            # The Decider contract says it never raises; if it does, the passage still gets a
            # (non-release) decision instead of hanging the lane.
            log.exception("lane %s: decider failed for %s", self.id, passage.id)
            outcome = _fallback(evidence)
        if outcome is None:
            log.error("lane %s: no decision for %s within %.1f s", self.id, passage.id,
                      self._config.timeouts.decision_s)
            outcome = _fallback(evidence)
        self._queue.put_nowait(_Decided(passage, outcome))

    async def _on_decided(self, passage: _Passage, outcome: DecisionOutcome) -> None:
        if passage is not self._current or passage.phase is not Phase.DECIDING:
            return  # cancelled while the decider worked
        passage.decider = None
        passage.outcome = outcome
        action: Action = outcome.action
        reasons = list(outcome.reasons)
        if action == "release":
            forced = None
            if self._mode is not Mode.AUTOMATIC or passage.decision_epoch != self._mode_epoch:
                forced = "PLC_FAULT" if (self._mode is Mode.FAULT or not self._link_up) else "MANUAL_OVERRIDE"
            elif self._config.scanner and passage.scan is None:
                forced = "NO_SCAN"
            elif self._config.scanner and passage.scan is not None and not passage.scan.complete:
                forced = "SCAN_INCOMPLETE"
            if forced is not None:
                log.warning("lane %s: release of %s not carried out (%s): manual", self.id, passage.id, forced)
                action = "manual"
                reasons.append(forced)
        now = self._clock()
        scan_end = passage.scan.scan_end if passage.scan is not None else None
        passage.record.decide(action=action, reasons=reasons, now=self._wall(), now_mono=now,
                              containers=outcome.containers, plate=outcome.plate, scan=outcome.scan,
                              scan_end_mono=scan_end)
        committed = await self._open(passage)
        if not committed and action == "release":
            action = "manual"
            passage.record.action = "manual"
        if action == "release":
            passage.authorized_up = True
            passage.released_at = now
            self.counters["released"] += 1
            self._to_phase(passage, Phase.RELEASED)
            log.info("lane %s: %s released", self.id, passage.id)
        else:
            self.counters["stopped"] += 1
            self._to_phase(passage, Phase.STOPPED)
            log.info("lane %s: %s %s (%s)", self.id, passage.id, action, ", ".join(passage.record.reasons))

    async def _open(self, passage: _Passage) -> bool:
        """Commit the decided transaction before anything moves for it."""
        try:
            async with asyncio.timeout(self._journal_timeout_s):
                await self._journal.open_transaction(passage.record.as_record())
        except Exception:
            log.exception("lane %s: cannot commit %s to the journal: the barrier stays down", self.id, passage.id)
            return False
        return True

    # ================================================================== timers

    async def _check_timers(self) -> None:
        now = self._clock()
        t = self._config.timeouts
        arriving = self._arriving
        if arriving is not None and now - arriving.arrival_base >= t.arrival_s and not arriving.stop_pending:
            log.info("lane %s: %s never reached the stop line: cancelled", self.id, arriving.id)
            await self._finish(arriving, cancelled=True)
        cur = self._current
        if cur is None:
            return
        if cur.ambiguous:
            await self._finish(cur, cancelled=True)
            return
        if cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED) and cur.stop_clear_since is not None \
                and now - cur.stop_clear_since >= t.backout_s:
            if cur.phase is Phase.STOPPED:
                log.info("lane %s: %s left the stop line", self.id, cur.id)
                await self._finish(cur, cancelled=False)
            else:
                log.info("lane %s: %s backed out before its decision: cancelled", self.id, cur.id)
                await self._finish(cur, cancelled=True)
            return
        if cur.phase is Phase.COLLECTING:
            assert cur.at_stop is not None
            if self._evidence_complete(cur, now) or now - cur.at_stop >= t.collect_s:
                self._start_decision(cur)
        elif cur.phase is Phase.STOPPED:
            if now - cur.since >= t.hold_s:
                log.info("lane %s: %s waited %.0f s at the barrier: closed as manual", self.id, cur.id, t.hold_s)
                cur.record.action = "manual"
                await self._finish(cur, cancelled=False)
        elif cur.phase is Phase.RELEASED:
            assert cur.released_at is not None
            backed_out = cur.stop_clear_since is not None and now - cur.stop_clear_since >= t.backout_s
            if now - cur.released_at >= t.pass_s or backed_out:
                log.info("lane %s: %s released but did not pass: lowering", self.id, cur.id)
                self._abort(cur)
        elif cur.phase is Phase.PASSING:
            clear = cur.safety_clear_since is not None and now - cur.safety_clear_since >= t.clear_s
            # With exit detection the vehicle must have reached the exit detector; if the detector
            # never sees it, pass_s bounds how long the barrier stays up.
            exit_ok = not self._config.exit_detection or cur.exit_seen or now - cur.since >= t.pass_s
            if clear and exit_ok:
                self._to_phase(cur, Phase.LOWERING)

    def _abort(self, passage: _Passage) -> None:
        passage.authorized_up = False
        passage.aborted = True
        self._to_phase(passage, Phase.LOWERING)

    # ================================================================== barrier

    def _may_write_coils(self) -> bool:
        image = self._image
        return self._link_up and image is not None and not (image.estop or image.local_manual)

    def _want_up(self) -> bool:
        cur = self._current
        return (cur is not None and cur.authorized_up and cur.phase in (Phase.RELEASED, Phase.PASSING)
                and not (self._faults & {"barrier", "verify", "watchdog"}))

    def _safety_clear_for(self, seconds: float) -> bool:
        image = self._image
        if image is None or image.loop_safety or self._safety_clear_since is None:
            return False
        return self._clock() - self._safety_clear_since >= seconds

    async def _sync_barrier(self, image: PlcImage, force: bool) -> None:
        """Bring ``barrier_raise`` to what the passage needs (lowering waits for a clear safety loop)."""
        cur = self._current
        coil = image.coils["barrier_raise"]
        if self._want_up():
            assert cur is not None
            if not coil or force:
                # Rule 1: only for a passage decided release (or opened by an operator) and
                # committed to the journal; `_want_up` checked both.
                assert cur.record.action == "release"
                await self._driver.raise_barrier()
                if cur.record.raised_at is None:
                    cur.record.raised_at = self._wall()
                cur.record.barrier_commanded = True
                self._travel = (True, self._plc_clock() + self._config.plc.barrier_travel_s)
            return
        lowering = cur is not None and cur.phase is Phase.LOWERING
        need = coil or force or (lowering and self._travel is None and not image.inputs["barrier_down"])
        if not need:
            if lowering and self._travel is None and image.inputs["barrier_down"]:
                self._travel = (False, self._plc_clock() + self._config.plc.barrier_travel_s)
            return
        # Rule 2: never command down with a vehicle under the arm (the driver checks it again).
        if not self._safety_clear_for(self._config.timeouts.clear_s):
            return
        await self._driver.lower_barrier()
        if cur is not None and cur.phase is Phase.LOWERING:
            cur.record.barrier_commanded = True
        self._travel = (False, self._plc_clock() + self._config.plc.barrier_travel_s)

    async def _check_travel(self) -> None:
        travel = self._travel
        image = self._image
        if travel is None or image is None or not self._link_up:
            return
        up, deadline = travel
        now = self._plc_clock()  # travel is physical time, not the lane's phase clock
        if up:
            reached = image.inputs["barrier_up"] and not image.inputs["barrier_down"]
        else:
            reached = image.inputs["barrier_down"] and not image.inputs["barrier_up"]
        if reached:
            self._travel = None
            await self._barrier_reached(up)
            return
        if not up and image.loop_safety:
            # The PLC interlock holds the arm while a vehicle is under it: travel starts again after.
            self._travel = (up, max(deadline, self._plc_clock() + self._config.plc.barrier_travel_s))
            return
        if now > deadline:
            self._travel = None
            await self._barrier_fault("up" if up else "down")

    async def _barrier_reached(self, up: bool) -> None:
        cur = self._current
        if up or cur is None or cur.phase is not Phase.LOWERING:
            return
        cur.record.lowered_at = self._wall()
        await self._finish(cur, cancelled=cur.aborted)

    async def _barrier_fault(self, expected: str) -> None:
        image = self._image
        log.error("lane %s: barrier did not reach %s within %.1f s", self.id, expected,
                  self._config.plc.barrier_travel_s)
        self._faults.add("barrier")
        self._barrier_fault_latched = expected
        self.counters["faults"] += 1
        await self._event("alarm", "BARRIER_FAULT", "error", True,
                          {"expected": expected, "inputs": image.as_dict() if image is not None else {}})
        cur = self._current
        if cur is None:
            return
        if cur.phase is Phase.RELEASED:
            self._abort(cur)
        elif cur.phase is Phase.LOWERING and expected == "down":
            # The vehicle is through; the barrier state is unknown. Publish, keep the fault.
            await self._finish(cur, cancelled=cur.aborted)

    def _barrier_consistent(self, image: PlcImage) -> bool:
        up, down = image.inputs["barrier_up"], image.inputs["barrier_down"]
        if image.coils["barrier_raise"]:
            return up and not down
        return down and not up

    async def _check_barrier_fault_cleared(self) -> None:
        # A barrier that failed to come down clears by itself once it reads down; one that failed
        # to go up stays latched until the hub acknowledges (lane.mode auto), so a stuck switch
        # cannot cancel one released vehicle after the other.
        image = self._image
        if self._barrier_fault_latched != "down" or image is None or not self._link_up:
            return
        if self._barrier_consistent(image) and not image.coils["barrier_raise"]:
            await self._clear_barrier_fault("barrier down")

    async def _clear_barrier_fault(self, why: str) -> None:
        self._faults.discard("barrier")
        self._barrier_fault_latched = None
        self._force_rewrite = True
        log.info("lane %s: barrier fault cleared (%s)", self.id, why)
        await self._event("alarm", "BARRIER_FAULT", "error", False, {"cleared": why})

    # ================================================================== outputs

    def _desired_signals(self) -> tuple[dict[str, bool], dict[str, int]]:
        mode = self._mode
        image = self._image
        cur = self._current
        green, red, sign = False, True, False
        display = DisplayMessage.BLANK
        if cur is not None:
            if cur.phase in (Phase.RELEASED, Phase.PASSING) and cur.authorized_up:
                display = DisplayMessage.PROCEED
                if cur.phase is Phase.PASSING or (image is not None and image.inputs["barrier_up"]):
                    green, red = True, False
            elif cur.phase is Phase.STOPPED:
                inspect = cur.record.action == "inspect"
                sign = inspect
                display = DisplayMessage.GO_TO_INSPECTION if inspect else DisplayMessage.STOP_WAIT
            elif cur.phase in (Phase.COLLECTING, Phase.DECIDING):
                display = DisplayMessage.STOP_WAIT
        if mode is Mode.FAULT:
            green, red = False, True
        if mode is Mode.CLOSED and display is DisplayMessage.BLANK:
            display = DisplayMessage.LANE_CLOSED
        alarm = bool(image is not None and image.estop) or "barrier" in self._faults
        coils = {"light_red": red, "light_green": green, "sign_inspection": sign,
                 "scan_permit": mode is Mode.AUTOMATIC, "alarm": alarm}
        registers = {"lane_state": int(_LANE_STATE[mode]), "display_message": int(display)}
        return coils, registers

    async def _sync_outputs(self) -> None:
        image = self._driver.image
        if not self._link_up or image is None:
            return
        now = self._clock()
        if now < self._output_retry_at:
            return
        if "watchdog" in self._faults and self._driver.heartbeat_alive and now >= self._rewrite_at:
            # The PLC clears its watchdog once the heartbeat moves again and the coils are rewritten.
            self._force_rewrite = True
            self._rewrite_at = now + _REWRITE_RETRY_S
        if "verify" in self._faults and now >= self._rewrite_at:
            self._force_rewrite = True
            self._rewrite_at = now + _REWRITE_RETRY_S
        force = self._force_rewrite
        physical = image.estop or image.local_manual
        try:
            if not physical:
                await self._sync_barrier(image, force)
                image = self._driver.image or image
            coils, registers = self._desired_signals()
            for name in _SIGNAL_COILS:
                if physical and name != "alarm":
                    continue  # rule 3: local control owns every output but the alarm
                if force or image.coils[name] != coils[name]:
                    await self._driver.write_coil(name, coils[name])
            for name, value in registers.items():
                if force or image.holding[name] != value:
                    await self._driver.write_register(name, value)
        except PlcInterlockError as err:
            log.info("lane %s: write held back: %s", self.id, err)
            self._output_retry_at = now + self._tick_s
            return
        except PlcVerificationError as err:
            await self._verification_failed(err)
            self._output_retry_at = now + _OUTPUT_RETRY_S
            return
        except PlcError as err:
            log.warning("lane %s: PLC write failed: %s", self.id, err)
            self._output_retry_at = now + _OUTPUT_RETRY_S
            return
        if force and not physical:
            self._force_rewrite = False
            if "verify" in self._faults:
                self._faults.discard("verify")
                log.info("lane %s: outputs verified again", self.id)
                await self._event("alarm", "OUTPUT_FAULT", "error", False, {})

    async def _verification_failed(self, err: PlcVerificationError) -> None:
        log.error("lane %s: %s", self.id, err)
        first = "verify" not in self._faults
        self._faults.add("verify")
        self.counters["faults"] += 1
        barrier = "barrier_raise" in str(err)
        cur = self._current
        if cur is not None and cur.phase is Phase.RELEASED:
            self._abort(cur)
        if first:
            await self._event("alarm", "BARRIER_FAULT" if barrier else "OUTPUT_FAULT", "error", True,
                              {"error": str(err)})

    # ================================================================== finishing passages

    async def _finish(self, passage: _Passage, *, cancelled: bool) -> None:
        """Publish a passage's transaction and take it off the lane."""
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

    async def _publish_cancelled(self, passage: _Passage) -> None:
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
            self._to_phase(nxt, Phase.COLLECTING)

    # ================================================================== operator commands

    async def _operator_barrier(self, action: Literal["open", "close"], reason: str, operator: str) -> None:
        image = self._image
        if not self._link_up or image is None:
            raise CommandRefused("the PLC link is down")
        if image.estop or image.local_manual:
            raise CommandRefused("the lane is under local control (estop or key switch)")
        if self._faults & {"barrier", "verify", "watchdog"}:
            raise CommandRefused(f"the lane is in fault ({', '.join(sorted(self._faults))})")
        cur = self._current
        now = self._clock()
        if cur is not None and cur.phase is Phase.LOWERING:
            raise CommandRefused("the barrier is closing; retry when it is down")
        if action == "open":
            if cur is not None and cur.phase in (Phase.RELEASED, Phase.PASSING):
                raise CommandRefused("the barrier is already open")
        elif image.loop_safety:
            raise CommandRefused("a vehicle is under the barrier")
        log.warning("lane %s: operator %s: barrier %s (%s)", self.id, operator, action, reason)
        superseded = cur
        if superseded is not None:
            # A stopped or passing vehicle's passage is complete as it stands; one still being
            # judged, or released but not moving, ends as cancelled.
            await self._finish(superseded, cancelled=superseded.phase not in (Phase.STOPPED, Phase.PASSING))
        passage = self._new_passage(superseded.arrived if superseded is not None else now)
        if superseded is not None:
            passage.record.arrived_at = superseded.record.arrived_at
            passage.at_stop = superseded.at_stop
        outcome = superseded.outcome if superseded is not None else None
        passage.record.decide(
            action="release" if action == "open" else "manual", reasons=("MANUAL_OVERRIDE",),
            now=self._wall(), now_mono=now, by="operator", operator=operator,
            containers=outcome.containers if outcome is not None else (),
            plate=outcome.plate if outcome is not None else None,
            scan=outcome.scan if outcome is not None else None,
            scan_end_mono=superseded.scan.scan_end if superseded is not None and superseded.scan else None,
        )
        passage.record.barrier_commanded = True
        if not await self._open(passage):
            await self._publish_cancelled(passage)
            raise CommandRefused("the transaction could not be committed; the barrier did not move")
        self.counters["operator"] += 1
        self._current = passage
        if action == "open":
            passage.authorized_up = True
            passage.released_at = now
            self._to_phase(passage, Phase.RELEASED)
            try:
                await self._driver.raise_barrier()
            except PlcError as err:
                self._abort(passage)
                raise CommandRefused(f"the barrier did not open: {err}") from err
            passage.record.raised_at = self._wall()
            self._travel = (True, self._plc_clock() + self._config.plc.barrier_travel_s)
        else:
            self._to_phase(passage, Phase.LOWERING)
            self._safety_clear_since = self._safety_clear_since or now
            try:
                await self._driver.lower_barrier()
            except PlcError as err:
                raise CommandRefused(f"the barrier did not close: {err}") from err
            self._travel = (False, self._plc_clock() + self._config.plc.barrier_travel_s)

    # ================================================================== reload

    async def _reload(self, config: LaneConfig) -> None:
        old = self._config
        self._apply_now(config)
        if config.plc != old.plc:
            self._pending_plc = config
            log.info("lane %s: PLC settings changed; the driver is replaced when the barrier is idle", self.id)

    def _apply_now(self, config: LaneConfig) -> None:
        plc_changed = config.plc != self._config.plc
        if plc_changed and not self._running:
            self._driver = self._make_driver(config)
        self._config = config

    def _plc_swap_safe(self) -> bool:
        if not self._link_up:
            return True
        cur = self._current
        if self._travel is not None:
            return False
        image = self._image
        barrier_down = image is not None and image.inputs["barrier_down"] and not image.coils["barrier_raise"]
        return barrier_down and (cur is None or cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED))

    async def _swap_driver(self, config: LaneConfig) -> None:
        self._pending_plc = None
        await self._stop_driver()
        self._link_up = False
        self._faults.add("link")
        self._travel = None
        self._driver = self._make_driver(config)
        self._start_driver()
        log.info("lane %s: PLC driver replaced (%s)", self.id, config.plc.transport)

    # ================================================================== shutdown

    async def _shutdown(self) -> None:
        for passage in [p for p in (self._current, self._arriving) if p is not None]:
            await self._finish(passage, cancelled=True)
        image = self._driver.image
        if not self._link_up or image is None:
            return
        try:
            if not (image.estop or image.local_manual):
                for name, value in (("scan_permit", False), ("light_green", False), ("light_red", True)):
                    await self._driver.write_coil(name, value)
                if image.coils["barrier_raise"] and self._safety_clear_for(0.0):
                    await self._driver.lower_barrier()
            await self._driver.write_register("lane_state", int(LaneStateCode.OFFLINE))
            await self._driver.write_register("display_message", int(DisplayMessage.BLANK))
        except PlcError as err:
            log.warning("lane %s: could not leave the PLC outputs tidy: %s (its watchdog takes over)", self.id, err)

    # ================================================================== events

    async def _event(self, type_: EventType, code: str, severity: EventSeverity, active: bool,
                     detail: Mapping[str, Any]) -> None:
        try:
            async with asyncio.timeout(self._journal_timeout_s):
                await self._journal.emit_event(lane=self.id, type=type_, code=code, severity=severity,
                                               active=active, detail=dict(detail))
        except Exception:
            log.exception("lane %s: cannot commit event %s", self.id, code)


def _fallback(evidence: PassageEvidence) -> DecisionOutcome:
    """The decision when the decider did not answer in time: never a release."""
    return DecisionOutcome(action="manual", reasons=("INFERENCE_UNAVAILABLE",), containers=(), plate=None,
                           scan=None)

