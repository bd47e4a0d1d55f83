"""The input envelope of a model: statistics of what it was fitted on, and how far recent scans are.

Per scan the review reports a few statistics of the model's own input (after normalization, so a
scanner's overall gain does not count, but a change of spectrum, noise, dose or cargo mix does):
for each input channel the mean and the standard deviation of the attenuation, and the share of
pixels that are air. A model package may carry ``envelope.json``: the mean and spread of each
statistic over the scans it was fitted or calibrated on (``smartgate model adapt`` writes it from
the site's own clean scans).

`Envelope.distance` is the largest shift of the recent average of a statistic from the fitted
average, in units of the fitted per-scan standard deviation: 0 when recent scans look like the
fitting set on average, 3 when one statistic moved by three (per-scan) standard deviations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import ModelError
from inference.model_spec import InputSpec

__all__ = ["ENVELOPE_FILE", "Envelope", "input_statistics"]

ENVELOPE_FILE = "envelope.json"
ENVELOPE_FORMAT = "smartgate.envelope/1"
_MIN_STD = 1e-3
_STEP = 4  # every 4th model column: the statistics of a 2000-column scan in well under a millisecond


def input_statistics(data: npt.NDArray[Any], width: int, inp: InputSpec) -> dict[str, float]:
    """Statistics of one prepared scan (``(rows, padded, channels)`` in the model's input dtype)."""
    view = data[:, :width:_STEP, :]
    q = inp.quantization
    values = view.astype(np.float32)
    if q is not None:
        values -= np.float32(q.zero_point)
        values *= np.float32(q.scale)
    out: dict[str, float] = {}
    for i, name in enumerate(inp.channels):
        plane = values[..., i]
        out[f"mean_{name}"] = round(float(plane.mean()), 5)
        out[f"std_{name}"] = round(float(plane.std()), 5)
    air_step = q.scale * 1.5 if q is not None else 1e-3
    out["air_share"] = round(float((values[..., 0] <= air_step).mean()), 5)
    return out


@dataclass(frozen=True)
class Envelope:
    mean: Mapping[str, float]
    std: Mapping[str, float]
    scans: int
    source: str = ""

    @classmethod
    def fit(cls, stats: Iterable[Mapping[str, float]], source: str = "") -> Envelope:
        rows = list(stats)
        if len(rows) < 2:
            raise ModelError("an input envelope needs at least 2 scans")
        names = sorted(set.intersection(*(set(r) for r in rows)))
        mean = {n: float(np.mean([r[n] for r in rows])) for n in names}
        std = {n: max(float(np.std([r[n] for r in rows], ddof=1)), _MIN_STD) for n in names}
        return cls(mean=mean, std=std, scans=len(rows), source=source)

    def distance(self, recent: Iterable[Mapping[str, float]]) -> tuple[float, str | None]:
        """``(distance, statistic that moved most)`` of the recent scans' average; (0, None) for none."""
        rows = list(recent)
        if not rows:
            return 0.0, None
        worst, which = 0.0, None
        for name, mu in self.mean.items():
            vals = [r[name] for r in rows if name in r and math.isfinite(r[name])]
            if not vals:
                continue
            z = abs(float(np.mean(vals)) - mu) / self.std[name]
            if z > worst:
                worst, which = z, name
        return worst, which

    def to_json(self) -> str:
        return json.dumps({"format": ENVELOPE_FORMAT, "scans": self.scans, "source": self.source,
                           "statistics": {n: {"mean": round(self.mean[n], 6), "std": round(self.std[n], 6)}
                                          for n in sorted(self.mean)}}, indent=1) + "\n"

    @classmethod
    def load(cls, path: Path) -> Envelope:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelError(f"input envelope {path} unreadable: {err}") from err
        if not isinstance(raw, dict) or raw.get("format") != ENVELOPE_FORMAT:
            raise ModelError(f"input envelope {path}: format is not {ENVELOPE_FORMAT}")
        try:
            stats = raw["statistics"]
            return cls(mean={k: float(v["mean"]) for k, v in stats.items()},
                       std={k: max(float(v["std"]), _MIN_STD) for k, v in stats.items()},
                       scans=int(raw["scans"]), source=str(raw.get("source", "")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelError(f"input envelope {path} unreadable: {err}") from err
