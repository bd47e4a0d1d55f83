"""The gate's judgement of one passage: identity, notices, image review and policy, composed.

`GateDecider` implements `ports.Decider`. It never raises: anything that goes wrong inside it
becomes a `manual` outcome whose reasons say what was missing, because a decision the daemon
cannot explain must never be a release.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gate_controller.core.ports import DecisionOutcome, OcrObservation, PassageEvidence, ScanObservation
from gate_controller.core.timestamps import utc_now
from gate_controller.decision.identity import ContainerIdentity, OcrRead, fuse_plate, identify_containers
from gate_controller.decision.notices import Notice, NoticeStore
from gate_controller.decision.policy import ContainerFacts, DecisionInputs, PolicyConfig, ScanFacts, decide
from inference.preview import render_preview
from inference.result import ReviewResult
from inference.scan import Scan
from inference.worker import ReviewWorker

__all__ = ["GateDecider", "InferenceStats"]

log = logging.getLogger(__name__)


class InferenceStats:
    """Latencies of recent reviews, for telemetry (p50/p95 over a sliding window)."""

    def __init__(self, window: int = 500) -> None:
        self._window = window
        self._latencies: list[float] = []
        self.count = 0
        self.unavailable = 0

    def add(self, result: ReviewResult) -> None:
        self.count += 1
        if result.verdict == "unavailable":
            self.unavailable += 1
            return
        self._latencies.append(result.latency_ms)
        if len(self._latencies) > self._window:
            del self._latencies[: len(self._latencies) - self._window]

    def percentile(self, q: float) -> float | None:
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return round(ordered[index], 2)


@dataclass
class _Reviewed:
    result: ReviewResult | None
    """None when there was nothing to review (no scan, or columns missing)."""
    not_empty: dict[int, tuple[float | None, bool | None]]
    """Per container index declared empty: the not-empty score of its part of the scan, and the
    review's own judgement of it at the model's threshold."""


class GateDecider:
    def __init__(
        self,
        *,
        policy: PolicyConfig,
        notices: NoticeStore,
        reviewer: ReviewWorker,
        archive_scan: Callable[[Scan], object] | None = None,
        preview_sink: Callable[[str, bytes], Awaitable[object]] | None = None,
        preview_max_width: int = 1024,
        wall_clock: Callable[[], datetime] = utc_now,
        clock: Callable[[], float] = time.monotonic,
        review_shadow: Callable[[str], bool] | None = None,
        on_review: Callable[[str, ReviewResult], None] | None = None,
    ) -> None:
        self.policy = policy
        self.review_shadow = review_shadow
        """Lane id -> whether its review runs in shadow mode (verdict published, decision manual)."""
        self.on_review = on_review
        """Called with (lane id, result) after every review (model watch, drift figures)."""
        self._notices = notices
        self._reviewer = reviewer
        self._archive_scan = archive_scan
        self._preview_sink = preview_sink
        self._preview_width = preview_max_width
        self._background: set[asyncio.Task[None]] = set()
        self._wall = wall_clock
        self._clock = clock
        self.stats = InferenceStats()
        self.decisions: dict[str, int] = {}
        self.last_scan_to_decision_ms: float | None = None

    async def decide(self, evidence: PassageEvidence) -> DecisionOutcome:
        try:
            outcome = await self._decide(evidence)
        except Exception as err:  # the lane must always get an outcome it can act on safely
            log.exception("decision failed for %s; deciding manual", evidence.transaction_id)
            outcome = DecisionOutcome(
                action="manual",
                reasons=("INFERENCE_UNAVAILABLE",) if evidence.scan is not None else ("OCR_UNREADABLE",),
                containers=(), plate=None, scan=None, extra={"error": f"{type(err).__name__}: {err}"},
            )
        self.decisions[outcome.action] = self.decisions.get(outcome.action, 0) + 1
        if evidence.scan is not None:
            self.last_scan_to_decision_ms = (self._clock() - evidence.scan.scan_end) * 1000.0
        return outcome

    async def _decide(self, evidence: PassageEvidence) -> DecisionOutcome:
        now = self._wall()
        identities = identify_containers(
            [_read(o) for o in evidence.container_reads], settings=self.policy.identity
        )
        notices: list[Notice | None] = [
            self._notices.lookup(ident.number, now) if ident.accepted and ident.number else None
            for ident in identities
        ]
        scan_obs = evidence.scan if evidence.has_scanner else None
        reviewed = await self._review(scan_obs, identities, notices)
        facts = [
            ContainerFacts(identity=ident, notice=notice, not_empty_score=reviewed.not_empty.get(i, (None, None))[0],
                           not_empty=reviewed.not_empty.get(i, (None, None))[1])
            for i, (ident, notice) in enumerate(zip(identities, notices, strict=True))
        ]
        scan_facts = _scan_facts(scan_obs, reviewed.result)
        if reviewed.result is not None and self.on_review is not None:
            self.on_review(evidence.lane, reviewed.result)
        decision = decide(
            DecisionInputs(
                containers=tuple(facts),
                scan=scan_facts,
                lane_has_scanner=evidence.has_scanner,
                max_containers=evidence.max_containers,
                plc_fault=evidence.plc_fault,
                decided_at=now,
                review_shadow=self.review_shadow is not None and self.review_shadow(evidence.lane),
            ),
            self.policy,
        )
        plate = fuse_plate([_read(o) for o in evidence.plate_reads])
        if scan_obs is not None and scan_obs.scan is not None and reviewed.result is not None:
            # The preview is for human reviewers at the hub: render and queue it after the decision,
            # never on the path from SCAN_END to the barrier.
            task = asyncio.create_task(self._publish_preview(scan_obs.scan, reviewed.result),
                                       name=f"preview:{scan_obs.scan_id}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return DecisionOutcome(
            action=decision.action,
            reasons=tuple(decision.reasons),
            containers=tuple(_container_section(ident, notice) for ident, notice in zip(
                identities, notices, strict=True)),
            plate={"text": plate.text, "confidence": round(plate.confidence, 4)} if plate is not None else None,
            scan=_scan_section(scan_obs, reviewed.result),
            extra=_unfamiliar_evidence(scan_obs, reviewed.result),
        )

    async def _publish_preview(self, scan: Scan, result: ReviewResult) -> None:
        if self._preview_sink is None:
            return
        try:
            jpeg = await asyncio.to_thread(render_preview, scan, result.regions, max_width=self._preview_width)
            await self._preview_sink(scan.scan_id, jpeg)
        except Exception as err:  # a preview is never worth more than a log line
            log.warning("preview of %s not published: %s", scan.scan_id, err)

    async def close(self) -> None:
        """Wait briefly for previews in progress (shutdown)."""
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)

    async def _review(
        self, scan_obs: ScanObservation | None, identities: Sequence[ContainerIdentity],
        notices: Sequence[Notice | None],
    ) -> _Reviewed:
        if scan_obs is None or scan_obs.scan is None:
            return _Reviewed(None, {})
        scan = scan_obs.scan
        if self._archive_scan is not None:
            try:
                await asyncio.to_thread(self._archive_scan, scan)
            except OSError as err:
                log.warning("cannot archive scan %s: %s", scan.scan_id, err)
        if not scan_obs.complete:
            # Pixels of a scan with a data_crc32 mismatch are not trustworthy evidence either way.
            return _Reviewed(None, {})
        empties = [i for i, n in enumerate(notices) if n is not None and n.declared == "empty"]
        whole_declared = "empty" if empties and len(empties) == len(identities) else None
        result = await self._reviewer.review(scan, declared=whole_declared)
        self.stats.add(result)
        scores: dict[int, tuple[float | None, bool | None]] = {}
        if whole_declared is not None:
            for i in empties:
                scores[i] = (result.not_empty_score, result.not_empty)
        elif empties:
            # Two containers, one declared empty: judge the half of the scan it occupies. The truck
            # enters the beam cab first, so the first container read (front) is the first half.
            half = scan.columns // 2
            for i in empties:
                part = scan.pixels[:, :, :half] if i == 0 else scan.pixels[:, :, half:]
                sub = Scan(pixels=part.copy(), scan_id=f"{scan.scan_id[:56]}-part{i}", bits=scan.bits,
                           pixel_mm=scan.pixel_mm, declared="empty")
                part_result = await self._reviewer.review(sub, declared="empty")
                self.stats.add(part_result)
                scores[i] = (part_result.not_empty_score, part_result.not_empty)
        return _Reviewed(result, scores)


def _read(observation: OcrObservation) -> OcrRead:
    chars = observation.char_confidence
    if chars is not None and len(chars) != len(observation.text):
        chars = None  # a malformed per-character list is dropped, the read itself still counts
    return OcrRead(
        text=observation.text,
        confidence=min(1.0, max(0.0, observation.confidence)),
        camera=observation.camera,
        char_confidence=tuple(min(1.0, max(0.0, c)) for c in chars) if chars is not None else None,
        read_ms=observation.read_ms,
        iso_type=observation.iso_type,
    )


def _scan_facts(scan_obs: ScanObservation | None, result: ReviewResult | None) -> ScanFacts | None:
    if scan_obs is None:
        return None
    return ScanFacts(
        complete=scan_obs.complete,
        verdict=result.verdict if result is not None else "unavailable",
        anomaly_score=result.anomaly_score if result is not None else None,
        not_empty_score=result.not_empty_score if result is not None else None,
        unfamiliar=result.unfamiliar if result is not None else False,
        opaque=result is not None and result.opaque,
        opaque_only=result is not None and result.opaque_only,
    )


def _unfamiliar_evidence(scan_obs: ScanObservation | None, result: ReviewResult | None) -> Mapping[str, Any]:
    """What the lane's ``REVIEW_UNFAMILIAR`` alarm carries: which scan, why, and the signals."""
    if scan_obs is None or result is None or not result.unfamiliar:
        return {}
    return {"review_unfamiliar": {
        "scan_id": scan_obs.scan_id,
        "reason": result.error,
        "envelope": dict(result.envelope),
        "conditioning": dict(result.conditioning),
        "model": result.model,
        "version": result.version,
    }}


def _container_section(identity: ContainerIdentity, notice: Notice | None) -> Mapping[str, Any]:
    return {
        "number": identity.number,
        "raw": list(identity.raw),
        "confidence": round(identity.confidence, 6),
        "check_digit_ok": identity.check_digit_ok,
        "corrected": identity.corrected,
        "iso_type": identity.iso_type,
        "release": {
            "status": notice.status if notice is not None else "unknown",
            "ref": notice.ref if notice is not None else None,
            "declared": notice.declared if notice is not None else None,
        },
    }


def _scan_section(scan_obs: ScanObservation | None, result: ReviewResult | None) -> Mapping[str, Any] | None:
    if scan_obs is None:
        return None
    if result is None:
        error = "scan incomplete" if not scan_obs.complete else "no pixels"
        result = ReviewResult.unavailable(error, scan_id=scan_obs.scan_id)
    return {
        "scan_id": scan_obs.scan_id,
        "columns": scan_obs.columns,
        "rows": scan_obs.rows,
        "channels": scan_obs.channels,
        "complete": scan_obs.complete,
        "sha256": scan_obs.sha256,
        "inference": result.to_contract(),
    }
