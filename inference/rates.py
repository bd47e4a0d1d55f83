"""Binomial rates and their confidence intervals, shared by the evaluation of a model
(`inference.training.evaluate`) and the gate's shadow report (`gate_controller.lifecycle.report`)."""

from __future__ import annotations

import math
from typing import Final

__all__ = ["Z95", "wilson"]

Z95: Final = 1.959963984540054
"""The standard normal quantile of a two-sided 95 % interval."""


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes`` in ``n`` (0..1 for n = 0; Wilson 1927, recommended
    over the normal approximation by Brown, Cai and DasGupta 2001 because it keeps its coverage
    near 0 and 1, where false-alarm and detection rates lie)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
