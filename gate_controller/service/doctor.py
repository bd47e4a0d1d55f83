"""`smartgate doctor`: check every outside dependency of a gate and say how to fix what fails.

Every check is read-only towards the hardware: the PLC is polled without writing a heartbeat or
a coil, the firmware is only asked for its HELLO, the broker only gets a connect and a
disconnect. Checks run concurrently with their own deadlines, so one dead link cannot hide the
state of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gate_controller.config import GateConfig, LaneConfig, LinkConfig, read_secret
from gate_controller.core.errors import ConfigError

__all__ = ["Check", "render", "run_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


async def run_checks(config: GateConfig, config_dir: Path, *, timeout_s: float = 6.0,
                     in_daemon: bool = False) -> list[Check]:
    """Run every check; ``config_dir`` (absolute) anchors relative secret and TLS paths.

    ``in_daemon`` (the console's diagnostics page) leaves out the model, the firmware links and
    the PLCs: the running daemon has its own model loaded in its review worker and owns the links
    and PLC connections (a serial port or a device server has one client); the console shows the
    daemon's live view of them instead.
    """
    base = config_dir
    jobs: list[Awaitable[Check]] = [
        _guard("secrets", asyncio.to_thread(_secrets, config, base)),
        _guard("storage", asyncio.to_thread(_storage, config)),
        _guard("clock", _clock()),
        _guard("broker", _broker(config, base, timeout_s)),
    ]
    if in_daemon:
        return list(await asyncio.gather(*jobs))
    jobs += [
        _guard("model", _model(config)),
        *(_guard(f"link {link.name}", _link(link, timeout_s)) for link in config.links),
        *(_guard(f"PLC {lane.id}", _plc(lane, timeout_s)) for lane in config.lanes),
    ]
    if _daemon_running(config):
        jobs.append(_info("daemon", "a smartgate daemon is running and owns the serial links; link checks may "
                          "fail because a port has one owner", "stop it for a full check: systemctl stop smartgate"))
    return list(await asyncio.gather(*jobs))


async def _info(name: str, detail: str, fix: str) -> Check:
    return Check(name, True, detail, fix)


async def _guard(name: str, check: Awaitable[Check]) -> Check:
    try:
        return await check
    except Exception as err:  # a check that crashes is a failed check, not a crashed doctor
        return Check(name, False, f"check failed: {type(err).__name__}: {err}", "see the journal; report a bug")


def _daemon_running(config: GateConfig) -> bool:
    path = config.control.socket_path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _secrets(config: GateConfig, base: Path) -> Check:
    files = [("mqtt.command_key_file", config.mqtt.command_key_file)]
    if config.mqtt.password_file is not None:
        files.append(("mqtt.password_file", config.mqtt.password_file))
    if config.mqtt.tls is not None and config.mqtt.tls.key_file is not None:
        files.append(("mqtt.tls.key_file", config.mqtt.tls.key_file))
    if config.console.auth is not None:
        files.append(("console.auth.password_hash_file", config.console.auth.password_hash_file))
    if config.console.tls is not None:
        files.append(("console.tls.key_file", config.console.tls.key_file))
    problems = []
    for key, path in files:
        try:
            read_secret(path, base_dir=base)
        except ConfigError as err:
            problems.append(f"{key}: {err}")
    if problems:
        return Check("secrets", False, "; ".join(problems),
                     "create the files (LoadCredential= under systemd puts them in $CREDENTIALS_DIRECTORY)")
    return Check("secrets", True, f"{len(files)} secret file(s) readable")


def _storage(config: GateConfig) -> Check:
    state = config.storage.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / f".doctor-{os.getpid()}"
        probe.write_bytes(b"ok")
        with open(probe, "rb+") as fh:
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as err:
        return Check("storage", False, f"{state} is not writable: {err.strerror or err}",
                     "StateDirectory=smartgate in the unit creates it; else chown smartgate: the directory")
    free_mb = shutil.disk_usage(state).free / 1e6
    need = config.mqtt.backlog.min_free_disk_mb
    if free_mb < need:
        return Check("storage", False, f"{free_mb:.0f} MB free under {state}, below min_free_disk_mb {need}",
                     "free disk space or lower storage.archive_max_mb")
    return Check("storage", True, f"{state} writable, {free_mb:.0f} MB free")


async def _clock() -> Check:
    now = datetime.now(UTC)
    if now.year < 2024:
        return Check("clock", False, f"system clock reads {now.isoformat()}",
                     "set the time (timedatectl set-ntp true); signed commands are rejected with a wrong clock")
    synced = await asyncio.to_thread(os.path.exists, "/run/systemd/timesync/synchronized")
    if not synced and shutil.which("timedatectl"):
        proc = await asyncio.create_subprocess_exec(
            "timedatectl", "show", "-p", "NTPSynchronized", "--value",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        synced = out.strip() == b"yes"
    if not synced:
        return Check("clock", False, f"{now.isoformat(timespec='seconds')}, not NTP-synchronized",
                     "enable time sync (timedatectl set-ntp true, or chrony); commands with ts off by more than "
                     "mqtt.clock_skew_s are rejected")
    return Check("clock", True, f"{now.isoformat(timespec='seconds')}, NTP-synchronized")


async def _model(config: GateConfig) -> Check:
    from inference.errors import ModelError
    from inference.reviewer import Reviewer

    try:
        reviewer = await asyncio.to_thread(Reviewer, config.inference.model_path, config.inference.threads)
    except (ModelError, ValueError, OSError) as err:
        return Check("model", False, str(err),
                     "reinstall smartgate or point inference.model_path at a .tflite with its .json beside it")
    info = reviewer.model_info
    return Check("model", True, f"{info.name} {info.version} sha256 {info.sha256[:12]}… ({reviewer.backend})")


async def _broker(config: GateConfig, base: Path, timeout_s: float) -> Check:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    mq = config.mqtt
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{config.client_id}-doctor"[:64],
                         protocol=mqtt.MQTTv311)
    if mq.tls is not None:
        try:
            ctx = ssl.create_default_context(cafile=str(_path(mq.tls.ca_file, base)))
            if mq.tls.cert_file is not None and mq.tls.key_file is not None:
                from gate_controller.config import resolve_secret_path

                ctx.load_cert_chain(str(_path(mq.tls.cert_file, base)),
                                    str(resolve_secret_path(mq.tls.key_file, base_dir=base)))
        except (OSError, ssl.SSLError) as err:
            return Check("broker", False, f"TLS files: {err}", "check mqtt.tls paths and permissions")
        client.tls_set_context(ctx)
    if mq.username is not None and mq.password_file is not None:
        client.username_pw_set(mq.username, read_secret(mq.password_file, base_dir=base).decode())
    result: dict[str, str] = {}
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        result["reason"] = str(reason)
        loop.call_soon_threadsafe(done.set)

    client.on_connect = on_connect
    started = time.monotonic()
    try:
        await asyncio.to_thread(client.connect, mq.host, mq.port, 10)
    except (OSError, ssl.SSLError) as err:
        return Check("broker", False, f"{mq.host}:{mq.port}: {err}",
                     "check mqtt.url, the network path and firewall, and (TLS) the CA and the broker's name")
    client.loop_start()
    try:
        async with asyncio.timeout(timeout_s):
            await done.wait()
    except TimeoutError:
        return Check("broker", False, f"{mq.host}:{mq.port}: no CONNACK within {timeout_s:.0f} s",
                     "the port answers but no MQTT session came up: check TLS (mqtts:// needs a TLS listener)")
    finally:
        client.disconnect()
        client.loop_stop()
    reason = result.get("reason", "?")
    if reason != "Success":
        return Check("broker", False, f"{mq.host}:{mq.port} refused the session: {reason}",
                     "check mqtt.username, the password file, and the broker's ACL for this gate")
    return Check("broker", True, f"{mq.host}:{mq.port} accepted the session in "
                                 f"{(time.monotonic() - started) * 1000:.0f} ms")


def _path(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


async def _link(link: LinkConfig, timeout_s: float) -> Check:
    from firmware_bridge.events import HelloEvent
    from firmware_bridge.link import GfpLink
    from gate_controller.service.daemon import link_settings

    gfp = GfpLink(link_settings(link))
    task = asyncio.create_task(gfp.run(), name=f"doctor-link-{link.name}")
    hello: HelloEvent | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async for event in gfp.events():
                if isinstance(event, HelloEvent):
                    hello = event
                    break
    except TimeoutError:
        pass
    finally:
        gfp.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    counters = gfp.counters()
    if hello is not None:
        device = hello.device
        return Check(f"link {link.name}", True,
                     f"{link.url}: HELLO from {device.device} {device.serial_no} fw {device.fw_version}")
    if counters.connects == 0:
        return Check(f"link {link.name}", False, f"{link.url}: cannot open the port",
                     "check the device path or device server address, the cable, and that the smartgate user "
                     "is in the dialout group")
    if counters.frames_rx == 0 and counters.bytes_rx > 0:
        return Check(f"link {link.name}", False,
                     f"{link.url}: {counters.bytes_rx} bytes but no valid GFP/1 frame ({counters.garbage_bytes} "
                     "garbage bytes)", "check baudrate/parity against the firmware settings")
    return Check(f"link {link.name}", False, f"{link.url}: opened, no HELLO within {timeout_s:.0f} s",
                 "check the firmware is powered and configured for GFP/1; try smartgate sniff URL")


async def _plc(lane: LaneConfig, timeout_s: float) -> Check:
    from gate_controller.plc.driver import PlcDriver, PlcEvent, PlcLinkUp, stop_task

    got: asyncio.Future[PlcLinkUp] = asyncio.get_running_loop().create_future()

    def listener(event: PlcEvent) -> None:
        if isinstance(event, PlcLinkUp) and not got.done():
            got.set_result(event)

    # healthy() False: the doctor never writes the heartbeat (nor anything else) to a live PLC.
    driver = PlcDriver(lane.plc, name=f"{lane.id}-doctor", listener=listener, healthy=lambda: False)
    task = asyncio.create_task(driver.run(), name=f"doctor-plc-{lane.id}")
    where = (f"{lane.plc.host}:{lane.plc.port}" if lane.plc.transport == "tcp" else str(lane.plc.serial_url)) + \
        f" unit {lane.plc.unit_id}"
    try:
        async with asyncio.timeout(timeout_s):
            up = await got
    except TimeoutError:
        return Check(f"PLC {lane.id}", False, f"{where}: no answer within {timeout_s:.0f} s",
                     "check the address, port/serial settings and unit_id; mbpoll -m tcp -a UNIT -t 1 -r 1 -c 7 HOST")
    finally:
        # pymodbus may swallow one cancellation (asyncio.wait_for in 3.11): cancel until it stops.
        await stop_task(task, name=f"doctor PLC {lane.id}")
    image = up.image
    problems = []
    if image.inputs.get("barrier_up") and image.inputs.get("barrier_down"):
        problems.append("both barrier limit switches are on (wiring or inverted flag?)")
    if image.inputs.get("estop"):
        problems.append("estop reads pressed (if it is not, the contact may need inverted: true)")
    if image.watchdog_tripped:
        problems.append("PLC watchdog tripped (normal while no daemon runs)")
    hard = [p for p in problems if "watchdog" not in p]
    detail = f"{where}: answered; inputs " + ", ".join(f"{k}={int(v)}" for k, v in image.inputs.items())
    if problems:
        detail += "; " + "; ".join(problems)
    return Check(f"PLC {lane.id}", not hard, detail,
                 "see docs/plc-points.md for the point map and polarity" if hard else "")


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {'pass' if c.ok else 'FAIL':<6}  {c.detail}")
        if c.fix and not c.ok:
            lines.append(f"{'':<{width}}  {'':<6}  fix: {c.fix}")
        elif c.fix:
            lines.append(f"{'':<{width}}  {'':<6}  note: {c.fix}")
    failed = sum(not c.ok for c in checks)
    lines.append("")
    lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)


Checker = Callable[[GateConfig, Path], Awaitable[list[Check]]]
