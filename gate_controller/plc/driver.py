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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from gate_controller.config import PlcConfig, PointConfig
from gate_controller.core.errors import PlcError, PlcInterlockError, PlcTimeoutError, PlcVerificationError

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

# pymodbus logs every unanswered request at ERROR, with hex dumps. The driver turns each failure
# into a PlcError and logs the link's state changes itself (first failure, recovery), so the
# library's per-request messages would only flood the journal while a PLC is down.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

INPUT_BITS = ("loop_entry", "loop_stop", "loop_safety", "barrier_up", "barrier_down", "estop", "local_manual")
"""Bits the PLC reports (discrete inputs by default)."""
COILS = ("barrier_raise", "light_green", "light_red", "sign_inspection", "alarm", "scan_permit")
"""Bits the daemon writes."""
HOLDING_REGISTERS = ("host_heartbeat", "lane_state", "display_message")
"""Registers the daemon writes."""
INPUT_REGISTERS = ("plc_version", "plc_watchdog", "barrier_cycles")
"""Registers the PLC reports."""
EXIT_LOOP = "exit_loop"
"""Name of the optional exit detector input (``PlcConfig.exit_loop``)."""

Table = Literal["coil", "discrete_input", "holding_register", "input_register"]


class LaneStateCode(IntEnum):
    """Values of the ``lane_state`` holding register."""

    OFFLINE = 0
    AUTOMATIC = 1
    MANUAL = 2
    FAULT = 3
    CLOSED = 4


class DisplayMessage(IntEnum):
    """Values of the ``display_message`` holding register."""

    BLANK = 0
    PROCEED = 1
    STOP_WAIT = 2
    GO_TO_INSPECTION = 3
    LANE_CLOSED = 4


def point_map(config: PlcConfig) -> dict[str, PointConfig]:
    """Every logical signal of the lane with its point, the optional exit detector included."""
    points = {name: getattr(config.points, name) for name in type(config.points).model_fields}
    if config.exit_loop is not None:
        points[EXIT_LOOP] = config.exit_loop
    return points


# --------------------------------------------------------------------------- snapshots and events


@dataclass(frozen=True)
class PlcImage:
    """What the PLC reported at one moment, in logical values (inversion already applied).

    ``coils`` and ``holding`` are what the PLC holds, which is not always what the daemon wrote:
    a tripped PLC watchdog forces lights and the barrier on its own.
    """

    inputs: Mapping[str, bool]
    coils: Mapping[str, bool]
    holding: Mapping[str, int]
    registers: Mapping[str, int]
    at: float

    def bit(self, name: str) -> bool:
        if name in self.inputs:
            return self.inputs[name]
        return self.coils[name]

    @property
    def estop(self) -> bool:
        return self.inputs["estop"]

    @property
    def local_manual(self) -> bool:
        return self.inputs["local_manual"]

    @property
    def loop_safety(self) -> bool:
        return self.inputs["loop_safety"]

    @property
    def watchdog_tripped(self) -> bool:
        return self.registers.get("plc_watchdog", 0) != 0

    def as_dict(self) -> dict[str, bool | int]:
        out: dict[str, bool | int] = {}
        out.update(self.inputs)
        out.update(self.coils)
        out.update(self.holding)
        out.update(self.registers)
        return out


@dataclass(frozen=True)
class PlcLinkUp:
    """The link is (back) up; ``image`` holds every point, read right after connecting."""

    image: PlcImage


@dataclass(frozen=True)
class PlcLinkDown:
    reason: str


@dataclass(frozen=True)
class PlcInputsChanged:
    """A poll saw at least one point change; ``changed`` names them (edges, not levels)."""

    image: PlcImage
    changed: frozenset[str]


PlcEvent = PlcLinkUp | PlcLinkDown | PlcInputsChanged


# --------------------------------------------------------------------------- read plan


@dataclass(frozen=True)
class _Block:
    """One Modbus read request: a contiguous run of addresses of one table."""

    table: Table
    start: int
    names: tuple[str, ...]  # index = address - start

    @property
    def count(self) -> int:
        return len(self.names)


def _blocks(points: Mapping[str, PointConfig], names: Iterable[str]) -> tuple[_Block, ...]:
    """Group points into contiguous runs per table.

    Only exactly adjacent addresses are merged: reading an unmapped address in between is an
    ILLEGAL ADDRESS exception on many PLCs, which would cost the whole read.
    """
    by_table: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        point = points[name]
        by_table.setdefault(point.table, []).append((point.address, name))
    out: list[_Block] = []
    for table, entries in by_table.items():
        entries.sort()
        run: list[tuple[int, str]] = []
        for address, name in entries:
            if run and address != run[-1][0] + 1:
                out.append(_Block(_table(table), run[0][0], tuple(n for _, n in run)))
                run = []
            run.append((address, name))
        if run:
            out.append(_Block(_table(table), run[0][0], tuple(n for _, n in run)))
    return tuple(out)


def _table(name: str) -> Table:
    if name == "coil":
        return "coil"
    if name == "discrete_input":
        return "discrete_input"
    if name == "holding_register":
        return "holding_register"
    if name == "input_register":
        return "input_register"
    raise ValueError(f"unknown Modbus table {name!r}")


# --------------------------------------------------------------------------- buses


@dataclass(frozen=True)
class BusKey:
    """Identity of one physical bus: a TCP endpoint or a serial line."""

    transport: Literal["tcp", "rtu"]
    endpoint: str

    @classmethod
    def of(cls, config: PlcConfig) -> BusKey:
        if config.transport == "tcp":
            return cls("tcp", f"{config.host}:{config.port}")
        assert config.serial_url is not None
        return cls("rtu", config.serial_url)

    def __str__(self) -> str:
        return f"{self.transport}:{self.endpoint}"


def _line_settings(config: PlcConfig) -> tuple[object, ...]:
    if config.transport == "tcp":
        return (config.timeout_s,)
    return (config.baudrate, config.parity, config.bytesize, config.stopbits, config.timeout_s)


Client = AsyncModbusTcpClient | AsyncModbusSerialClient


class PlcBus:
    """One Modbus client and the lock that serialises every request on it.

    Callers hold `lock` for a whole sequence of requests that must not be interleaved with
    another lane's (read inputs, then write, then read back).
    """

    def __init__(self, key: BusKey, config: PlcConfig) -> None:
        self.key = key
        self.lock = asyncio.Lock()
        self.users = 0
        self._config = config
        self._settings = _line_settings(config)
        self._client: Client | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def timeout_s(self) -> float:
        return self._config.timeout_s

    def _make_client(self) -> Client:
        c = self._config
        # retries=0: a write is never repeated blindly; reconnect_delay=0: reconnects are ours
        # (pymodbus would neither retry the first connect nor add jitter).
        if c.transport == "tcp":
            assert c.host is not None
            return AsyncModbusTcpClient(
                c.host, port=c.port, timeout=c.timeout_s, retries=0, reconnect_delay=0, name=f"plc {self.key}"
            )
        assert c.serial_url is not None
        return AsyncModbusSerialClient(
            c.serial_url,
            framer=FramerType.RTU,
            baudrate=c.baudrate,
            parity=c.parity,
            bytesize=c.bytesize,
            stopbits=c.stopbits,
            timeout=c.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=f"plc {self.key}",
        )

    async def ensure_connected(self) -> None:
        """Open the connection if it is not open. Call with `lock` held."""
        if self.connected:
            return
        self.close()
        client = self._make_client()
        # pymodbus closes a TCP connection by itself after a few unanswered requests; on a shared
        # bus one dead unit must not cut the others off, so the driver decides when to close.
        client.set_max_no_responses(1_000_000)
        try:
            async with asyncio.timeout(self._config.timeout_s * 4 + 1.0):
                ok = await client.connect()
        except (TimeoutError, OSError) as err:
            client.close()
            raise PlcError(f"cannot connect to {self.key}: {err or type(err).__name__}") from err
        if not ok:
            client.close()
            raise PlcError(f"cannot connect to {self.key}")
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def call(self, what: str, request: Callable[[Client], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """One request/response, library errors translated. Call with `lock` held."""
        client = self._client
        if client is None or not client.connected:
            raise PlcError(f"{what}: not connected to {self.key}")
        try:
            # pymodbus enforces timeout_s itself; this outer bound only guards against a hang.
            async with asyncio.timeout(self._config.timeout_s + 1.0):
                response = await request(client)
        except TimeoutError as err:
            raise PlcTimeoutError(f"{what}: no answer from {self.key}") from err
        except ConnectionException as err:
            raise PlcError(f"{what}: connection to {self.key} lost") from err
        except ModbusIOException as err:
            raise PlcTimeoutError(f"{what}: no answer from {self.key} within {self._config.timeout_s} s") from err
        except ModbusException as err:
            raise PlcError(f"{what}: {err}") from err
        except OSError as err:
            raise PlcError(f"{what}: {err.strerror or err}") from err
        if response.isError():
            raise PlcError(f"{what}: PLC answered with Modbus exception {response.exception_code}")
        return response


class PlcBusRegistry:
    """The buses of one daemon, keyed by endpoint, so lanes on one bus share one client and lock."""

    def __init__(self) -> None:
        self._buses: dict[BusKey, PlcBus] = {}

    def acquire(self, config: PlcConfig) -> PlcBus:
        key = BusKey.of(config)
        bus = self._buses.get(key)
        if bus is None:
            bus = self._buses[key] = PlcBus(key, config)
        elif bus._settings != _line_settings(config):
            raise PlcError(f"lanes on bus {key} disagree on its line settings (baud rate, parity, timeout)")
        bus.users += 1
        return bus

    def release(self, bus: PlcBus) -> None:
        bus.users -= 1
        if bus.users <= 0:
            bus.close()
            if self._buses.get(bus.key) is bus:
                del self._buses[bus.key]

    def __contains__(self, key: BusKey) -> bool:
        return key in self._buses


_DEFAULT_REGISTRY = PlcBusRegistry()


def default_bus_registry() -> PlcBusRegistry:
    """The process-wide registry used when a driver is not given one."""
    return _DEFAULT_REGISTRY


# --------------------------------------------------------------------------- the driver


def _always() -> bool:
    return True


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed.

    Python 3.11's `asyncio.wait_for` (which pymodbus awaits every response with) returns the result
    instead of raising when a cancellation lands in the same loop turn as the response; the task
    then keeps running with ``cancelling() > 0``. Owner loops call this once per turn so that a
    cancelled task still stops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_task(task: asyncio.Task[None], *, name: str) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a cancellation was swallowed."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        if not task.done():
            log.warning("%s did not stop on cancellation; cancelling again", name)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


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
        self._input_blocks = _blocks(self._points, input_names)
        self._coil_blocks = _blocks(self._points, COILS)
        self._holding_blocks = _blocks(self._points, HOLDING_REGISTERS)
        self._register_blocks = _blocks(self._points, INPUT_REGISTERS)
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
        """Capped exponential backoff with "equal jitter": half fixed, half random."""
        cap = self.config.reconnect_max_s
        base = min(cap, 0.1 * 2.0 ** min(attempt, 16))
        return base / 2 + self._rng.uniform(0.0, base / 2)

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

    async def _read_block(self, block: _Block) -> list[bool] | list[int]:
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

    async def _read_bits(self, blocks: Iterable[_Block]) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for block in blocks:
            values = await self._read_block(block)
            for name, raw in zip(block.names, values, strict=True):
                out[name] = bool(raw) != self._points[name].inverted
        return out

    async def _read_registers(self, blocks: Iterable[_Block]) -> dict[str, int]:
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
            back = await self._read_bits(_blocks(self._points, [name]))
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
            back = await self._read_registers(_blocks(self._points, [name]))
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
