"""On-device intelligent image review of X-ray cargo scans, and the scan data model.

The scan data model and the errors import at once; the review runtime (OpenCV, LiteRT), the
preview renderer and the synthetic generator load on first use, so ``from inference import Scan``
stays cheap for code that never reviews.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from inference.errors import InferenceError, InferenceTimeoutError, ModelError, ScanFormatError, SmartGateError
from inference.result import ReviewRegion, ReviewResult
from inference.scan import Scan, load_scan, save_scan

if TYPE_CHECKING:
    from inference.preview import render_image_png, render_preview
    from inference.reviewer import Reviewer
    from inference.runtime import DEFAULT_MODEL_PATH, ModelInfo
    from inference.synthetic import ANOMALY_CLASSES, CARGO_KINDS, SyntheticScan, generate_scan
    from inference.worker import ReviewWorker

__all__ = [
    "ANOMALY_CLASSES",
    "CARGO_KINDS",
    "DEFAULT_MODEL_PATH",
    "InferenceError",
    "InferenceTimeoutError",
    "ModelError",
    "ModelInfo",
    "ReviewRegion",
    "ReviewResult",
    "ReviewWorker",
    "Reviewer",
    "Scan",
    "ScanFormatError",
    "SmartGateError",
    "SyntheticScan",
    "generate_scan",
    "load_scan",
    "render_image_png",
    "render_preview",
    "save_scan",
]

_LAZY = {
    "Reviewer": "inference.reviewer",
    "ReviewWorker": "inference.worker",
    "ModelInfo": "inference.runtime",
    "DEFAULT_MODEL_PATH": "inference.runtime",
    "render_preview": "inference.preview",
    "render_image_png": "inference.preview",
    "generate_scan": "inference.synthetic",
    "SyntheticScan": "inference.synthetic",
    "ANOMALY_CLASSES": "inference.synthetic",
    "CARGO_KINDS": "inference.synthetic",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'inference' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
