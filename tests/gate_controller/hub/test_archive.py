"""The scan archive: its size limit, safe names, and labelled samples that need their scan."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from gate_controller.core.errors import ArchiveError
from gate_controller.hub.archive import ScanArchive
from inference.scan import Scan
from tests.support.hub import transaction_record


def scan(scan_id: str, columns: int = 200) -> Scan:
    pixels = np.random.default_rng(1).integers(0, 65535, size=(2, 64, columns), dtype=np.uint16)
    return Scan(pixels=pixels, scan_id=scan_id, bits=16, pixel_mm=5.0)


def test_archive_prunes_the_oldest_scans_to_its_size(tmp_path: Path) -> None:
    archive = ScanArchive(tmp_path / "scans", tmp_path / "samples", max_mb=1)
    for i in range(8):
        archive.store_scan(scan(f"S{i}", columns=1000))  # ~250 kB each, incompressible
        time.sleep(0.01)
    kept = sorted(p.stem for p in (tmp_path / "scans").glob("*.npz"))
    assert archive.size_bytes() <= 1024 * 1024
    assert "S7" in kept
    assert "S0" not in kept
    assert kept == [f"S{i}" for i in range(8 - len(kept), 8)]  # oldest first
    with pytest.raises(ArchiveError, match="not in the archive"):
        archive.load_scan("S0")
    assert archive.load_scan("S7").scan_id == "S7"


def test_archive_refuses_unsafe_names_and_missing_scans(tmp_path: Path) -> None:
    archive = ScanArchive(tmp_path / "scans", tmp_path / "samples", max_mb=10)
    with pytest.raises(ArchiveError, match="not a valid id"):
        archive.load_scan("../../etc/passwd")
    with pytest.raises(ArchiveError, match="not a valid id"):
        archive.transaction("..")
    record = transaction_record(1, scan_id="GONE")
    archive.record_transaction(record)
    with pytest.raises(ArchiveError, match="no longer in the archive"):
        archive.store_sample(transaction_id=record["transaction_id"], finding="clean", labels=[])
    no_scan = {**transaction_record(2), "scan": None}
    archive.record_transaction(no_scan)
    with pytest.raises(ArchiveError, match="has no scan"):
        archive.store_sample(transaction_id=no_scan["transaction_id"], finding="clean", labels=[])
    with pytest.raises(ArchiveError, match="finding"):
        archive.store_sample(transaction_id=record["transaction_id"], finding="dunno", labels=[])
    assert list((tmp_path / "samples").iterdir()) == []
