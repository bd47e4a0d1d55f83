"""The review of an adapted package: the network's own features scored against the site's normal traffic.

The network runs as usual (its cargo channel still decides declared-empty checks and its class
channels still name a flagged region). A cell is anomalous when its features lie far from the
site's clean scans (`NormalModel`, distance ``d`` above the calibrated ``t``) or when the
network's own anomaly probability ``p`` exceeds the threshold re-calibrated on the site's clean
scans (``n``). Both are mapped to a score in [0, 1) that is 0.5 at its threshold
(``d^2 / (d^2 + t^2)``; ``p`` piecewise linear through ``n``) and the cell's score is the larger,
so the package's metadata thresholds (suspect 0.5), the contract's ``score`` and the policy's
``suspect_threshold`` override keep their meaning.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.adaptation.normal import NormalModel, dequantized, pick_feature_tensor
from inference.errors import InferenceError, ModelError
from inference.result import ReviewRegion, ReviewResult
from inference.reviewer import Reviewer, ScanAnalysis
from inference.scan import Scan

__all__ = ["ADAPTATION_ARRAYS", "ADAPTATION_FILE", "AdaptedReviewer"]

ADAPTATION_FILE = "adaptation.json"
ADAPTATION_ARRAYS = "adaptation.npz"
ADAPTATION_FORMAT = "smartgate.adaptation/1"

FloatArray = npt.NDArray[np.float32]


def score_of(distance: FloatArray | float, threshold: float) -> Any:
    d2 = np.square(distance)
    return d2 / (d2 + threshold * threshold)


def network_score(prob: FloatArray, threshold: float) -> FloatArray:
    """The network's anomaly probability on the same scale: 0.5 at the site threshold."""
    low = prob * np.float32(0.5 / threshold)
    high = np.float32(0.5) + (prob - np.float32(threshold)) * np.float32(0.5 / max(1.0 - threshold, 1e-6))
    return np.asarray(np.where(prob < threshold, low, high), dtype=np.float32)


class AdaptedReviewer(Reviewer):
    preserve_all_tensors = True

    def __init__(self, model_path: Path, num_threads: int = 1, *, normal: NormalModel | None = None,
                 distance_threshold: float = 1.0, feature_tensor: str | None = None,
                 network_threshold: float | None = None,
                 suspect_threshold: float | None = None, not_empty_threshold: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(model_path, num_threads, suspect_threshold=suspect_threshold,
                         not_empty_threshold=not_empty_threshold, clock=clock)
        details = self._model.tensor_details()
        named = [d for d in details if d["name"] == self.spec.output.name]
        output = named[0] if named else max(details, key=lambda d: int(d["index"]))
        if feature_tensor is None:
            detail = pick_feature_tensor(details, output)
        else:
            found = [d for d in details if d["name"] == feature_tensor]
            if not found:
                raise ModelError(f"{model_path}: the network has no tensor {feature_tensor!r}")
            detail = found[0]
        self.feature_tensor = str(detail["name"])
        self.feature_shape = tuple(int(x) for x in detail["shape"])
        self._feature_index = int(detail["index"])
        scale, zero = detail.get("quantization", (0.0, 0))
        self._feature_quant = (float(scale), int(zero))
        self.distance_threshold = distance_threshold
        self.network_threshold = network_threshold
        """Site threshold of the network's own anomaly probability (None: the network is not used)."""
        self.normal = normal
        self.adaptation: dict[str, Any] = {}
        if normal is not None:
            self._check_normal(normal)

    def _check_normal(self, normal: NormalModel) -> None:
        rows, dims = normal.mean.shape
        if self.feature_shape[1] != rows or self.feature_shape[3] != dims:
            raise ModelError(f"feature tensor shape {self.feature_shape} does not fit the normal model "
                             f"({rows} rows, {dims} features)")

    @classmethod
    def from_package(cls, package_dir: Path, model_path: Path, num_threads: int = 1) -> AdaptedReviewer:
        try:
            meta = json.loads((package_dir / ADAPTATION_FILE).read_text(encoding="utf-8"))
            arrays = (package_dir / ADAPTATION_ARRAYS).read_bytes()
        except (OSError, ValueError) as err:
            raise ModelError(f"{package_dir}: adaptation files unreadable: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != ADAPTATION_FORMAT:
            raise ModelError(f"{package_dir / ADAPTATION_FILE}: format is not {ADAPTATION_FORMAT}")
        try:
            threshold, tensor = float(meta["distance_threshold"]), str(meta["feature_tensor"])
            network = meta.get("network_threshold")
            network_threshold = float(network) if network is not None else None
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{package_dir / ADAPTATION_FILE}: {err}") from err
        reviewer = cls(model_path, num_threads, normal=NormalModel.from_bytes(arrays), distance_threshold=threshold,
                       feature_tensor=tensor, network_threshold=network_threshold)
        reviewer.adaptation = meta
        return reviewer

    def run_tiles(self, scan: Scan) -> tuple[Any, list[tuple[int, npt.NDArray[Any], FloatArray]], float]:
        """``(prepared, [(first cell column, raw output, features)] per tile, invoke seconds)``."""
        prepared = self.prepare(scan)
        stride = self.spec.output.stride
        out: list[tuple[int, npt.NDArray[Any], FloatArray]] = []
        invoke_s = 0.0
        for off, tile in zip(prepared.offsets, self.quantized_tiles(prepared), strict=True):
            t0 = self._clock()
            raw = self._model.run(tile)[0].copy()
            feat = dequantized(self._model.tensor(self._feature_index)[0], self._feature_quant)
            invoke_s += self._clock() - t0
            out.append((off // stride, raw, feat))
        return prepared, out, invoke_s

    def valid_features(self, scan: Scan) -> FloatArray:
        """Every tile's features of cells inside the scan, concatenated along columns (for fitting)."""
        prepared, tiles, _ = self.run_tiles(scan)
        valid = -(-prepared.width // self.spec.output.stride)
        parts = [feat[:, : max(0, min(feat.shape[1], valid - c0))] for c0, _, feat in tiles]
        return np.concatenate([p for p in parts if p.shape[1]], axis=1)

    def analyse_distances(self, scan: Scan) -> tuple[ScanAnalysis, FloatArray]:
        """The network's cell map and the Mahalanobis distance of every cell, stitched over tiles by
        the maximum (as the network's own outputs are)."""
        if self.normal is None:
            raise ModelError("no normal-traffic model fitted")
        spec = self.spec
        stride = spec.output.stride
        prepared, tiles, invoke_s = self.run_tiles(scan)
        stitched = self.output_buffer(prepared)
        dist = np.zeros(stitched.shape[:2], dtype=np.float32)
        for c0, raw, feat in tiles:
            w = raw.shape[1]
            np.maximum(stitched[:, c0:c0 + w], raw, out=stitched[:, c0:c0 + w])
            np.maximum(dist[:, c0:c0 + w], self.normal.distance(feat), out=dist[:, c0:c0 + w])
        valid = -(-prepared.width // stride)
        probs = self.cell_probabilities(stitched[:, :valid])
        if stitched.dtype.kind == "f" and not np.isfinite(probs).all():
            raise InferenceError(f"scan {scan.scan_id}: the model produced non-finite outputs")
        if not np.isfinite(dist).all():
            raise InferenceError(f"scan {scan.scan_id}: non-finite feature distances")
        analysis = ScanAnalysis(probs=np.ascontiguousarray(probs), labels=tuple(spec.labels),
                                cell_w=stride * prepared.scale_x, cell_h=stride * prepared.scale_y,
                                scan_rows=scan.rows, scan_columns=scan.columns, invoke_ms=invoke_s * 1000.0,
                                tiles=len(tiles), report=prepared.report, **self.prepared_facts(prepared))
        return analysis, np.ascontiguousarray(dist[:, :valid])

    def cell_scores(self, analysis: ScanAnalysis, dist: FloatArray) -> FloatArray:
        score = np.asarray(score_of(dist, self.distance_threshold), dtype=np.float32)
        if self.network_threshold is not None and analysis.anomaly.size:
            np.maximum(score, network_score(analysis.anomaly.max(axis=-1), self.network_threshold), out=score)
        return score

    def review(self, scan: Scan, *, declared: str | None = None) -> ReviewResult:
        """As `Reviewer.review`, on the adapted cell score; the guard is the shipped model's, its
        flagged share taken on that score at the package's region threshold."""
        t0 = self._clock()
        analysis, dist = self.analyse_distances(scan)
        score = self.cell_scores(analysis, dist)
        signals = self.envelope_signals(analysis, score)
        unfamiliar = self.assess(signals)
        if unfamiliar is not None:
            return self.unfamiliar_result(scan, analysis, signals, unfamiliar, t0)
        regions = self.regions_of(analysis, score)
        anomaly_score = float(score.max()) if score.size else 0.0
        cargo = self.not_empty_map(analysis)
        not_empty_score = float(cargo.max()) if cargo.size else 0.0
        not_empty = not_empty_score >= self.not_empty_threshold
        decl = declared if declared is not None else scan.declared
        violation = decl is not None and decl.strip().lower() == "empty" and not_empty
        opaque = self.opaque_regions(analysis)
        suspect = anomaly_score >= self.suspect_threshold or violation or bool(opaque)
        result_score = max(anomaly_score, not_empty_score) if violation else anomaly_score
        if violation:
            ys, xs = np.nonzero(cargo >= self.not_empty_threshold)
            px, py, pw, ph = self._box(analysis, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            regions.append(ReviewRegion(x=px, y=py, w=pw, h=ph, score=not_empty_score, label="not_empty"))
        regions.extend(opaque)
        info = self.model_info
        return ReviewResult(
            verdict="suspect" if suspect else "clear", score=result_score, not_empty_score=not_empty_score,
            regions=tuple(regions), latency_ms=(self._clock() - t0) * 1000.0, model=info.name, version=info.version,
            anomaly_score=anomaly_score, not_empty=not_empty, declared_empty_violation=violation,
            opaque_m2=analysis.opaque_m2, scan_id=scan.scan_id, conditioning=analysis.conditioning, envelope=signals,
            extra={"invoke_ms": round(analysis.invoke_ms, 3), "tiles": analysis.tiles, "input": analysis.input_stats,
                   "max_distance": round(float(dist.max()) if dist.size else 0.0, 3)})
