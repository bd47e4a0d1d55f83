"""A real pymodbus server (TCP, or RTU on a serial URL) in front of one or more virtual lane PLCs.

Several lanes may share one server under different unit ids, the way several PLCs share one
RS-485 line or one TCP gateway. A unit that is muted, or a unit id nobody serves, gets no answer at
all (the master times out), which is what a dead device on a bus looks like.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from gate_controller.plc.sim.lane_plc import VirtualLanePlc

__all__ = ["VirtualPlcServer"]

log = logging.getLogger(__name__)

_TABLE_OF_FUNCTION = {
    1: "coil", 5: "coil", 15: "coil",
    2: "discrete_input",
    3: "holding_register", 6: "holding_register", 16: "holding_register", 22: "holding_register",
    23: "holding_register",
    4: "input_register",
}


class _LaneContext(ModbusServerContext):
    """The server's datastore: each request goes straight to the virtual PLC of its unit id.

    pymodbus 3.16 serves a `ModbusServerContext` that has no `simdevices` through its
    ``async_getValues``/``async_setValues``; overriding those lets the physics model be the
    datastore, instead of copying values into pymodbus blocks on every tick. The base initialiser
    is not called: it only builds the deprecated block storage this class replaces.
    """

    def __init__(self, units: Mapping[int, VirtualLanePlc]) -> None:
        self._units = dict(units)
        self.simdevices = []
        self.old_simulator = True

    def _plc(self, device_id: int) -> VirtualLanePlc:
        plc = self._units.get(device_id)
        if plc is None or plc.mute:
            # With ignore_missing_devices the server then sends nothing at all.
            raise NoSuchIdException(f"no answer from unit {device_id}")
        return plc

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        table = _TABLE_OF_FUNCTION.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        return self._plc(device_id).read_raw(table, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        table = _TABLE_OF_FUNCTION.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        return self._plc(device_id).write_raw(table, address, values)

    def device_ids(self) -> list[int]:
        return list(self._units)


class VirtualPlcServer:
    """Serve virtual lane PLCs over Modbus TCP or RTU; also starts and stops their physics."""

    def __init__(self, units: Mapping[int, VirtualLanePlc] | VirtualLanePlc) -> None:
        self.units: dict[int, VirtualLanePlc] = (
            {1: units} if isinstance(units, VirtualLanePlc) else dict(units)
        )
        self._context = _LaneContext(self.units)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._tcp: tuple[str, int] | None = None
        self._rtu: dict[str, object] | None = None

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful after asking for port 0)."""
        if self._tcp is None:
            raise RuntimeError("the server is not serving TCP")
        return self._tcp[1]

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port) and return the port."""
        await self._start_physics()
        server = ModbusTcpServer(self._context, address=(host, port), ignore_missing_devices=True)
        await server.serve_forever(background=True)
        bound = port
        listener = server.transport
        sockets = getattr(listener, "sockets", None)
        if sockets:
            bound = int(sockets[0].getsockname()[1])
        self._server = server
        self._tcp = (host, bound)
        log.info("virtual PLC serving Modbus TCP on %s:%d (units %s)", host, bound, sorted(self.units))
        return bound

    async def start_rtu(
        self, url: str, *, baudrate: int = 19200, parity: str = "E", bytesize: int = 8, stopbits: int = 1
    ) -> None:
        """Serve Modbus RTU on a serial device or URL (a pty works)."""
        await self._start_physics()
        self._rtu = {"url": url, "baudrate": baudrate, "parity": parity, "bytesize": bytesize, "stopbits": stopbits}
        self._server = self._make_rtu()
        await self._server.serve_forever(background=True)
        log.info("virtual PLC serving Modbus RTU on %s (units %s)", url, sorted(self.units))

    def _make_rtu(self) -> ModbusSerialServer:
        assert self._rtu is not None
        r = self._rtu
        return ModbusSerialServer(
            self._context, framer=FramerType.RTU, port=str(r["url"]), baudrate=int(str(r["baudrate"])),
            parity=str(r["parity"]), bytesize=int(str(r["bytesize"])), stopbits=int(str(r["stopbits"])),
            ignore_missing_devices=True, reconnect_delay=0,
        )

    async def _start_physics(self) -> None:
        for plc in self.units.values():
            await plc.start()

    async def stop(self) -> None:
        """Stop serving and stop the physics."""
        await self._shutdown_server()
        for plc in self.units.values():
            await plc.stop()

    async def _shutdown_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
            # Let the transports finish closing before a new server binds the same port.
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ fault injection

    def drop_connections(self) -> int:
        """Close every open client connection now (TCP); returns how many were closed."""
        server = self._server
        if server is None:
            return 0
        handlers = list(server.active_connections.values())
        for handler in handlers:
            handler.close()
        return len(handlers)

    async def go_offline(self) -> None:
        """Stop answering and accepting connections: a pulled cable or a powered-off PLC."""
        await self._shutdown_server()

    async def go_online(self) -> None:
        """Serve again on the same port or serial line after `go_offline`."""
        if self._server is not None:
            return
        if self._tcp is not None:
            host, port = self._tcp
            server = ModbusTcpServer(self._context, address=(host, port), ignore_missing_devices=True)
            await server.serve_forever(background=True)
            self._server = server
        elif self._rtu is not None:
            self._server = self._make_rtu()
            await self._server.serve_forever(background=True)
        else:
            raise RuntimeError("the server was never started")
