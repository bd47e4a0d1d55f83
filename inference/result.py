"""The outcome of one image review, and its wire form in the hub contract.

Kept free of numpy/OpenCV/LiteRT so the daemon side of the isolated worker can build, pass and
publish results without loading the runtime.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_OPAQUE_AREA_M2",
    "OPAQUE_LABEL",
    "REASON_ERROR",
    "REASON_UNFAMILIAR",
    "VERDICTS",
    "ReviewRegion",
    "ReviewResult",
    "Verdict",
    "suspect_for_opacity_alone",
]

Verdict = Literal["clear", "suspect", "unavailable"]
VERDICTS: tuple[str, ...] = ("clear", "suspect", "unavailable")
REASON_UNFAMILIAR = "unfamiliar"
REASON_ERROR = "error"
OPAQUE_LABEL = "opaque"
"""The label of a region the beam did not cross (`inference.opacity`)."""
DEFAULT_OPAQUE_AREA_M2 = 0.5
"""The smallest opaque area that makes a scan suspect, unless configured (`policy.opaque_area_m2`):
about 0.7 x 0.7 m, the size of a concealment worth a search, and well above what the vehicle's own
steel (axles, hubs, fifth wheel) shows dark. Here, not in `inference.opacity`, so that the policy
can name it without loading OpenCV."""


def suspect_for_opacity_alone(verdict: str, labels: Iterable[str]) -> bool:
    """Whether a review with this verdict and these region labels is suspect only because the
    beam did not cross part of the scan: every region is ``opaque`` (a model region or a
    declared-empty violation's ``not_empty`` region would be among them)."""
    found = list(labels)
    return verdict == "suspect" and bool(found) and all(label == OPAQUE_LABEL for label in found)


@dataclass(frozen=True)
class ReviewRegion:
    """A flagged area in scan pixel coordinates (x = column, y = row) with its label and score."""

    x: int
    y: int
    w: int
    h: int
    score: float
    label: str

    def as_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": round(self.score, 4),
                "label": self.label}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReviewRegion:
        return cls(x=int(raw["x"]), y=int(raw["y"]), w=int(raw["w"]), h=int(raw["h"]),
                   score=float(raw["score"]), label=str(raw["label"]))


@dataclass(frozen=True)
class ReviewResult:
    """One scan's review.

    ``verdict`` ``suspect`` when an anomaly scores at or above the suspect threshold, or when the
    cargo is declared empty and ``not_empty_score`` reaches the not-empty threshold
    (``declared_empty_violation``), or when the scan has an area the beam did not cross of at
    least the reviewer's ``opaque_area_m2`` (``opaque_m2`` is the total of such areas, each a
    region labelled ``opaque``: `inference.opacity`). ``unavailable`` (crash, hang, timeout,
    missing or corrupt model, unreadable scan) carries ``error`` and no scores; it must never lead
    to release. ``score`` is what the contract reports: the anomaly score, or the not-empty score when that
    is what made a declared-empty scan suspect. ``extra["input"]`` holds the statistics of the
    model input (`inference.adaptation.envelope`) that drift monitoring compares with the model's
    envelope.

    ``reason`` says why a verdict is ``unavailable``: ``unfamiliar`` when the scan lies outside
    the model's training envelope (``error`` names the signal and ``envelope`` holds them all;
    the gate decides such a scan ``manual``), ``error`` for every other failure.
    ``conditioning`` is what preprocessing found and repaired (dead, stuck, noisy rows, flat
    field, air and dark levels); ``envelope`` the guard's signals.
    """

    verdict: Verdict
    score: float | None
    not_empty_score: float | None
    regions: tuple[ReviewRegion, ...] = ()
    latency_ms: float = 0.0
    model: str | None = None
    version: str | None = None
    error: str | None = None
    anomaly_score: float | None = None
    not_empty: bool | None = None
    declared_empty_violation: bool = False
    opaque_m2: float = 0.0
    scan_id: str | None = None
    reason: str | None = None
    conditioning: dict[str, Any] = field(default_factory=dict, compare=False)
    envelope: dict[str, Any] = field(default_factory=dict, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def opaque(self) -> bool:
        """The scan has an area the beam did not cross (regions labelled ``opaque``)."""
        return self.opaque_m2 > 0.0

    @property
    def opaque_only(self) -> bool:
        """Suspect for an area the beam did not cross and for nothing else (no model region, no
        declared-empty violation)."""
        return (self.opaque and not self.declared_empty_violation
                and suspect_for_opacity_alone(self.verdict, (r.label for r in self.regions)))

    @property
    def unfamiliar(self) -> bool:
        """The scan was outside the training envelope (verdict ``unavailable``)."""
        return self.verdict == "unavailable" and self.reason == REASON_UNFAMILIAR

    @classmethod
    def unavailable(cls, error: str, *, latency_ms: float = 0.0, model: str | None = None,
                    version: str | None = None, scan_id: str | None = None,
                    reason: str = REASON_ERROR) -> ReviewResult:
        return cls(verdict="unavailable", score=None, not_empty_score=None, latency_ms=latency_ms,
                   model=model, version=version, error=error, scan_id=scan_id, reason=reason)

    def to_contract(self) -> dict[str, Any]:
        """Exactly the ``scan.inference`` object of the MQTT contract (section 4).

        With verdict ``unavailable`` there is no score: ``score`` is reported as 0.0 to keep the
        field a number, and the verdict is what consumers act on (docs/image-review.md).
        """
        return {
            "model": self.model,
            "version": self.version,
            "score": round(self.score, 4) if self.score is not None else 0.0,
            "verdict": self.verdict,
            "regions": [r.as_dict() for r in self.regions],
            "latency_ms": round(self.latency_ms, 2),
        }

    def as_dict(self) -> dict[str, Any]:
        """Everything, for logs, the CLI and the worker pipe."""
        return {
            "scan_id": self.scan_id,
            "verdict": self.verdict,
            "score": None if self.score is None else round(self.score, 4),
            "not_empty_score": None if self.not_empty_score is None else round(self.not_empty_score, 4),
            "anomaly_score": None if self.anomaly_score is None else round(self.anomaly_score, 4),
            "not_empty": self.not_empty,
            "declared_empty_violation": self.declared_empty_violation,
            "opaque_m2": self.opaque_m2,
            "regions": [r.as_dict() for r in self.regions],
            "latency_ms": round(self.latency_ms, 2),
            "model": self.model,
            "version": self.version,
            "error": self.error,
            "input": self.extra.get("input"),
            "reason": self.reason,
            "conditioning": self.conditioning,
            "envelope": self.envelope,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReviewResult:
        verdict = raw["verdict"]
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}")
        return cls(
            verdict=verdict,
            score=None if raw.get("score") is None else float(raw["score"]),
            not_empty_score=None if raw.get("not_empty_score") is None else float(raw["not_empty_score"]),
            regions=tuple(ReviewRegion.from_dict(r) for r in raw.get("regions", [])),
            latency_ms=float(raw.get("latency_ms", 0.0)),
            model=raw.get("model"),
            version=raw.get("version"),
            error=raw.get("error"),
            anomaly_score=None if raw.get("anomaly_score") is None else float(raw["anomaly_score"]),
            not_empty=raw.get("not_empty"),
            declared_empty_violation=bool(raw.get("declared_empty_violation", False)),
            opaque_m2=float(raw.get("opaque_m2") or 0.0),
            scan_id=raw.get("scan_id"),
            extra={"input": dict(raw["input"])} if isinstance(raw.get("input"), dict) else {},
            reason=raw.get("reason"),
            conditioning=dict(raw.get("conditioning") or {}),
            envelope=dict(raw.get("envelope") or {}),
        )
