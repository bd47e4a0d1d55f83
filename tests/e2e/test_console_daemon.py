"""The console inside the real daemon: its commands keep the lane's safety rules, its secrets are
checked at start, and a console that cannot listen never stops the gate."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from argon2 import PasswordHasher

from gate_controller.demo.gate import SimulatedGate
from gate_controller.plc.sim.lane_plc import Spot
from gate_controller.service.control import read_status
from tests.support.broker import BROKER_MARKS, MosquittoBroker, free_port, running_broker
from tests.support.configs import ROOT
from tests.support.gate import daemon_log, gate_config, simulated_gate

pytestmark = BROKER_MARKS

PASSWORD = "lane-booth-2026"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


def console_section(tmp_path: Path, port: int | None = None) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "console-password").write_text(PasswordHasher().hash(PASSWORD) + "\n")
    return {"listen": f"127.0.0.1:{port or free_port()}", "allow_commands": True,
            "auth": {"username": "tech", "password_hash_file": str(tmp_path / "console-password")}}


async def wait_ready(gate: SimulatedGate, lane: str = "L1", timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = await asyncio.to_thread(read_status, gate.config.control.socket_path, 1.0)
            if status["lanes"][lane]["mode"] == "automatic" and status["lanes"][lane]["inputs"] is not None:
                return status
        except (OSError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"lane {lane} not ready\n{daemon_log(gate)}")


async def command(http: aiohttp.ClientSession, base: str, form: dict[str, str]) -> str:
    page = await (await http.get(base)).text()
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    async with http.post(f"{base}commands/barrier", data={**form, "csrf": token.group(1)}) as response:
        assert response.status == 200  # after the redirect back to the overview
        text = await response.text()
    flash = re.search(r'<p class="flash">([^<]*)</p>', text)
    assert flash is not None, text
    return flash.group(1).replace("&#39;", "'")


def test_console_commands_keep_the_lane_safety_rules(tmp_path: Path, broker: MosquittoBroker) -> None:
    asyncio.run(_safety(tmp_path, broker))


async def _safety(tmp_path: Path, broker: MosquittoBroker) -> None:
    console = console_section(tmp_path)
    base = f"http://{console['listen']}/"
    async with simulated_gate(tmp_path / "gate", broker, lanes=1, console=console) as gate, \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await wait_ready(gate)
        plc = gate.rigs["L1"].plc
        async with http.post(f"{base}login", data={"username": "tech", "password": PASSWORD}) as response:
            assert response.status == 200
        # Estop pressed: the console's open is refused by the lane, the barrier never moves.
        plc.press_estop(True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = await asyncio.to_thread(read_status, gate.config.control.socket_path, 1.0)
            if (status["lanes"]["L1"]["inputs"] or {}).get("estop"):
                break
            await asyncio.sleep(0.1)
        flash = await command(http, base, {"lane": "L1", "action": "open", "reason": "test"})
        assert "refused: the lane is under local control" in flash, flash
        assert not any(w.value for w in plc.writes_of("barrier_raise"))
        plc.press_estop(False)
        await wait_ready(gate)

        # Open with the lane clear: the barrier goes up as an audited operator transaction.
        flash = await command(http, base, {"lane": "L1", "action": "open", "reason": "truck stuck"})
        assert flash.endswith("done"), flash
        await plc.wait_for(lambda: plc.inputs.get("barrier_up", False), timeout_s=15)
        # A vehicle under the barrier: closing is refused, the barrier stays up.
        vehicle = plc.add_vehicle()
        plc.move(vehicle, Spot.UNDER)
        await asyncio.sleep(0.5)
        flash = await command(http, base, {"lane": "L1", "action": "close", "reason": "test"})
        assert "refused: a vehicle is under the barrier" in flash, flash
        assert plc.writes_of("barrier_raise")[-1].value
        plc.move(vehicle, Spot.GONE)  # it drives on: the operator's passage completes

        deadline = time.monotonic() + 60
        audits: list[dict[str, Any]] = []
        operator_tx: list[dict[str, Any]] = []
        while time.monotonic() < deadline and (len(audits) < 3 or not operator_tx):
            audits = [e for e in gate.events_seen if e.get("code") == "LOCAL_COMMAND"]
            operator_tx = [t for t in gate.result.transactions.values()
                           if (t.get("decision") or {}).get("operator") == "console:tech"]
            await asyncio.sleep(0.2)
        assert [(a["detail"]["args"]["action"], a["detail"]["ok"]) for a in audits] == [
            ("open", False), ("open", True), ("close", False)], audits
        assert operator_tx, list(gate.result.transactions.values())
        assert operator_tx[0]["decision"]["action"] == "release"
        assert operator_tx[0]["decision"]["reasons"] == ["MANUAL_OVERRIDE"]


def test_missing_console_password_hash_exits_78(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = gate_config(tmp_path, broker, lanes=1)
    config["console"] = {"listen": "127.0.0.1:1", "auth": {"password_hash_file": str(tmp_path / "absent")}}
    path = tmp_path / "console.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "gate_controller", "run", "-c", str(path)], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 78
    assert "cannot read secret file" in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_console_that_cannot_listen_does_not_stop_the_gate(tmp_path: Path, broker: MosquittoBroker) -> None:
    asyncio.run(_port_taken(tmp_path, broker))


async def _port_taken(tmp_path: Path, broker: MosquittoBroker) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with simulated_gate(tmp_path / "gate", broker, lanes=1,
                                  console=console_section(tmp_path, port)) as gate:
            status = await wait_ready(gate)
            assert status["hub"] is not None
            deadline = time.monotonic() + 10
            while "console cannot listen" not in daemon_log(gate, 200) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert "console cannot listen on 127.0.0.1:" in daemon_log(gate, 200)
