"""The metadata JSON that ships next to every model file, and its validation.

The runtime is driven entirely by this document (input geometry, normalization, tiling, output
channels, labels, thresholds), so a model retrained on real labelled scans is deployed by
replacing the ``.tflite`` and its ``.json`` only, with no code change. The file's SHA-256 is
recorded here and checked at load time: a truncated or swapped model file is a `ModelError`,
never a silently wrong verdict.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference.errors import ModelError

__all__ = [
    "FORMAT",
    "EnvelopeSpec",
    "InputSpec",
    "ModelSpec",
    "NormalizationSpec",
    "OutputSpec",
    "QuantizationSpec",
    "ThresholdSpec",
    "TilingSpec",
    "file_sha256",
    "load_spec",
    "metadata_path_for",
]

FORMAT = "smartgate.model/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantizationSpec(_Strict):
    scale: float = Field(gt=0)
    zero_point: int = Field(ge=-128, le=255)


class InputSpec(_Strict):
    """One model input tile: NHWC, rows x tile width x channels."""

    name: str
    shape: tuple[int, int, int, int]
    dtype: Literal["int8", "uint8", "float32"]
    quantization: QuantizationSpec | None = None
    column_mm: float = Field(gt=0, description="column pitch the scan is resampled to")
    channels: tuple[str, ...] = Field(min_length=1, max_length=2)

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if self.shape[0] != 1:
            raise ValueError("input batch must be 1")
        if self.shape[3] != len(self.channels):
            raise ValueError("input shape channels must match 'channels'")
        if self.dtype != "float32" and self.quantization is None:
            raise ValueError("a quantized input needs 'quantization'")
        return self

    @property
    def rows(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]


class OutputSpec(_Strict):
    """Per-cell outputs: channel 0 is ``not_empty``, the others are the anomaly labels.

    ``activation`` ``sigmoid``: the tensor holds probabilities; ``logits``: the runtime applies the
    logistic function. Logits keep the ranking of confident cells, which an int8 sigmoid output
    (steps of 1/256) flattens exactly where the operating point lies.

    ``decision_block``: the anomaly logits are averaged over every block of ``k x k`` neighbouring
    cells and each cell takes the best block it lies in (`inference.reviewer.block_support`)
    before any threshold; 1 = each cell on its own. The thresholds are calibrated under this rule,
    so it belongs to the model, not to the site.
    """

    name: str
    shape: tuple[int, int, int, int]
    dtype: Literal["int8", "uint8", "float32"]
    quantization: QuantizationSpec | None = None
    stride: int = Field(ge=1)
    channels: tuple[str, ...] = Field(min_length=2)
    activation: Literal["sigmoid", "logits"] = "sigmoid"
    decision_block: int = Field(default=1, ge=1, le=4)

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        if self.decision_block > 1 and self.activation != "logits":
            raise ValueError("a decision_block above 1 averages logits: it needs activation 'logits'")
        if self.channels[0] != "not_empty":
            raise ValueError("output channel 0 must be 'not_empty'")
        if self.shape[3] != len(self.channels):
            raise ValueError("output shape channels must match 'channels'")
        if self.dtype != "float32" and self.quantization is None:
            raise ValueError("a quantized output needs 'quantization'")
        return self


class NormalizationSpec(_Strict):
    """How transmitted intensity becomes model input (see inference/preprocess.py)."""

    transform: Literal["log_attenuation"] = "log_attenuation"
    air_percentile: float = Field(default=99.5, gt=50, le=100)
    air_floor_fraction: float = Field(default=0.5, gt=0, le=1)
    scale: tuple[float, ...] = Field(min_length=1, max_length=2)

    @model_validator(mode="after")
    def _check(self) -> NormalizationSpec:
        if any(s <= 0 for s in self.scale):
            raise ValueError("normalization scales must be > 0")
        return self


class TilingSpec(_Strict):
    overlap: int = Field(ge=0)


class ThresholdSpec(_Strict):
    suspect: float = Field(gt=0, lt=1)
    not_empty: float = Field(gt=0, lt=1)
    region: float | None = Field(default=None, gt=0, lt=1)
    not_empty_pool: int = Field(default=3, ge=1, le=15)


class EnvelopeSpec(_Strict):
    """The training envelope: beyond these limits a scan is unlike anything the model was
    trained or calibrated on, and its verdict is ``unavailable`` (reason ``unfamiliar``).

    ``max_flagged_share``: share of the scan's cells at or above the metadata's region threshold (a model
    out of its depth flags roof lines, chassis and wheels everywhere). ``max_noise``: pulse to
    pulse noise of the attenuation in air, model units. ``min_air_fraction``: air level as a
    fraction of full scale (source off, detector saturated dark). ``max_repaired_share``: share
    of detector rows conditioning had to repair. ``max_covered_share``: share of rows that saw no
    air anywhere (no flat field possible). ``max_inverted_share``: share of the attenuating
    pixels whose low-energy attenuation is below the high-energy one (`inference.preprocess.
    inverted_share`: channels in the wrong order, a low channel that is not the lower energy).
    The defaults hold for models without an envelope.
    """

    max_flagged_share: float = Field(default=0.35, gt=0, le=1)
    max_noise: float = Field(default=0.05, gt=0)
    min_air_fraction: float = Field(default=0.05, ge=0, lt=1)
    max_repaired_share: float = Field(default=0.1, gt=0, le=1)
    max_covered_share: float = Field(default=0.5, gt=0, le=1)
    max_inverted_share: float = Field(default=0.4, gt=0, le=1)
    basis: str = ""

    @classmethod
    def around(cls, *, flagged: float, noise: float, air: float, inverted: float, what: str) -> EnvelopeSpec:
        """The envelope of a set of scans (``what``, e.g. "3600 validation scans") from its most
        extreme values: each limit 1.5 times beyond them, so the guard fires only on scans clearly
        outside what the model was calibrated on, with floors that keep a few quiet scans from
        making it hair-trigger. Repaired and covered row shares keep their defaults: they describe
        a broken detector, not a scanner model."""
        defaults = cls()
        return cls(
            max_flagged_share=round(min(0.9, max(0.25, 1.5 * flagged)), 4),
            max_noise=round(max(0.02, 1.5 * noise), 5),
            min_air_fraction=round(min(defaults.min_air_fraction, air / 1.5), 4),
            max_repaired_share=defaults.max_repaired_share,
            max_covered_share=defaults.max_covered_share,
            max_inverted_share=round(min(0.6, max(0.4, 1.5 * inverted)), 4),
            basis=(f"1.5 x the extremes of {what}: flagged share {flagged:.3f}, noise {noise:.4f}, air fraction "
                   f"{air:.3f}, inverted share {inverted:.3f}; repaired and covered row shares: defaults"))

    def widened(self, site: EnvelopeSpec, what: str) -> EnvelopeSpec:
        """This envelope widened (never narrowed) to ``site``'s, the envelope of a site's own scans
        (``what``) that an adapted or fine-tuned model was validated on: its scanner's noise, air
        level and flagged share. The channel order check stays as it was: inverted channels are a
        wiring fault at any site."""
        return self.model_copy(update={
            "max_flagged_share": max(self.max_flagged_share, site.max_flagged_share),
            "max_noise": max(self.max_noise, site.max_noise),
            "min_air_fraction": min(self.min_air_fraction, site.min_air_fraction),
            "basis": f"{self.basis}; widened to {what}: {site.basis}"})


class ModelSpec(BaseModel):
    """The whole metadata document. ``training`` and ``metrics`` are free-form provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["smartgate.model/1"]
    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=32)
    created: str
    model_file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: InputSpec
    output: OutputSpec
    normalization: NormalizationSpec
    tiling: TilingSpec
    labels: tuple[str, ...] = Field(min_length=1)
    thresholds: ThresholdSpec
    envelope: EnvelopeSpec = Field(default_factory=EnvelopeSpec)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if tuple(self.output.channels[1:]) != tuple(self.labels):
            raise ValueError("output channels after 'not_empty' must equal 'labels'")
        if len(self.normalization.scale) != len(self.input.channels):
            raise ValueError("one normalization scale per input channel")
        if self.input.width % self.output.stride or self.input.rows % self.output.stride:
            raise ValueError("input rows and width must be multiples of the output stride")
        expected = (1, self.input.rows // self.output.stride, self.input.width // self.output.stride,
                    len(self.output.channels))
        if tuple(self.output.shape) != expected:
            raise ValueError(f"output shape {self.output.shape} does not match input/stride {expected}")
        if self.tiling.overlap >= self.input.width or self.tiling.overlap % self.output.stride:
            raise ValueError("tiling overlap must be a multiple of the stride and below the tile width")
        return self

    @property
    def region_threshold(self) -> float:
        return self.thresholds.region if self.thresholds.region is not None else self.thresholds.suspect

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"


def metadata_path_for(model_path: Path) -> Path:
    """``foo.tflite`` -> ``foo.json`` (the metadata always sits next to the model)."""
    return model_path.with_suffix(".json")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_spec(path: Path) -> ModelSpec:
    """Read and validate a metadata file; every defect is a `ModelError` naming the file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelError(f"model metadata {path} not found") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"model metadata {path} is not readable JSON: {err}") from err
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as err:
        raise ModelError(f"model metadata {path} is invalid: {err}") from err
