"""The gate transaction record (hub contract section 4), built up as one passage goes on.

The lane fills it in step by step: arrival, decision, barrier, completion. `as_record` renders it
in contract form *without* ``msg_id``, ``seq``, ``boot_id`` and ``historical``, which the outbox
adds when it commits the message. Wall-clock timestamps come from an injectable clock; the
``timings_ms`` figures come from the monotonic clock so that a clock step (NTP) never bends them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ulid import ULID

from gate_controller.core.timestamps import utc_timestamp

__all__ = ["SCHEMA", "Action", "DecidedBy", "TransactionRecord", "new_transaction_id"]

SCHEMA = "smartgate.transaction/1"

Action = Literal["release", "inspect", "hold", "manual"]
DecidedBy = Literal["auto", "operator"]


def new_transaction_id() -> str:
    return str(ULID())


@dataclass
class TransactionRecord:
    """One passage's record; mutable while the passage lasts, rendered with `as_record`."""

    site: str
    gate: str
    lane: str
    arrived_at: datetime
    arrived_mono: float
    transaction_id: str = field(default_factory=new_transaction_id)
    decided_at: datetime | None = None
    decided_mono: float | None = None
    completed_at: datetime | None = None
    completed_mono: float | None = None
    action: Action | None = None
    reasons: list[str] = field(default_factory=list)
    by: DecidedBy = "auto"
    operator: str | None = None
    plate: Mapping[str, Any] | None = None
    containers: list[Mapping[str, Any]] = field(default_factory=list)
    scan: Mapping[str, Any] | None = None
    scan_end_mono: float | None = None
    raised_at: datetime | None = None
    lowered_at: datetime | None = None
    barrier_commanded: bool = False

    @property
    def decided(self) -> bool:
        return self.action is not None

    @property
    def completed(self) -> bool:
        return self.completed_at is not None

    def decide(
        self,
        *,
        action: Action,
        reasons: Sequence[str],
        now: datetime,
        now_mono: float,
        by: DecidedBy = "auto",
        operator: str | None = None,
        containers: Sequence[Mapping[str, Any]] = (),
        plate: Mapping[str, Any] | None = None,
        scan: Mapping[str, Any] | None = None,
        scan_end_mono: float | None = None,
    ) -> None:
        if self.decided:
            raise RuntimeError(f"transaction {self.transaction_id} is already decided")
        self.action = action
        self.reasons = _unique(reasons)
        self.by = by
        self.operator = operator
        self.decided_at = now
        self.decided_mono = now_mono
        self.containers = [dict(c) for c in containers]
        self.plate = dict(plate) if plate is not None else None
        self.scan = dict(scan) if scan is not None else None
        self.scan_end_mono = scan_end_mono

    def add_reason(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    def cancel(self, *, now: datetime, now_mono: float) -> None:
        """Close a passage that ended without passing: CANCELLED, decided now if it never was."""
        if not self.decided:
            self.decide(action="manual", reasons=("CANCELLED",), now=now, now_mono=now_mono)
        else:
            self.add_reason("CANCELLED")
        self.complete(now=now, now_mono=now_mono)

    def complete(self, *, now: datetime, now_mono: float) -> None:
        if not self.decided:
            raise RuntimeError(f"transaction {self.transaction_id} completes without a decision")
        if self.completed_at is None:
            self.completed_at = now
            self.completed_mono = now_mono

    def as_record(self) -> dict[str, Any]:
        """The contract form (section 4) without the outbox's envelope fields."""
        barrier = None
        if self.raised_at is not None or self.lowered_at is not None or self.barrier_commanded:
            barrier = {"raised_at": _ts(self.raised_at), "lowered_at": _ts(self.lowered_at)}
        decision = None
        if self.action is not None:
            decision = {"action": self.action, "reasons": list(self.reasons), "by": self.by,
                        "operator": self.operator}
        return {
            "schema": SCHEMA,
            "transaction_id": self.transaction_id,
            "site": self.site,
            "gate": self.gate,
            "lane": self.lane,
            "arrived_at": _ts(self.arrived_at),
            "decided_at": _ts(self.decided_at),
            "completed_at": _ts(self.completed_at),
            "plate": dict(self.plate) if self.plate is not None else None,
            "containers": [dict(c) for c in self.containers],
            "scan": dict(self.scan) if self.scan is not None else None,
            "decision": decision,
            "barrier": barrier,
            "timings_ms": {
                "scan_end_to_decision": _ms(self.scan_end_mono, self.decided_mono),
                "arrival_to_decision": _ms(self.arrived_mono, self.decided_mono),
                "arrival_to_complete": _ms(self.arrived_mono, self.completed_mono),
            },
        }


def _unique(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _ts(value: datetime | None) -> str | None:
    return utc_timestamp(value) if value is not None else None


def _ms(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, round((end - start) * 1000))
