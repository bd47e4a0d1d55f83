"""The scan data model shared by the bridge, the archive, the review and training.

A scan is transmitted intensity, shape ``(channels, rows, columns)``: channel 0 high energy,
channel 1 low energy when present, one column per scanner pulse, high values = air. The archive
format is an ``.npz`` with ``pixels`` (that array) and ``meta`` (a JSON string); see docs/scan-format.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import ScanFormatError

__all__ = ["Scan", "held_out", "load_scan", "pixel_bytes_sha256", "readable_scans", "save_scan"]

_log = logging.getLogger(__name__)

_DTYPES: dict[int, type[np.unsignedinteger[Any]]] = {8: np.uint8, 16: np.uint16}


@dataclass(frozen=True)
class Scan:
    """One X-ray scan: pixels plus the metadata every consumer needs.

    ``meta`` keeps any further keys (ground truth, firmware ids, ...) untouched so an archive
    round-trips losslessly.
    """

    pixels: npt.NDArray[np.unsignedinteger[Any]]
    scan_id: str
    bits: int
    pixel_mm: float
    declared: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_pixels(self.pixels, self.bits)
        if not self.scan_id or len(self.scan_id) > 64:
            raise ScanFormatError(f"scan_id must be 1..64 characters (got {self.scan_id!r})")
        if not (self.pixel_mm > 0):
            raise ScanFormatError(f"pixel_mm must be > 0 (got {self.pixel_mm!r})")

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def max_value(self) -> int:
        return (1 << self.bits) - 1

    def wire_bytes(self) -> bytes:
        """Pixel bytes in GFP/1 transmission order: column after column, channel after channel."""
        dtype = np.dtype(_DTYPES[self.bits]).newbyteorder("<")
        return np.ascontiguousarray(self.pixels.transpose(2, 0, 1), dtype=dtype).tobytes()

    def sha256(self) -> str:
        """The scan's identity hash: SHA-256 of the wire bytes (what GFP/1 `data_crc32` covers)."""
        return hashlib.sha256(self.wire_bytes()).hexdigest()

    def full_meta(self) -> dict[str, Any]:
        out = dict(self.meta)
        out.update(scan_id=self.scan_id, bits=self.bits, pixel_mm=self.pixel_mm)
        if self.declared is not None:
            out["declared"] = self.declared
        return out

    @classmethod
    def from_wire(
        cls,
        data: bytes,
        *,
        columns: int,
        rows: int,
        channels: int,
        bits: int,
        scan_id: str,
        pixel_mm: float,
        declared: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Scan:
        """Build a scan from pixel bytes in GFP/1 column order."""
        if bits not in _DTYPES:
            raise ScanFormatError(f"bits must be 8 or 16 (got {bits})")
        dtype = np.dtype(_DTYPES[bits]).newbyteorder("<")
        expected = columns * rows * channels * dtype.itemsize
        if len(data) != expected:
            raise ScanFormatError(
                f"pixel data is {len(data)} bytes, expected {expected} for {columns}x{rows}x{channels}x{bits}bit"
            )
        arr = np.frombuffer(data, dtype=dtype).reshape(columns, channels, rows).transpose(1, 2, 0)
        pixels = np.ascontiguousarray(arr, dtype=_DTYPES[bits])
        return cls(pixels=pixels, scan_id=scan_id, bits=bits, pixel_mm=pixel_mm, declared=declared,
                   meta=dict(meta or {}))


def validate_pixels(pixels: Any, bits: int) -> None:
    if bits not in _DTYPES:
        raise ScanFormatError(f"bits must be 8 or 16 (got {bits!r})")
    if not isinstance(pixels, np.ndarray):
        raise ScanFormatError(f"pixels must be a numpy array (got {type(pixels).__name__})")
    if pixels.ndim != 3:
        raise ScanFormatError(f"pixels must have shape (channels, rows, columns) (got shape {pixels.shape})")
    if pixels.shape[0] not in (1, 2):
        raise ScanFormatError(f"channels must be 1 or 2 (got {pixels.shape[0]})")
    if pixels.shape[1] < 1 or pixels.shape[2] < 1:
        raise ScanFormatError(f"rows and columns must be >= 1 (got shape {pixels.shape})")
    if pixels.dtype != np.dtype(_DTYPES[bits]):
        raise ScanFormatError(f"pixels dtype {pixels.dtype} does not match bits={bits}")


def pixel_bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_scan(scan: Scan, path: str | Path) -> Path:
    """Write a scan in the archive format (compressed ``.npz``)."""
    target = Path(path)
    buf = io.BytesIO()
    np.savez_compressed(buf, pixels=scan.pixels, meta=np.array(json.dumps(scan.full_meta(), sort_keys=True)))
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(target)
    return target


def load_scan(path: str | Path) -> Scan:
    """Read an archive ``.npz``; every defect is a `ScanFormatError` naming the file."""
    source = Path(path)
    try:
        with np.load(source, allow_pickle=False) as npz:
            files = list(npz.files)
            pixels = npz["pixels"] if "pixels" in files else None
            meta_raw = npz["meta"] if "meta" in files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ScanFormatError(f"{source}: not a readable .npz archive: {err}") from err
    if pixels is None or meta_raw is None:
        raise ScanFormatError(f"{source}: archive must hold arrays 'pixels' and 'meta' (has {files})")
    try:
        meta = json.loads(str(meta_raw.item() if meta_raw.shape == () else meta_raw))
    except (ValueError, TypeError) as err:
        raise ScanFormatError(f"{source}: 'meta' is not a JSON string: {err}") from err
    if not isinstance(meta, dict):
        raise ScanFormatError(f"{source}: 'meta' must be a JSON object")
    for key in ("scan_id", "bits", "pixel_mm"):
        if key not in meta:
            raise ScanFormatError(f"{source}: meta lacks required key {key!r}")
    bits = meta["bits"]
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise ScanFormatError(f"{source}: meta.bits must be an integer (got {bits!r})")
    try:
        pixel_mm = float(meta["pixel_mm"])
    except (TypeError, ValueError) as err:
        raise ScanFormatError(f"{source}: meta.pixel_mm must be a number") from err
    declared = meta.get("declared")
    if declared is not None and not isinstance(declared, str):
        raise ScanFormatError(f"{source}: meta.declared must be a string or absent")
    extra = {k: v for k, v in meta.items() if k not in ("scan_id", "bits", "pixel_mm", "declared")}
    try:
        return Scan(pixels=pixels, scan_id=str(meta["scan_id"]), bits=bits, pixel_mm=pixel_mm,
                    declared=declared, meta=extra)
    except ScanFormatError as err:
        raise ScanFormatError(f"{source}: {err}") from err


def readable_scans(directory: str | Path) -> list[Path]:
    """The readable ``.npz`` scans of ``directory``, sorted; unreadable ones are logged and skipped.
    Only the paths are kept: pixels are loaded again when used, so memory stays flat in N."""
    out = []
    for path in sorted(Path(directory).glob("*.npz")):
        try:
            load_scan(path)
        except ScanFormatError as err:
            _log.warning("skipping %s: %s", path, err)
            continue
        out.append(path)
    return out


def held_out(name: str, fraction: float) -> bool:
    """Whether ``name`` (a scan id or file name) falls in the held-out ``fraction`` of a split
    by its SHA-256: the same name lands on the same side in every run."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction
