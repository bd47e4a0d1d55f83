"""`smartgate identify` as a technician runs it, and the benchmark's use of the same path."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from gate_controller.cli.identify import run_lines
from gate_controller.decision.identity import IdentitySettings
from tests.support.configs import DEMO, ROOT
from tests.support.decisions import complete, load_benchmark

NUMBER = "MSKU1234565"


def smartgate(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate_controller", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=False)


def _line(*texts: str, confidence: float = 0.95) -> str:
    cams = ["left", "right", "rear", "top"]
    return json.dumps({"reads": [{"text": t, "confidence": confidence, "camera": cams[i % 4]}
                                 for i, t in enumerate(texts)]})


def test_identify_prints_one_line_per_input() -> None:
    stdin = "\n".join([
        _line(NUMBER, "MSKU 123456 5", "M5KU1234565"),
        "",  # blank lines are not inputs
        _line("MSKU1234566", "MSKU1234566"),
        _line(NUMBER),
    ]) + "\n"
    result = smartgate("identify", stdin=stdin)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    assert lines[0] == {"number": NUMBER, "check_digit_ok": True, "corrected": False,
                        "confidence": lines[0]["confidence"], "reason": None}
    assert lines[0]["confidence"] >= 0.999
    assert lines[1]["reason"] == "check_digit_invalid"
    assert lines[1]["number"] == "MSKU1234566"
    assert lines[1]["check_digit_ok"] is False
    assert lines[2]["reason"] == "single_weak_read"
    assert lines[2]["number"] is None


def test_bad_input_lines_get_an_answer_and_exit_65() -> None:
    stdin = "not json\n" + json.dumps({"reads": [{"text": NUMBER}]}) + "\n" + _line(NUMBER, NUMBER) + "\n"
    result = smartgate("identify", stdin=stdin)
    assert result.returncode == 65
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["reason"] for line in lines] == ["invalid_input", "invalid_input", None]
    assert "confidence" in lines[1]["error"]


def test_explain_and_group() -> None:
    second = complete("MSKU123457")
    out = io.StringIO()
    status = run_lines(io.StringIO(_line(NUMBER, NUMBER, second, second, second, NUMBER) + "\n"), out,
                       settings=IdentitySettings(), explain=True, group=True)
    assert status == 0
    (result,) = [json.loads(line) for line in out.getvalue().splitlines()]
    containers = result["containers"]
    assert [c["number"] for c in containers] == [NUMBER, second]
    assert containers[0]["detail"].startswith("accepted")
    assert containers[0]["raw"] == [NUMBER] * 3
    assert containers[0]["candidates"][0]["number"] == NUMBER


def test_help_has_examples() -> None:
    result = smartgate("identify", "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert "smartgate identify --explain" in result.stdout


def test_config_settings_are_used(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(DEMO.read_text(encoding="utf-8") + "\npolicy:\n  identity:\n    min_coverage: 1\n"
                    "    blind_spot_margin: 1\n", encoding="utf-8")
    lone = complete("BDEU310442")
    line = json.dumps({"reads": [{"text": lone, "confidence": 0.99, "camera": "left",
                                  "char_confidence": [0.99] * 11}]}) + "\n"
    default = json.loads(smartgate("identify", stdin=line).stdout)
    lenient = json.loads(smartgate("identify", "-c", str(site), stdin=line).stdout)
    assert default["number"] is None
    assert lenient["number"] == lone
    broken = tmp_path / "broken.yaml"
    broken.write_text("site: [\n", encoding="utf-8")
    assert smartgate("identify", "-c", str(broken), stdin=line).returncode == 78


def test_benchmark_cli_sample_matches_in_process() -> None:
    bench = load_benchmark()
    assert bench.check_cli(7, 40, bench.Noise()) == 0
