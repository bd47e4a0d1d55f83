"""Modbus driver for a lane PLC: polling with edge detection, verified writes, heartbeat, reconnect.

The driver knows the register map (docs/plc-points.md) but nothing about vehicles: the lane state
machine decides *what* to write, the driver makes sure each write is safe to send, reaches the PLC
and reads back as written. Two rules of the register map are enforced here, at the last point
before the wire, so that no lane logic error can break them:

* no coil other than ``alarm`` is written while ``estop`` or ``local_manual`` is set, and
* ``barrier_raise`` is never written to 0 while ``loop_safety`` is set.

Both are checked with a fresh read of the inputs inside the same bus-lock hold as the write, so
the decision rests on what the PLC said a few milliseconds earlier, not on the last poll.

Lanes whose PLCs sit on one physical bus (several unit ids on one RS-485 line, or behind one
Modbus TCP gateway) share one `PlcBus` from a `PlcBusRegistry`: one client, one lock. A PLC that
stops answering costs each request ``timeout_s`` while it holds that lock, so a driver whose link
is down only probes at its reconnect backoff (at most about once per ``reconnect_max_s``) and the
other lanes on the bus keep most of its time. Lanes on different buses never wait for each other.

The signal names (`gate_controller.config.plc`), the point map and read plan (`points`), the image
and events (`image`), the buses (`bus`) and the owner-task helpers (`gate_controller.core.tasks`)
live in modules of their own; their names are re-exported here, so a lane imports the PLC from
this one module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from gate_controller.config import PlcConfig
from gate_controller.config.plc import COILS, HOLDING_REGISTERS, INPUT_BITS, INPUT_REGISTERS
from gate_controller.core.backoff import backoff_delay
from gate_controller.core.errors import PlcError, PlcInterlockError, PlcVerificationError
from gate_controller.core.tasks import raise_if_cancelling, stop_task
from gate_controller.plc.bus import BusKey, PlcBus, PlcBusRegistry, default_bus_registry
from gate_controller.plc.image import PlcEvent, PlcImage, PlcInputsChanged, PlcLinkDown, PlcLinkUp
from gate_controller.plc.points import EXIT_LOOP, DisplayMessage, LaneStateCode, ReadBlock, point_map, read_blocks

__all__ = [
    "COILS",
    "HOLDING_REGISTERS",
    "INPUT_BITS",
    "INPUT_REGISTERS",
    "BusKey",
    "DisplayMessage",
    "LaneStateCode",
    "PlcBus",
    "PlcBusRegistry",
    "PlcDriver",
    "PlcEvent",
    "PlcImage",
    "PlcInputsChanged",
    "PlcLinkDown",
    "PlcLinkUp",
    "default_bus_registry",
    "point_map",
    "raise_if_cancelling",
    "running",
    "stop_task",
]

log = logging.getLogger(__name__)


def _always() -> bool:
    return True


@dataclass
class _LinkStats:
    connects: int = 0
    link_losses: int = 0
    requests: int = 0
    failures: int = 0
    heartbeats: int = 0
    last_heartbeat: float | None = None
    poll_times: list[float] = field(default_factory=list)


class _LinkLost(Exception):
    """Internal: the poll loop gave up on the link."""


class PlcDriver:
    """One lane's PLC: the owner task `run` connects, polls, writes the heartbeat and reconnects.

    The lane hears about the PLC through ``listener`` (called on the event loop, must not block):
    `PlcLinkUp` with every point after each (re)connect, `PlcInputsChanged` on edges, and
    `PlcLinkDown` within ``link_loss_s`` + ``timeout_s`` of the last good answer. Writes are
    coroutines the lane awaits; each raises `PlcError` (or a subclass) when it did not happen as
    asked, and never retries on its own.
    """

    def __init__(
        self,
        config: PlcConfig,
        *,
        name: str,
        listener: Callable[[PlcEvent], None] | None = None,
        healthy: Callable[[], bool] = _always,
        buses: PlcBusRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self._listener = listener
        self._healthy = healthy
        self._registry = buses if buses is not None else default_bus_registry()
        self._clock = clock
        self._rng = rng or random.Random()
        self._unit = config.unit_id
        self._points = point_map(config)
        input_names = list(INPUT_BITS) + ([EXIT_LOOP] if config.exit_loop is not None else [])
        self._input_blocks = read_blocks(self._points, input_names)
        self._coil_blocks = read_blocks(self._points, COILS)
        self._holding_blocks = read_blocks(self._points, HOLDING_REGISTERS)
        self._register_blocks = read_blocks(self._points, INPUT_REGISTERS)
        self._bus: PlcBus | None = None
        self._up = False
        self._image: PlcImage | None = None
        self._heartbeat = 0
        self._next_heartbeat = 0.0
        self._slow_every = max(1, round(config.poll_hz))  # coils and registers about once a second
        self.stats = _LinkStats()

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """Whether the link is up as the driver judges it (not merely a socket being open)."""
        return self._up

    @property
    def image(self) -> PlcImage | None:
        """The last complete picture of the PLC, or None before the first connect."""
        return self._image

    @property
    def heartbeat_alive(self) -> bool:
        """Whether the heartbeat was written within the last two heartbeat intervals."""
        last = self.stats.last_heartbeat
        return last is not None and self._clock() - last <= 2 * self.config.heartbeat_interval_s

    def set_listener(self, listener: Callable[[PlcEvent], None]) -> None:
        self._listener = listener

    # ------------------------------------------------------------------ owner task

    async def run(self) -> None:
        """Connect (retrying with capped, jittered backoff), poll, heartbeat; reconnect on loss."""
        self._bus = self._registry.acquire(self.config)
        try:
            attempt = 0
            while True:
                raise_if_cancelling()
                try:
                    image = await self._connect()
                except PlcError as err:
                    if attempt == 0:
                        log.warning("PLC %s: cannot reach it yet: %s", self.name, err)
                    else:
                        log.debug("PLC %s: connect attempt %d failed: %s", self.name, attempt + 1, err)
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                attempt = 0
                self._up = True
                self.stats.connects += 1
                log.info("PLC %s: link up (%s unit %d)", self.name, BusKey.of(self.config), self._unit)
                self._emit(PlcLinkUp(image))
                try:
                    await self._poll_until_lost()
                except _LinkLost as lost:
                    self._mark_down(str(lost))
                    # A fresh connection often cures a PLC that stopped answering; on a shared
                    # bus the connection belongs to the other lanes too and stays open.
                    if self._bus.users <= 1:
                        self._bus.close()
                    await asyncio.sleep(self._backoff(0))
                    attempt = 1
        finally:
            if self._up:
                self._up = False
            bus, self._bus = self._bus, None
            self._registry.release(bus)

    def _mark_down(self, reason: str) -> None:
        if not self._up:
            return
        self._up = False
        self.stats.link_losses += 1
        log.error("PLC %s: link lost: %s", self.name, reason)
        self._emit(PlcLinkDown(reason))

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, initial_s=0.1, max_s=self.config.reconnect_max_s, rng=self._rng)

    def _emit(self, event: PlcEvent) -> None:
        if self._listener is not None:
            self._listener(event)

    async def _connect(self) -> PlcImage:
        bus = self._require_bus()
        async with bus.lock:
            await bus.ensure_connected()
            image = await self._read(full=True)
        self._image = image
        return image

    async def _poll_until_lost(self) -> None:
        period = 1.0 / self.config.poll_hz
        last_ok = self._clock()
        cycle = 0
        next_poll = self._clock()
        while True:
            raise_if_cancelling()
            delay = next_poll - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            next_poll = max(next_poll + period, self._clock())
            cycle += 1
            bus = self._require_bus()
            try:
                async with bus.lock:
                    image = await self._read(full=cycle % self._slow_every == 0)
            except PlcError as err:
                self.stats.failures += 1
                if not bus.connected:
                    raise _LinkLost(f"connection closed ({err})") from err
                if self._clock() - last_ok >= self.config.link_loss_s:
                    raise _LinkLost(str(err)) from err
                next_poll = self._clock()  # retry at once: the link-loss deadline is running
                continue
            last_ok = self._clock()
            self.stats.poll_times.append(last_ok)
            if len(self.stats.poll_times) > 256:
                del self.stats.poll_times[:128]
            self._publish(image)
            await self._maybe_heartbeat()

    def _publish(self, image: PlcImage) -> None:
        previous = self._image
        self._image = image
        if previous is None:
            return
        changed = {n for n, v in image.inputs.items() if previous.inputs.get(n) != v}
        changed |= {n for n, v in image.coils.items() if previous.coils.get(n) != v}
        changed |= {n for n, v in image.registers.items() if n != "barrier_cycles" and previous.registers.get(n) != v}
        if changed:
            self._emit(PlcInputsChanged(image, frozenset(changed)))

    async def _maybe_heartbeat(self) -> None:
        now = self._clock()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.config.heartbeat_interval_s
        if not self._healthy():
            # A wedged pipeline must let the PLC watchdog trip and take the lane to its safe state.
            return
        value = (self._heartbeat + 1) & 0xFFFF
        try:
            await self.write_register("host_heartbeat", value)
        except PlcError as err:
            log.debug("PLC %s: heartbeat write failed: %s", self.name, err)
            return
        self._heartbeat = value
        self.stats.heartbeats += 1
        self.stats.last_heartbeat = self._clock()

    def _require_bus(self) -> PlcBus:
        if self._bus is None:
            raise PlcError(f"PLC {self.name}: driver is not running")
        return self._bus

    # ------------------------------------------------------------------ reads

    async def _read_block(self, block: ReadBlock) -> list[bool] | list[int]:
        bus = self._require_bus()
        unit, start, count = self._unit, block.start, block.count
        what = f"read {block.table} {start}+{count} unit {unit}"
        self.stats.requests += 1
        if block.table == "discrete_input":
            rsp = await bus.call(what, lambda c: c.read_discrete_inputs(start, count=count, device_id=unit))
        elif block.table == "coil":
            rsp = await bus.call(what, lambda c: c.read_coils(start, count=count, device_id=unit))
        elif block.table == "holding_register":
            rsp = await bus.call(what, lambda c: c.read_holding_registers(start, count=count, device_id=unit))
        else:
            rsp = await bus.call(what, lambda c: c.read_input_registers(start, count=count, device_id=unit))
        if block.table in ("discrete_input", "coil"):
            bits = list(rsp.bits)[:count]
            if len(bits) != count:
                raise PlcError(f"{what}: answer holds {len(bits)} bits")
            return bits
        registers = list(rsp.registers)
        if len(registers) != count:
            raise PlcError(f"{what}: answer holds {len(registers)} registers")
        return registers

    async def _read_bits(self, blocks: Iterable[ReadBlock]) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for block in blocks:
            values = await self._read_block(block)
            for name, raw in zip(block.names, values, strict=True):
                out[name] = bool(raw) != self._points[name].inverted
        return out

    async def _read_registers(self, blocks: Iterable[ReadBlock]) -> dict[str, int]:
        out: dict[str, int] = {}
        for block in blocks:
            values = await self._read_block(block)
            for name, raw in zip(block.names, values, strict=True):
                out[name] = int(raw)
        return out

    async def _read(self, *, full: bool) -> PlcImage:
        """Read inputs (and, when ``full``, coils and registers). Call with the bus lock held."""
        inputs = await self._read_bits(self._input_blocks)
        previous = self._image
        if full or previous is None:
            coils = await self._read_bits(self._coil_blocks)
            holding = await self._read_registers(self._holding_blocks)
            registers = await self._read_registers(self._register_blocks)
        else:
            coils, holding, registers = dict(previous.coils), dict(previous.holding), dict(previous.registers)
        return PlcImage(inputs, coils, holding, registers, self._clock())

    async def read_all(self) -> PlcImage:
        """Read every point now (used to reconcile after a reconnect or a mode change)."""
        if not self._up:
            raise PlcError(f"PLC {self.name}: link is down")
        bus = self._require_bus()
        async with bus.lock:
            image = await self._read(full=True)
        self._publish(image)
        return image

    # ------------------------------------------------------------------ writes

    async def write_coil(self, name: str, value: bool) -> None:
        """Write one coil as a level, after the safety checks, then read it back.

        Raises `PlcInterlockError` (nothing written) when ``estop``/``local_manual`` is set and the
        coil is not ``alarm``, or when lowering the barrier with ``loop_safety`` set;
        `PlcVerificationError` when the read-back differs; `PlcError` when the PLC did not answer.
        """
        if name not in COILS:
            raise ValueError(f"{name!r} is not a coil of the register map")
        if not self._up:
            raise PlcError(f"PLC {self.name}: link is down, {name} not written")
        bus = self._require_bus()
        point = self._points[name]
        async with bus.lock:
            if name != "alarm":
                fresh = await self._read_bits(self._input_blocks)
                if fresh["estop"] or fresh["local_manual"]:
                    which = "estop" if fresh["estop"] else "local_manual"
                    raise PlcInterlockError(f"{name} not written: {which} is set")
                if name == "barrier_raise" and not value and fresh["loop_safety"]:
                    raise PlcInterlockError("barrier_raise=0 not written: loop_safety is set")
            raw = value != point.inverted
            what = f"write coil {name}={int(value)} unit {self._unit}"
            unit, address = self._unit, point.address
            self.stats.requests += 1
            await bus.call(what, lambda c: c.write_coil(address, raw, device_id=unit))
            back = await self._read_bits(read_blocks(self._points, [name]))
        if back[name] != value:
            raise PlcVerificationError(f"{name} written as {int(value)} but reads back {int(back[name])}")
        self._note_output(name, value)

    async def write_register(self, name: str, value: int) -> None:
        """Write one holding register, then read it back."""
        if name not in HOLDING_REGISTERS:
            raise ValueError(f"{name!r} is not a register the daemon writes")
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{name}={value} does not fit 16 bits")
        if not self._up:
            raise PlcError(f"PLC {self.name}: link is down, {name} not written")
        bus = self._require_bus()
        point = self._points[name]
        unit, address = self._unit, point.address
        async with bus.lock:
            self.stats.requests += 1
            await bus.call(f"write {name}={value} unit {unit}",
                           lambda c: c.write_register(address, value, device_id=unit))
            back = await self._read_registers(read_blocks(self._points, [name]))
        if back[name] != value:
            raise PlcVerificationError(f"{name} written as {value} but reads back {back[name]}")
        self._note_output(name, value)

    def _note_output(self, name: str, value: bool | int) -> None:
        image = self._image
        if image is None:
            return
        if name in COILS:
            self._image = PlcImage(image.inputs, {**image.coils, name: bool(value)}, image.holding,
                                   image.registers, image.at)
        else:
            self._image = PlcImage(image.inputs, image.coils, {**image.holding, name: int(value)},
                                   image.registers, image.at)

    async def raise_barrier(self) -> None:
        await self.write_coil("barrier_raise", True)

    async def lower_barrier(self) -> None:
        await self.write_coil("barrier_raise", False)

    def close_link(self) -> None:
        """Drop the connection now (used by tests and on shutdown); `run` reconnects if running."""
        if self._bus is not None:
            self._bus.close()


@contextlib.asynccontextmanager
async def running(driver: PlcDriver) -> AsyncIterator[PlcDriver]:
    """Run a driver for the duration of a block (tests and tools)."""
    task = asyncio.create_task(driver.run(), name=f"plc-{driver.name}")
    try:
        yield driver
    finally:
        await stop_task(task, name=f"PLC driver {driver.name}")
