"""A lane PLC with lane physics: barrier travel, limit switches, loops that follow vehicles.

It does what the register map says a real lane PLC does on its own (docs/plc-points.md):
the 3 s host-heartbeat watchdog, the hardware interlock that never lowers the barrier onto a
vehicle on ``loop_safety``, ``estop`` freezing the barrier and cutting ``scan_permit``, and the key
switch handing the barrier to local buttons. Fault injection covers what field PLCs do wrong:
stop answering, drop the connection (see `VirtualPlcServer`), a stuck limit switch, a coil that
ignores writes.

The image holds *logical* values; `read_raw`/`write_raw` apply the point map (including inverted
polarity) for the Modbus server. Every write a master makes is kept in `writes` together with the
inputs at that instant and what the master had last been told, so tests can check the safety
rules on the wire rather than on the daemon's intentions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from pymodbus.constants import ExcCodes

from gate_controller.config import PointConfig, PointMap
from gate_controller.config.plc import COILS

__all__ = [
    "Spot",
    "Vehicle",
    "VirtualLanePlc",
    "WriteRecord",
]

log = logging.getLogger(__name__)

_HOLDING = ("host_heartbeat", "lane_state", "display_message")
_INPUT_REGS = ("plc_version", "plc_watchdog", "barrier_cycles")
EXIT_LOOP = "exit_loop"


class Spot(Enum):
    """Where a simulated vehicle is; each loop sees the vehicles standing on it."""

    ENTRY = "entry"  # on the entry loop (start of the scan zone)
    ZONE = "zone"  # in the scan zone, between the loops
    STOP = "stop"  # on the stop loop, in front of the barrier
    TO_ARM = "to_arm"  # off the stop loop, driving to the barrier, not yet on the safety loop
    UNDER = "under"  # on the safety loop, under the barrier arm
    EXIT = "exit"  # past the barrier, on the exit detector when there is one
    GONE = "gone"


_LOOP_OF = {Spot.ENTRY: "loop_entry", Spot.STOP: "loop_stop", Spot.UNDER: "loop_safety", Spot.EXIT: EXIT_LOOP}


@dataclass
class Vehicle:
    id: int
    spot: Spot = Spot.ENTRY
    payload: object = None
    """Whatever the coordinator wants to carry along (e.g. the firmware simulator's truck)."""
    history: list[tuple[float, Spot]] = field(default_factory=list)


@dataclass(frozen=True)
class WriteRecord:
    """One write as the PLC received it, with the lane as it was at that instant."""

    at: float
    name: str
    value: bool | int
    inputs: dict[str, bool]
    """Logical inputs at the moment of the write."""
    reported: dict[str, tuple[bool, float]]
    """Per input: the value last sent to a master and when."""
    changed_at: dict[str, float]
    """Per input: when it last changed."""
    watchdog_tripped: bool

    def master_knew_clear(self, name: str, *, within_s: float) -> bool:
        """Whether ``name`` was 0 when this write arrived, as far as the master could know.

        True when the input was 0 at the write, or when the master's last read of it (no more than
        ``within_s`` before the write) said 0 and it changed only after that read: the window no
        Modbus master can close, which the PLC's own interlock covers.
        """
        if not self.inputs[name]:
            return True
        value, at = self.reported.get(name, (None, -1.0))
        return value is False and self.changed_at.get(name, 0.0) > at and self.at - at <= within_s


class VirtualLanePlc:
    """The PLC image and physics of one lane; serve it with `VirtualPlcServer`."""

    def __init__(
        self,
        *,
        points: PointMap | None = None,
        exit_loop: PointConfig | None = None,
        travel_s: tuple[float, float] = (1.5, 3.0),
        watchdog_s: float = 3.0,
        move_s: float = 1.0,
        to_arm_s: float = 0.0,
        tick_s: float = 0.02,
        version: int = 0x0104,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        if not 0 < travel_s[0] <= travel_s[1]:
            raise ValueError(f"travel_s must be (min, max) with 0 < min <= max (got {travel_s})")
        self.points = points or PointMap()
        self._map: dict[str, PointConfig] = {n: getattr(self.points, n) for n in type(self.points).model_fields}
        if exit_loop is not None:
            self._map[EXIT_LOOP] = exit_loop
        self._by_slot: dict[tuple[str, int], str] = {(p.table, p.address): n for n, p in self._map.items()}
        self.travel_s = travel_s
        self.watchdog_s = watchdog_s
        self.move_s = move_s
        self.to_arm_s = to_arm_s
        """From leaving the stop loop to reaching the safety loop when driving through (0: the loops touch)."""
        self.tick_s = tick_s
        self._clock = clock
        self._rng = random.Random(seed)
        now = clock()
        self.coils: dict[str, bool] = dict.fromkeys(COILS, False)
        self.holding: dict[str, int] = dict.fromkeys(_HOLDING, 0)
        self.version = version
        self.barrier_cycles = 0
        self.position = 0.0  # 0 fully down .. 1 fully up
        self._speed = 1.0 / travel_s[1]
        self._moving_to: float | None = None
        self._been_up = False
        self.estop = False
        self.key_manual = False
        self.local_raise = False
        self.watchdog_tripped = False
        self._heartbeat_changed_at = now
        self._heartbeat_changed_since_trip = False
        self.stuck: dict[str, bool] = {}
        self.frozen_coils: set[str] = set()
        self.mute = False
        self.vehicles: list[Vehicle] = []
        self._ids = itertools.count(1)
        self.writes: list[WriteRecord] = []
        self.reads = 0
        self._reported: dict[str, tuple[bool, float]] = {}
        self._changed_at: dict[str, float] = {}
        self._last_inputs = self._compute_inputs()
        for name in self._last_inputs:
            self._changed_at[name] = now
        self._last_tick = now
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    # ------------------------------------------------------------------ running

    async def start(self) -> None:
        """Start the physics (idempotent)."""
        if self._task is None:
            self._last_tick = self._clock()
            self._task = asyncio.create_task(self._physics(), name="virtual-plc-physics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _physics(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self.tick()

    def tick(self) -> None:
        """Advance the physics to the clock's now (the task calls this every ``tick_s``)."""
        now = self._clock()
        dt = max(0.0, now - self._last_tick)
        self._last_tick = now
        if not self.watchdog_tripped and now - self._heartbeat_changed_at > self.watchdog_s:
            self.watchdog_tripped = True
            self._heartbeat_changed_since_trip = False
            log.info("virtual PLC: host heartbeat stale for %.1f s, watchdog tripped", self.watchdog_s)
        if self.watchdog_tripped:
            self.coils.update(scan_permit=False, light_green=False, light_red=True, barrier_raise=False)
        if self.estop:
            self.coils["scan_permit"] = False
        self._move_barrier(dt)
        self._refresh_inputs(now)

    def _move_barrier(self, dt: float) -> None:
        if self.estop:
            self._moving_to = None
            return  # an emergency stop freezes the arm where it is
        want_up = self.local_raise if self.key_manual else self.coils["barrier_raise"]
        target = 1.0 if want_up else 0.0
        if target < self.position and self._loop("loop_safety"):
            self._moving_to = None
            return  # hardware interlock: never lower onto a vehicle
        if target == self.position:
            self._moving_to = None
            return
        if self._moving_to != target:
            self._moving_to = target
            self._speed = 1.0 / self._rng.uniform(*self.travel_s)
        step = self._speed * dt
        if target > self.position:
            self.position = min(1.0, self.position + step)
        else:
            self.position = max(0.0, self.position - step)
        if self.position >= 1.0:
            self._been_up = True
        if self.position <= 0.0 and self._been_up:
            self._been_up = False
            self.barrier_cycles = (self.barrier_cycles + 1) & 0xFFFF

    # ------------------------------------------------------------------ inputs

    def _loop(self, name: str) -> bool:
        return any(_LOOP_OF.get(v.spot) == name for v in self.vehicles)

    def _compute_inputs(self) -> dict[str, bool]:
        inputs = {
            "loop_entry": self._loop("loop_entry"),
            "loop_stop": self._loop("loop_stop"),
            "loop_safety": self._loop("loop_safety"),
            "barrier_up": self.position >= 1.0,
            "barrier_down": self.position <= 0.0,
            "estop": self.estop,
            "local_manual": self.key_manual,
        }
        for name in ("barrier_up", "barrier_down"):
            if name in self.stuck:
                inputs[name] = self.stuck[name]
        if EXIT_LOOP in self._map:
            inputs[EXIT_LOOP] = self._loop(EXIT_LOOP)
        return inputs

    def _refresh_inputs(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        inputs = self._compute_inputs()
        for name, value in inputs.items():
            if self._last_inputs.get(name) != value:
                self._changed_at[name] = now
        self._last_inputs = inputs
        for predicate, waiter in list(self._waiters):
            if not waiter.done() and predicate():
                waiter.set_result(None)

    @property
    def inputs(self) -> dict[str, bool]:
        """The logical inputs now."""
        return dict(self._last_inputs)

    @property
    def registers(self) -> dict[str, int]:
        return {"plc_version": self.version, "plc_watchdog": int(self.watchdog_tripped),
                "barrier_cycles": self.barrier_cycles}

    def point(self, name: str) -> PointConfig:
        return self._map[name]

    # ------------------------------------------------------------------ Modbus access

    def read_raw(self, table: str, address: int, count: int) -> list[bool] | list[int] | ExcCodes:
        """Serve a Modbus read (raw values, inversion applied); unmapped addresses are refused."""
        names = [self._by_slot.get((table, a)) for a in range(address, address + count)]
        if any(n is None for n in names):
            return ExcCodes.ILLEGAL_ADDRESS
        self.reads += 1
        now = self._clock()
        if table in ("discrete_input", "coil"):
            bits: list[bool] = []
            for name in names:
                assert name is not None
                value = self._bit(name)
                if name in self._last_inputs:
                    self._reported[name] = (value, now)
                bits.append(value != self._map[name].inverted)
            return bits
        regs: list[int] = []
        for name in names:
            assert name is not None
            regs.append(self._register(name))
        return regs

    def write_raw(self, table: str, address: int, values: Sequence[bool] | Sequence[int]) -> ExcCodes | None:
        """Apply a Modbus write; only coils and holding registers of the daemon are writable."""
        names = [self._by_slot.get((table, a)) for a in range(address, address + len(values))]
        if any(n is None for n in names):
            return ExcCodes.ILLEGAL_ADDRESS
        if table == "coil" and any(n not in COILS for n in names):
            return ExcCodes.ILLEGAL_ADDRESS
        if table == "holding_register" and any(n not in _HOLDING for n in names):
            return ExcCodes.ILLEGAL_ADDRESS
        if table not in ("coil", "holding_register"):
            return ExcCodes.ILLEGAL_FUNCTION
        self._refresh_inputs()
        for name, raw in zip(names, values, strict=True):
            assert name is not None
            if table == "coil":
                self._write_coil(name, bool(raw) != self._map[name].inverted)
            else:
                self._write_holding(name, int(raw) & 0xFFFF)
        return None

    def _record(self, name: str, value: bool | int) -> None:
        self.writes.append(WriteRecord(
            at=self._clock(), name=name, value=value, inputs=dict(self._last_inputs),
            reported=dict(self._reported), changed_at=dict(self._changed_at),
            watchdog_tripped=self.watchdog_tripped,
        ))

    def _write_coil(self, name: str, value: bool) -> None:
        self._record(name, value)
        if self.watchdog_tripped:
            if self._heartbeat_changed_since_trip:
                self.watchdog_tripped = False
                log.info("virtual PLC: heartbeat back and coils rewritten, watchdog cleared")
            elif name in ("scan_permit", "light_green", "light_red", "barrier_raise"):
                return  # still tripped: the forced outputs keep their safe values
        if name in self.frozen_coils:
            return
        if name == "scan_permit" and self.estop:
            return
        self.coils[name] = value

    def _write_holding(self, name: str, value: int) -> None:
        self._record(name, value)
        if name == "host_heartbeat" and value != self.holding[name]:
            self._heartbeat_changed_at = self._clock()
            if self.watchdog_tripped:
                self._heartbeat_changed_since_trip = True
        self.holding[name] = value

    def _bit(self, name: str) -> bool:
        if name in COILS:
            return self.coils[name]
        return self._last_inputs[name]

    def _register(self, name: str) -> int:
        if name in _HOLDING:
            return self.holding[name]
        return self.registers[name]

    # ------------------------------------------------------------------ operator and faults

    def press_estop(self, pressed: bool = True) -> None:
        self.estop = pressed
        self._refresh_inputs()

    def set_key_switch(self, manual: bool) -> None:
        """Turn the lane key switch to local/manual (True) or back to remote (False)."""
        self.key_manual = manual
        if manual:
            self.local_raise = self.coils["barrier_raise"]
        self._refresh_inputs()

    def local_barrier(self, up: bool) -> None:
        """The local raise/lower buttons (effective only with the key switch in manual)."""
        self.local_raise = up

    def stick_limit_switch(self, name: str, value: bool | None) -> None:
        """Make ``barrier_up``/``barrier_down`` read ``value`` whatever the arm does (None: repair)."""
        if name not in ("barrier_up", "barrier_down"):
            raise ValueError(f"{name!r} is not a limit switch")
        if value is None:
            self.stuck.pop(name, None)
        else:
            self.stuck[name] = value
        self._refresh_inputs()

    def freeze_coil(self, name: str, frozen: bool = True) -> None:
        """Make a coil acknowledge writes without changing (a welded relay, a forced output)."""
        if name not in COILS:
            raise ValueError(f"{name!r} is not a coil")
        if frozen:
            self.frozen_coils.add(name)
        else:
            self.frozen_coils.discard(name)

    # ------------------------------------------------------------------ vehicles

    def _front(self, spots: Sequence[Spot]) -> Vehicle:
        for vehicle in self.vehicles:
            if vehicle.spot in spots:
                return vehicle
        raise LookupError(f"no vehicle at {', '.join(s.value for s in spots)}")

    def _place(self, vehicle: Vehicle, spot: Spot) -> None:
        vehicle.spot = spot
        vehicle.history.append((self._clock(), spot))
        if spot is Spot.GONE:
            self.vehicles.remove(vehicle)
        self._refresh_inputs()

    def add_vehicle(self, spot: Spot = Spot.ENTRY, payload: object = None) -> Vehicle:
        """Put a vehicle somewhere at once (tests, or a vehicle present when the daemon starts)."""
        vehicle = Vehicle(next(self._ids), spot, payload)
        vehicle.history.append((self._clock(), spot))
        self.vehicles.append(vehicle)
        self._refresh_inputs()
        return vehicle

    def move(self, vehicle: Vehicle, spot: Spot) -> None:
        """Move a vehicle at once (no travel time), e.g. for property-based tests."""
        self._place(vehicle, spot)

    async def vehicle_arrives(self, payload: object = None, *, dwell_s: float | None = None) -> Vehicle:
        """A vehicle drives over the entry loop into the scan zone (entry loop rises, then falls)."""
        vehicle = self.add_vehicle(Spot.ENTRY, payload)
        await asyncio.sleep(self.move_s if dwell_s is None else dwell_s)
        self._place(vehicle, Spot.ZONE)
        return vehicle

    async def vehicle_to_stop_line(self, vehicle: Vehicle | None = None) -> Vehicle:
        """The vehicle drives through the scan zone to the stop line (stop loop rises)."""
        vehicle = vehicle or self._front((Spot.ENTRY, Spot.ZONE))
        if vehicle.spot is Spot.ENTRY:
            self._place(vehicle, Spot.ZONE)
        await asyncio.sleep(self.move_s)
        self._place(vehicle, Spot.STOP)
        return vehicle

    async def vehicle_drives_through(self, vehicle: Vehicle | None = None, *, timeout_s: float = 60.0,
                                     to_arm_s: float | None = None) -> Vehicle:
        """Wait for the barrier to be fully up, then drive under it and away.

        ``to_arm_s`` (default: the PLC's) is how long the vehicle is on neither loop between leaving
        the stop loop and reaching the safety loop. Raises `TimeoutError` (the vehicle stays at the
        stop line) if the barrier does not open.
        """
        vehicle = vehicle or self._front((Spot.STOP,))
        await self.wait_for(lambda: self.position >= 1.0, timeout_s=timeout_s)
        gap_s = self.to_arm_s if to_arm_s is None else to_arm_s
        if gap_s > 0:
            self._place(vehicle, Spot.TO_ARM)
            await asyncio.sleep(gap_s)
        self._place(vehicle, Spot.UNDER)
        await asyncio.sleep(self.move_s)
        self._place(vehicle, Spot.EXIT)
        await asyncio.sleep(self.move_s if EXIT_LOOP in self._map else 0.0)
        self._place(vehicle, Spot.GONE)
        return vehicle

    def vehicle_turns_off(self, vehicle: Vehicle | None = None) -> Vehicle:
        """The vehicle leaves the stop line by a side exit before the barrier (to the inspection area),
        over no loop."""
        vehicle = vehicle or self._front((Spot.STOP,))
        self._place(vehicle, Spot.GONE)
        return vehicle

    async def vehicle_backs_out(self, vehicle: Vehicle | None = None, *, reverse_s: float | None = None) -> Vehicle:
        """The vehicle reverses out of the lane over the entry loop; from the stop line it needs
        ``reverse_s`` (default ``move_s``) to get back to the entry loop."""
        vehicle = vehicle or self._front((Spot.STOP, Spot.ZONE, Spot.ENTRY))
        if vehicle.spot is Spot.STOP:
            self._place(vehicle, Spot.ZONE)
            await asyncio.sleep(self.move_s if reverse_s is None else reverse_s)
        self._place(vehicle, Spot.ENTRY)
        await asyncio.sleep(self.move_s)
        self._place(vehicle, Spot.GONE)
        return vehicle

    async def wait_for(self, predicate: Callable[[], bool], *, timeout_s: float) -> None:
        """Wait until ``predicate()`` holds, re-checked on every physics tick."""
        if predicate():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, waiter))
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove((predicate, waiter))

    # ------------------------------------------------------------------ inspection

    def writes_of(self, name: str) -> list[WriteRecord]:
        return [w for w in self.writes if w.name == name]

    def describe(self) -> dict[str, object]:
        return {
            "inputs": self.inputs,
            "coils": dict(self.coils),
            "holding": dict(self.holding),
            "registers": self.registers,
            "position": round(self.position, 3),
            "vehicles": [(v.id, v.spot.value) for v in self.vehicles],
        }
