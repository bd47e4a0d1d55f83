"""One daemon per gate and a demo that cleans up after itself, checked on real processes.

`smartgate run` locks its state directory for its whole life; a second daemon and a demo on the
same directory exit 75 naming the lock file and its holder. A demo killed with SIGKILL takes its
daemon and broker with it. `smartgate demo --mqtt URL` drives the daemon through that broker,
which an independent `mosquitto_sub` watches.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.broker import MosquittoBroker, free_port, mosquitto_available
from tests.support.configs import ROOT
from tests.support.gate import gate_config

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="needs mosquitto and mosquitto_passwd"),
]

MOSQUITTO_SUB = shutil.which("mosquitto_sub")


def smartgate(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate_controller", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, check=False)


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gate_controller", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _cmdline(pid: int) -> str:
    try:
        return f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid}: (gone)"


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def lock_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "smartgate.lock").read_text().strip())
    except (OSError, ValueError):
        return None


def wait_locked(proc: subprocess.Popen[bytes], state_dir: Path, log: Path, *, poll_s: float = 0.1) -> None:
    """Until the daemon ``proc`` holds the lock of ``state_dir`` (its log on failure)."""
    deadline = time.monotonic() + 30.0
    while lock_pid(state_dir) != proc.pid:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the daemon never locked its state directory"
        time.sleep(poll_s)


@pytest.fixture
def reaper() -> Iterator[set[int]]:
    """Pids a test started; whatever of them is still alive at the end is killed."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


def write_config(tmp: Path, broker: MosquittoBroker, *, mqtt: dict[str, Any] | None = None, lanes: int = 1) -> Path:
    config = gate_config(tmp, broker, lanes=lanes)
    if mqtt is not None:
        config["mqtt"] = {"command_key_file": config["mqtt"]["command_key_file"], "allow_insecure": True,
                          "telemetry_interval_s": 5, "reconnect_initial_s": 0.1, "reconnect_max_s": 1.0, **mqtt}
    path = tmp / "smartgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_second_daemon_and_demo_exit_75_naming_the_lock_and_its_holder(
        tmp_path: Path, broker: MosquittoBroker, reaper: set[int]) -> None:
    path = write_config(tmp_path, broker)
    state_dir = tmp_path / "state"
    first = spawn("run", "-c", str(path), log=tmp_path / "first.log")
    reaper.add(first.pid)
    wait_locked(first, state_dir, tmp_path / "first.log")

    second = smartgate("run", "-c", str(path), timeout=30.0)
    assert second.returncode == 75, second.stderr
    assert str(state_dir / "smartgate.lock") in second.stderr
    assert f"process {first.pid}" in second.stderr
    assert first.poll() is None

    demo = smartgate("demo", "-c", str(path), "--trucks", "1", "--headless", timeout=30.0)
    assert demo.returncode == 75, demo.stdout + demo.stderr
    assert str(state_dir / "smartgate.lock") in demo.stdout
    assert f"process {first.pid}" in demo.stdout
    assert first.poll() is None
    assert (state_dir / "outbox.sqlite3").exists(), "the demo removed the running daemon's outbox"

    first.send_signal(signal.SIGTERM)
    assert first.wait(30.0) == 0
    # The lock goes with its holder: the next daemon starts.
    third = spawn("run", "-c", str(path), log=tmp_path / "third.log")
    reaper.add(third.pid)
    wait_locked(third, state_dir, tmp_path / "third.log")
    third.send_signal(signal.SIGTERM)
    assert third.wait(30.0) == 0


def test_killed_demo_leaves_no_process(tmp_path: Path, broker: MosquittoBroker, reaper: set[int]) -> None:
    # The demo starts its own broker on the config's URL.
    path = write_config(tmp_path, broker, mqtt={"url": f"mqtt://127.0.0.1:{free_port()}"})
    demo = spawn("demo", "-c", str(path), "--headless", log=tmp_path / "demo.log")
    reaper.add(demo.pid)
    seen: set[int] = set()
    deadline = time.monotonic() + 60.0
    while True:
        assert demo.poll() is None, (tmp_path / "demo.log").read_text()
        seen |= descendants(demo.pid)
        reaper.update(seen)
        daemons = [pid for pid in seen if alive(pid) and " gate_controller run " in _cmdline(pid)]
        if daemons and any("mosquitto" in _cmdline(pid) for pid in seen) and (tmp_path / "state").exists():
            break  # the daemon and the broker run
        assert time.monotonic() < deadline, f"the demo's daemon never started: {(tmp_path / 'demo.log').read_text()}"
        time.sleep(0.2)
    time.sleep(2.0)  # let the daemon start its own children (the review worker)
    seen |= descendants(demo.pid)
    reaper.update(seen)
    names = {pid: _cmdline(pid) for pid in seen}

    demo.send_signal(signal.SIGKILL)
    demo.wait()
    deadline = time.monotonic() + 5.0
    while (left := {pid for pid in seen if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the killed demo still running after 5 s: {[names[p] for p in sorted(left)]}"


def test_sigterm_while_starting_stops_the_daemon_cleanly(tmp_path: Path, broker: MosquittoBroker,
                                                         reaper: set[int]) -> None:
    """systemd may stop a daemon that is still starting: the SIGTERM that arrives as soon as the
    state directory is locked is a clean stop (exit 0), not a death by signal."""
    path = write_config(tmp_path, broker)
    state_dir = tmp_path / "state"
    daemon = spawn("run", "-c", str(path), log=tmp_path / "daemon.log")
    reaper.add(daemon.pid)
    wait_locked(daemon, state_dir, tmp_path / "daemon.log", poll_s=0.002)
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(60.0)
    log = (tmp_path / "daemon.log").read_text()
    assert code == 0, log[-3000:]
    assert "stopping (SIGTERM)" in log, log[-3000:]


@pytest.mark.skipif(MOSQUITTO_SUB is None, reason="needs mosquitto_sub (Debian's mosquitto-clients)")
def test_demo_with_mqtt_url_runs_the_daemon_on_that_broker(tmp_path: Path, broker: MosquittoBroker) -> None:
    trucks = 4
    with MosquittoBroker(tmp_path / "external", tls=False, anonymous=True) as external:
        # The config names a broker that does not exist: only --mqtt can make this demo work.
        path = write_config(tmp_path, broker, mqtt={"url": f"mqtt://127.0.0.1:{free_port()}"}, lanes=2)
        received = tmp_path / "sub.out"
        with independent_subscriber(external, received):
            result = smartgate("demo", "-c", str(path), "--mqtt", external.url, "--trucks", str(trucks),
                               "--headless", "--speed", "4", timeout=300.0)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
            deadline = time.monotonic() + 10.0
            while True:
                transactions, births = _read_sub(received)
                if (len(transactions) >= trucks and births) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
    assert len(transactions) == trucks, sorted(transactions)
    assert births, "no birth (status online) seen by the independent subscriber"
    # Telemetry from the daemon gives each lane's phase and mode apart (and the old one-word field).
    _, _, telemetry = _read_all(received)
    assert telemetry, "no telemetry seen"
    for body in telemetry:
        assert set(body["lane_status"]) == set(body["lanes"]) == {"L1", "L2"}
        for lane, status in body["lane_status"].items():
            assert status["mode"] in ("automatic", "manual", "fault", "closed")
            assert body["lanes"][lane] == (status["phase"] if status["mode"] == "automatic" else status["mode"])


@pytest.mark.skipif(MOSQUITTO_SUB is None, reason="needs mosquitto_sub (Debian's mosquitto-clients)")
def test_demo_verdict_is_right_across_a_broker_restart(tmp_path: Path, broker: MosquittoBroker,
                                                       reaper: set[int]) -> None:
    """The broker restarts once the hub has seen transactions: the demo's simulated hub (persistent
    session) still receives every transaction and event, finds no seq gap, and the demo passes."""
    trucks = 8
    with MosquittoBroker(tmp_path / "external", tls=False, anonymous=True) as external:
        path = write_config(tmp_path, broker, mqtt={"url": external.url}, lanes=2)
        received = tmp_path / "sub.out"
        with independent_subscriber(external, received):
            demo = spawn("demo", "-c", str(path), "--mqtt", external.url, "--trucks", str(trucks), "--headless",
                         "--speed", "4", log=tmp_path / "demo.log")
            reaper.add(demo.pid)
            deadline = time.monotonic() + 180.0
            while len(_read_sub(received)[0]) < 2:
                assert demo.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no transaction before the restart"
                time.sleep(0.2)
            external.restart()
            code = demo.wait(300.0)
    log = (tmp_path / "demo.log").read_text()
    assert code == 0, log[-3000:]
    assert f"transactions received: {trucks} of {trucks} trucks" in log, log[-3000:]
    assert "seq gaps: none" in log, log[-3000:]
    assert "lost: none" in log, log[-3000:]


@contextlib.contextmanager
def independent_subscriber(external: MosquittoBroker, received: Path) -> Iterator[None]:
    """An independent hub (`mosquitto_sub`, QoS 1, everything under smartgate/v1/) writing what it
    receives to ``received``; subscribed when the block starts, stopped when it ends."""
    assert MOSQUITTO_SUB is not None
    with received.open("wb") as out:
        sub = subprocess.Popen(
            [MOSQUITTO_SUB, "-h", external.host, "-p", str(external.port), "-q", "1", "-v",
             "-i", "independent-hub", "-t", "smartgate/v1/#"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_subscribed(external, received)
        yield
    finally:
        sub.terminate()
        sub.wait(10.0)


def _wait_subscribed(external: MosquittoBroker, received: Path) -> None:
    """mosquitto_sub prints nothing when subscribed: publish probes until one comes back."""
    import paho.mqtt.publish as publish

    deadline = time.monotonic() + 15.0
    while b"smartgate/v1/probe" not in received.read_bytes():
        assert time.monotonic() < deadline, "mosquitto_sub never subscribed"
        publish.single("smartgate/v1/probe", "1", qos=1, hostname=external.host, port=external.port)
        time.sleep(0.3)


def _read_sub(received: Path) -> tuple[set[str], list[dict[str, Any]]]:
    transactions, births, _ = _read_all(received)
    return transactions, births


def _read_all(received: Path) -> tuple[set[str], list[dict[str, Any]], list[dict[str, Any]]]:
    transactions: set[str] = set()
    births: list[dict[str, Any]] = []
    telemetry: list[dict[str, Any]] = []
    for line in received.read_text(errors="replace").splitlines():
        topic, _, payload = line.partition(" ")
        if topic.endswith("/transactions"):
            transactions.add(str(json.loads(payload)["msg_id"]))
        elif topic.endswith("/telemetry"):
            telemetry.append(json.loads(payload))
        elif topic.endswith("/status") and payload:
            body = json.loads(payload)
            if body.get("state") == "online":
                births.append(body)
    return transactions, births, telemetry
