"""Modbus buses: one pymodbus client and one lock per physical bus, shared by the lanes on it.

Lanes whose PLCs sit on one physical bus (several unit ids on one RS-485 line, or behind one
Modbus TCP gateway) share one `PlcBus` from a `PlcBusRegistry`: one client, one lock. Library
errors become `PlcError` (or a subclass) here, so the driver sees one exception tree.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from gate_controller.config import PlcConfig
from gate_controller.core.errors import PlcError, PlcTimeoutError

# pymodbus logs every unanswered request at ERROR, with hex dumps. The driver turns each failure
# into a PlcError and logs the link's state changes itself (first failure, recovery), so the
# library's per-request messages would only flood the journal while a PLC is down.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


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
