"""The review's life cycle against the real daemon, a real mosquitto and simulated lanes: shadow
mode and its report, officers' confirmations, and a signed package activated over the hub."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gate_controller.demo.gate import SimulatedGate, plan_trucks
from gate_controller.hub.hub_side import HubClient
from gate_controller.service.control import read_status
from inference.package import build_package, generate_key, load_private_key, pack
from inference.runtime import DEFAULT_MODEL_PATH
from tests.support.broker import BROKER_MARKS, HUB_USER, MosquittoBroker, running_broker
from tests.support.gate import daemon_log, simulated_gate

pytestmark = [*BROKER_MARKS, pytest.mark.slow]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


def smartgate(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate_controller", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


async def wait_event(gate: SimulatedGate, code: str, timeout_s: float = 60.0, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in gate.events_seen:
            detail = event.get("detail") or {}
            if event.get("code") == code and all(detail.get(k) == v for k, v in match.items()):
                return event
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {code} {match}: {[e.get('code') for e in gate.events_seen]}\n{daemon_log(gate)}")


async def wait_ready(gate: SimulatedGate) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = await asyncio.to_thread(read_status, gate.config.control.socket_path, 1.0)
            if (status["hub"]["connected"] and status["lanes"]["L1"]["mode"] == "automatic"
                    and status["inference"]["model_loaded"]):
                return status
        except (OSError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"gate not ready: {status}\n{daemon_log(gate)}")


def test_shadow_mode_report_and_signed_activation(tmp_path: Path, broker: MosquittoBroker) -> None:
    asyncio.run(_shadow_and_activation(tmp_path, broker))


async def _shadow_and_activation(tmp_path: Path, broker: MosquittoBroker) -> None:
    assert broker.tls is not None
    keys = tmp_path / "keys"
    generate_key(keys / "hub.key", keys / "hub.pub")
    inference = {"lane_modes": {"L1": "shadow"}, "trusted_keys": [str(keys / "hub.pub")],
                 "live_bar": {"min_clean": 2, "min_anomalies": 1, "max_false_alarm": 0.9, "min_detection": 0.05}}
    async with simulated_gate(tmp_path, broker, lanes=1, speed=6.0, inference=inference) as gate:
        await wait_ready(gate)
        plan = plan_trucks(12, ["L1"], seed=5)
        trucks = [plan[0], plan[1], plan[8]]  # two clean, one with a concealed anomaly
        assert plan[8].spec.containers[0].anomalies
        for truck in trucks:
            await gate.drive_truck(gate.rigs["L1"], truck)
        assert not gate.result.lost, gate.result.lost
        records = sorted(gate.result.transactions.values(), key=lambda r: r["seq"])
        assert len(records) == 3
        for record in records:
            # Shadow: the review ran and was published, but officers decide every scan.
            assert record["decision"]["action"] == "manual", record["decision"]
            assert "REVIEW_SHADOW" in record["decision"]["reasons"]
            assert record["scan"]["inference"]["verdict"] in ("clear", "suspect")
        verdicts = [r["scan"]["inference"]["verdict"] for r in records]

        with HubClient(broker.url, username=HUB_USER[0], password=HUB_USER[1],
                       ca_file=str(broker.tls.ca_file)) as hub:
            site, gate_id = gate.config.site, gate.config.gate
            for record, finding in zip(records, ("clean", "clean", "anomaly"), strict=True):
                args: dict[str, Any] = {"scan_id": record["scan"]["scan_id"], "finding": finding}
                if finding == "anomaly":
                    args["labels"] = list(plan[8].spec.containers[0].anomalies)
                    args["regions"] = [{"x": 10, "y": 20, "w": 30, "h": 40, "label": args["labels"][0]}]
                reply = await asyncio.to_thread(hub.command, site, gate_id, "review.confirm", args, key=gate.key)
                assert reply is not None
                assert reply["ok"] is True, reply
            unknown = await asyncio.to_thread(hub.command, site, gate_id, "review.confirm",
                                              {"scan_id": "NO-SUCH-SCAN", "finding": "clean"}, key=gate.key)
            assert unknown is not None
            assert unknown["ok"] is False
            assert "not in the archive" in unknown["error"]

            samples = sorted(gate.config.storage.samples_dir.glob("*.json"))
            assert len(samples) == 3
            anomaly = json.loads((gate.config.storage.samples_dir / f"{records[2]['scan']['scan_id']}.json")
                                 .read_text())
            assert anomaly["finding"] == "contraband"
            assert anomaly["confirmed"] == "anomaly"
            assert anomaly["regions"][0]["w"] == 30
            assert anomaly["transaction"]["transaction_id"] == records[2]["transaction_id"]

            report = await asyncio.to_thread(smartgate, "model", "report", "-c", str(gate.config_path), "--json")
            figures = json.loads(report.stdout)["lanes"]["L1"]
            assert figures["clean"] == 2
            assert figures["anomalies"] == 1
            assert figures["false_alarm"]["count"] == sum(v == "suspect" for v in verdicts[:2])
            assert figures["detection"]["count"] == int(verdicts[2] == "suspect")
            lo, hi = figures["false_alarm"]["ci95"]
            assert 0.0 <= lo <= (figures["false_alarm"]["rate"] or 0.0) <= hi <= 1.0
            assert report.returncode == (0 if figures["meets_live_bar"] else 1), report.stderr

            # Live again through the hub: the next truck is decided by the review.
            reply = await asyncio.to_thread(hub.command, site, gate_id, "review.mode", {"lane": "L1", "mode": "live"},
                                            key=gate.key)
            assert reply is not None
            assert reply["ok"] is True, reply
            await wait_event(gate, "REVIEW_MODE", mode="live", previous="shadow")
            await gate.drive_truck(gate.rigs["L1"], plan[10])
            last = max(gate.result.transactions.values(), key=lambda r: r["seq"])
            assert "REVIEW_SHADOW" not in last["decision"]["reasons"], last["decision"]

            # A signed package, installed on the gate and activated by the hub after the canary.
            pkg = tmp_path / "pkg"
            manifest = build_package(DEFAULT_MODEL_PATH, pkg, key=load_private_key(keys / "hub.key"),
                                     name="xray-site", version="2.0.0")
            installed = await asyncio.to_thread(smartgate, "model", "install", str(pkg), "-c", str(gate.config_path))
            assert installed.returncode == 0, installed.stderr
            wrong = await asyncio.to_thread(hub.command, site, gate_id, "model.activate",
                                            {"name": "xray-site", "version": "2.0.0", "sha256": "0" * 64},
                                            key=gate.key)
            assert wrong is not None
            assert wrong["ok"] is False
            assert "digest" in wrong["error"]
            reply = await asyncio.to_thread(hub.command, site, gate_id, "model.activate",
                                            {"name": "xray-site", "version": "2.0.0", "sha256": manifest.digest},
                                            key=gate.key, timeout=120.0)
            assert reply is not None
            assert reply["ok"] is True, (reply, daemon_log(gate))
            canary = await wait_event(gate, "MODEL_CANARY", version="2.0.0")
            assert canary["detail"]["passed"] is True
            assert canary["detail"]["compared"] == 3
            await wait_event(gate, "MODEL_ACTIVATED", version="2.0.0")
            status = await asyncio.to_thread(read_status, gate.config.control.socket_path, 2.0)
            assert status["inference"]["model_path"] == str(gate.config.storage.models_dir / "xray-site" / "2.0.0")
            await gate.drive_truck(gate.rigs["L1"], plan[11])
            last = max(gate.result.transactions.values(), key=lambda r: r["seq"])
            assert last["scan"]["inference"]["version"] == "2.0.0"
            assert last["scan"]["inference"]["model"] == "xray-site"

            # A package published by the hub reaches the running daemon over MQTT and is installed.
            pkg_mqtt = tmp_path / "pkg-mqtt"
            build_package(DEFAULT_MODEL_PATH, pkg_mqtt, key=load_private_key(keys / "hub.key"), name="xray-site",
                          version="2.1.0")
            await asyncio.to_thread(hub.publish_model, site, "xray-site", "2.1.0", pack(pkg_mqtt))
            try:
                published = await wait_event(gate, "MODEL_PACKAGE", version="2.1.0")
                assert published["detail"]["ok"] is True
                assert (gate.config.storage.models_dir / "xray-site" / "2.1.0" / "manifest.json").is_file()
            finally:
                await asyncio.to_thread(hub.publish_model, site, "xray-site", "2.1.0", b"")

            # Rolled back locally: the daemon notices, reloads and audits it.
            rolled = await asyncio.to_thread(smartgate, "model", "rollback", "-c", str(gate.config_path))
            assert rolled.returncode == 0, rolled.stderr
            event = await wait_event(gate, "MODEL_ROLLED_BACK", local=True)
            assert event["detail"]["from"]["version"] == "2.0.0"
