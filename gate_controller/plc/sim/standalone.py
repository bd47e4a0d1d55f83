"""`smartgate sim plc`: the virtual lane PLC as a process, with a line console to move vehicles.

The console reads one command per line on stdin, so a technician (or a script piping commands)
can drive a truck through the lane while the daemon and mbpoll talk Modbus to it.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gate_controller.plc.sim.lane_plc import VirtualLanePlc
from gate_controller.plc.sim.modbus_server import VirtualPlcServer
from gate_controller.plc.sim.null_modem import PtyNullModem

__all__ = ["CONSOLE_HELP", "console_command", "parse_travel", "parse_units", "serve_plc"]

CONSOLE_HELP = """\
console commands (one per line; UNIT defaults to the first unit):
  arrive [UNIT]            a vehicle drives over the entry loop into the scan zone
  stop [UNIT]              the front vehicle drives to the stop line
  through [UNIT]           it waits for the barrier to be up, drives under it and away
  back [UNIT]              it reverses out over the entry loop
  turn [UNIT]              it leaves the stop line by the side exit before the barrier (no loop sees it)
  estop on|off [UNIT]      press / release the emergency stop
  key manual|remote [UNIT] the lane key switch
  local up|down [UNIT]     the local raise/lower buttons (key switch in manual)
  mute on|off [UNIT]       stop answering Modbus requests / answer again
  stick up|down on|off|none [UNIT]   force a limit switch to read on/off, or repair it
  drop                     close every TCP connection
  offline | online         stop / resume serving (a pulled cable)
  status [UNIT]            print the PLC image as JSON
  help                     this text
"""


async def serve_plc(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    rtu: str | None = None,
    baudrate: int = 19200,
    parity: str = "E",
    units: Sequence[int] = (1,),
    travel_s: tuple[float, float] = (1.5, 3.0),
    watchdog_s: float = 3.0,
    console: bool = False,
    emit: Callable[[str], None] = print,
) -> None:
    """Serve virtual lane PLCs until cancelled."""
    plcs = {unit: VirtualLanePlc(travel_s=travel_s, watchdog_s=watchdog_s) for unit in units}
    servers: list[VirtualPlcServer] = []
    modem: PtyNullModem | None = None
    try:
        if port is not None:
            tcp = VirtualPlcServer(plcs)
            bound = await tcp.start_tcp(host, port)
            servers.append(tcp)
            emit(f"serving Modbus TCP on {host}:{bound}, units {', '.join(map(str, units))}")
        if rtu is not None:
            url = rtu
            if rtu == "pty":
                modem = PtyNullModem()
                modem.start()
                url = modem.a
                parity = "N"
            serial = VirtualPlcServer(plcs)
            await serial.start_rtu(url, baudrate=baudrate, parity=parity)
            servers.append(serial)
            where = f"open {modem.b}" if modem is not None else url
            emit(f"serving Modbus RTU {baudrate} 8{parity}1 ({where}), units {', '.join(map(str, units))}")
        if console:
            await _console(plcs, servers, emit)
        else:
            await asyncio.Event().wait()
    finally:
        for server in servers:
            await server.stop()
        if modem is not None:
            modem.close()


async def _console(plcs: dict[int, VirtualLanePlc], servers: list[VirtualPlcServer],
                   emit: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    background: set[asyncio.Task[Any]] = set()
    emit("console ready; 'help' lists the commands")
    try:
        while line := await reader.readline():
            try:
                job = await console_command(line.decode(errors="replace"), plcs, servers, emit)
            except (ValueError, LookupError) as err:
                emit(f"error: {err}")
                continue
            if job is not None:
                task = asyncio.create_task(_report(job, emit))
                background.add(task)
                task.add_done_callback(background.discard)
        await asyncio.Event().wait()  # stdin closed: keep serving until interrupted
    finally:
        transport.close()
        for task in background:
            task.cancel()


async def _report(job: Any, emit: Callable[[str], None]) -> None:
    try:
        vehicle = await job
    except (TimeoutError, LookupError) as err:
        emit(f"vehicle: {err or 'the barrier did not open'}")
    else:
        emit(f"vehicle {vehicle.id}: {vehicle.spot.value}")


async def console_command(line: str, plcs: dict[int, VirtualLanePlc], servers: list[VirtualPlcServer],
                          emit: Callable[[str], None]) -> Any:
    """Apply one console line; vehicle moves come back as a coroutine to run in the background."""
    words = shlex.split(line)
    if not words:
        return None
    verb, args = words[0].lower(), words[1:]

    def unit(index: int) -> VirtualLanePlc:
        if len(args) > index:
            return plcs[int(args[index])]
        return next(iter(plcs.values()))

    def flag(word: str, on: str, off: str) -> bool:
        if word not in (on, off):
            raise ValueError(f"expected {on} or {off}, got {word!r}")
        return word == on

    if verb == "help":
        emit(CONSOLE_HELP)
    elif verb == "arrive":
        return unit(0).vehicle_arrives()
    elif verb == "stop":
        return unit(0).vehicle_to_stop_line()
    elif verb == "through":
        return unit(0).vehicle_drives_through()
    elif verb == "back":
        return unit(0).vehicle_backs_out()
    elif verb == "turn":
        emit(f"vehicle {unit(0).vehicle_turns_off().id}: gone by the side exit")
    elif verb == "estop":
        unit(1).press_estop(flag(args[0] if args else "", "on", "off"))
    elif verb == "key":
        unit(1).set_key_switch(flag(args[0] if args else "", "manual", "remote"))
    elif verb == "local":
        unit(1).local_barrier(flag(args[0] if args else "", "up", "down"))
    elif verb == "mute":
        unit(1).mute = flag(args[0] if args else "", "on", "off")
    elif verb == "stick":
        if len(args) < 2 or args[0] not in ("up", "down") or args[1] not in ("on", "off", "none"):
            raise ValueError("usage: stick up|down on|off|none [UNIT]")
        unit(2).stick_limit_switch(f"barrier_{args[0]}", None if args[1] == "none" else args[1] == "on")
    elif verb == "drop":
        emit(f"dropped {sum(s.drop_connections() for s in servers)} connection(s)")
    elif verb == "offline":
        for server in servers:
            await server.go_offline()
    elif verb == "online":
        for server in servers:
            await server.go_online()
    elif verb == "status":
        emit(json.dumps(unit(0).describe()))
    else:
        raise ValueError(f"unknown command {verb!r} ('help' lists them)")
    return None


def parse_travel(text: str) -> tuple[float, float]:
    """``1.5-3`` or ``2`` (seconds) as a (min, max) pair."""
    low, _, high = text.partition("-")
    values = (float(low), float(high or low))
    if not 0 < values[0] <= values[1]:
        raise ValueError(f"travel must be S or MIN-MAX seconds with 0 < MIN <= MAX (got {text!r})")
    return values


def parse_units(text: str) -> tuple[int, ...]:
    """``1,2`` as unit ids, each 1..247."""
    units = tuple(int(u) for u in text.split(",") if u.strip())
    if not units or any(not 1 <= u <= 247 for u in units):
        raise ValueError(f"unit ids must be 1..247, comma separated (got {text!r})")
    return units
