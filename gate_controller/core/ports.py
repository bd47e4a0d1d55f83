"""The seams between the daemon's parts: what a lane consumes and what it needs from others.

The lane state machine sees the firmware only as `OcrObservation` / `ScanObservation` (the daemon
translates bridge events into these), asks a `Decider` for its judgement, and hands every record
to a `TransactionJournal` (the durable outbox) before anything moves. The hub link calls back into
the daemon through `CommandTarget`. Keeping these small lets each part be tested against real
peers on its own side and simple in-memory partners on the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from inference.errors import SmartGateError
from inference.scan import Scan

__all__ = [
    "CommandRefused",
    "CommandTarget",
    "Decider",
    "DecisionOutcome",
    "EventSeverity",
    "EventType",
    "OcrObservation",
    "PassageEvidence",
    "ScanObservation",
    "TransactionJournal",
]

Action = Literal["release", "inspect", "hold", "manual"]
EventType = Literal["alarm", "state"]
EventSeverity = Literal["info", "warning", "error", "critical"]


@dataclass(frozen=True)
class OcrObservation:
    """One OCR_READ as the lane sees it; ``received`` is the daemon's monotonic clock."""

    kind: Literal["container", "plate"]
    camera: str
    text: str
    confidence: float
    received: float
    link: str
    char_confidence: tuple[float, ...] | None = None
    iso_type: str | None = None
    read_ms: int | None = None


@dataclass(frozen=True)
class ScanObservation:
    """A finished scan transfer (complete or not) from a scanner link.

    ``scan`` holds the pixels whenever every column arrived (even with a ``data_crc32``
    mismatch, in which case ``complete`` is False). ``scan_end`` is the monotonic time the
    daemon received SCAN_END (or gave up), the start of the scan-to-decision latency.
    """

    link: str
    scan_id: str
    scan_no: int
    complete: bool
    columns: int
    rows: int
    channels: int
    sha256: str | None
    reason: str | None
    scan_end: float
    scan: Scan | None = None
    resend_rounds: int = 0


@dataclass(frozen=True)
class PassageEvidence:
    """Everything collected for one vehicle, handed to the `Decider`."""

    lane: str
    transaction_id: str
    has_scanner: bool
    max_containers: int
    container_reads: tuple[OcrObservation, ...]
    plate_reads: tuple[OcrObservation, ...]
    scan: ScanObservation | None
    plc_fault: bool


@dataclass(frozen=True)
class DecisionOutcome:
    """The judgement plus the contract sections (mqtt-contract.md section 4) that explain it.

    ``containers``, ``plate`` and ``scan`` are already in contract form so the lane can put them
    into the transaction record unchanged.
    """

    action: Action
    reasons: tuple[str, ...]
    containers: tuple[Mapping[str, Any], ...]
    plate: Mapping[str, Any] | None
    scan: Mapping[str, Any] | None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Decider(Protocol):
    async def decide(self, evidence: PassageEvidence) -> DecisionOutcome:
        """Judge one passage. Must not raise: failures become a `manual` outcome with reasons."""
        ...


class TransactionJournal(Protocol):
    """Durable storage of what a lane decided and did (implemented by the outbox)."""

    async def open_transaction(self, record: Mapping[str, Any]) -> None:
        """Commit a decided transaction durably *before* the barrier moves for it.

        If the daemon dies before `complete_transaction`, the journal completes it on the next
        start (as cancelled by restart) so the decision still reaches the hub.
        """
        ...

    async def complete_transaction(self, record: Mapping[str, Any]) -> None:
        """Commit the finished record to the outbox (adds msg_id, seq, boot_id, historical)."""
        ...

    async def emit_event(
        self,
        *,
        lane: str | None,
        type: EventType,
        code: str,
        severity: EventSeverity,
        active: bool,
        detail: Mapping[str, Any],
    ) -> None:
        """Commit an event (contract section 5) to the outbox."""
        ...


class CommandRefused(SmartGateError):
    """A hub command is valid but cannot be carried out now; the text goes into the reply."""


class CommandTarget(Protocol):
    """What the hub link may ask of the daemon after a command passed authentication."""

    async def barrier_command(
        self, *, lane: str, action: Literal["open", "close"], reason: str, operator: str
    ) -> None: ...

    async def lane_mode_command(self, *, lane: str, mode: Literal["auto", "manual", "closed"]) -> None: ...

    async def reload_config(self) -> None: ...

    async def review_mode_command(self, *, lane: str, mode: Literal["live", "shadow"], operator: str) -> None: ...

    async def model_activate_command(self, *, name: str, version: str, sha256: str, operator: str) -> None: ...

    async def samples_upload_command(self, *, since: str | None, operator: str) -> None: ...

    def lane_ids(self) -> Sequence[str]: ...
