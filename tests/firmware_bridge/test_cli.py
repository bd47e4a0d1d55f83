"""`smartgate sniff` against the simulator run as its own process (`smartgate sim firmware`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gate_controller.cli import main


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def simulator(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gate_controller", "sim", "firmware", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        serving = json.loads(proc.stdout.readline())
        assert serving["event"] == "serving"
        yield proc, serving
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=15)


def sim_records(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, _err = proc.communicate(timeout=40)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def sniffed(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.mark.parametrize("where", ["socket", "pty"])
def test_sniff_json_against_the_simulator(where: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"socket://127.0.0.1:{free_port()}" if where == "socket" else "pty"
    with simulator("--url", url, "--trucks", "2", "--interval", "0.3", "--scenario", "lossy") as (proc, serving):
        rc = main(["sniff", str(serving["url"]), "--json", "--duration", "4"])
        records = sim_records(proc)
    assert rc == 0
    assert proc.returncode == 0
    events = sniffed(capsys)
    kinds = {e["event"] for e in events}
    assert {"link", "hello", "ocr", "scan", "counters"} <= kinds
    scans = [e for e in events if e["event"] == "scan"]
    trucks = [r for r in records if r["event"] == "truck"]
    assert [s["sha256"] for s in scans] == [t["sha256"] for t in trucks]
    for scan in scans:
        assert scan["complete"] is True
        assert {"scan_id", "scan_no", "columns", "rows", "channels", "complete", "sha256",
                "resend_rounds"} <= set(scan)
        assert scan["rows"] == 256
    assert sum(int(s["resend_rounds"]) for s in scans) >= 1  # the lossy scenario drops lines
    acks = [r for r in records if r["event"] == "ack"]
    assert [a["status"] for a in acks] == ["complete", "complete"]
    counters = events[-1]
    assert counters["event"] == "counters"
    assert counters["scans_complete"] == 2
    assert int(counters["frames_rx"]) > 0
    ocr_texts = [e["text"] for e in events if e["event"] == "ocr"]
    assert ocr_texts == [t for truck in trucks for t in truck["reads"]]


def test_sniff_human_output_and_saved_scans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"socket://127.0.0.1:{free_port()}"
    with simulator("--url", url, "--trucks", "1", "--device", "scanner") as (proc, _serving):
        rc = main(["sniff", url, "--duration", "3", "--save-scans", str(tmp_path)])
        sim_records(proc)
    out = capsys.readouterr().out
    assert rc == 0
    assert "hello scanner serial SIM-0001" in out
    assert " complete sha256 " in out
    assert "counters:" in out
    assert "saved " in out
    saved = list(tmp_path.glob("*.npz"))
    assert len(saved) == 1


def test_sniff_reports_nothing_heard(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sniff", f"socket://127.0.0.1:{free_port()}", "--json", "--duration", "1"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "no GFP/1 frame received" in captured.err
    counters = json.loads(captured.out.splitlines()[-1])
    assert counters["event"] == "counters"
    assert counters["connect_failures"] >= 1


def test_sim_requires_a_target_and_validates_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sim"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["sim", "firmware", "--url", "pty", "--scenario", "nonsense"])
    assert main(["sim", "firmware", "--url", "pty", "--trucks", "-1"]) == 64
    assert main(["sniff", "pty", "--duration", "0"]) == 64
    capsys.readouterr()
