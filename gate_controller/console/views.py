"""Plain data for the templates: a transaction as a feed row, the PLC points of a lane in groups,
the identity explanation of a decision, the frames of a link."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from firmware_bridge.link import FrameNote
from gate_controller.console.watch import Decision, GateWatch
from gate_controller.core.ports import OcrObservation
from gate_controller.decision.identity import IdentitySettings, OcrRead, identify_containers

__all__ = ["POINT_GROUPS", "explain_decision", "frame_rows", "identify_input", "lane_points", "row_of"]

POINT_GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Loops", (("loop_entry", "entry"), ("loop_stop", "stop line"), ("loop_safety", "safety"),
               ("exit_loop", "exit"))),
    ("Barrier", (("barrier_up", "up limit"), ("barrier_down", "down limit"), ("barrier_raise", "raise (out)"))),
    ("Lights", (("light_green", "green"), ("light_red", "red"), ("sign_inspection", "inspection sign"),
                ("alarm", "alarm beacon"))),
    ("Safety", (("estop", "estop"), ("local_manual", "key switch manual"), ("plc_watchdog", "PLC watchdog tripped"),
                ("scan_permit", "scan permit (out)"))),
)
_REGISTERS = (("host_heartbeat", "heartbeat"), ("lane_state", "lane state"), ("display_message", "display"),
              ("plc_version", "PLC version"), ("barrier_cycles", "barrier cycles"))


def lane_points(inputs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The PLC image of a lane in display groups; None while the PLC link is down."""
    if inputs is None:
        return None
    groups = []
    for title, points in POINT_GROUPS:
        shown = [{"name": name, "label": label, "on": bool(inputs[name])} for name, label in points if name in inputs]
        if shown:
            groups.append({"title": title, "points": shown})
    registers = [{"name": name, "label": label, "value": inputs[name]} for name, label in _REGISTERS if name in inputs]
    return {"groups": groups, "registers": registers}


def row_of(record: Mapping[str, Any], watch: GateWatch) -> dict[str, Any]:
    """One transaction as the feed shows it."""
    scan = record.get("scan") or {}
    inference = scan.get("inference") or {}
    decision = record.get("decision") or {}
    barrier = record.get("barrier") or {}
    timings = record.get("timings_ms") or {}
    scan_id = scan.get("scan_id")
    return {
        "id": str(record.get("transaction_id")),
        "time": str(record.get("completed_at") or "")[11:19],
        "completed_at": record.get("completed_at"),
        "lane": record.get("lane"),
        "plate": (record.get("plate") or {}).get("text"),
        "containers": [
            {"number": c.get("number"), "release": (c.get("release") or {}).get("status"),
             "corrected": bool(c.get("corrected")), "confidence": c.get("confidence")}
            for c in record.get("containers") or []
        ],
        "action": decision.get("action"),
        "reasons": list(decision.get("reasons") or []),
        "by": decision.get("by"),
        "operator": decision.get("operator"),
        "verdict": inference.get("verdict") if scan else None,
        "complete": scan.get("complete") if scan else None,
        "score": inference.get("score"),
        "regions": list(inference.get("regions") or []),
        "scan_id": scan_id,
        "preview": watch.has_preview(scan_id),
        "latency_ms": timings.get("scan_end_to_decision"),
        "raised_at": barrier.get("raised_at"),
        "lowered_at": barrier.get("lowered_at"),
        "recovered": bool(record.get("recovered")),
    }


def _read_json(read: OcrObservation) -> dict[str, Any]:
    out: dict[str, Any] = {"text": read.text, "confidence": round(read.confidence, 6), "camera": read.camera}
    if read.char_confidence is not None:
        out["char_confidence"] = [round(c, 6) for c in read.char_confidence]
    if read.iso_type is not None:
        out["iso_type"] = read.iso_type
    if read.read_ms is not None:
        out["read_ms"] = read.read_ms
    return out


def identify_input(decision: Decision) -> str:
    """The container reads as one `smartgate identify --group --explain` input line."""
    return json.dumps({"reads": [_read_json(r) for r in decision.container_reads]}, ensure_ascii=False)


def explain_decision(decision: Decision | None, settings: IdentitySettings) -> dict[str, Any] | None:
    """What `smartgate identify --group --explain` says about the reads of this passage.

    CPU work (the fusion search): the caller runs it in a worker thread.
    """
    if decision is None:
        return None
    reads = [OcrRead.from_mapping(_read_json(r)) for r in decision.container_reads]
    identities = identify_containers(reads, settings=settings)
    return {
        "input": identify_input(decision),
        "containers": [identity.to_json(explain=True) for identity in identities],
        "reads": [_read_json(r) for r in decision.container_reads],
        "plate_reads": [_read_json(r) for r in decision.plate_reads],
    }


def frame_rows(notes: Sequence[FrameNote]) -> list[dict[str, Any]]:
    """Newest first, with the time of day in UTC to the millisecond."""
    return [
        {"time": datetime.fromtimestamp(n.at, UTC).strftime("%H:%M:%S.%f")[:-3], "direction": n.direction,
         "type": n.type, "seq": n.seq, "length": n.length}
        for n in reversed(notes)
    ]
