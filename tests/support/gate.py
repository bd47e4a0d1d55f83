"""A whole simulated gate around the real daemon process, for end-to-end tests and benchmarks.

The daemon runs as `python -m gate_controller run` with a generated config; its peers are a real
mosquitto (TLS + password auth), virtual lane PLCs (real pymodbus servers) and virtual firmware
devices (GFP/1 over TCP sockets). The traffic and the judging live in `gate_controller.demo.gate` so
the demo and the tests exercise one path.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from gate_controller.config import load_config
from gate_controller.demo.gate import SimulatedGate
from tests.support.broker import HUB_USER, MosquittoBroker, free_port

COMMAND_KEY = b"e2e-site-command-key"


def gate_config(tmp: Path, broker: MosquittoBroker, *, lanes: int = 2, **sections: Any) -> dict[str, Any]:
    """Plain data for a gate of ``lanes`` combo-controller lanes on free loopback ports."""
    tmp.mkdir(parents=True, exist_ok=True)
    key_file = tmp / "command-key"
    key_file.write_bytes(COMMAND_KEY + b"\n")
    links = []
    lane_list = []
    for i in range(lanes):
        name = f"combo-{i + 1}"
        links.append({"name": name, "url": f"socket://127.0.0.1:{free_port()}", "reconnect_initial_s": 0.2,
                      "reconnect_max_s": 1.0})
        lane_list.append({
            "id": f"L{i + 1}", "scanner": True, "links": [name],
            "plc": {"transport": "tcp", "host": "127.0.0.1", "port": free_port()},
            # Simulated trucks cross the scan zone in a second or two: a vehicle reversing over the entry
            # loop while the daemon restarts looks like an arrival and is cancelled after arrival_s.
            "timeouts": {"ocr_settle_s": 0.3, "collect_s": 15.0, "hold_s": 30.0, "pass_s": 60.0, "arrival_s": 20.0},
        })
    mqtt = broker.mqtt_settings("gate", command_key_file=str(key_file), telemetry_interval_s=5,
                                reconnect_initial_s=0.1, reconnect_max_s=1.0, keepalive_s=10)
    config: dict[str, Any] = {
        "site": "E2E", "gate": "G1", "links": links, "lanes": lane_list, "mqtt": mqtt,
        "storage": {"state_dir": str(tmp / "state")},
        "logging": {"level": "INFO", "format": "text"},
        "control": {"socket_path": str(tmp / "state" / "control.sock")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@contextlib.asynccontextmanager
async def simulated_gate(tmp: Path, broker: MosquittoBroker, *, lanes: int = 2, speed: float = 4.0,
                         seed: int = 11, **sections: Any) -> AsyncIterator[SimulatedGate]:
    path = tmp / "smartgate.yaml"
    path.write_text(yaml.safe_dump(gate_config(tmp, broker, lanes=lanes, **sections), sort_keys=False))
    config = load_config(path)
    assert broker.tls is not None
    gate = SimulatedGate(
        config, path, trucks=None, mqtt_url=broker.url, headless=True, speed=speed, seed=seed, out=io.StringIO(),
        # The hub's default persistent session: the broker keeps QoS 1 messages for it while it reconnects.
        hub_options={"username": HUB_USER[0], "password": HUB_USER[1], "ca_file": str(broker.tls.ca_file)},
    )
    tasks: list[asyncio.Task[Any]] = []
    try:
        await gate.start_rigs()
        gate.hub = await asyncio.to_thread(gate.connect_hub)
        await gate.start_daemon()
        tasks.append(asyncio.create_task(gate.pump_hub(), name="e2e-hub"))
        yield gate
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await gate.stop_daemon()
        if gate.hub is not None:
            await asyncio.to_thread(gate.hub.close, discard_session=True)
        for rig in gate.rigs.values():
            for sim in {id(s): s for s in (rig.scanner, rig.ocr) if s is not None}.values():
                await sim.close()
            await rig.server.stop()


def daemon_log(gate: SimulatedGate, lines: int = 40) -> str:
    try:
        return "\n".join(gate.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no daemon log)"
