"""In-process image review: scan -> tiles -> TFLite -> cell maps -> regions -> verdict.

Before the model, `inference.preprocess` conditions the scan (row repair, flat field, dark,
bit depth) and resamples it; what it repaired travels in the result (``conditioning``). After
the model, a guard compares the scan with the model's training envelope (`EnvelopeSpec`): a
scan outside it gets verdict ``unavailable`` with reason ``unfamiliar`` instead of a verdict the
model cannot vouch for (see `Reviewer.assess`).

The model outputs, per 8 x 8 cell of the resampled scan, the probability that the cell holds
cargo (``not_empty``) and one probability per anomaly label. Tiles overlap; overlapping cells
take the maximum. Regions are connected groups of cells whose best anomaly probability reaches
the region threshold, kept when their peak reaches the suspect threshold, and mapped back to
scan pixel coordinates. The scan's not-empty score is the maximum of the cargo map after a small
box filter, so a single spurious cell cannot call an empty box loaded.

Besides the model, the review looks for areas the beam did not cross (`inference.opacity`): an
opaque area of at least ``opaque_area_m2`` is a region labelled ``opaque`` and makes the scan
``suspect``, since no model can call clear what the scanner could not show.

`Reviewer` is not thread-safe and blocks for the duration of one review (tens of ms): the daemon
uses it through `inference.worker.ReviewWorker`, which runs it in a separate process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.adaptation.envelope import input_statistics
from inference.errors import InferenceError
from inference.model_spec import ModelSpec
from inference.opacity import DEFAULT_OPAQUE_AREA_M2, OpaqueArea, opaque_areas
from inference.preprocess import PreparedScan, dequantize, inverted_share, prepare_quantized
from inference.result import OPAQUE_LABEL, REASON_UNFAMILIAR, ReviewRegion, ReviewResult
from inference.runtime import ModelInfo, TfliteModel
from inference.scan import Scan

__all__ = ["MAX_REGIONS", "Reviewer", "ScanAnalysis", "block_support"]

MAX_REGIONS = 16

FloatArray = npt.NDArray[np.float32]


def _check_thresholds(suspect: float | None, not_empty: float | None, opaque_area_m2: float | None = None) -> None:
    for name, value in (("suspect_threshold", suspect), ("not_empty_threshold", not_empty)):
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1) (got {value})")
    if opaque_area_m2 is not None and not 0.0 <= opaque_area_m2 <= 100.0:
        raise ValueError(f"opaque_area_m2 must be in [0, 100] (got {opaque_area_m2})")


def _scan_box(analysis: ScanAnalysis, unit: tuple[float, float], box: tuple[int, int, int, int],
              ) -> tuple[int, int, int, int]:
    """A box ``(x0, y0, x1, y1)`` (exclusive end) in units of ``unit`` = (width, height) scan
    pixels -> ``(x, y, w, h)`` in scan pixels, clipped to the scan and at least one pixel each way."""
    unit_w, unit_h = unit
    x0, y0, x1, y1 = box
    px0 = int(np.floor(x0 * unit_w))
    py0 = int(np.floor(y0 * unit_h))
    px1 = min(int(np.ceil(x1 * unit_w)), analysis.scan_columns)
    py1 = min(int(np.ceil(y1 * unit_h)), analysis.scan_rows)
    return px0, py0, max(1, px1 - px0), max(1, py1 - py0)


def block_support(logits: FloatArray, block: int) -> FloatArray:
    """Each cell's best ``block x block`` neighbourhood: the anomaly logits (``rows x cols x
    classes``) are averaged over every block of neighbouring cells that fits the map, and each
    cell takes the highest average among the blocks it lies in (per class).

    An object spans neighbouring cells and makes them respond together; a clean structure that
    trips the network often does so in one cell alone. With 2.4.0's network, 2 x 2 blocks find
    1.4-2.6 points more of the small objects at the same false-alarm rates on the randomized test
    stream but raise the reference scanner's false alarms (docs/image-review.md), so the shipped
    model decides on single cells (``OutputSpec.decision_block`` 1). ``block`` 1, or a map smaller
    than a block, returns the logits as they are."""
    rows, cols = logits.shape[:2]
    if block <= 1 or rows < block or cols < block:
        return logits
    shifts = [(i, j) for i in range(block) for j in range(block)]
    mr, mc = rows - block + 1, cols - block + 1
    means = np.zeros((mr, mc, *logits.shape[2:]), dtype=np.float32)
    for i, j in shifts:
        means += logits[i:i + mr, j:j + mc]
    means *= np.float32(1.0 / (block * block))
    pad = block - 1
    padded = np.full((rows + pad, cols + pad, *logits.shape[2:]), -np.inf, dtype=np.float32)
    padded[pad:pad + mr, pad:pad + mc] = means
    best = padded[:rows, :cols].copy()
    for i, j in shifts[1:]:
        np.maximum(best, padded[i:i + rows, j:j + cols], out=best)
    return best


@dataclass(frozen=True)
class ScanAnalysis:
    """Raw per-cell output for one scan (used by the review, the evaluation and the preview).

    ``probs`` is ``(cell_rows, cell_cols, 1 + len(labels))``: channel 0 = not empty, then labels.
    ``cell_w``/``cell_h`` are the size of one cell in scan pixels.
    """

    probs: FloatArray
    labels: tuple[str, ...]
    cell_w: float
    cell_h: float
    scan_rows: int
    scan_columns: int
    invoke_ms: float
    tiles: int
    input_stats: dict[str, float] = field(default_factory=dict)
    """Statistics of the model input (`inference.adaptation.envelope`), for drift monitoring."""
    report: dict[str, Any] = field(default_factory=dict)
    opaque: tuple[OpaqueArea, ...] = ()
    """Opaque areas of at least the reviewer's ``opaque_area_m2``, on the model grid."""
    scale_x: float = 1.0
    scale_y: float = 1.0
    """Scan pixels per model pixel (to map ``opaque`` back to the scan)."""
    inverted_share: float = 0.0
    """Share of attenuating pixels whose low energy reads less attenuated (`inference.preprocess.
    inverted_share`), a guard signal."""

    @property
    def anomaly(self) -> FloatArray:
        return self.probs[..., 1:]

    @property
    def opaque_m2(self) -> float:
        """The total area of ``opaque`` (m2), as `ReviewResult.opaque_m2` reports it."""
        return round(sum(a.area_m2 for a in self.opaque), 3)

    @property
    def conditioning(self) -> dict[str, Any]:
        """The conditioning report as the review result carries it (`ReviewResult.conditioning`;
        the noise estimate goes out as a guard signal instead)."""
        return {k: v for k, v in self.report.items() if k != "noise"}

    def cell_box(self, x: int, y: int, w: int, h: int) -> tuple[slice, slice]:
        """Cells touched by a scan-pixel box (for scoring a ground-truth region)."""
        r0 = int(y // self.cell_h)
        r1 = int(np.ceil((y + h) / self.cell_h))
        c0 = int(x // self.cell_w)
        c1 = int(np.ceil((x + w) / self.cell_w))
        return slice(max(r0, 0), max(r1, r0 + 1)), slice(max(c0, 0), max(c1, c0 + 1))


class Reviewer:
    """Loads one model and reviews scans with it, synchronously.

    Thresholds default to the model's metadata; ``suspect_threshold``/``not_empty_threshold``
    override them (the config's knobs, None = metadata).
    """

    preserve_all_tensors = False
    """Subclasses that read intermediate feature maps set this (see `inference.adaptation`)."""

    def __init__(
        self,
        model_path: Path | None = None,
        num_threads: int = 1,
        *,
        suspect_threshold: float | None = None,
        not_empty_threshold: float | None = None,
        opaque_area_m2: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        _check_thresholds(suspect_threshold, not_empty_threshold, opaque_area_m2)
        self._model = TfliteModel(model_path, num_threads, preserve_all_tensors=self.preserve_all_tensors)
        self.spec: ModelSpec = self._model.spec
        self._clock = clock
        self.set_thresholds(suspect_threshold, not_empty_threshold, opaque_area_m2)

    def set_thresholds(self, suspect_threshold: float | None = None, not_empty_threshold: float | None = None,
                       opaque_area_m2: float | None = None) -> None:
        """Override the metadata's thresholds (None = metadata), e.g. after a config reload, and
        the smallest opaque area that makes a scan suspect (None = `DEFAULT_OPAQUE_AREA_M2`,
        0 = no opacity test)."""
        _check_thresholds(suspect_threshold, not_empty_threshold, opaque_area_m2)
        self.opaque_area_m2 = DEFAULT_OPAQUE_AREA_M2 if opaque_area_m2 is None else opaque_area_m2
        spec = self.spec
        self.suspect_threshold = suspect_threshold if suspect_threshold is not None else spec.thresholds.suspect
        self.not_empty_threshold = (not_empty_threshold if not_empty_threshold is not None
                                    else spec.thresholds.not_empty)
        # The region threshold keeps its ratio to the suspect threshold when that is overridden.
        ratio = spec.region_threshold / spec.thresholds.suspect
        self.region_threshold = min(self.suspect_threshold, self.suspect_threshold * ratio)

    @property
    def model_info(self) -> ModelInfo:
        return self._model.info

    @property
    def model_path(self) -> Path:
        return self._model.path

    @property
    def backend(self) -> str:
        return self._model.backend

    def prepare(self, scan: Scan) -> PreparedScan:
        """Resampled, normalized and quantized scan (planar), with its tile offsets."""
        spec = self.spec
        return prepare_quantized(scan, spec.input, spec.normalization, spec.tiling.overlap, spec.output.stride)

    def quantized_tiles(self, prepared: PreparedScan) -> list[npt.NDArray[Any]]:
        """The exact input tensors `analyse` feeds to the interpreter (benchmarks use them)."""
        width = self.spec.input.width
        return [np.ascontiguousarray(prepared.data[None, :, off:off + width, :]) for off in prepared.offsets]

    def invoke(self, tile: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return self._model.run(tile)

    def analyse(self, scan: Scan) -> ScanAnalysis:
        """Run the model over the whole scan and stitch the per-cell probabilities.

        Overlapping tiles are stitched by the maximum on the raw output (int8 for a quantized
        model): dequantization and the logistic function are increasing, so they commute with
        the maximum and run once over the stitched map instead of once per tile.
        """
        spec = self.spec
        prepared = self.prepare(scan)
        stride = spec.output.stride
        stitched, invoke_s = self.stitch(prepared)
        probs = self.cell_probabilities(stitched)
        if stitched.dtype.kind == "f" and not np.isfinite(probs).all():
            raise InferenceError(f"scan {scan.scan_id}: the model produced non-finite outputs")
        return ScanAnalysis(
            probs=np.ascontiguousarray(probs),
            labels=tuple(spec.labels),
            cell_w=stride * prepared.scale_x,
            cell_h=stride * prepared.scale_y,
            scan_rows=scan.rows,
            scan_columns=scan.columns,
            invoke_ms=invoke_s * 1000.0,
            tiles=len(prepared.offsets),
            report=prepared.report,
            **self.prepared_facts(prepared),
        )

    def output_buffer(self, prepared: PreparedScan) -> npt.NDArray[Any]:
        """The raw output map of the whole padded scan, filled with the lowest value, for tiles
        to be stitched into by the maximum."""
        spec = self.spec
        stride = spec.output.stride
        dtype = np.dtype(spec.output.dtype)
        lowest = np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf
        return np.full((spec.input.rows // stride, prepared.data.shape[1] // stride, len(spec.output.channels)),
                       lowest, dtype=dtype)

    def stitch(self, prepared: PreparedScan) -> tuple[npt.NDArray[Any], float]:
        """Run the model over every tile of ``prepared`` and stitch the raw outputs by the maximum:
        ``(raw map of the cells inside the scan, seconds spent in invoke)``."""
        stride = self.spec.output.stride
        cells_w = self.spec.input.width // stride
        stitched = self.output_buffer(prepared)
        invoke_s = 0.0
        for off, tile in zip(prepared.offsets, self.quantized_tiles(prepared), strict=True):
            t0 = self._clock()
            raw = self.invoke(tile)
            invoke_s += self._clock() - t0
            c0 = off // stride
            np.maximum(stitched[:, c0:c0 + cells_w], raw[0], out=stitched[:, c0:c0 + cells_w])
        return stitched[:, :-(-prepared.width // stride)], invoke_s

    def cell_probabilities(self, stitched: npt.NDArray[Any]) -> FloatArray:
        """The stitched raw output (cells inside the scan) -> per-cell probabilities: dequantized,
        the anomaly channels under the model's decision rule (`block_support`), then the logistic
        function when the model outputs logits."""
        spec = self.spec
        probs = dequantize(stitched, spec.output.quantization)
        if spec.output.decision_block > 1:
            probs[..., 1:] = block_support(probs[..., 1:], spec.output.decision_block)
        if spec.output.activation == "logits":
            np.negative(probs, out=probs)
            np.exp(probs, out=probs)
            probs += 1.0
            np.reciprocal(probs, out=probs)
        return probs

    def prepared_facts(self, prepared: PreparedScan) -> dict[str, Any]:
        """What `ScanAnalysis` records of the prepared input besides the model's output: opaque
        areas and the scale to map them back, the input statistics, the guard's inverted share."""
        spec = self.spec
        return {
            "opaque": tuple(self.opaque_areas(prepared)),
            "scale_x": prepared.scale_x,
            "scale_y": prepared.scale_y,
            "input_stats": input_statistics(prepared.data, prepared.width, spec.input),
            "inverted_share": inverted_share(prepared.data, prepared.width, spec.input, spec.normalization),
        }

    def opaque_areas(self, prepared: PreparedScan) -> list[OpaqueArea]:
        """The areas the beam did not cross, of at least ``opaque_area_m2`` (`inference.opacity`)."""
        spec = self.spec
        if self.opaque_area_m2 <= 0 or "high" not in spec.input.channels:
            return []
        c = spec.input.channels.index("high")
        high = dequantize(prepared.data[:, :prepared.width, c], spec.input.quantization)
        high *= np.float32(spec.normalization.scale[c])
        return opaque_areas(high, spec.input.column_mm, self.opaque_area_m2)

    def opaque_regions(self, analysis: ScanAnalysis) -> list[ReviewRegion]:
        """The analysis' opaque areas as regions in scan pixels; the score is 1 (the beam did
        not cross: a fact of the scan, not a probability)."""
        out = []
        for a in analysis.opaque:
            px, py, pw, ph = _scan_box(analysis, (analysis.scale_x, analysis.scale_y),
                                       (a.x, a.y, a.x + a.w, a.y + a.h))
            out.append(ReviewRegion(x=px, y=py, w=pw, h=ph, score=1.0, label=OPAQUE_LABEL))
        return out

    def not_empty_map(self, analysis: ScanAnalysis) -> FloatArray:
        k = self.spec.thresholds.not_empty_pool
        cargo = analysis.probs[..., 0]
        if k <= 1:
            return cargo
        return np.asarray(cv2.blur(cargo, (k, k), borderType=cv2.BORDER_REPLICATE), dtype=np.float32)

    def _box(self, analysis: ScanAnalysis, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
        """Cell box (exclusive end) -> scan pixel box clipped to the scan."""
        return _scan_box(analysis, (analysis.cell_w, analysis.cell_h), (x0, y0, x1, y1))

    def regions(self, analysis: ScanAnalysis) -> list[ReviewRegion]:
        """Connected anomaly cells -> labelled regions in scan pixels, strongest first."""
        return self.regions_of(analysis, analysis.anomaly.max(axis=-1))

    def regions_of(self, analysis: ScanAnalysis, best: FloatArray) -> list[ReviewRegion]:
        """Regions where the per-cell score map ``best`` reaches the region threshold, kept when
        their peak reaches the suspect threshold; labelled from the analysis' class probabilities."""
        anomaly = analysis.anomaly
        mask = (best >= self.region_threshold).astype(np.uint8)
        if not mask.any():
            return []
        count, labels_img, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        out: list[ReviewRegion] = []
        # Components are few (a handful of cell groups at most): one vectorized mask each.
        for i in range(1, count):
            cells = labels_img == i
            peak = float(best[cells].max())
            if peak < self.suspect_threshold:
                continue
            x0, y0, w, h = (int(v) for v in stats[i, :4])
            # The label is the class with the highest probability anywhere in the component.
            per_class = anomaly[cells].max(axis=0)
            label = analysis.labels[int(per_class.argmax())]
            px, py, pw, ph = self._box(analysis, x0, y0, x0 + w, y0 + h)
            out.append(ReviewRegion(x=px, y=py, w=pw, h=ph, score=peak, label=label))
        out.sort(key=lambda r: -r.score)
        return out[:MAX_REGIONS]

    def envelope_signals(self, analysis: ScanAnalysis, best: FloatArray | None = None) -> dict[str, float]:
        """The guard's signals for one analysed scan (see `EnvelopeSpec`). The flagged share is
        the share of ``best`` (the per-cell score the verdict is taken on; by default the network's
        highest anomaly probability) at the metadata's region threshold, the one the envelope was
        measured at: a threshold override (config, commissioning) moves the verdict, not the guard."""
        report = analysis.report
        if best is None and analysis.anomaly.size:
            best = analysis.anomaly.max(axis=-1)
        if best is None or not best.size:
            best = np.zeros((1, 1), np.float32)
        rows = max(int(report.get("rows", analysis.scan_rows)), 1)
        repaired = len(set(report.get("dead_rows", [])) | set(report.get("stuck_rows", []))
                       | set(report.get("noisy_rows", [])))
        noise = float(report.get("noise", float("nan")))
        return {
            "flagged_share": round(float((best >= self.spec.region_threshold).mean()), 4),
            "noise": round(noise, 5) if np.isfinite(noise) else 0.0,
            "air_fraction": round(min(report.get("air_fraction", [1.0]) or [1.0]), 4),
            "repaired_share": round(repaired / rows, 4),
            "covered_share": round(int(report.get("covered_rows", 0)) / rows, 4),
            "inverted_share": analysis.inverted_share,
        }

    def assess(self, signals: dict[str, float]) -> str | None:
        """Why a scan lies outside the training envelope (None: inside). One rule per signal,
        the same for every scan: no perturbation is recognised or treated on its own."""
        env = self.spec.envelope
        checks = (
            ("flagged_share", signals["flagged_share"] > env.max_flagged_share, env.max_flagged_share),
            ("noise", signals["noise"] > env.max_noise, env.max_noise),
            ("air_fraction", signals["air_fraction"] < env.min_air_fraction, env.min_air_fraction),
            ("repaired_share", signals["repaired_share"] > env.max_repaired_share, env.max_repaired_share),
            ("covered_share", signals["covered_share"] > env.max_covered_share, env.max_covered_share),
            ("inverted_share", signals["inverted_share"] > env.max_inverted_share, env.max_inverted_share),
        )
        out = [f"{name} {signals[name]:g} outside the training envelope (limit {limit:g})"
               for name, bad, limit in checks if bad]
        return "; ".join(out) if out else None

    def unfamiliar_result(self, scan: Scan, analysis: ScanAnalysis, signals: dict[str, float], why: str,
                          t0: float) -> ReviewResult:
        """Verdict ``unavailable`` (reason `REASON_UNFAMILIAR`) for a scan outside the training
        envelope, with the conditioning report and the guard's signals as evidence."""
        info = self.model_info
        return ReviewResult(
            verdict="unavailable", score=None, not_empty_score=None,
            latency_ms=(self._clock() - t0) * 1000.0, model=info.name, version=info.version,
            error=f"scan unlike the model's training: {why}", scan_id=scan.scan_id,
            reason=REASON_UNFAMILIAR, conditioning=analysis.conditioning, envelope=signals,
            extra={"invoke_ms": round(analysis.invoke_ms, 3), "tiles": analysis.tiles})

    def review(self, scan: Scan, *, declared: str | None = None) -> ReviewResult:
        """Review one scan. ``declared`` (e.g. the release notice's) overrides ``scan.declared``.

        Raises `ScanFormatError` for a scan the model cannot take and `InferenceError` when the
        runtime fails; the isolated worker turns both into verdict ``unavailable``.
        """
        t0 = self._clock()
        analysis = self.analyse(scan)
        info = self.model_info
        signals = self.envelope_signals(analysis)
        conditioning = analysis.conditioning
        unfamiliar = self.assess(signals)
        if unfamiliar is not None:
            return self.unfamiliar_result(scan, analysis, signals, unfamiliar, t0)
        regions = self.regions(analysis)
        anomaly_score = float(analysis.anomaly.max()) if analysis.anomaly.size else 0.0
        cargo = self.not_empty_map(analysis)
        not_empty_score = float(cargo.max()) if cargo.size else 0.0
        not_empty = not_empty_score >= self.not_empty_threshold
        decl = declared if declared is not None else scan.declared
        violation = decl is not None and decl.strip().lower() == "empty" and not_empty
        opaque = self.opaque_regions(analysis)
        suspect = anomaly_score >= self.suspect_threshold or violation or bool(opaque)
        score = anomaly_score
        if violation:
            score = max(anomaly_score, not_empty_score)
            ys, xs = np.nonzero(cargo >= self.not_empty_threshold)
            px, py, pw, ph = self._box(analysis, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            regions.append(ReviewRegion(x=px, y=py, w=pw, h=ph, score=not_empty_score, label="not_empty"))
        regions.extend(opaque)
        return ReviewResult(
            verdict="suspect" if suspect else "clear",
            score=score,
            not_empty_score=not_empty_score,
            regions=tuple(regions),
            latency_ms=(self._clock() - t0) * 1000.0,
            model=info.name,
            version=info.version,
            anomaly_score=anomaly_score,
            not_empty=not_empty,
            declared_empty_violation=violation,
            opaque_m2=analysis.opaque_m2,
            scan_id=scan.scan_id,
            conditioning=conditioning,
            envelope=signals,
            extra={"invoke_ms": round(analysis.invoke_ms, 3), "tiles": analysis.tiles, "input": analysis.input_stats},
        )
