"""Fixtures and helpers for the image review tests: the shipped model, generated scans, copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.model_spec import file_sha256, metadata_path_for
from inference.reviewer import Reviewer
from inference.runtime import DEFAULT_MODEL_PATH
from inference.scan import Scan
from inference.synthetic import SyntheticScan, generate_scan
from inference.training.evaluate import overlaps

__all__ = [
    "copy_model",
    "edit_after_signing",
    "overlaps",
    "reviewer",
    "rewrite_metadata",
    "scan_with",
    "shipped_model",
    "shipped_version",
    "synthetic",
    "to_8bit",
]


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    assert DEFAULT_MODEL_PATH.is_file(), f"shipped model missing: {DEFAULT_MODEL_PATH}"
    return DEFAULT_MODEL_PATH


@pytest.fixture(scope="module")
def reviewer(shipped_model: Path) -> Reviewer:
    return Reviewer(shipped_model, num_threads=1)


def synthetic(seed: int, **kwargs: Any) -> SyntheticScan:
    return generate_scan(seed, **kwargs)


def copy_model(target_dir: Path, *, model: Path = DEFAULT_MODEL_PATH) -> Path:
    """Copy the model and its metadata; returns the new .tflite path."""
    target_dir.mkdir(parents=True, exist_ok=True)
    dst = target_dir / model.name
    shutil.copyfile(model, dst)
    shutil.copyfile(metadata_path_for(model), metadata_path_for(dst))
    return dst


def rewrite_metadata(model: Path, **changes: object) -> None:
    """Edit top-level metadata keys (and refresh sha256 unless it is one of the changes)."""
    path = metadata_path_for(model)
    raw = json.loads(path.read_text())
    if "sha256" not in changes:
        raw["sha256"] = file_sha256(model)
    raw.update(changes)
    path.write_text(json.dumps(raw))


def scan_with(scan: Scan, **changes: Any) -> Scan:
    fields: dict[str, Any] = {"pixels": scan.pixels, "scan_id": scan.scan_id, "bits": scan.bits,
                                 "pixel_mm": scan.pixel_mm, "declared": scan.declared, "meta": scan.meta}
    fields.update(changes)
    return Scan(**fields)


def to_8bit(scan: Scan) -> Scan:
    return scan_with(scan, pixels=(scan.pixels >> 8).astype(np.uint8), bits=8)


def shipped_version() -> str:
    """The version of the model shipped in inference/models (its metadata)."""
    from inference.model_spec import load_spec

    return load_spec(metadata_path_for(DEFAULT_MODEL_PATH)).version


def edit_after_signing(package: Path, suspect: float = 0.99) -> None:
    """Change a signed package's suspect threshold and recompute every hash and size in its
    manifest, as someone who can write the package directory but has no signing key would: the
    package is consistent (hashes right) but its signature no longer covers its manifest."""
    manifest_path = package / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    meta = package / manifest["metadata_file"]
    spec = json.loads(meta.read_text())
    spec["thresholds"]["suspect"] = suspect
    meta.write_text(json.dumps(spec, indent=1))
    for name, entry in manifest["files"].items():
        entry["sha256"] = file_sha256(package / name)
        entry["bytes"] = (package / name).stat().st_size
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
