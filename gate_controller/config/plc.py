"""The ``plc:`` section of a lane: the Modbus connection and the point map (docs/plc-points.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gate_controller.config.sections import Section, reject

PointTable = Literal["coil", "discrete_input", "holding_register", "input_register"]


class PointConfig(Section):
    """Where one logical signal lives on the lane PLC."""

    table: PointTable
    """Modbus table of the point."""
    address: Annotated[int, Field(ge=0, le=65535)]
    """Zero-based address in that table."""
    inverted: bool = False
    """The signal is active-low (e.g. a normally-closed estop contact); bits only."""


def _point(table: PointTable, address: int) -> Any:
    return Field(default_factory=lambda: PointConfig(table=table, address=address))


# The logical signals by kind; it decides which tables may carry them.
INPUT_BITS = ("loop_entry", "loop_stop", "loop_safety", "barrier_up", "barrier_down", "estop", "local_manual")
"""Bits the PLC reports (discrete inputs by default)."""
COILS = ("barrier_raise", "light_green", "light_red", "sign_inspection", "alarm", "scan_permit")
"""Bits the daemon writes."""
HOLDING_REGISTERS = ("host_heartbeat", "lane_state", "display_message")
"""Registers the daemon writes."""
INPUT_REGISTERS = ("plc_version", "plc_watchdog", "barrier_cycles")
"""Registers the PLC reports."""


class PointMap(Section):
    """The lane's Modbus points; defaults are those of docs/plc-points.md (the shared register map)."""

    loop_entry: PointConfig = _point("discrete_input", 0)
    """Vehicle on the entry loop (start of the scan zone)."""
    loop_stop: PointConfig = _point("discrete_input", 1)
    """Vehicle at the stop line in front of the barrier."""
    loop_safety: PointConfig = _point("discrete_input", 2)
    """Vehicle under the barrier arm; the barrier is never lowered while it is set."""
    barrier_up: PointConfig = _point("discrete_input", 3)
    """Barrier fully raised (limit switch)."""
    barrier_down: PointConfig = _point("discrete_input", 4)
    """Barrier fully lowered (limit switch)."""
    estop: PointConfig = _point("discrete_input", 5)
    """Emergency stop pressed; the daemon then writes no coil but alarm."""
    local_manual: PointConfig = _point("discrete_input", 6)
    """Lane key switch in local/manual mode; the daemon then writes no coil but alarm."""
    barrier_raise: PointConfig = _point("coil", 0)
    """1 = raise and hold raised, 0 = lower (level, never a pulse)."""
    light_green: PointConfig = _point("coil", 1)
    """Green traffic light."""
    light_red: PointConfig = _point("coil", 2)
    """Red traffic light."""
    sign_inspection: PointConfig = _point("coil", 3)
    """GO TO INSPECTION sign."""
    alarm: PointConfig = _point("coil", 4)
    """Beacon/buzzer."""
    scan_permit: PointConfig = _point("coil", 5)
    """Scanner may fire (only while the lane is in automatic operation)."""
    host_heartbeat: PointConfig = _point("holding_register", 0)
    """Counter the daemon increments at least once per second while healthy."""
    lane_state: PointConfig = _point("holding_register", 1)
    """Written by the daemon: 0 offline, 1 automatic, 2 manual, 3 fault, 4 closed."""
    display_message: PointConfig = _point("holding_register", 2)
    """0 blank, 1 PROCEED, 2 STOP-WAIT, 3 GO TO INSPECTION, 4 LANE CLOSED."""
    plc_version: PointConfig = _point("input_register", 0)
    """PLC program version (read)."""
    plc_watchdog: PointConfig = _point("input_register", 1)
    """0 ok, 1 tripped (host heartbeat stale) (read)."""
    barrier_cycles: PointConfig = _point("input_register", 2)
    """Barrier cycle counter, low 16 bits (read)."""

    @model_validator(mode="after")
    def _tables_fit_signals(self) -> PointMap:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for name in INPUT_BITS:
            if getattr(self, name).table not in ("discrete_input", "coil"):
                problems.append(((name, "table"), "a bit input: table must be discrete_input or coil"))
        for name in COILS:
            if getattr(self, name).table != "coil":
                problems.append(((name, "table"), "written by the daemon: table must be coil"))
        for name in HOLDING_REGISTERS + INPUT_REGISTERS:
            point = getattr(self, name)
            allowed = ("holding_register",) if name in HOLDING_REGISTERS else ("input_register", "holding_register")
            if point.table not in allowed:
                problems.append(((name, "table"), f"a register: table must be {' or '.join(allowed)}"))
            if point.inverted:
                problems.append(((name, "inverted"), "a register: inverted applies to bits only"))
        seen: dict[tuple[str, int], str] = {}
        for name in type(self).model_fields:
            point = getattr(self, name)
            slot = (point.table, point.address)
            if slot in seen:
                problems.append(((name, "address"), f"{point.table} {point.address} is already used by {seen[slot]}"))
            seen[slot] = name
        reject(problems)
        return self


class PlcConfig(Section):
    """The lane PLC connection (Modbus TCP, or Modbus RTU over a serial URL)."""

    transport: Literal["tcp", "rtu"] = "tcp"
    """tcp (Modbus TCP) or rtu (Modbus RTU on a serial URL)."""
    host: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """tcp: PLC address."""
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    """tcp: PLC port."""
    serial_url: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """rtu: serial device or URL (/dev/ttyS1, rfc2217://...)."""
    baudrate: Annotated[int, Field(ge=1200, le=921600)] = 19200
    """rtu: serial speed."""
    parity: Literal["N", "E", "O"] = "E"
    """rtu: parity."""
    bytesize: Literal[7, 8] = 8
    """rtu: data bits."""
    stopbits: Literal[1, 2] = 1
    """rtu: stop bits."""
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    """Modbus device (unit) id."""
    timeout_s: Annotated[float, Field(ge=0.05, le=5.0)] = 0.5
    """Per-request timeout; writes are never blindly retried."""
    poll_hz: Annotated[float, Field(ge=1.0, le=50.0)] = 10.0
    """Input polling rate."""
    reconnect_max_s: Annotated[float, Field(ge=0.1, le=30.0)] = 2.0
    """Reconnect backoff cap (the register map asks for about 2 s)."""
    heartbeat_interval_s: Annotated[float, Field(ge=0.1, le=1.0)] = 0.5
    """host_heartbeat write period; the PLC watchdog trips after 3 s without a change."""
    barrier_travel_s: Annotated[float, Field(ge=1.0, le=30.0)] = 6.0
    """Time allowed for the limit switch after a barrier command before BARRIER_FAULT."""
    link_loss_s: Annotated[float, Field(ge=0.2, le=1.5)] = 1.0
    """No good answer from the PLC for this long means the link is lost and the lane goes to fault."""
    points: PointMap = Field(default_factory=PointMap)
    """The point map: logical signal -> table, address, polarity."""
    exit_loop: PointConfig | None = None
    """Exit detector beyond the barrier (a bit input); needed when the lane has exit_detection."""

    @model_validator(mode="after")
    def _transport_needs(self) -> PlcConfig:
        if self.transport == "tcp" and self.host is None:
            reject([(("host",), "transport tcp needs host")])
        if self.transport == "rtu" and self.serial_url is None:
            reject([(("serial_url",), "transport rtu needs serial_url")])
        problems: list[tuple[tuple[str | int, ...], str]] = []
        # Register map rule 7: the lane must be in fault within 2 s of losing the PLC.
        if self.link_loss_s + self.timeout_s > 2.0:
            problems.append((("link_loss_s",), "link_loss_s + timeout_s must not exceed 2.0 s"))
        if self.exit_loop is not None:
            if self.exit_loop.table not in ("discrete_input", "coil"):
                problems.append((("exit_loop", "table"), "a bit input: table must be discrete_input or coil"))
            for name in type(self.points).model_fields:
                point = getattr(self.points, name)
                if (point.table, point.address) == (self.exit_loop.table, self.exit_loop.address):
                    problems.append((("exit_loop", "address"),
                                     f"{point.table} {point.address} is already used by {name}"))
        reject(problems)
        return self
