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

from inference.result import ReviewResult
from inference.reviewer import Reviewer
from inference.worker import ReviewWorker
from tests.support.inference import copy_model, reviewer, scan_with, shipped_model, synthetic

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
