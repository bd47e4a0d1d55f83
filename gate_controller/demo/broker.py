"""The demo's own MQTT broker: a local mosquitto when installed, else an embedded amqtt."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import time
from pathlib import Path
from typing import Any

from gate_controller.demo.child import orphan_proof

__all__ = ["LocalBroker", "mosquitto_path", "wait_port"]


class LocalBroker:
    """The demo's broker: a local mosquitto when installed, else an embedded amqtt."""

    def __init__(self, host: str, port: int, workdir: Path) -> None:
        self.host, self.port, self.workdir = host, port, workdir
        self.kind = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._amqtt: Any = None

    async def start(self) -> None:
        exe = mosquitto_path()
        if exe:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(
                # Run as whoever runs the demo: a broker started as root would switch to the
                # mosquitto user, which also drops the signal that ties it to the demo.
                f"user {getpass.getuser()}\n"
                f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 100000\nmax_inflight_messages 0\nlog_type error\n"
            )
            self._proc = await asyncio.create_subprocess_exec(
                *orphan_proof([exe, "-c", str(conf)]), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            self.kind = f"mosquitto ({exe})"
        else:
            try:
                from amqtt.broker import Broker
            except ImportError as err:
                raise RuntimeError(
                    "no MQTT broker: install Debian's mosquitto (apt-get install mosquitto) or the demo extra "
                    "(pip install 'smartgate[demo]'), or pass --mqtt URL"
                ) from err
            self._amqtt = Broker({
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            })
            await self._amqtt.start()
            self.kind = "embedded amqtt"
        await wait_port(self.host, self.port, 10.0)

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._proc.wait()
            if self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()
        if self._amqtt is not None:
            with contextlib.suppress(Exception):
                await self._amqtt.shutdown()


def mosquitto_path() -> str | None:
    """Debian installs the broker in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


async def wait_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
