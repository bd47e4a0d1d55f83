"""The demo's live view: one line per lane, the hub link, and the latest transactions."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gate_controller.demo.traffic import DemoTruck

if TYPE_CHECKING:
    from gate_controller.demo.gate import SimulatedGate

__all__ = ["format_row", "render", "summarize"]


def render(gate: SimulatedGate) -> str:
    """The whole screen of the live view."""
    s = gate.status
    elapsed = time.monotonic() - gate.started
    done = len(gate.result.transactions)
    target = f"/{gate.truck_limit}" if gate.truck_limit else ""
    lines = [
        f"smartgate demo — site {gate.config.site} gate {gate.config.gate} — {elapsed:5.0f} s — "
        f"transactions {done}{target} — events {gate.result.events} — Ctrl-C to stop",
        "",
        "LANE  STATE        PLC   TRUCK                                      LINKS",
    ]
    lanes = s.get("lanes") or {}
    links = s.get("links") or {}
    for lane_id, rig in gate.rigs.items():
        lane = lanes.get(lane_id) or {}
        truck = rig.current
        link_text = " ".join(f"{n}:{'up' if (links.get(n) or {}).get('up') else 'DOWN'}"
                             for n in rig.config.links)
        lines.append(
            f"{lane_id:<5} {lane.get('state', '?')!s:<12} {'up' if lane.get('plc_connected') else 'DOWN':<5} "
            f"{(truck.spec.plate + ' ' + truck.story) if truck else '-':<42} {link_text}"
        )
    hub = s.get("hub") or {}
    backlog = s.get("backlog") or {}
    inf = s.get("inference") or {}
    lines += [
        "",
        f"hub {'connected' if hub.get('connected') else 'DISCONNECTED'}, backlog {backlog.get('pending', '?')}, "
        f"reviews {inf.get('count', 0)} (p50 {inf.get('p50_ms')} ms, p95 {inf.get('p95_ms')} ms)",
        "",
        "TIME      LANE  PLATE     CONTAINERS                      SCAN         DECISION  REASONS"
        "                                 BARRIER  SCAN→DEC",
    ]
    lines += [format_row(row) for row in gate.recent]
    return "\n".join(lines)


def summarize(body: dict[str, Any], stories: dict[str, DemoTruck]) -> dict[str, Any]:
    containers = body.get("containers") or []
    scan = body.get("scan") or {}
    inference = scan.get("inference") or {}
    decision = body.get("decision") or {}
    timings = body.get("timings_ms") or {}
    numbers = [c.get("number") or "?" for c in containers]
    story = next((stories[n].story for n in numbers if n in stories), "")
    return {
        "time": str(body.get("completed_at", ""))[11:19],
        "lane": body.get("lane"),
        "plate": (body.get("plate") or {}).get("text") or "-",
        "containers": ",".join(numbers) or "-",
        "verdict": f"{inference.get('verdict', '-')}" + ("" if scan.get("complete", True) else "/incomplete"),
        "action": decision.get("action"),
        "reasons": ",".join(decision.get("reasons") or []),
        "barrier": "raised" if body.get("barrier") else "down",
        "latency": timings.get("scan_end_to_decision"),
        "story": story,
    }


def format_row(row: dict[str, Any]) -> str:
    latency = f"{row['latency']} ms" if row.get("latency") is not None else "-"
    return (f"{row['time']:<9} {row['lane']!s:<5} {row['plate']:<9} {row['containers']:<31} {row['verdict']:<12} "
            f"{row['action']!s:<9} {row['reasons']:<39} {row['barrier']:<8} {latency:<8}  {row['story']}")
