"""The lane PLC's point map: the logical signals, the values of its registers, and the read plan.

docs/plc-points.md is the reference; the site file (``plc.points``, `gate_controller.config.plc`,
which also names the signals by kind) places each signal on a Modbus table and address. The read
plan groups the mapped points into as few requests as the PLC allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from gate_controller.config import PlcConfig, PointConfig
from gate_controller.config.plc import PointTable

EXIT_LOOP = "exit_loop"
"""Name of the optional exit detector input (``PlcConfig.exit_loop``)."""

Table = PointTable


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


@dataclass(frozen=True)
class ReadBlock:
    """One Modbus read request: a contiguous run of addresses of one table."""

    table: Table
    start: int
    names: tuple[str, ...]  # index = address - start

    @property
    def count(self) -> int:
        return len(self.names)


def read_blocks(points: Mapping[str, PointConfig], names: Iterable[str]) -> tuple[ReadBlock, ...]:
    """Group points into contiguous runs per table.

    Only exactly adjacent addresses are merged: reading an unmapped address in between is an
    ILLEGAL ADDRESS exception on many PLCs, which would cost the whole read.
    """
    by_table: dict[Table, list[tuple[int, str]]] = {}
    for name in names:
        point = points[name]
        by_table.setdefault(point.table, []).append((point.address, name))
    out: list[ReadBlock] = []
    for table, entries in by_table.items():
        entries.sort()
        run: list[tuple[int, str]] = []
        for address, name in entries:
            if run and address != run[-1][0] + 1:
                out.append(ReadBlock(table, run[0][0], tuple(n for _, n in run)))
                run = []
            run.append((address, name))
        if run:
            out.append(ReadBlock(table, run[0][0], tuple(n for _, n in run)))
    return tuple(out)
