"""A real mosquitto broker for tests: loopback only, TLS, password auth, persistence.

Each `MosquittoBroker` gets its own directory with a throw-away CA, a server certificate for
``127.0.0.1``/``localhost``, a client certificate, a password file made with ``mosquitto_passwd``
and a persistence database, and keeps its port across `stop`/`start` so clients reconnect to the
same URL. ``max_queued_messages`` is raised far above mosquitto's default (1000), which otherwise
silently drops QoS 1 messages queued for a slow or offline subscriber and would make a loss test
blame the gate for the broker's policy.

Usage::

    with MosquittoBroker(tmp_path / "broker") as broker:
        config = broker.mqtt_config(command_key_file=key_path)
        ...
        broker.restart()
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

__all__ = [
    "BROKER_MARKS",
    "GATE_USER",
    "HUB_USER",
    "MOSQUITTO",
    "MosquittoBroker",
    "TlsMaterial",
    "free_port",
    "make_tls_material",
    "mosquitto_available",
    "running_broker",
]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

GATE_USER = ("gate", "gate-secret-pw")
HUB_USER = ("hub", "hub-secret-pw")


def mosquitto_available() -> bool:
    return os.access(MOSQUITTO, os.X_OK) and os.access(MOSQUITTO_PASSWD, os.X_OK)


BROKER_MARKS = [
    pytest.mark.broker,
    pytest.mark.skipif(not mosquitto_available(), reason="needs mosquitto and mosquitto_passwd"),
]
"""``pytestmark`` of a module whose tests talk to a real broker."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsMaterial:
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls_material(directory: Path) -> TlsMaterial:
    """A CA plus server and client certificates (EC P-256: fast to generate), valid for 2 days."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=smartgate test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "gate", "extendedKeyUsage=clientAuth\n"),
    ):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=directory)
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n" + ext
        )
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    for key in ("ca.key", "server.key", "client.key"):
        (directory / key).chmod(0o600)
    return TlsMaterial(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


class MosquittoBroker:
    """One mosquitto process on 127.0.0.1 with a fixed port; `start`/`stop`/`restart` it at will."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool = True,
        require_client_cert: bool = False,
        users: Mapping[str, str] | None = None,
        port: int | None = None,
        anonymous: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls_enabled = tls
        self.require_client_cert = require_client_cert
        self.anonymous = anonymous
        """Also accept clients without credentials (what `smartgate demo --mqtt URL`'s simulated hub is)."""
        self.users = dict(users) if users is not None else dict([GATE_USER, HUB_USER])
        self.tls: TlsMaterial | None = make_tls_material(self.workdir / "tls") if tls else None
        self.log_file = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_passwords()
        self._write_config()

    # ------------------------------------------------------------------ files

    def _write_passwords(self) -> None:
        self.password_db = self.workdir / "passwd"
        self.password_db.unlink(missing_ok=True)
        self.password_db.touch(mode=0o600)
        for user, password in self.users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(self.password_db), user, password],
                           check=True, capture_output=True)
        self.password_db.chmod(0o600)
        for user, password in self.users.items():
            path = self.workdir / f"{user}.password"
            path.write_text(password + "\n")
            path.chmod(0o600)

    def password_file(self, user: str) -> Path:
        return self.workdir / f"{user}.password"

    def _write_config(self) -> None:
        persistence = self.workdir / "persistence"
        persistence.mkdir(exist_ok=True)
        lines = [
            f"user {getpass.getuser()}",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            f"password_file {self.password_db}",
            "persistence true",
            f"persistence_location {persistence}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_inflight_messages 100",
            "message_size_limit 0",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"log_dest file {self.log_file}",
        ]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        self.config_file = self.workdir / "mosquitto.conf"
        self.config_file.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ process

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls_enabled else 'mqtt'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {err}\n{self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistence database (retained messages, sessions)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close(proc)

    def kill(self) -> None:
        """SIGKILL: no save; what autosave wrote last second survives."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close(proc)

    def _close(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stderr is not None:
            proc.stderr.close()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the TCP connections stay open but nothing is read or acknowledged."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ client settings

    def mqtt_settings(self, user: str = "gate", *, client_cert: bool = False, **overrides: Any) -> dict[str, Any]:
        """A ``mqtt:`` config section (as plain data) that reaches this broker as ``user``."""
        settings: dict[str, Any] = {
            "url": self.url,
            "username": user,
            "password_file": str(self.password_file(user)),
        }
        if self.tls is not None:
            tls: dict[str, Any] = {"ca_file": str(self.tls.ca_file)}
            if client_cert or self.require_client_cert:
                tls.update(cert_file=str(self.tls.client_cert), key_file=str(self.tls.client_key))
            settings["tls"] = tls
        else:
            settings["allow_insecure"] = True
        settings.update(overrides)
        return settings


@contextmanager
def running_broker(workdir: Path, **kwargs: Any) -> Iterator[MosquittoBroker]:
    """A started broker in ``workdir``, stopped on the way out (the body of the broker fixtures)."""
    broker = MosquittoBroker(workdir, **kwargs)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
