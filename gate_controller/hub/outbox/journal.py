"""The transaction journal's records: completing a transaction, and one the last run left open."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ulid import ULID

from gate_controller.core.timestamps import parse_timestamp, utc_timestamp
from gate_controller.hub.outbox.rows import RESERVED_KEYS, TRANSACTION_SCHEMA, Committed
from gate_controller.hub.outbox.store import Store


def recovered_record(record: Mapping[str, Any], *, now: datetime, site: str, gate: str) -> dict[str, Any]:
    """Complete a journalled transaction whose passage the previous daemon never saw end.

    The decision stays what it was (it may have moved the barrier); ``CANCELLED`` is added to its
    reasons, ``completed_at`` is the recovery time and ``recovered`` tells the hub that the end of
    the passage was not observed.
    """
    out = {k: v for k, v in record.items() if k not in RESERVED_KEYS}
    out.setdefault("schema", TRANSACTION_SCHEMA)
    out.setdefault("site", site)
    out.setdefault("gate", gate)
    out["completed_at"] = utc_timestamp(now)
    decision = dict(out.get("decision") or {})
    reasons = list(decision.get("reasons") or [])
    if "CANCELLED" not in reasons:
        reasons.append("CANCELLED")
    decision["reasons"] = reasons
    decision.setdefault("action", "manual")
    decision.setdefault("by", "auto")
    decision.setdefault("operator", None)
    out["decision"] = decision
    out.setdefault("barrier", None)
    timings = dict(out.get("timings_ms") or {})
    try:
        arrived = parse_timestamp(str(out.get("arrived_at")))
        timings["arrival_to_complete"] = max(0, round((now - arrived).total_seconds() * 1000))
    except ValueError:
        timings.setdefault("arrival_to_complete", None)
    timings.setdefault("scan_end_to_decision", None)
    timings.setdefault("arrival_to_decision", None)
    out["timings_ms"] = timings
    out["recovered"] = True
    return out


def record_transaction_id(record: Mapping[str, Any]) -> str:
    transaction_id = record.get("transaction_id")
    if not isinstance(transaction_id, str) or not transaction_id:
        raise ValueError("a transaction record needs a non-empty string transaction_id")
    return transaction_id


def complete_op(transaction_id: str, topic: str, body: Mapping[str, Any],
                 created_at: float) -> Callable[[Store], Committed]:
    msg_id = str(ULID())

    def op(store: Store) -> Committed:
        store.close_transaction(transaction_id)
        return store.insert("transaction", topic, body, msg_id=msg_id, created_at=created_at)

    return op
