"""End-to-end figures of the daemon against the simulated gate.

0. The truck's dwell at the barrier: `loop_stop` rising to the `barrier_raise` write, p50/p95 over
   N released trucks, with the default timeouts (`ocr_settle_s` 1.5 s, 10 Hz PLC poll) in the
   order a real gate sees: entry loop, OCR portal, scanner, then `--approach-s` (2 s) of driving
   to the stop line. The scan and the reads are in before the truck arrives, so the decision is
   taken on the way and the barrier goes up on arrival.
1. Latency from SCAN_END on the wire to the barrier command (the PLC's `barrier_raise` write),
   p50/p95 over N released trucks. The OCR reads come first and the truck waits at the stop line
   (as at a real gate, where the OCR portal reads before the scanner ends), so the figure is the
   daemon's own path: scan assembly, image review in the worker process, identity, notices,
   policy, the fsynced journal write, the Modbus write and its read-back.
2. Daemon RSS and CPU (with its review worker) idle, and with a truck every 10 s.
3. Cold start: process start to the retained `online` birth at the broker.
4. With ``--console-clients N``: the technician console on, and N clients connected the whole time,
   each like a browser with the console open: the live feed (server-sent events, every preview
   fetched as its row arrives) and the overview refreshed every second. Compare the latency and the
   daemon's RSS with a run without the flag (console off).

Run: .venv/bin/python benchmarks/bench_e2e.py [--trucks 200] [--load-s 60] [--idle-s 30] [--console-clients 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gate_controller.config import load_config  # noqa: E402
from gate_controller.demo.broker import LocalBroker  # noqa: E402
from gate_controller.demo.gate import SimulatedGate, plan_trucks  # noqa: E402
from gate_controller.hub.hub_side import HubClient  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, mqtt_port: int, *, console: bool = False, log_level: str = "WARNING") -> Path:
    key = tmp / "command-key"
    key.write_text("bench-key\n")
    config = {
        "site": "BENCH", "gate": "G1",
        "links": [
            {"name": "scanner-1", "url": f"socket://127.0.0.1:{free_port()}", "baudrate": 921600},
            {"name": "ocr-1", "url": f"socket://127.0.0.1:{free_port()}"},
        ],
        "lanes": [{
            "id": "L1", "scanner": True, "links": ["scanner-1", "ocr-1"],
            "plc": {"transport": "tcp", "host": "127.0.0.1", "port": free_port()},
            # The defaults: the figures are what a gate with the shipped settings does.
        }],
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "allow_insecure": True, "command_key_file": str(key),
                 "telemetry_interval_s": 30},
        "storage": {"state_dir": str(tmp / "state")},
        "logging": {"level": log_level, "format": "text"},
        "control": {"socket_path": str(tmp / "state" / "control.sock")},
    }
    if console:
        config["console"] = {"listen": f"127.0.0.1:{free_port()}"}
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def proc_figures(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process and its children (the review worker)."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    cpu = rss = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss


def process_rss_mb(pid: int) -> float:
    """RSS of one process alone (the daemon without its review worker)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class ConsoleClient:
    """One browser with the console open: the live feed and a 1 Hz overview refresh."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.transactions = 0
        self.previews = 0
        self.overviews = 0
        self.errors = 0

    async def run(self) -> None:
        import re

        import aiohttp

        async with aiohttp.ClientSession() as http:
            poll = asyncio.create_task(self._overview(http))
            try:
                async with http.get(f"{self.base}/feed/stream", timeout=aiohttp.ClientTimeout(total=None)) as stream:
                    while True:
                        message = (await stream.content.readuntil(b"\n\n")).decode()
                        if not message.startswith("event: transaction"):
                            continue
                        self.transactions += 1
                        for src in re.findall(r'src="(/previews/[^"]+)"', message):
                            async with http.get(self.base + src) as response:
                                await response.read()
                                self.previews += response.status == 200
            finally:
                poll.cancel()

    async def _overview(self, http: Any) -> None:
        while True:
            try:
                async with http.get(f"{self.base}/fragments/overview") as response:
                    await response.read()
                    self.overviews += 1
            except OSError:
                self.errors += 1
            await asyncio.sleep(1.0)


def released_plan(count: int, *, seed: int) -> list[Any]:
    """``count`` trucks whose containers are all released (the ones the barrier opens for)."""
    if count <= 0:
        return []
    plan = [t for t in plan_trucks(count * 4, ["L1"], seed=seed)
            if t.story.startswith("released") or t.story.startswith("2 x 20")]
    return plan[:count]


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max": round(ordered[-1], 1),
        "min": round(ordered[0], 1),
    }


async def wait_lane_idle(rig: Any, timeout_s: float = 30.0) -> None:
    """Until the barrier is down and nothing stands on the lane's loops."""
    await rig.plc.wait_for(lambda: rig.plc.inputs["barrier_down"] and not rig.plc.vehicles, timeout_s=timeout_s)


async def run_console_clients(base: str, count: int) -> None:
    """The browsers' process: N clients until SIGTERM, then their figures as JSON on stdout."""
    import signal

    clients = [ConsoleClient(base) for _ in range(count)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps([{"transactions": c.transactions, "previews": c.previews, "overviews": c.overviews,
                       "errors": c.errors} for c in clients]))


async def wait_birth(hub: HubClient, root: str, boot_id: int, timeout_s: float) -> float:
    """When the first `online` birth of boot ``boot_id`` reached the broker (and us)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = await asyncio.to_thread(hub.receive, 0.05)
        if message is not None and message.topic == f"{root}/status":
            body = message.json()
            if isinstance(body, dict) and body.get("state") == "online" and body.get("boot_id") == boot_id:
                return time.monotonic()
    raise RuntimeError(f"no birth message of boot {boot_id}")


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="smartgate-bench-"))
    mqtt_port = free_port()
    broker = LocalBroker("127.0.0.1", mqtt_port, tmp)
    await broker.start()
    path = write_config(tmp, mqtt_port, console=args.console_clients > 0, log_level=args.daemon_log)
    config = load_config(path)
    gate = SimulatedGate(config, path, trucks=None, mqtt_url=config.mqtt.url, headless=True, speed=1.0, seed=5,
                         out=io.StringIO(), plc_travel_s=(0.3, 0.3), plc_move_s=0.2)
    await gate.start_rigs()
    rig = gate.rigs["L1"]
    hub = HubClient(config.mqtt.url, client_id="bench-hub")
    await asyncio.to_thread(hub.connect)
    await asyncio.to_thread(hub.subscribe, f"{config.root_topic}/#")
    key = b"bench-key"
    figures: dict[str, Any] = {"broker": broker.kind}

    # --- cold start to birth (a few times; the first run also creates the state directory)
    starts = []
    for boot in range(1, args.starts + 1):
        while hub.receive(0.0) is not None:
            pass
        t0 = time.monotonic()
        await gate.start_daemon()
        t1 = await wait_birth(hub, config.root_topic, boot, 60.0)
        starts.append((t1 - t0) * 1000)
        if len(starts) < args.starts:
            await gate.stop_daemon()
            await asyncio.sleep(0.5)
    figures["cold_start_to_birth_ms"] = [round(s) for s in starts]
    assert gate.daemon is not None
    pid = gate.daemon.pid
    await asyncio.sleep(5.0)  # model loaded, links up

    # --- idle
    if args.idle_s > 0:
        c0, _ = proc_figures(pid)
        await asyncio.sleep(args.idle_s)
        c1, rss_idle = proc_figures(pid)
        figures["idle_cpu_percent"] = round((c1 - c0) / args.idle_s * 100, 2)
        figures["idle_rss_mb"] = round(rss_idle, 1)

    # The browsers run in their own process, as they would on the technician's laptop: the
    # simulated firmware and PLC, which timestamp SCAN_END and the barrier write, live in this one.
    browsers: asyncio.subprocess.Process | None = None
    if args.console_clients > 0:
        assert config.console.url is not None
        browsers = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--run-console-clients", config.console.url.rstrip("/"),
            "--console-clients", str(args.console_clients), stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(2.0)
    figures["console_clients"] = args.console_clients
    figures["daemon_rss_before_trucks_mb"] = round(process_rss_mb(pid), 1)

    # --- dwell at the stop line over N released trucks, in a realistic order
    lane_timeouts = config.lanes[0].timeouts
    if args.dwell_trucks > 0:
        plan = released_plan(args.dwell_trucks, seed=21)
        dwells: list[float] = []
        not_raised = 0
        for truck in plan:
            for number, status, declared in truck.notices:
                await asyncio.to_thread(hub.publish_notice, config.site, number, status or "released", key=key,
                                        declared=declared)
            await asyncio.sleep(lane_timeouts.entry_gap_s + 0.1)
            writes_before = len(rig.plc.writes_of("barrier_raise"))
            vehicle = await rig.plc.vehicle_arrives(payload=truck, dwell_s=0.5)  # over the entry loop
            await asyncio.sleep(0.5)
            await rig.ocr.pass_truck(truck.spec)  # the OCR portal
            await asyncio.sleep(1.0)
            assert rig.scanner is not None
            await rig.scanner.pass_truck(truck.spec)  # the scanner; the scan ends here
            await asyncio.sleep(args.approach_s)  # the drive to the barrier
            vehicle = await rig.plc.vehicle_to_stop_line(vehicle)
            try:
                await rig.plc.vehicle_drives_through(vehicle, timeout_s=10.0)
            except TimeoutError:
                not_raised += 1
                await rig.plc.vehicle_backs_out(vehicle)
            raises = [w for w in rig.plc.writes_of("barrier_raise")[writes_before:] if w.value]
            at_stop = [t for t, spot in vehicle.history if spot.value == "stop"]
            if raises and at_stop:
                dwells.append((raises[0].at - at_stop[0]) * 1000)
            await wait_lane_idle(rig)
        dwells.sort()
        figures["dwell"] = {
            "trucks": len(plan), "released_and_measured": len(dwells), "not_raised_within_10s": not_raised,
            "approach_s": args.approach_s, "ocr_settle_s": lane_timeouts.ocr_settle_s,
            "poll_hz": config.lanes[0].plc.poll_hz,
        }
        if dwells:
            figures["dwell"]["stop_line_to_barrier_ms"] = percentiles(dwells)

    # --- latency over N released trucks
    plan = released_plan(args.trucks, seed=9)
    offset = time.time() - time.monotonic()
    latencies: list[float] = []
    missing = 0
    for truck in plan:
        for number, status, declared in truck.notices:
            await asyncio.to_thread(hub.publish_notice, config.site, number, status or "released", key=key,
                                    declared=declared)
        writes_before = len(rig.plc.writes_of("barrier_raise"))
        vehicle = await rig.plc.vehicle_arrives(payload=truck, dwell_s=0.3)
        await rig.ocr.pass_truck(truck.spec)
        await rig.plc.vehicle_to_stop_line(vehicle)
        await asyncio.sleep(lane_timeouts.ocr_settle_s + 0.2)
        assert rig.scanner is not None
        record = await rig.scanner.pass_truck(truck.spec)
        try:
            await rig.plc.vehicle_drives_through(vehicle, timeout_s=10.0)
        except TimeoutError:
            missing += 1
            await rig.plc.vehicle_backs_out(vehicle)
        raises = [w for w in rig.plc.writes_of("barrier_raise")[writes_before:] if w.value]
        if raises and record.ended_ms is not None:
            latencies.append((raises[0].at + offset) * 1000 - record.ended_ms)
        await wait_lane_idle(rig)
        await asyncio.sleep(lane_timeouts.entry_gap_s + 0.1)
    latencies.sort()
    figures["daemon_rss_after_trucks_mb"] = round(process_rss_mb(pid), 1)
    if browsers is not None:
        browsers.terminate()
        out, _ = await browsers.communicate()
        figures["console_client_figures"] = json.loads(out or b"null")
    figures["trucks"] = len(plan)
    figures["released_and_measured"] = len(latencies)
    figures["not_released_within_10s"] = missing
    if latencies:
        figures["scan_end_to_barrier_ms"] = percentiles(latencies)

    # --- a truck every 10 s
    if args.load_s <= 0:
        await finish(gate, hub, rig, broker, figures)
        return
    c0, _ = proc_figures(pid)
    t0 = time.monotonic()
    rss_peak = 0.0
    for truck in plan_trucks(args.load_s // 10 + 1, ["L1"], seed=13):
        if time.monotonic() - t0 >= args.load_s:
            break
        start = time.monotonic()
        for number, status, declared in truck.notices:
            if status is not None:
                await asyncio.to_thread(hub.publish_notice, config.site, number, status, key=key, declared=declared)
        vehicle = await rig.plc.vehicle_arrives(payload=truck, dwell_s=0.2)
        await rig.ocr.pass_truck(truck.spec)
        await rig.plc.vehicle_to_stop_line(vehicle)
        assert rig.scanner is not None
        await rig.scanner.pass_truck(truck.spec)
        try:
            await rig.plc.vehicle_drives_through(vehicle, timeout_s=4.0)
        except TimeoutError:
            await rig.plc.vehicle_backs_out(vehicle)
        rss_peak = max(rss_peak, proc_figures(pid)[1])
        await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - start)))
    elapsed = time.monotonic() - t0
    c1, rss_load = proc_figures(pid)
    figures["load_truck_every_10s_cpu_percent"] = round((c1 - c0) / elapsed * 100, 2)
    figures["load_rss_mb"] = round(max(rss_load, rss_peak), 1)

    await finish(gate, hub, rig, broker, figures)


async def finish(gate: SimulatedGate, hub: HubClient, rig: Any, broker: LocalBroker, figures: dict[str, Any]) -> None:
    await gate.stop_daemon()
    await asyncio.to_thread(hub.close)
    for sim in {id(s): s for s in (rig.scanner, rig.ocr) if s is not None}.values():
        await sim.close()
    await rig.server.stop()
    await broker.stop()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dwell-trucks", type=int, default=200,
                        help="released trucks for the stop-line dwell (0 skips it)")
    parser.add_argument("--approach-s", type=float, default=2.0,
                        help="seconds from the scanner to the stop line in the dwell run")
    parser.add_argument("--trucks", type=int, default=200, help="released trucks for SCAN_END to barrier")
    parser.add_argument("--idle-s", type=int, default=30)
    parser.add_argument("--load-s", type=int, default=60)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--console-clients", type=int, default=0, metavar="N",
                        help="turn the technician console on and keep N browser-like clients connected")
    parser.add_argument("--daemon-log", default="WARNING", help="the daemon's log level (its log stays in the "
                        "state directory under /tmp)")
    parser.add_argument("--run-console-clients", metavar="URL", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.run_console_clients:
        asyncio.run(run_console_clients(parsed.run_console_clients, parsed.console_clients))
    else:
        asyncio.run(main(parsed))
