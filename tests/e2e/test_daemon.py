"""The daemon process as an operator meets it: start-up, status, reload, shutdown, doctor."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gate_controller.demo.gate import SimulatedGate
from gate_controller.hub.hub_side import HubClient
from gate_controller.service.control import read_status
from gate_controller.service.doctor import run_checks
from tests.support.broker import BROKER_MARKS, HUB_USER, MosquittoBroker, running_broker
from tests.support.configs import ROOT
from tests.support.gate import daemon_log, gate_config, simulated_gate

pytestmark = BROKER_MARKS


def smartgate(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate_controller", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


def test_invalid_config_exits_78_and_starts_nothing(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = gate_config(tmp_path, broker, lanes=1)
    config["lanes"][0]["plc"]["port"] = 70000
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = smartgate("run", "-c", str(path))
    assert result.returncode == 78
    assert "lanes[0].plc.port: must be between 1 and 65535 (got 70000)" in result.stderr
    assert not (tmp_path / "state").exists()


def test_missing_secret_exits_78(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = gate_config(tmp_path, broker, lanes=1)
    config["mqtt"]["command_key_file"] = str(tmp_path / "absent-key")
    path = tmp_path / "nokey.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = smartgate("run", "-c", str(path))
    assert result.returncode == 78
    assert "cannot read secret file" in result.stderr


def test_status_reload_and_clean_shutdown(tmp_path: Path, broker: MosquittoBroker) -> None:
    asyncio.run(_status_reload_shutdown(tmp_path, broker))


async def _wait_event(gate: SimulatedGate, code: str, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        for event in gate.events_seen[seen:]:
            if event.get("code") == code:
                return event
        seen = len(gate.events_seen)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {code} event: {[e.get('code') for e in gate.events_seen]}\n{daemon_log(gate)}")


async def _status_reload_shutdown(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with simulated_gate(tmp_path, broker, lanes=1) as gate:
        socket_path = gate.config.control.socket_path
        deadline = time.monotonic() + 30
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                status = await asyncio.to_thread(read_status, socket_path, 1.0)
                if status["lanes"]["L1"]["mode"] == "automatic" and status["hub"]["connected"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.2)
        assert status["lanes"]["L1"]["mode"] == "automatic", daemon_log(gate)
        cli = await asyncio.to_thread(smartgate, "status", "--socket", str(socket_path))
        assert cli.returncode == 0, cli.stderr
        assert "L1" in cli.stdout
        assert "combo-1" in cli.stdout

        # A valid change that can be applied at run time.
        assert gate.daemon is not None
        config = yaml.safe_load(gate.config_path.read_text())
        config["lanes"][0]["timeouts"]["hold_s"] = 45.0
        gate.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        gate.daemon.send_signal(1)  # SIGHUP
        event = await _wait_event(gate, "CONFIG_RELOADED")
        assert event["detail"]["ok"] is True

        # An invalid file is refused and the daemon keeps running on the old config.
        gate.events_seen.clear()
        config["lanes"][0]["plc"]["port"] = 0
        gate.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        gate.daemon.send_signal(1)
        event = await _wait_event(gate, "CONFIG_RELOADED")
        assert event["detail"]["ok"] is False
        assert "lanes[0].plc.port" in event["detail"]["error"]
        assert gate.daemon.returncode is None
        status = await asyncio.to_thread(read_status, socket_path, 2.0)
        assert status["counters"]["reload_failures"] == 1

        # SIGTERM: exit 0 and a retained `offline` birth with reason shutdown.
        code = await gate.stop_daemon()
        assert code == 0, daemon_log(gate)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (not gate.statuses or gate.statuses[-1]["state"] != "offline"):
            await asyncio.sleep(0.1)
        assert gate.statuses, "no birth/death message seen"
        assert gate.statuses[0]["state"] == "online"
        assert gate.statuses[-1]["state"] == "offline"
        assert gate.statuses[-1]["reason"] == "shutdown"


def test_hub_lane_mode_survives_a_restart(tmp_path: Path, broker: MosquittoBroker) -> None:
    asyncio.run(_lane_mode_restart(tmp_path, broker))


async def _wait_status(gate: SimulatedGate, predicate: Any, what: str, timeout_s: float = 40.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = await asyncio.to_thread(read_status, gate.config.control.socket_path, 1.0)
            if predicate(status):
                return status
        except (OSError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: last status {status.get('lanes')}\n{daemon_log(gate)}")


async def _lane_mode_restart(tmp_path: Path, broker: MosquittoBroker) -> None:
    assert broker.tls is not None

    def ready(mode: str, hub_mode: str) -> Any:
        return lambda s: (s["hub"]["connected"] and s["lanes"]["L1"]["mode"] == mode
                          and s["lanes"]["L1"]["hub_mode"] == hub_mode)

    async with simulated_gate(tmp_path, broker, lanes=1) as gate:
        site, gate_id = gate.config.site, gate.config.gate
        modes_file = gate.config.storage.lane_modes_path
        await _wait_status(gate, ready("automatic", "auto"), "lane automatic")
        with HubClient(broker.url, username=HUB_USER[0], password=HUB_USER[1],
                       ca_file=str(broker.tls.ca_file)) as client:
            reply = await asyncio.to_thread(client.command, site, gate_id, "lane.mode",
                                            {"lane": "L1", "mode": "closed"}, key=gate.key)
            assert reply is not None
            assert reply["ok"] is True, reply
            await _wait_status(gate, ready("closed", "closed"), "lane closed by the hub")
            assert json.loads(modes_file.read_text()) == {"L1": "closed"}

            # Killed (power loss) and started again: the lane is still closed.
            await gate.stop_daemon(signal.SIGKILL)
            await gate.start_daemon()
            await _wait_status(gate, ready("closed", "closed"), "lane still closed after a restart")

            # The hub reopens it; that too survives a restart.
            reply = await asyncio.to_thread(client.command, site, gate_id, "lane.mode",
                                            {"lane": "L1", "mode": "auto"}, key=gate.key)
            assert reply is not None
            assert reply["ok"] is True, reply
            assert json.loads(modes_file.read_text()) == {}
            assert await gate.stop_daemon() == 0
            await gate.start_daemon()
            await _wait_status(gate, ready("automatic", "auto"), "lane automatic after the second restart")


def test_doctor_against_the_simulated_gate(tmp_path: Path, broker: MosquittoBroker) -> None:
    asyncio.run(_doctor(tmp_path, broker))


async def _doctor(tmp_path: Path, broker: MosquittoBroker) -> None:
    import io

    from gate_controller.config import load_config

    path = tmp_path / "smartgate.yaml"
    path.write_text(yaml.safe_dump(gate_config(tmp_path, broker, lanes=1), sort_keys=False))
    config = load_config(path)
    gate = SimulatedGate(config, path, trucks=None, mqtt_url=broker.url, headless=True, speed=1.0, seed=1,
                         out=io.StringIO())
    await gate.start_rigs()
    try:
        checks = {c.name: c for c in await run_checks(config, tmp_path, timeout_s=5.0)}
    finally:
        for rig in gate.rigs.values():
            if rig.scanner is not None:
                await rig.scanner.close()
            await rig.server.stop()
    for name in ("secrets", "storage", "model", "broker", "link combo-1", "PLC L1"):
        assert checks[name].ok, (name, checks[name])
    assert "HELLO from combo" in checks["link combo-1"].detail
    assert "answered" in checks["PLC L1"].detail
    # Nothing was written to the PLC: the doctor only reads.
    assert not gate.rigs["L1"].plc.writes

    # With the peers gone every check says what failed and how to fix it.
    checks = {c.name: c for c in await run_checks(config, tmp_path, timeout_s=2.0)}
    for name in ("link combo-1", "PLC L1"):
        assert not checks[name].ok
        assert checks[name].fix
