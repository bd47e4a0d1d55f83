"""The exception tree shared by every smartgate package.

It lives in `inference`, the bottom layer of the design: `firmware_bridge` builds on the scan data
model defined here and `gate_controller` composes both, so every package can import it without an
upward dependency.
"""

from __future__ import annotations


class SmartGateError(Exception):
    """Root of every error smartgate raises on purpose."""


class InferenceError(SmartGateError):
    """The image review could not produce a verdict."""


class ModelError(InferenceError):
    """A model file or its metadata is missing, corrupt or does not match."""


class ScanFormatError(SmartGateError, ValueError):
    """A scan (in memory or an archive file) does not follow the scan data model."""


class InferenceTimeoutError(InferenceError, TimeoutError):
    """The review did not finish within its deadline."""
