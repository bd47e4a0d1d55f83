"""The values of container identity: OCR reads in, an identity or a plate out, and the settings.

``OcrRead`` checks what the OCR unit reports; ``ContainerIdentity`` says what was accepted or why
not (``IdentityReason``); ``IdentitySettings`` are the acceptance knobs of the site file.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field


class IdentityReason(enum.StrEnum):
    """Why a container number was not accepted (``ContainerIdentity.reason``)."""

    NO_READS = "no_reads"
    """No camera produced any text for this container."""
    INCOMPLETE = "incomplete"
    """No read covers all 11 characters (truncated reads only, or a position nobody read)."""
    CHECK_DIGIT_INVALID = "check_digit_invalid"
    """The most probable reading fails the check digit and no correction is convincing."""
    AMBIGUOUS = "ambiguous"
    """More than one valid number has real support."""
    LOW_CONFIDENCE = "low_confidence"
    """A valid number leads, but not by enough (the reads disagree or are weak)."""
    SINGLE_WEAK_READ = "single_weak_read"
    """Only one read, and it is weak or would need correcting: never invent a number from it."""
    UNSUPPORTED_CORRECTION = "unsupported_correction"
    """The number needs more corrections than allowed, or a check digit no read saw."""
    BLIND_SPOT = "blind_spot"
    """The deciding evidence lies where the check digit cannot see (A/K/U-type letters, remainder 10)."""
    CONFLICTING_READS = "conflicting_reads"
    """Another valid number is shown by two reads, or by one read none of whose characters its
    camera doubted: two containers may be mixed up. (A doubtful lone read that happens to be valid
    is noise, and the posterior weighs it.)"""
    DUPLICATE = "duplicate"
    """Two containers of one truck resolved to the same number."""


class IdentitySettings(BaseModel):
    """Acceptance knobs of the OCR fusion. Bounds keep every setting on the safe side."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    min_confidence: float = Field(default=0.999, ge=0.99, le=0.999999)
    """Posterior probability the accepted number must reach among all valid numbers."""
    single_read_min_confidence: float = Field(default=0.9, ge=0.7, le=1.0)
    """A lone read (and each of its characters, when reported) must be at least this confident."""
    min_coverage: int = Field(default=2, ge=1, le=3)
    """Reads that must show every character position. 1 lets one strong read decide positions no
    other camera saw (and a lone read a whole number); the benchmark shows what that costs."""
    max_corrections: int = Field(default=1, ge=0, le=2)
    """Positions that may hold a character no read saw there (never the check digit)."""
    blind_spot_margin: int = Field(default=2, ge=1, le=4)
    """Where the check digit is blind (A/K/U-type letters, remainder 10, swapped letters), this many
    more reads must show the accepted character than its twin. 2 means no lone read decides."""
    confidence_gamma: float = Field(default=2.0, ge=1.0, le=3.0)
    """Calibration of the OCR unit's scores: a character reported at confidence c is taken to be
    wrong with probability (1 - c) ** gamma. 1.0 takes the scores as probabilities; calibrate per
    site against operator-confirmed numbers (docs/decisions.md)."""
    group_max_distance: float = Field(default=0.3, ge=0.1, le=0.5)
    """Reads further apart than this (normalized edit distance) are different containers."""


DEFAULT_SETTINGS: Final = IdentitySettings()


@dataclass(frozen=True, slots=True)
class OcrRead:
    """One camera's read of a container number or plate, as the OCR unit reported it."""

    text: str
    confidence: float
    camera: str
    char_confidence: tuple[float, ...] | None = None
    read_ms: int | None = None
    iso_type: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError("text must be a string")
        if not _is_unit(self.confidence):
            raise ValueError(f"confidence must be a number in 0..1 (got {self.confidence!r})")
        if self.char_confidence is not None:
            if len(self.char_confidence) != len(self.text):
                raise ValueError(
                    f"char_confidence has {len(self.char_confidence)} values for {len(self.text)} characters"
                )
            if not all(_is_unit(c) for c in self.char_confidence):
                raise ValueError("char_confidence values must be numbers in 0..1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> OcrRead:
        """Build from decoded JSON (an OCR_READ payload or a ``smartgate identify`` input read).

        Unknown keys (``kind``, ...) are ignored; a wrong type raises ``TypeError``, a value out of
        range ``ValueError``, each naming the key.
        """
        text = data.get("text")
        if not isinstance(text, str):
            raise TypeError("'text' must be a string")
        confidence = data.get("confidence")
        if not _is_number(confidence):
            raise ValueError("'confidence' must be a number")
        camera = data.get("camera", "")
        if not isinstance(camera, str):
            raise TypeError("'camera' must be a string")
        chars = data.get("char_confidence")
        char_confidence: tuple[float, ...] | None = None
        if chars is not None:
            if not isinstance(chars, list) or not all(_is_number(c) for c in chars):
                raise ValueError("'char_confidence' must be a list of numbers")
            char_confidence = tuple(float(c) for c in chars)
        read_ms = data.get("read_ms")
        if read_ms is not None and (not isinstance(read_ms, int) or isinstance(read_ms, bool)):
            raise ValueError("'read_ms' must be an integer")
        iso_type = data.get("iso_type")
        if iso_type is not None and not isinstance(iso_type, str):
            raise ValueError("'iso_type' must be a string")
        assert isinstance(confidence, int | float)
        return cls(text, float(confidence), camera, char_confidence, read_ms, iso_type)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_unit(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


@dataclass(frozen=True, slots=True)
class ContainerIdentity:
    """The outcome for one container.

    ``reason is None`` exactly when the number was accepted; then ``number`` is a valid ISO 6346
    number and ``check_digit_ok`` is True. When the reads agree on a number that fails the check
    digit, ``number`` carries that reading (for the operator) with ``check_digit_ok`` False and
    reason ``check_digit_invalid``. In every other case ``number`` is None.

    ``confidence``: for an accepted number, its posterior probability among all valid numbers given
    the reads; for ``check_digit_invalid``, how strongly the reads agree on the reported reading;
    otherwise the posterior of the best valid reading, which was not enough.
    """

    number: str | None
    check_digit_ok: bool
    corrected: bool
    confidence: float
    raw: tuple[str, ...]
    reason: IdentityReason | None
    iso_type: str | None = None
    cameras: tuple[str, ...] = ()
    candidates: tuple[tuple[str, float], ...] = ()
    """Valid candidates considered, most probable first, with their posteriors (for explanations)."""
    detail: str | None = None
    """One line a technician can read: which rule decided and on what evidence."""

    @property
    def accepted(self) -> bool:
        return self.reason is None

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        """The ``smartgate identify`` output object (and the core of a transaction's container)."""
        out: dict[str, Any] = {
            "number": self.number,
            "check_digit_ok": self.check_digit_ok,
            "corrected": self.corrected,
            "confidence": round(self.confidence, 6),
            "reason": None if self.reason is None else str(self.reason),
        }
        if explain:
            out["detail"] = self.detail
            out["candidates"] = [{"number": n, "posterior": round(p, 6)} for n, p in self.candidates]
            out["raw"] = list(self.raw)
            out["iso_type"] = self.iso_type
        return out


@dataclass(frozen=True, slots=True)
class PlateRead:
    """The fused plate: kept with its confidence, never used to release anything."""

    text: str
    confidence: float
    raw: tuple[str, ...] = field(default=())


def reads_from_json(obj: Any) -> list[OcrRead]:
    """The reads of one ``smartgate identify`` input line: ``{"reads": [{"text", "confidence", ...}]}``."""
    if not isinstance(obj, Mapping):
        raise TypeError("each line must be a JSON object with a 'reads' list")
    items = obj.get("reads")
    if not isinstance(items, list):
        raise TypeError("'reads' must be a list")
    reads = []
    for k, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(f"reads[{k}] must be an object")
        try:
            reads.append(OcrRead.from_mapping(item))
        except (TypeError, ValueError) as err:
            raise type(err)(f"reads[{k}]: {err}") from err
    return reads
