"""The outbox's messages: their kinds, drop classes and QoS, and the stored row as published."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

TRANSACTION_SCHEMA: Final = "smartgate.transaction/1"


Kind = Literal["transaction", "event", "reply", "preview", "image", "telemetry", "sample"]

# Drop classes double as the backlog drain priority after a reconnect: what may never be dropped
# goes first (in seq order), then media, then the oldest telemetry. Sample chunks (labelled samples
# for the central trainer) are never dropped: the uploader commits one only when nothing else waits.
KEEP, MEDIA, TELEMETRY = 0, 1, 2
CLASS_OF: Final[dict[str, int]] = {
    "transaction": KEEP, "event": KEEP, "reply": KEEP, "preview": MEDIA, "image": MEDIA, "telemetry": TELEMETRY,
    "sample": KEEP,
}
SEQUENCED: Final = frozenset({"transaction", "event"})
QOS_OF: Final[dict[str, int]] = {
    "transaction": 1, "event": 1, "reply": 1, "preview": 1, "image": 1, "telemetry": 0, "sample": 1,
}
RESERVED_KEYS: Final = frozenset({"msg_id", "seq", "boot_id", "historical"})


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message as stored; ``payload`` of transactions/events lacks ``historical``."""

    id: int
    kind: str
    topic: str
    qos: int
    retain: bool
    seq: int | None
    msg_id: str | None
    created_at: float
    payload: bytes

    @property
    def drop_class(self) -> int:
        return CLASS_OF[self.kind]

    def wire_payload(self, *, historical: bool) -> bytes:
        """The bytes to publish. ``historical`` is only known when the row is sent, and the
        stored JSON object always ends in ``}`` with at least one member, so the flag is
        appended as the last member without re-encoding the document."""
        if self.kind not in SEQUENCED:
            return self.payload
        return self.payload[:-1] + (b',"historical":true}' if historical else b',"historical":false}')


@dataclass(frozen=True, slots=True)
class Committed:
    """Where a message landed: its row, and for transactions/events its ``seq`` and ``msg_id``."""

    row_id: int
    seq: int | None
    msg_id: str | None


@dataclass(frozen=True)
class BacklogStats:
    pending: int
    """Rows waiting for a PUBACK (or, for telemetry, to be written), all kinds."""
    sequenced: int
    """Transactions and events among them (what ``max_messages`` limits)."""
    bytes: int
    by_class: Mapping[str, int]
    oldest_age_s: float | None
    full: bool
    dropped: Mapping[str, int]
    next_seq: int
    boot_id: int


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
