"""The gate's scan archive and its labelled samples (the retraining feedback loop).

Layout under ``storage.state_dir``::

    scans/<scan_id>.npz                      every scan, in the archive format of inference/scan.py
    scans/transactions/<transaction_id>.json every completed transaction as published
    samples/<transaction_id>.npz             a copy of the transaction's scan ...
    samples/<transaction_id>.json            ... with the hub's verdict: {"finding", "labels",
                                             "transaction_id", "transaction", "scan_id", ...}

``scan.fetch`` reads ``scans/``; ``inspection.result`` turns a transaction and its scan into a
sample. ``scans/`` is pruned oldest-first to ``storage.archive_max_mb``; samples are never pruned
by the gate (they are small in number and are what a retraining run collects). How a model is
retrained from samples is documented in docs/mqtt-contract.md ("Inspection samples").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from gate_controller.core.atomic import copy_atomic, write_atomic
from gate_controller.core.errors import ArchiveError
from gate_controller.core.timestamps import WallClock, utc_now, utc_timestamp
from inference.errors import ScanFormatError
from inference.scan import Scan, load_scan, save_scan

__all__ = ["FINDINGS", "SAMPLE_FORMAT", "ScanArchive", "iter_samples"]

logger = logging.getLogger(__name__)

FINDINGS: Final = ("clean", "contraband", "misdeclared")
SAMPLE_FORMAT: Final = "smartgate.sample/1"
_NAME: Final = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
MB: Final = 1024 * 1024


def _checked(name: str, what: str) -> str:
    # Names become file names: refuse anything that could leave the directory.
    if not isinstance(name, str) or not _NAME.match(name):
        raise ArchiveError(f"{what} {name!r} is not a valid id")
    return name


class ScanArchive:
    """Scans by ``scan_id``, transactions by ``transaction_id``, and labelled samples.

    Blocking methods (file I/O): call them from a worker thread (``asyncio.to_thread``).
    """

    def __init__(self, archive_dir: str | Path, samples_dir: str | Path, *, max_mb: int, enabled: bool = True,
                 wall_clock: WallClock = utc_now) -> None:
        self.archive_dir = Path(archive_dir)
        self.samples_dir = Path(samples_dir)
        self.transactions_dir = self.archive_dir / "transactions"
        self.max_bytes = max_mb * MB
        self.enabled = enabled
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._size: int | None = None
        for directory in (self.archive_dir, self.transactions_dir, self.samples_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ scans

    def store_scan(self, scan: Scan) -> Path | None:
        """Archive a scan (None when archiving is off) and prune the oldest beyond the size cap."""
        if not self.enabled:
            return None
        path = self.archive_dir / f"{_checked(scan.scan_id, 'scan id')}.npz"
        save_scan(scan, path)
        with self._lock:
            self._add(path.stat().st_size)
        self.prune()
        return path

    def has_scan(self, scan_id: str) -> bool:
        return (self.archive_dir / f"{_checked(scan_id, 'scan id')}.npz").is_file()

    def load_scan(self, scan_id: str) -> Scan:
        path = self.archive_dir / f"{_checked(scan_id, 'scan id')}.npz"
        if not path.is_file():
            raise ArchiveError(f"scan {scan_id} is not in the archive (never stored, or pruned)")
        try:
            return load_scan(path)
        except ScanFormatError as err:
            raise ArchiveError(f"scan {scan_id} is unreadable: {err}") from err

    # ------------------------------------------------------------------ transactions

    def record_transaction(self, record: Mapping[str, Any]) -> None:
        """Keep a completed transaction (as published) for a later ``inspection.result``."""
        transaction_id = _checked(str(record.get("transaction_id")), "transaction id")
        data = json.dumps(dict(record), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        path = self.transactions_dir / f"{transaction_id}.json"
        write_atomic(path, data, durable=False)
        with self._lock:
            self._add(len(data))
        self.prune()

    def transaction(self, transaction_id: str) -> dict[str, Any]:
        path = self.transactions_dir / f"{_checked(transaction_id, 'transaction id')}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ArchiveError(f"transaction {transaction_id} is not known to this gate (or was pruned)") from err
        except (OSError, ValueError) as err:
            raise ArchiveError(f"transaction {transaction_id} is unreadable: {err}") from err
        if not isinstance(record, dict):
            raise ArchiveError(f"transaction {transaction_id} is unreadable: not an object")
        return record

    # ------------------------------------------------------------------ samples

    def store_sample(self, *, transaction_id: str, finding: str, labels: Sequence[str],
                     request_id: str | None = None, issued_by: str | None = None) -> Path:
        """File the hub's inspection finding with the transaction's scan as a labelled sample.

        Returns the sample's JSON path. A second result for the same transaction replaces the first
        (a re-inspection corrects the label).
        """
        if finding not in FINDINGS:
            raise ArchiveError(f"finding must be one of {', '.join(FINDINGS)} (got {finding!r})")
        record = self.transaction(transaction_id)
        scan_section = record.get("scan")
        scan_id = scan_section.get("scan_id") if isinstance(scan_section, Mapping) else None
        if not isinstance(scan_id, str):
            raise ArchiveError(f"transaction {transaction_id} has no scan to label")
        source = self.archive_dir / f"{_checked(scan_id, 'scan id')}.npz"
        if not source.is_file():
            raise ArchiveError(f"scan {scan_id} of transaction {transaction_id} is no longer in the archive")
        stem = _checked(transaction_id, "transaction id")
        declared = _declared(record)
        target = self.samples_dir / f"{stem}.npz"
        copy_atomic(source, target)
        sample: dict[str, Any] = {
            "format": SAMPLE_FORMAT,
            "transaction_id": transaction_id,
            "scan_id": scan_id,
            "scan_file": target.name,
            "finding": finding,
            "labels": list(labels),
            "declared_by_container": declared,
            "labelled_at": utc_timestamp(self._wall_clock()),
            "request_id": request_id,
            "issued_by": issued_by,
            "transaction": record,
        }
        common = _common(declared)
        if common is not None:
            # Training reads one declaration per scan; absent, it falls back to the scan's own.
            sample["declared"] = common
        meta_path = self._write_sample(stem, sample)
        logger.info("labelled sample %s stored: %s %s", stem, finding, ",".join(labels))
        return meta_path

    def transaction_of_scan(self, scan_id: str) -> dict[str, Any] | None:
        """The newest kept transaction whose scan is ``scan_id`` (None: none kept)."""
        _checked(scan_id, "scan id")
        with os.scandir(self.transactions_dir) as it:
            entries = sorted((e for e in it if e.name.endswith(".json")), key=lambda e: -e.stat().st_mtime_ns)
        for entry in entries:
            try:
                record = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            scan = record.get("scan") if isinstance(record, dict) else None
            if isinstance(record, dict) and isinstance(scan, Mapping) and scan.get("scan_id") == scan_id:
                return dict(record)
        return None

    def store_confirmation(self, *, scan_id: str, finding: str, labels: Sequence[str],
                           regions: Sequence[Mapping[str, Any]] = (), request_id: str | None = None,
                           issued_by: str | None = None) -> Path:
        """File an officer's ``review.confirm`` (finding ``clean`` or ``anomaly``) as a labelled sample.

        The sample has the format of `store_sample` (what ``python -m inference.training train
        --samples`` reads): ``anomaly`` is filed as finding ``contraband`` with
        ``confirmed: "anomaly"``, and ``regions`` (scan pixel boxes) are kept for dense training
        targets. The sample is named after the scan; the transaction that carried the scan is
        attached when the gate still has it (the shadow report reads the model's verdict there).
        """
        if finding not in ("clean", "anomaly"):
            raise ArchiveError(f"finding must be clean or anomaly (got {finding!r})")
        stem = _checked(scan_id, "scan id")
        source = self.archive_dir / f"{stem}.npz"
        if not source.is_file():
            raise ArchiveError(f"scan {scan_id} is not in the archive (never stored, or pruned)")
        record = self.transaction_of_scan(scan_id)
        target = self.samples_dir / f"{stem}.npz"
        copy_atomic(source, target)
        sample: dict[str, Any] = {
            "format": SAMPLE_FORMAT,
            "transaction_id": record.get("transaction_id") if record else None,
            "scan_id": scan_id,
            "scan_file": target.name,
            "finding": "clean" if finding == "clean" else "contraband",
            "confirmed": finding,
            "labels": list(labels),
            "regions": [dict(r) for r in regions],
            "declared_by_container": _declared(record) if record else [],
            "labelled_at": utc_timestamp(self._wall_clock()),
            "request_id": request_id,
            "issued_by": issued_by,
            "transaction": record,
        }
        common = _common(sample["declared_by_container"]) if record else None
        if common is not None:
            sample["declared"] = common
        meta_path = self._write_sample(stem, sample)
        logger.info("confirmed sample %s stored: %s %s", stem, finding, ",".join(labels))
        return meta_path

    def _write_sample(self, stem: str, sample: Mapping[str, Any]) -> Path:
        meta_path = self.samples_dir / f"{stem}.json"
        write_atomic(meta_path, json.dumps(sample, indent=1, ensure_ascii=False).encode("utf-8"), durable=True)
        return meta_path

    # ------------------------------------------------------------------ pruning

    def _files(self) -> list[os.DirEntry[str]]:
        entries: list[os.DirEntry[str]] = []
        for directory in (self.archive_dir, self.transactions_dir):
            with os.scandir(directory) as it:
                entries.extend(e for e in it if e.is_file() and not e.name.endswith(".tmp"))
        return entries

    def _add(self, nbytes: int) -> None:
        if self._size is not None:
            self._size += nbytes

    def size_bytes(self) -> int:
        with self._lock:
            if self._size is None:
                self._size = sum(e.stat().st_size for e in self._files())
            return self._size

    def prune(self) -> int:
        """Delete the oldest archive files until the archive fits ``max_mb``; returns files removed."""
        if self.size_bytes() <= self.max_bytes:
            return 0
        with self._lock:
            entries = sorted(self._files(), key=lambda e: e.stat().st_mtime_ns)
            total = sum(e.stat().st_size for e in entries)
            removed = 0
            for entry in entries:
                if total <= self.max_bytes:
                    break
                size = entry.stat().st_size
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                total -= size
                removed += 1
            self._size = total
        if removed:
            logger.info("scan archive pruned %d file(s) to stay under %d MB", removed, self.max_bytes // MB)
        return removed


def _declared(record: Mapping[str, Any]) -> list[str | None]:
    out: list[str | None] = []
    for container in record.get("containers") or []:
        release = container.get("release") if isinstance(container, Mapping) else None
        out.append(release.get("declared") if isinstance(release, Mapping) else None)
    return out


def _common(values: list[str | None]) -> str | None:
    """One declaration for the whole scan (what training reads), None when containers differ."""
    known = {v for v in values if v is not None}
    return known.pop() if len(known) == 1 and None not in values else None


def iter_samples(samples_dir: str | Path) -> Iterator[tuple[dict[str, Any], Path]]:
    """Every labelled sample as ``(sample JSON, path of its scan .npz)``, oldest first.

    This is what a retraining run reads: ``load_scan(path)`` gives the pixels and
    ``sample["finding"]``/``sample["labels"]`` the ground truth.
    """
    directory = Path(samples_dir)
    for meta_path in sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
        try:
            sample = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("skipping unreadable sample %s", meta_path)
            continue
        scan_path = directory / str(sample.get("scan_file", meta_path.with_suffix(".npz").name))
        if scan_path.is_file():
            yield sample, scan_path
