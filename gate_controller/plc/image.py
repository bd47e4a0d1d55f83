"""What the PLC reported (``PlcImage``) and the events the driver hands to the lane."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


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
