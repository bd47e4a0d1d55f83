"""On-device intelligent image review of X-ray cargo scans, and the scan data model."""

from inference.errors import InferenceError, InferenceTimeoutError, ModelError, ScanFormatError, SmartGateError
from inference.scan import Scan, load_scan, save_scan

__all__ = [
    "InferenceError",
    "InferenceTimeoutError",
    "ModelError",
    "Scan",
    "ScanFormatError",
    "SmartGateError",
    "load_scan",
    "save_scan",
]
