"""The barrier and the lane's other outputs: what is written to the PLC, and when.

Raising needs a passage decided ``release`` and committed (or an operator ``open``); lowering needs
``loop_safety`` clear for ``clear_s``; travel is supervised against ``barrier_travel_s``. Signals,
lights and the display follow the passage and the mode; after a reconnect everything is rewritten.
"""

from __future__ import annotations

from typing import Literal

from gate_controller.core.errors import PlcError, PlcInterlockError, PlcVerificationError
from gate_controller.core.ports import (
    CommandRefused,
)
from gate_controller.lane.core import LaneCore, log
from gate_controller.lane.passage import (
    Mode,
    Phase,
)
from gate_controller.plc.driver import (
    DisplayMessage,
    LaneStateCode,
    PlcImage,
)

_LANE_STATE = {Mode.AUTOMATIC: LaneStateCode.AUTOMATIC, Mode.MANUAL: LaneStateCode.MANUAL,
               Mode.FAULT: LaneStateCode.FAULT, Mode.CLOSED: LaneStateCode.CLOSED}
_SIGNAL_COILS = ("light_red", "light_green", "sign_inspection", "scan_permit", "alarm")
_OUTPUT_RETRY_S = 0.5
_REWRITE_RETRY_S = 1.0


class BarrierControl(LaneCore):
    """Barrier commands and travel, signal outputs and operator barrier commands of a lane."""

    def _may_write_coils(self) -> bool:
        image = self._image
        return self._link_up and image is not None and not (image.estop or image.local_manual)

    def _want_up(self) -> bool:
        cur = self._current
        return (cur is not None and cur.authorized_up and cur.phase in (Phase.RELEASED, Phase.PASSING)
                and not (self._faults & {"barrier", "verify", "watchdog"}))

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
