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
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from gate_controller.config import LaneConfig
from gate_controller.core.errors import PlcError
from gate_controller.core.ports import (
    CommandRefused,
    OcrObservation,
    ScanObservation,
)
from gate_controller.lane.barrier import BarrierControl
from gate_controller.lane.core import log
from gate_controller.lane.passage import (
    Call,
    Decided,
    HubMode,
    LaneSnapshot,
    Mode,
    Observation,
    Phase,
    QueueItem,
    StopRequest,
)
from gate_controller.lane.tracking import UNFAMILIAR_ALARM_S, PassageTracking
from gate_controller.plc.driver import (
    DisplayMessage,
    LaneStateCode,
    PlcImage,
    PlcInputsChanged,
    PlcLinkDown,
    PlcLinkUp,
    raise_if_cancelling,
    stop_task,
)

__all__ = ["UNFAMILIAR_ALARM_S", "HubMode", "Lane", "LaneSnapshot", "Mode", "Phase"]


class Lane(PassageTracking, BarrierControl):
    """The state machine of one lane, owner of its PLC driver.

    Wire it from the daemon: create one per configured lane, run `run` as a named task, feed
    `observe_ocr` / `observe_scan` with what the firmware links deliver for this lane, route hub
    commands to `barrier_command` / `set_mode`, call `apply_config` on reload and `snapshot` for
    status and telemetry. `stop` (or cancelling `run`) leaves the lane safe.
    """

    def observe_ocr(self, observation: OcrObservation) -> None:
        """One OCR read from a link of this lane (``received`` on the daemon's monotonic clock)."""
        self._queue.put_nowait(Observation(observation))

    def observe_scan(self, observation: ScanObservation) -> None:
        """A finished scan transfer from this lane's scanner."""
        self._queue.put_nowait(Observation(observation))

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
            if isinstance(item, Call) and not item.done.done():
                item.done.set_exception(CommandRefused(f"lane {self.id} stopped"))

    async def stop(self) -> None:
        """Finish safely: publish open passages, lower the barrier if nothing is under it, go offline."""
        if not self._running:
            return
        self._queue.put_nowait(StopRequest())
        assert self._finished is not None
        await self._finished.wait()

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
        self._queue.put_nowait(Call(action, done))
        await done

    async def _main_loop(self) -> None:
        while True:
            raise_if_cancelling()
            try:
                item: QueueItem | None = await asyncio.wait_for(self._queue.get(), timeout=self._tick_s)
            except TimeoutError:
                item = None
            self._last_tick = self._plc_clock()
            if isinstance(item, StopRequest):
                self._stopping = True
                return
            if item is not None:
                await self._handle(item)
                # Drain what is already queued before the timers run (a poll often brings several).
                while not self._queue.empty():
                    queued = self._queue.get_nowait()
                    if isinstance(queued, StopRequest):
                        self._stopping = True
                        return
                    await self._handle(queued)
            await self._step()

    async def _handle(self, item: QueueItem) -> None:
        if isinstance(item, Call):
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
        elif isinstance(item, Observation):
            self._attach(item.item)
        elif isinstance(item, Decided):
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
            self._exit_rose(now)

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
