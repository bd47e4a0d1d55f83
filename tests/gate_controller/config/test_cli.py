"""`smartgate config check|show` as a technician runs them: a real process, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.configs import DEMO, EXAMPLE, ROOT


def smartgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate_controller", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)


def test_version() -> None:
    from gate_controller import __version__

    result = smartgate("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"smartgate {__version__}"


def test_check_shipped_configs_clean() -> None:
    result = smartgate("config", "check", str(EXAMPLE), str(DEMO))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_check_invalid_exits_78_with_located_lines(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text(EXAMPLE.read_text().replace("port: 502  ", "port: 70000", 1))
    result = smartgate("config", "check", str(DEMO), str(bad))
    assert result.returncode == 78
    assert f"{bad}:" in result.stderr
    assert "lanes[0].plc.port: must be between 1 and 65535 (got 70000)" in result.stderr


def test_show_prints_effective_config_with_defaults() -> None:
    result = smartgate("config", "show", "--json", str(DEMO))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["links"][0]["link_timeout_s"] == 5.0
    assert data["lanes"][0]["plc"]["points"]["loop_safety"] == {"table": "discrete_input", "address": 2,
                                                                 "inverted": False}
    yaml_out = smartgate("config", "show", str(DEMO))
    assert yaml_out.returncode == 0
    assert "site: DEMO" in yaml_out.stdout


def test_show_invalid_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("site: [\n")
    result = smartgate("config", "show", str(bad))
    assert result.returncode == 78
    assert "YAML syntax" in result.stderr


def test_every_command_has_help_with_examples() -> None:
    from gate_controller.cli import COMMAND_MODULES

    for name in COMMAND_MODULES:
        result = smartgate(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert "example" in result.stdout.lower(), name
