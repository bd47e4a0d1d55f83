"""Test peers for the PLC driver and the lane: a pty null-modem, an in-memory journal, a scripted
decider, a jumpable clock, and a rig that runs a lane against a real virtual PLC over Modbus TCP.

The journal and decider stand in for our own interfaces (ports.py), so in-memory versions are fair;
the PLC side is always the real pymodbus server with lane physics.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gate_controller.config import LaneConfig
from gate_controller.core.ports import DecisionOutcome, OcrObservation, PassageEvidence, ScanObservation
from gate_controller.lane.machine import Lane, Mode
from gate_controller.plc.driver import PlcBusRegistry
from gate_controller.plc.sim import PtyNullModem, VirtualLanePlc, VirtualPlcServer

REASONS = {
    "release": ("ALL_RELEASED", "SCAN_CLEAR"),
    "inspect": ("INSPECTION_ORDERED",),
    "hold": ("ON_HOLD",),
    "manual": ("OCR_UNREADABLE",),
}


class OffsetClock:
    """time.monotonic plus an offset the test can jump forward (phase timeouts without sleeping)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


PtyPair = PtyNullModem
"""Two ptys joined like a null-modem cable (see gate_controller.plc.sim.null_modem)."""


@dataclass
class InMemoryJournal:
    """Records what a lane commits, with the monotonic time of each commit."""

    opened: list[dict[str, Any]] = field(default_factory=list)
    completed: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    fail_opens: int = 0
    hang: bool = False
    """Every commit blocks forever (a wedged outbox)."""

    async def _maybe_hang(self) -> None:
        if self.hang:
            await asyncio.Event().wait()

    async def open_transaction(self, record: Mapping[str, Any]) -> None:
        await self._maybe_hang()
        if self.fail_opens > 0:
            self.fail_opens -= 1
            raise OSError("disk full")
        copied = copy.deepcopy(dict(record))
        self.opened.append(copied)
        self.timeline.append((time.monotonic(), "open", copied))

    async def complete_transaction(self, record: Mapping[str, Any]) -> None:
        await self._maybe_hang()
        copied = copy.deepcopy(dict(record))
        self.completed.append(copied)
        self.timeline.append((time.monotonic(), "complete", copied))

    async def emit_event(self, *, lane: str | None, type: str, code: str, severity: str, active: bool,
                         detail: Mapping[str, Any]) -> None:
        await self._maybe_hang()
        event = {"lane": lane, "type": type, "code": code, "severity": severity, "active": active,
                 "detail": copy.deepcopy(dict(detail))}
        self.events.append(event)
        self.timeline.append((time.monotonic(), "event", event))

    def codes(self, code: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["code"] == code]

    def completed_by_id(self) -> dict[str, dict[str, Any]]:
        return {r["transaction_id"]: r for r in self.completed}


class ScriptedDecider:
    """Answers with scripted actions (then ``default``), after ``delay_s``; keeps every call."""

    def __init__(self, default: str = "release", delay_s: float = 0.0,
                 extra: Mapping[str, Any] | None = None) -> None:
        self.default = default
        self.delay_s = delay_s
        self.extra = dict(extra or {})
        self.script: deque[str] = deque()
        self.calls: list[PassageEvidence] = []
        self.outcomes: dict[str, DecisionOutcome] = {}

    def then(self, *actions: str) -> ScriptedDecider:
        self.script.extend(actions)
        return self

    async def decide(self, evidence: PassageEvidence) -> DecisionOutcome:
        self.calls.append(evidence)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        action = self.script.popleft() if self.script else self.default
        containers = tuple(
            {"number": r.text, "raw": [r.text], "confidence": r.confidence, "check_digit_ok": True,
             "corrected": False, "iso_type": r.iso_type,
             "release": {"status": "released" if action == "release" else "hold", "ref": None, "declared": None}}
            for r in evidence.container_reads
        )
        plate = ({"text": evidence.plate_reads[-1].text, "confidence": evidence.plate_reads[-1].confidence}
                 if evidence.plate_reads else None)
        scan = None
        if evidence.scan is not None:
            s = evidence.scan
            scan = {"scan_id": s.scan_id, "columns": s.columns, "rows": s.rows, "channels": s.channels,
                    "complete": s.complete, "sha256": s.sha256,
                    "inference": {"model": "test", "version": "0", "score": 0.01, "verdict": "clear",
                                  "regions": [], "latency_ms": 1}}
        outcome = DecisionOutcome(action=action, reasons=REASONS[action], containers=containers,  # type: ignore[arg-type]
                                  plate=plate, scan=scan, extra=self.extra)
        self.outcomes[evidence.transaction_id] = outcome
        return outcome


def lane_config(
    *,
    port: int | None = None,
    serial_url: str | None = None,
    unit_id: int = 1,
    lane_id: str = "L1",
    scanner: bool = True,
    exit_loop: Mapping[str, Any] | None = None,
    plc_settings: Mapping[str, Any] | None = None,
    timeouts: Mapping[str, Any] | None = None,
) -> LaneConfig:
    """A lane config for tests: fast polling and short (but valid) timeouts."""
    plc_section: dict[str, Any] = {
        "transport": "tcp" if serial_url is None else "rtu", "unit_id": unit_id, "poll_hz": 50.0,
        "timeout_s": 0.2, "heartbeat_interval_s": 0.1, "reconnect_max_s": 0.3, "link_loss_s": 0.4,
        "barrier_travel_s": 1.0,
    }
    if serial_url is None:
        plc_section.update(host="127.0.0.1", port=port or 502)
    else:
        plc_section.update(serial_url=serial_url, parity="N", baudrate=115200)  # ptys carry no parity
    if exit_loop is not None:
        plc_section["exit_loop"] = dict(exit_loop)
    plc_section.update(plc_settings or {})
    timeout_section: dict[str, Any] = {
        "arrival_s": 30.0, "collect_s": 5.0, "ocr_settle_s": 0.1, "decision_s": 2.0, "pass_s": 30.0,
        "clear_s": 0.1, "hold_s": 60.0, "pre_arrival_s": 5.0, "entry_gap_s": 0.05, "backout_s": 0.5,
        # The fast simulated vehicles reverse from the stop line to the entry loop in 0.05 s: every
        # entry after a vehicle left the stop line is that vehicle reversing unless a test says otherwise.
        "reverse_min_s": 0.0,
    }
    timeout_section.update(timeouts or {})
    return LaneConfig.model_validate({
        "id": lane_id, "scanner": scanner, "links": ["fw"], "plc": plc_section, "timeouts": timeout_section,
        "exit_detection": exit_loop is not None,
    })


def fast_plc(**kwargs: Any) -> VirtualLanePlc:
    """A virtual lane PLC with quick physics (barrier travel 0.1-0.2 s, loops 0.05 s)."""
    params: dict[str, Any] = {"travel_s": (0.1, 0.2), "move_s": 0.05, "tick_s": 0.01}
    params.update(kwargs)
    return VirtualLanePlc(**params)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class LaneRig:
    plc: VirtualLanePlc
    server: VirtualPlcServer
    lane: Lane
    journal: InMemoryJournal
    decider: ScriptedDecider
    clock: OffsetClock
    task: asyncio.Task[None]
    healthy: list[bool]
    _scan_no: int = 0

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
        await wait_until(predicate, timeout_s, what)
        if self.task.done():
            self.task.result()

    async def settle(self, seconds: float = 0.15) -> None:
        await asyncio.sleep(seconds)
        if self.task.done():
            self.task.result()

    def ocr(self, text: str, *, kind: str = "container", confidence: float = 0.95, ago_s: float = 0.0) -> None:
        self.lane.observe_ocr(OcrObservation(kind=kind, camera="cam1", text=text, confidence=confidence,  # type: ignore[arg-type]
                                             received=self.clock() - ago_s, link="fw"))

    def scan(self, *, complete: bool = True, ended_ago_s: float = 0.0) -> ScanObservation:
        self._scan_no += 1
        obs = ScanObservation(link="fw", scan_id=f"SCAN{self._scan_no:04d}", scan_no=self._scan_no,
                              complete=complete, columns=100, rows=64, channels=1,
                              sha256="0" * 64 if complete else None, reason=None if complete else "missing columns",
                              scan_end=self.clock() - ended_ago_s)
        self.lane.observe_scan(obs)
        return obs

    def phase(self) -> str:
        return self.lane.phase.value

    async def passage_evidence(self, *, containers: Iterable[str] = ("MSCU1234565",), plate: str = "AB123CD") -> None:
        """OCR reads and a complete scan, as a truck in the scan zone produces them."""
        for number in containers:
            self.ocr(number)
        self.ocr(plate, kind="plate")
        self.scan()
        await self.settle(0.05)


@contextlib.asynccontextmanager
async def lane_rig(
    *,
    decider: ScriptedDecider | None = None,
    plc: VirtualLanePlc | None = None,
    hub_mode: str = "auto",
    journal_timeout_s: float = 10.0,
    **config_kwargs: Any,
) -> AsyncIterator[LaneRig]:
    """A lane running against a virtual PLC on a free loopback port, in automatic mode."""
    plc = plc or fast_plc()
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    journal = InMemoryJournal()
    decider = decider or ScriptedDecider()
    clock = OffsetClock()
    healthy = [True]
    lane = Lane(lane_config(port=port, **config_kwargs), site="S1", gate="G1", decider=decider, journal=journal,
                healthy=lambda: healthy[0], buses=PlcBusRegistry(), clock=clock, hub_mode=hub_mode,  # type: ignore[arg-type]
                tick_s=0.02, journal_timeout_s=journal_timeout_s)
    task = asyncio.create_task(lane.run(), name="lane-under-test")
    rig = LaneRig(plc, server, lane, journal, decider, clock, task, healthy)
    try:
        await rig.until(lambda: lane.driver.connected and lane.mode is not Mode.FAULT, 5.0, "lane up")
        yield rig
    finally:
        await lane.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop()


def run_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an ``async def`` test on a fresh event loop (the suite has no asyncio plugin)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
