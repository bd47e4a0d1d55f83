"""What a lane is made of: its passages (one per vehicle), phases, modes and the items of its queue.

`Lane` (machine.py) owns all of it; these are plain data with no behaviour of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from gate_controller.core.ports import (
    DecisionOutcome,
    OcrObservation,
    PassageEvidence,
    ScanObservation,
)
from gate_controller.lane.transaction import TransactionRecord
from gate_controller.plc.driver import (
    PlcEvent,
)

__all__ = ["HubMode", "LaneSnapshot", "Mode", "Passage", "Phase"]


HubMode = Literal["auto", "manual", "closed"]


class Phase(StrEnum):
    """Where the lane's current passage is."""

    IDLE = "idle"
    ARRIVING = "arriving"
    COLLECTING = "collecting"
    DECIDING = "deciding"
    RELEASED = "released"
    STOPPED = "stopped"
    PASSING = "passing"
    LOWERING = "lowering"
    COMPLETE = "complete"


class Mode(StrEnum):
    """What the lane may do; anything but automatic forbids an automatic release."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"
    FAULT = "fault"
    CLOSED = "closed"


def always_healthy() -> bool:
    return True


@dataclass(frozen=True)
class LaneSnapshot:
    """What status and telemetry show of a lane."""

    lane: str
    state: str
    """The mode when it is not automatic, else the phase (``idle``, ``collecting``, ...)."""
    mode: str
    phase: str
    hub_mode: str
    transaction_id: str | None
    next_transaction_id: str | None
    plc_connected: bool
    faults: tuple[str, ...]
    inputs: Mapping[str, bool | int] | None
    counters: Mapping[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "lane": self.lane, "state": self.state, "mode": self.mode, "phase": self.phase,
            "hub_mode": self.hub_mode, "transaction_id": self.transaction_id,
            "next_transaction_id": self.next_transaction_id, "plc_connected": self.plc_connected,
            "faults": list(self.faults), "inputs": dict(self.inputs) if self.inputs is not None else None,
            "counters": dict(self.counters),
        }


@dataclass
class Passage:
    """One vehicle, from its arrival on the entry loop until its transaction is published."""

    record: TransactionRecord
    phase: Phase
    arrived: float
    arrival_base: float
    since: float
    ambiguous: bool = False
    at_stop: float | None = None
    stop_pending: bool = False
    stop_clear_since: float | None = None
    container_reads: list[OcrObservation] = field(default_factory=list)
    plate_reads: list[OcrObservation] = field(default_factory=list)
    scan: ScanObservation | None = None
    last_read: float | None = None
    ocr_closed: bool = False
    decider: asyncio.Task[None] | None = None
    decision_started: float | None = None
    decision_epoch: int = 0
    outcome: DecisionOutcome | None = None
    early: DecisionOutcome | None = None
    """A decision that came before the vehicle reached the stop line: carried out on arrival."""
    early_at: tuple[datetime, float] | None = None
    """When that decision came (wall clock, monotonic)."""
    authorized_up: bool = False
    aborted: bool = False
    released_at: float | None = None
    safety_seen: bool = False
    safety_clear_since: float | None = None
    exit_seen: bool = False
    front_unseen: Passage | None = None
    """The passage in front, when this vehicle arrived after that one left the stop line but before it
    was seen going on: this passage is trusted only once it is (else it is cancelled)."""

    @property
    def id(self) -> str:
        return self.record.transaction_id


@dataclass(frozen=True)
class Observation:
    item: OcrObservation | ScanObservation


@dataclass(frozen=True)
class Decided:
    passage: Passage
    outcome: DecisionOutcome


@dataclass(frozen=True)
class Call:
    action: Callable[[], Awaitable[None]]
    done: asyncio.Future[None]


@dataclass(frozen=True)
class StopRequest:
    pass


QueueItem = Observation | Decided | Call | StopRequest | PlcEvent


def fallback_outcome(evidence: PassageEvidence) -> DecisionOutcome:
    """The decision when the decider did not answer in time: never a release."""
    return DecisionOutcome(action="manual", reasons=("INFERENCE_UNAVAILABLE",), containers=(), plate=None,
                           scan=None)
