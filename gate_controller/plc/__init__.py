"""The lane PLC over Modbus: the point map, the driver with its safety interlocks, and the virtual
PLC (``sim/``) that tests, the demo and ``smartgate sim plc`` run against.

May import ``core`` and ``config``.
"""
