"""`smartgate demo`: the whole gate on one machine, trucks flowing through simulated lanes.

It starts the peers the daemon would have on a real gate — a broker (the given one, a local
mosquitto, or an embedded amqtt), one virtual lane PLC per lane and one virtual firmware device
per link — then the real daemon (`smartgate run`) as a child process with the demo config, and
plays the hub and the traffic: release notices for most containers (some on hold, some ordered for
inspection, some never released), scans with concealed objects, a container declared empty that
is not. One coordinator per lane moves each truck consistently through loops, scanner and
barrier: it drives through when the lane released it and turns off to inspection otherwise.

With ``--trucks N`` it stops once N transactions reached the broker and judges the run: every
truck produced exactly one transaction (by ``msg_id``), ``seq`` has no gap, no barrier went up
for a truck that was not released, and none came down onto a vehicle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from firmware_bridge.simulator.firmware import FirmwareSimulator
from gate_controller.config import GateConfig, LaneConfig, read_secret
from gate_controller.core.errors import HubError
from gate_controller.demo.broker import LocalBroker
from gate_controller.demo.child import orphan_proof
from gate_controller.demo.traffic import DemoResult, DemoTruck, plan_trucks
from gate_controller.demo.view import format_row, render, summarize
from gate_controller.hub.hub_side import HubClient
from gate_controller.plc.sim.lane_plc import VirtualLanePlc
from gate_controller.plc.sim.modbus_server import VirtualPlcServer
from gate_controller.service.control import read_status
from gate_controller.service.instance import lock_holder

__all__ = ["DemoResult", "DemoTruck", "SimulatedGate", "plan_trucks", "run_demo"]

log = logging.getLogger(__name__)

EX_TEMPFAIL = 75


# --------------------------------------------------------------------------- the show


@dataclass
class _LaneRig:
    config: LaneConfig
    plc: VirtualLanePlc
    server: VirtualPlcServer
    scanner: FirmwareSimulator | None
    ocr: FirmwareSimulator
    current: DemoTruck | None = None
    done: int = 0


class SimulatedGate:
    """The simulated peers of one gate plus the real daemon as a child process, and the traffic.

    The demo, the end-to-end tests and the latency benchmark all drive the daemon through this
    class, so what they judge is one and the same path.
    """

    def __init__(self, config: GateConfig, config_path: Path, *, trucks: int | None, mqtt_url: str | None,
                 headless: bool, speed: float, seed: int, out: TextIO,
                 hub_options: dict[str, Any] | None = None, plc_travel_s: tuple[float, float] = (1.5, 3.0),
                 plc_move_s: float = 0.6) -> None:
        self.hub_options = dict(hub_options or {})
        self.plc_travel_s = plc_travel_s
        self.plc_move_s = plc_move_s
        self.config = config
        self.config_path = config_path
        self.truck_limit = trucks
        self.mqtt_url = mqtt_url or config.mqtt.url
        self.headless = headless
        self.speed = max(0.1, speed)
        self.seed = seed
        self.out = out
        self.key = read_secret(config.mqtt.command_key_file, base_dir=config_path.resolve().parent)
        self.rigs: dict[str, _LaneRig] = {}
        self.result = DemoResult()
        self.expect_delivery = True
        """Whether each truck's transaction must reach the hub before the next (False while the hub is
        deliberately cut off; the backlog is then judged after it returns)."""
        self.events_seen: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        """Birth and death messages of the gate, in arrival order."""
        self.recent: deque[dict[str, Any]] = deque(maxlen=12)
        self.stories: dict[str, DemoTruck] = {}
        self.status: dict[str, Any] = {}
        self.hub: HubClient | None = None
        self.daemon: asyncio.subprocess.Process | None = None
        self.started = time.monotonic()
        self.per_lane_tx: dict[str, int] = {}
        self.stop = asyncio.Event()
        self.log_path = config.storage.state_dir / "daemon.log"

    def pause(self, seconds: float) -> float:
        return seconds / self.speed

    # -------------------------------------------------------------- setup

    async def start_rigs(self) -> None:
        for index, lane in enumerate(self.config.lanes):
            plc = VirtualLanePlc(points=lane.plc.points, seed=self.seed + index, move_s=self.plc_move_s,
                                 travel_s=self.plc_travel_s)
            server = VirtualPlcServer({lane.plc.unit_id: plc})
            await server.start_tcp(lane.plc.host or "127.0.0.1", lane.plc.port)
            sims: list[FirmwareSimulator] = []
            devices = ["combo"] if len(lane.links) == 1 else ["scanner", "ocr"] + ["ocr"] * (len(lane.links) - 2)
            for name, device in zip(lane.links, devices, strict=True):
                link = self.config.link(name)
                sim = FirmwareSimulator(device=device, serial_no=f"SIM-{name}", seed=self.seed + len(sims) + 17 * index)
                parts = urlsplit(link.url)
                if parts.scheme != "socket" or parts.port is None:
                    raise RuntimeError(f"demo links must be socket://127.0.0.1:PORT (link {name}: {link.url})")
                await sim.serve_tcp(parts.hostname or "127.0.0.1", parts.port)
                sims.append(sim)
            scanner = sims[0] if devices[0] in ("scanner", "combo") else None
            ocr = sims[0] if devices[0] == "combo" else sims[1]
            self.rigs[lane.id] = _LaneRig(lane, plc, server, scanner, ocr)

    async def start_daemon(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path.open("ab")
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        argv = [sys.executable, "-m", "gate_controller", "run", "-c", str(self.config_path)]
        if self.mqtt_url != self.config.mqtt.url:
            argv += ["--mqtt-url", self.mqtt_url]
        # SIGKILL when the demo dies: its PLCs, firmware and hub died with it, and the journal is
        # built to survive a crash.
        self.daemon = await asyncio.create_subprocess_exec(
            *orphan_proof(argv, signal.SIGKILL), stdout=log_file, stderr=log_file, env=env)
        log_file.close()

    async def stop_daemon(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        """Stop the daemon (SIGKILL to simulate a crash or power loss) and return its exit status."""
        proc = self.daemon
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(sig)
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        return proc.returncode

    def connect_hub(self) -> HubClient:
        # A persistent session (the default) with an id of its own: across a broker restart the broker
        # keeps what the gate publishes for the hub, as it does for the real hub. What a previous
        # demo left queued under that id is discarded first.
        options = {"client_id": f"smartgate-demo-hub-{self.config.site}-{self.config.gate}", **self.hub_options}
        hub = HubClient(self.mqtt_url, reconnect=True, topic_prefix=self.config.mqtt.topic_prefix, **options)
        if not hub.clean_session:
            hub.discard_session(timeout=15.0)
        hub.connect(timeout=15.0)
        hub.subscribe(f"{self.config.root_topic}/#")
        return hub

    # -------------------------------------------------------------- hub side

    async def pump_hub(self) -> None:
        assert self.hub is not None
        hub = self.hub
        root = self.config.root_topic
        while True:
            message = await asyncio.to_thread(hub.receive, 0.2)
            if message is None:
                continue
            if message.topic == f"{root}/transactions":
                self._on_transaction(message.json())
            elif message.topic == f"{root}/status" and message.payload:
                body = message.json()
                if isinstance(body, dict):
                    self.statuses.append(body)
            elif message.topic == f"{root}/events":
                body = message.json()
                self.result.events += 1
                if isinstance(body, dict):
                    self.events_seen.append(body)
                if isinstance(body, dict) and isinstance(body.get("seq"), int):
                    self.result.seqs.append(body["seq"])
                    if self.headless and body.get("type") == "alarm":
                        self._print(f"  event {body.get('code')} lane={body.get('lane')} "
                                    f"active={body.get('active')} {json.dumps(body.get('detail'))[:90]}")

    def _on_transaction(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        msg_id = str(body.get("msg_id"))
        if msg_id in self.result.transactions:
            self.result.duplicates += 1
            return
        self.result.transactions[msg_id] = body
        if isinstance(body.get("seq"), int):
            self.result.seqs.append(body["seq"])
        lane = str(body.get("lane"))
        self.per_lane_tx[lane] = self.per_lane_tx.get(lane, 0) + 1
        decision = body.get("decision") or {}
        if decision.get("action") != "release" and body.get("barrier") and decision.get("by") != "operator":
            self.result.unsafe.append(f"transaction {body.get('transaction_id')}: barrier raised for "
                                      f"{decision.get('action')}")
        row = summarize(body, self.stories)
        self.recent.appendleft(row)
        if self.headless:
            self._print(format_row(row))

    # -------------------------------------------------------------- traffic

    async def drive_lane(self, rig: _LaneRig, trucks: Sequence[DemoTruck]) -> None:
        for truck in trucks:
            if self.stop.is_set():
                return
            await self.drive_truck(rig, truck)

    async def drive_truck(self, rig: _LaneRig, truck: DemoTruck) -> None:
        assert self.hub is not None
        hub = self.hub
        for number, status, declared in truck.notices:
            self.stories[number] = truck
            if status is not None:
                try:
                    await asyncio.to_thread(hub.publish_notice, self.config.site, number, status, key=self.key,
                                            declared=declared, ref=f"DEMO-{truck.index:04d}")
                except HubError as err:
                    # The hub cannot reach the broker either: the gate decides without this notice
                    # (NOT_RELEASED), exactly as it would in the field.
                    log.warning("notice for %s not published: %s", number, err)
        rig.current = truck
        before = self.per_lane_tx.get(rig.config.id, 0)
        await self._wait_lane_idle(rig)
        # A rise of the entry loop this soon after it fell is the gap between tractor and trailer to the
        # lane, not a new vehicle: real trucks are never that close, so neither are simulated ones.
        await asyncio.sleep(rig.config.timeouts.entry_gap_s + 0.2)
        vehicle = await rig.plc.vehicle_arrives(payload=truck)
        await asyncio.sleep(self.pause(0.5))
        sends = [rig.ocr.pass_truck(truck.spec)]
        if rig.scanner is not None and rig.scanner is not rig.ocr:
            sends.append(rig.scanner.pass_truck(truck.spec))
        await asyncio.gather(*sends)
        await rig.plc.vehicle_to_stop_line(vehicle)
        phase = await self._wait_decision(rig)
        await asyncio.sleep(self.pause(0.8))
        if phase in ("released", "passing"):
            await rig.plc.vehicle_drives_through(vehicle, timeout_s=30.0)
        else:
            rig.plc.vehicle_turns_off(vehicle)  # to the inspection area, by the side exit before the barrier
        deadline = time.monotonic() + (60.0 if self.expect_delivery else 0.0)
        while self.per_lane_tx.get(rig.config.id, 0) <= before and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # the hub task counts arrivals; a bounded poll keeps this simple
        if self.expect_delivery and self.per_lane_tx.get(rig.config.id, 0) <= before:
            self.result.lost.append(f"truck {truck.index} ({truck.spec.plate}) on {rig.config.id}: "
                                    "no transaction within 60 s")
        rig.done += 1
        rig.current = None
        await asyncio.sleep(self.pause(1.0))

    async def _lane_status(self, lane_id: str) -> dict[str, Any]:
        try:
            status = await asyncio.to_thread(read_status, self.config.control.socket_path, 2.0)
        except (OSError, ValueError, TypeError):
            return {}
        self.status = status
        lane = (status.get("lanes") or {}).get(lane_id)
        return lane if isinstance(lane, dict) else {}

    async def _wait_lane_idle(self, rig: _LaneRig) -> None:
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            lane = await self._lane_status(rig.config.id)
            if lane.get("phase") == "idle" and lane.get("mode") == "automatic":
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"lane {rig.config.id} did not become idle and automatic within 120 s")

    async def _wait_decision(self, rig: _LaneRig) -> str:
        deadline = time.monotonic() + rig.config.timeouts.collect_s + rig.config.timeouts.decision_s + 30.0
        while time.monotonic() < deadline:
            lane = await self._lane_status(rig.config.id)
            phase = str(lane.get("phase"))
            if phase in ("released", "passing", "stopped") or lane.get("mode") not in (None, "automatic"):
                return phase
            await asyncio.sleep(0.05)
        return "timeout"

    # -------------------------------------------------------------- view

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    async def render_loop(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError, TypeError):
                self.status = await asyncio.to_thread(read_status, self.config.control.socket_path, 2.0)
            if not self.headless:
                self.out.write("\x1b[H\x1b[2J" + render(self) + "\n")
                self.out.flush()
            await asyncio.sleep(0.5)


async def run_demo(config: GateConfig, config_path: Path, *, trucks: int | None, mqtt_url: str | None,
                   headless: bool, speed: float, seed: int, out: TextIO | None = None) -> int:
    """Run the demo; with ``trucks`` return 0 only when nothing was lost and nothing unsafe happened."""
    stream = out or sys.stdout
    state_dir = config.storage.state_dir
    running = lock_holder(state_dir)
    if running is not None:
        # Its outbox and PLC ports are in use: a second daemon would drive the same lanes.
        stream.write(f"smartgate demo: {running}\n")
        stream.flush()
        return EX_TEMPFAIL
    for name in ("outbox.sqlite3", "notices.sqlite3", "replay.sqlite3"):
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                (state_dir / f"{name}{suffix}").unlink()
    state_dir.mkdir(parents=True, exist_ok=True)
    demo = SimulatedGate(config, config_path, trucks=trucks, mqtt_url=mqtt_url, headless=headless, speed=speed,
                         seed=seed, out=stream)
    broker: LocalBroker | None = None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, demo.stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="smartgate-demo-"))
    tasks: list[asyncio.Task[Any]] = []
    try:
        if mqtt_url is None:
            parts = urlsplit(config.mqtt.url)
            broker = LocalBroker(parts.hostname or "127.0.0.1", parts.port or 1883, workdir)
            await broker.start()
            demo._print(f"broker: {broker.kind} on {broker.host}:{broker.port}")
        await demo.start_rigs()
        demo._print(f"virtual PLCs and firmware up for lanes {', '.join(demo.rigs)}; starting the daemon "
                    f"(log: {demo.log_path})")
        demo.hub = await asyncio.to_thread(demo.connect_hub)
        await demo.start_daemon()
        if config.console.url is not None:
            demo._print(f"technician console: {config.console.url}" + (
                f" (user {config.console.auth.username}, demo password in {config_path.parent / 'demo.yaml'})"
                if config.console.auth is not None else ""))
        tasks.append(asyncio.create_task(demo.pump_hub(), name="demo-hub"))
        tasks.append(asyncio.create_task(demo.render_loop(), name="demo-view"))
        plan = plan_trucks(trucks if trucks is not None else 10_000, list(demo.rigs), seed=seed)
        demo.result.trucks = len(plan)
        drivers = [asyncio.create_task(demo.drive_lane(rig, [t for t in plan if t.lane == lane_id]),
                                       name=f"demo-lane-{lane_id}")
                   for lane_id, rig in demo.rigs.items()]
        tasks.extend(drivers)
        watch = asyncio.create_task(_watch_daemon(demo), name="demo-daemon-watch")
        tasks.append(watch)
        stopper = asyncio.create_task(demo.stop.wait())
        pending = {*drivers, stopper, watch}
        while not demo.stop.is_set() and not watch.done() and not all(d.done() for d in drivers):
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if all(d.done() for d in drivers) and trucks is not None and not watch.done():
            # Let the last transactions and events arrive.
            deadline = time.monotonic() + 15.0
            while len(demo.result.transactions) < trucks and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        stopper.cancel()
        for driver in drivers:
            if driver.done() and not driver.cancelled() and driver.exception() is not None:
                demo.result.lost.append(f"lane driver failed: {driver.exception()}")
        if watch.done():
            demo.result.lost.append("the daemon exited during the demo (see its log)")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        code = await demo.stop_daemon()
        if demo.hub is not None:
            await asyncio.to_thread(demo.hub.close, discard_session=True)
        for rig in demo.rigs.values():
            for sim in {id(s): s for s in (rig.scanner, rig.ocr) if s is not None}.values():
                await sim.close()
            await rig.server.stop()
        if broker is not None:
            await broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    check_plc_safety(demo)
    return _report(demo, trucks, code)


async def _watch_daemon(demo: SimulatedGate) -> None:
    assert demo.daemon is not None
    await demo.daemon.wait()


def check_plc_safety(demo: SimulatedGate) -> None:
    """Judge what the PLCs saw: no barrier lowered onto a vehicle, raises only for releases.

    A release whose daemon died after raising is still a release: the journal republishes it as
    cancelled by restart, with the decision it had.
    """
    releases = sum(1 for t in demo.result.transactions.values()
                   if (t.get("decision") or {}).get("action") == "release")
    raises = 0
    for lane_id, rig in demo.rigs.items():
        previous = False
        for write in rig.plc.writes_of("barrier_raise"):
            value = bool(write.value)
            if value and not previous:
                raises += 1
            if not value and previous and write.inputs.get("loop_safety"):
                demo.result.unsafe.append(f"lane {lane_id}: barrier commanded down with a vehicle under it")
            previous = value
    if raises > releases:
        demo.result.unsafe.append(f"barrier raised {raises} times for {releases} released transaction(s)")


def _report(demo: SimulatedGate, trucks: int | None, daemon_code: int | None) -> int:
    result = demo.result
    actions: dict[str, int] = {}
    for body in result.transactions.values():
        action = str((body.get("decision") or {}).get("action"))
        actions[action] = actions.get(action, 0) + 1
    lines = [
        "",
        "demo summary",
        f"  transactions received: {len(result.transactions)}"
        + (f" of {trucks} trucks" if trucks is not None else "")
        + f" ({', '.join(f'{k} {v}' for k, v in sorted(actions.items()))})",
        f"  duplicates (same msg_id, at-least-once delivery): {result.duplicates}",
        f"  events received: {result.events}; seq gaps: {result.seq_gaps() or 'none'}",
        f"  unsafe barrier actions: {result.unsafe or 'none'}",
        f"  lost: {result.lost or 'none'}",
        f"  daemon exit status: {daemon_code}",
        f"  daemon log: {demo.log_path}",
    ]
    demo._print("\n".join(lines))
    if trucks is None:
        return 0
    complete = len(result.transactions) >= trucks
    return 0 if (complete and result.ok and daemon_code == 0) else 1
