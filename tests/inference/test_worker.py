"""The isolated review worker: same answers as in-process, and `unavailable` + recovery on faults.

Faults are real: the child process is SIGKILLed mid-review, SIGSTOPped (a hang), started with a
missing model, or sent a scan the model cannot take.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from inference.package import build_package, generate_key, load_private_key
from inference.package.loader import resolve_model_path
from inference.result import ReviewResult
from inference.reviewer import Reviewer
from inference.runtime import DEFAULT_MODEL_PATH
from inference.worker import ReviewWorker
from tests.support.inference import copy_model, edit_after_signing, reviewer, scan_with, shipped_model, synthetic

__all__ = ["reviewer", "shipped_model"]  # fixtures used by name


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0): check its state.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_worker_matches_in_process_review(reviewer: Reviewer) -> None:
    syn = synthetic(201, cargo="cartons", anomalies=("dense_object",))
    expected = reviewer.review(syn.scan)

    async def run() -> tuple[ReviewResult, int | None]:
        async with ReviewWorker(num_threads=1, timeout_s=20.0) as worker:
            assert worker.model_info == reviewer.model_info
            result = await worker.review(syn.scan)
            pid = worker.pid
        return result, pid

    result, pid = asyncio.run(run())
    assert result.verdict == expected.verdict
    assert result.score == pytest.approx(expected.score, abs=1e-4)
    assert [r.as_dict() for r in result.regions] == [r.as_dict() for r in expected.regions]
    assert result.to_contract()["model"] == reviewer.model_info.name
    assert pid is not None
    assert _gone(pid)


def test_killed_mid_review_is_unavailable_then_recovers() -> None:
    scan = synthetic(202, cargo="bags").scan

    async def run() -> None:
        async with ReviewWorker(timeout_s=20.0) as worker:
            pid = worker.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # hold it so the kill lands during the review
            task = asyncio.create_task(worker.review(scan))
            await asyncio.sleep(0.3)
            os.kill(pid, signal.SIGKILL)
            result = await task
            assert result.verdict == "unavailable"
            assert result.score is None
            assert result.not_empty_score is None
            assert "exited" in (result.error or "")
            assert result.to_contract()["verdict"] == "unavailable"
            again = await worker.review(scan)
            assert again.verdict in ("clear", "suspect")
            assert worker.pid not in (None, pid)
            assert _gone(pid)

    asyncio.run(run())


def test_hang_times_out_then_recovers() -> None:
    scan = synthetic(203, cargo="empty", declared="empty").scan

    async def run() -> None:
        async with ReviewWorker(timeout_s=1.0) as worker:
            pid = worker.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            result = await worker.review(scan)
            assert result.verdict == "unavailable"
            assert "timed out" in (result.error or "")
            assert 0.9 <= time.monotonic() - t0 < 10
            assert result.latency_ms >= 900
            worker.timeout_s = 20.0  # the restart below includes no model load in the timeout
            again = await worker.review(scan)
            assert again.verdict in ("clear", "suspect")
            assert worker.pid not in (None, pid)
            assert _gone(pid)

    asyncio.run(run())


def test_missing_model_is_unavailable_and_recovers_when_installed(tmp_path: Path) -> None:
    model = tmp_path / "models" / "xray_anomaly.tflite"
    scan = synthetic(204, cargo="drums").scan

    async def run() -> None:
        worker = ReviewWorker(model, timeout_s=20.0, backoff_initial_s=0.05, backoff_max_s=0.2)
        try:
            assert await worker.start() is False
            assert "not found" in (worker.last_error or "")
            result = await worker.review(scan)
            assert result.verdict == "unavailable"
            assert result.model is None
            assert worker.pid is None
            copy_model(model.parent)
            await asyncio.sleep(0.3)  # past the backoff
            result = await worker.review(scan)
            assert result.verdict in ("clear", "suspect"), result.error
            assert worker.last_error is None
        finally:
            await worker.close()
        assert worker.pid is None

    asyncio.run(run())


def test_corrupt_model_is_unavailable(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))

    async def run() -> None:
        async with ReviewWorker(model, timeout_s=20.0) as worker:
            result = await worker.review(synthetic(205, cargo="empty").scan)
            assert result.verdict == "unavailable"
            assert "SHA-256" in (result.error or "")

    asyncio.run(run())


def test_bad_scan_is_unavailable_and_worker_keeps_running() -> None:
    good = synthetic(206, cargo="cartons").scan
    tiny = scan_with(good, pixels=np.ascontiguousarray(good.pixels[:, :8, :]))
    black = scan_with(good, pixels=np.zeros_like(good.pixels))

    async def run() -> None:
        async with ReviewWorker(timeout_s=20.0) as worker:
            pid = worker.pid
            bad = await worker.review(tiny)
            assert bad.verdict == "unavailable"
            assert "too small" in (bad.error or "")
            assert bad.reason == "error"
            assert worker.pid == pid
            # Outside the training envelope: unavailable for a reason the gate maps to manual.
            alien = await worker.review(black)
            assert alien.unfamiliar
            assert alien.envelope["air_fraction"] < 0.05
            assert worker.pid == pid
            ok = await worker.review(good, declared="general")
            assert ok.verdict in ("clear", "suspect")
            assert worker.pid == pid
            # Thresholds reassigned at runtime (config reload) apply to the next review.
            worker.suspect_threshold = 0.01
            lenient = await worker.review(good)
            assert lenient.verdict == "suspect"
            worker.suspect_threshold = 1.5  # invalid: refused by the child, not a crash
            refused = await worker.review(good)
            assert refused.verdict == "unavailable"
            assert "suspect_threshold" in (refused.error or "")
            worker.suspect_threshold = None
            assert (await worker.review(good)).verdict == ok.verdict
            worker.opaque_area_m2 = 500.0  # the opacity setting travels the same way
            refused = await worker.review(good)
            assert refused.verdict == "unavailable"
            assert "opaque_area_m2" in (refused.error or "")
            worker.opaque_area_m2 = None
            assert worker.pid == pid

    asyncio.run(run())


def test_closed_worker_answers_unavailable() -> None:
    async def run() -> None:
        worker = ReviewWorker(timeout_s=20.0)
        await worker.start()
        pid = worker.pid
        await worker.close()
        assert pid is not None
        assert _gone(pid)
        result = await worker.review(synthetic(207, cargo="empty").scan)
        assert result.verdict == "unavailable"
        assert "closed" in (result.error or "")

    asyncio.run(run())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ReviewWorker(num_threads=0)
    with pytest.raises(ValueError):
        ReviewWorker(timeout_s=0)


def test_worker_refuses_a_package_whose_signature_does_not_verify(tmp_path: Path) -> None:
    """With the gate's trusted keys the worker checks the signature before it loads a package: a
    manifest altered after signing (hashes recomputed, so every hash check passes) and a package
    signed by an untrusted key are refused with a clear error, and the previous model keeps serving."""
    generate_key(tmp_path / "hub.key", tmp_path / "hub.pub")
    generate_key(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    hub, rogue = load_private_key(tmp_path / "hub.key"), load_private_key(tmp_path / "rogue.key")
    good, edited, foreign = tmp_path / "good", tmp_path / "edited", tmp_path / "foreign"
    build_package(DEFAULT_MODEL_PATH, good, key=hub, name="xray", version="2.0.1")
    build_package(DEFAULT_MODEL_PATH, edited, key=hub, name="xray", version="2.0.2")
    build_package(DEFAULT_MODEL_PATH, foreign, key=rogue, name="xray", version="2.0.3")
    edit_after_signing(edited)
    assert resolve_model_path(edited) is not None  # every hash matches: only the signature can tell
    scan = synthetic(209, cargo="cartons").scan
    trusted = [tmp_path / "hub.pub"]

    async def run() -> None:
        async with ReviewWorker(good, timeout_s=20.0, trusted_keys=trusted) as worker:
            assert worker.model_info is not None
            assert worker.model_info.version == "2.0.1"
            pid = worker.pid
            for package in (edited, foreign):
                assert await worker.reload(package) is False
                assert worker.last_error is not None
                assert "package refused by the review worker" in worker.last_error
                assert "signature does not verify with any trusted key" in worker.last_error
                assert str(package) in worker.last_error
                assert worker.pid == pid  # the previous child kept serving throughout
                assert worker.model_path == good
                assert worker.model_info.version == "2.0.1"
                result = await worker.review(scan)
                assert result.error is None
                assert result.version == "2.0.1"
        # Starting on a refused package: no model, every review unavailable with the reason.
        worker = ReviewWorker(edited, timeout_s=20.0, trusted_keys=trusted)
        try:
            assert await worker.start() is False
            result = await worker.review(scan)
            assert result.verdict == "unavailable"
            assert "signature does not verify" in (result.error or "")
        finally:
            await worker.close()
        # No trusted key configured: no package can be verified, none is loaded.
        async with ReviewWorker(good, timeout_s=20.0, trusted_keys=[]) as worker:
            assert worker.model_info is None
            assert "no trusted keys configured" in (worker.last_error or "")
        # Without keys (a workstation's `smartgate review --model`) only the hashes are checked.
        async with ReviewWorker(edited, timeout_s=20.0) as worker:
            assert worker.model_info is not None
            assert worker.model_info.version == "2.0.2"

    asyncio.run(run())


def test_worker_imports_its_own_package_whatever_the_working_directory(
        reviewer: Reviewer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An `inference` package in the daemon's working directory (another checkout) is not what the
    worker child runs."""
    decoy = tmp_path / "inference"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy package was imported')\n")
    (decoy / "worker.py").write_text("raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    syn = synthetic(202, cargo="cartons")

    async def run() -> ReviewResult:
        async with ReviewWorker(num_threads=1, timeout_s=20.0) as worker:
            return await worker.review(syn.scan)

    result = asyncio.run(run())
    assert result.verdict == reviewer.review(syn.scan).verdict
    assert result.verdict != "unavailable", result.error
