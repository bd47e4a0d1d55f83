"""Hard examples mined from the whole training set with a trained model (no TensorFlow here).

The gate's operating point is set by the few clean scans whose highest cell scores like
contraband, and an object is missed when its highest cell stays below that. Random tiles seldom
show the network either: a clean scan's worst spot is one cell among a thousand, and the objects
it nearly misses are a minority of the objects. Mining runs the int8 model over every training
scan (LiteRT, the gate's own arithmetic, tiles stitched by their maximum as on the gate) and
keeps the spots where it is most wrong:

* **hard negatives**: per scan, the column of its highest cell free of every anomaly (inside the
  scan, not on an object's ignored border); the scans whose highest clean cell ranks in the top
  ``negative_share`` are kept;
* **hard positives**: per object (a connected group of positive cells of one class), its highest
  logit in its own class; the objects below the model's suspect threshold are kept.

Cell logits are taken under the model's decision rule (`OutputSpec.decision_block`,
`inference.reviewer.block_support`), the scores the gate compares with its thresholds.

Training then centres a share of its tiles on these spots (`train --mine-from`): the loop of
customs review (make images, label, train, feed the results back) run on the generator's scans.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.preprocess import padded_width, tile_offsets
from inference.reviewer import block_support
from inference.training.base_weights import load_base_spec
from inference.training.dataset import X_QUANT, ExampleSet
from inference.training.evaluate import logit
from inference.training.geometry import Geometry

__all__ = ["HardExamples", "mine"]

_log = logging.getLogger(__name__)


@dataclass
class HardExamples:
    """Spots to centre training tiles on: (example index, cell column) each."""

    negatives: list[tuple[int, int]] = field(default_factory=list)
    positives: list[tuple[int, int]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def spots(self) -> list[tuple[int, int]]:
        return self.negatives + self.positives

    def __len__(self) -> int:
        return len(self.negatives) + len(self.positives)


class _TileModel:
    """The int8 network on model-space tiles (uint8 inputs of `X_QUANT`), logits out."""

    def __init__(self, model_path: Path, g: Geometry, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        spec = load_base_spec(model_path, g)
        self.suspect_logit = logit(spec.thresholds.suspect)
        self.decision_block = spec.output.decision_block
        self.interp = Interpreter(model_path=str(model_path), num_threads=threads)
        self.interp.allocate_tensors()
        inp, out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        self.inp, self.out = inp["index"], out["index"]
        (s_in, z_in), (self.s_out, self.z_out) = inp["quantization"], out["quantization"]
        # uint8 model-space value v -> int8 input: round(v / X_QUANT / s_in + z_in), as a table.
        self.table = np.clip(np.rint(np.arange(256) / X_QUANT / s_in + z_in), -128, 127).astype(np.int8)

    def logits(self, x: npt.NDArray[np.uint8], g: Geometry, width: int | None = None) -> npt.NDArray[np.float32]:
        """Stitched per-cell logits of one example ``(rows, columns, channels)`` whose first
        ``width`` columns (default all) are the scan: the tiles the gate places on such a scan
        (`inference.preprocess.tile_offsets` over the width padded to whole cells) and the
        maximum of the raw outputs where they overlap, as on the gate."""
        columns = x.shape[1]
        padded = min(padded_width(columns if width is None else width, g.tile_width, g.stride), columns)
        raw = np.full((g.cell_rows, columns // g.stride, len(g.outputs)), -128, dtype=np.int16)
        for s in tile_offsets(padded, g.tile_width, g.overlap, g.stride):
            self.interp.set_tensor(self.inp, self.table[x[None, :, s:s + g.tile_width]])
            self.interp.invoke()
            out = self.interp.get_tensor(self.out)[0].astype(np.int16)
            c0 = s // g.stride
            np.maximum(raw[:, c0:c0 + out.shape[1]], out, out=raw[:, c0:c0 + out.shape[1]])
        return np.asarray((raw.astype(np.float32) - self.z_out) * self.s_out, dtype=np.float32)


def mine(model_path: Path, data: ExampleSet, g: Geometry, *, negative_share: float = 0.15,
         threads: int = 2) -> HardExamples:
    """Run ``model_path`` over every example of ``data`` and return its hard spots."""
    started = time.monotonic()
    model = _TileModel(model_path, g, threads)
    neg_scores: list[tuple[float, int, int]] = []
    positives: list[tuple[int, int]] = []
    objects = 0
    for i in range(len(data)):
        x, t, w = data.example(i)
        logits = model.logits(x, g, int(data.valid[i]))
        valid_cells = -(-int(data.valid[i]) // g.stride)
        # Cell scores under the model's decision rule, as the gate thresholds them.
        anomaly = block_support(logits[:, :valid_cells, 1:], model.decision_block)
        truth = t[:, :valid_cells, 1:]
        clean = ~(truth > 0).any(axis=-1) & (w[:, :valid_cells, 1:].min(axis=-1) > 0)
        if clean.any():
            worst = np.where(clean, anomaly.max(axis=-1), -np.inf)
            col = int(np.argmax(worst.max(axis=0)))
            neg_scores.append((float(worst.max()), i, col))
        for k in range(truth.shape[-1]):
            mask = (truth[..., k] > 0).astype(np.uint8)
            if not mask.any():
                continue
            count, labels = cv2.connectedComponents(mask, connectivity=8)
            for c in range(1, count):
                rows, cols = np.nonzero(labels == c)
                peak = anomaly[rows, cols, k]
                objects += 1
                if float(peak.max()) < model.suspect_logit:
                    positives.append((i, int(cols[int(np.argmax(peak))])))
        if (i + 1) % 2000 == 0:
            _log.info("mined %d/%d training scans (%.0f s)", i + 1, len(data), time.monotonic() - started)
    neg_scores.sort(reverse=True)
    keep = neg_scores[:max(1, round(negative_share * len(neg_scores)))] if neg_scores else []
    hard = HardExamples(negatives=[(i, col) for _, i, col in keep], positives=positives)
    hard.summary = {
        "model": model_path.name,
        "scans": len(data),
        "negatives": len(hard.negatives),
        "negative_share": negative_share,
        "negative_logit_floor": round(keep[-1][0], 3) if keep else None,
        "clean_logit_median": round(float(np.median([s for s, _, _ in neg_scores])), 3) if neg_scores else None,
        "objects": objects,
        "positives": len(positives),
        "suspect_logit": round(model.suspect_logit, 3),
        "seconds": round(time.monotonic() - started, 1),
    }
    _log.info("mined %s", hard.summary)
    return hard
