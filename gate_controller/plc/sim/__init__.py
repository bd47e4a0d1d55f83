"""Simulated lane hardware: the virtual lane PLC with lane physics, served over Modbus."""

from gate_controller.plc.sim.lane_plc import Spot, Vehicle, VirtualLanePlc, WriteRecord
from gate_controller.plc.sim.modbus_server import VirtualPlcServer
from gate_controller.plc.sim.null_modem import PtyNullModem

__all__ = ["PtyNullModem", "Spot", "Vehicle", "VirtualLanePlc", "VirtualPlcServer", "WriteRecord"]
