"""sd_notify client against a real AF_UNIX datagram socket standing in for the service manager.

The receiving socket has SO_PASSCRED set, as systemd's notification socket does, so the tests also
check what ``NotifyAccess=main`` relies on: the kernel-attached sender PID is the daemon's own.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gate_controller.service import sdnotify
from gate_controller.service.sdnotify import Notifier, watchdog_interval_s


@dataclass(frozen=True)
class Datagram:
    assignments: list[str]
    pid: int


class FakeManager:
    """The receiving end of ``$NOTIFY_SOCKET``: a bound datagram socket that reads credentials."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def receive(self, timeout_s: float = 2.0) -> Datagram:
        self.sock.settimeout(timeout_s)
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("3i", payload[: struct.calcsize("3i")])
        return Datagram(data.decode("utf-8").split("\n"), pid)

    def assert_idle(self) -> None:
        self.sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            self.sock.recv(4096)


def _bound(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(address)
    return sock


@pytest.fixture
def path_manager(tmp_path: Path) -> Iterator[FakeManager]:
    path = tmp_path / "notify"
    with _bound(str(path)) as sock:
        yield FakeManager(sock, str(path))


@pytest.fixture
def abstract_manager() -> Iterator[FakeManager]:
    name = f"smartgate-test-{uuid.uuid4().hex}"
    with _bound("\0" + name) as sock:
        yield FakeManager(sock, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeManager]:
    if request.param == "path":
        address: str = str(tmp_path / "notify")
        with _bound(address) as sock:
            yield FakeManager(sock, address)
    else:
        name = f"smartgate-test-{uuid.uuid4().hex}"
        with _bound("\0" + name) as sock:
            yield FakeManager(sock, "@" + name)


def test_each_message_arrives_with_our_pid(manager: FakeManager) -> None:
    notifier = Notifier(manager.address)
    assert notifier.enabled

    assert notifier.ready("2 lanes up")
    got = manager.receive()
    assert got.assignments == ["READY=1", "STATUS=2 lanes up"]
    assert got.pid == os.getpid()

    assert notifier.watchdog()
    assert manager.receive().assignments == ["WATCHDOG=1"]

    assert notifier.status("L1 idle, L2 scanning")
    assert manager.receive().assignments == ["STATUS=L1 idle, L2 scanning"]

    assert notifier.stopping()
    assert manager.receive().assignments == ["STOPPING=1"]

    assert notifier.notify("STATUS=custom", "ERRNO=5")
    assert manager.receive().assignments == ["STATUS=custom", "ERRNO=5"]
    manager.assert_idle()


def test_reloading_carries_a_current_monotonic_timestamp(path_manager: FakeManager) -> None:
    notifier = Notifier(path_manager.address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reloading configuration")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    lines = path_manager.receive().assignments
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert lines[2] == "STATUS=reloading configuration"


def test_extend_timeout_is_sent_in_microseconds(path_manager: FakeManager) -> None:
    notifier = Notifier(path_manager.address)
    assert notifier.extend_timeout(12.5)
    assert path_manager.receive().assignments == ["EXTEND_TIMEOUT_USEC=12500000"]
    with pytest.raises(ValueError):
        notifier.extend_timeout(0)


def test_status_text_cannot_inject_assignments(path_manager: FakeManager) -> None:
    notifier = Notifier(path_manager.address)
    assert notifier.status("PLC timeout\nREADY=1\n" + "x" * 500)
    (line,) = path_manager.receive().assignments
    assert line.startswith("STATUS=PLC timeout READY=1 x")
    assert len(line) == len("STATUS=") + 200


@pytest.mark.parametrize("bad", ["READY", "=1", "STATUS=a\nREADY=1", ""])
def test_malformed_assignments_are_refused(path_manager: FakeManager, bad: str) -> None:
    with pytest.raises(ValueError):
        Notifier(path_manager.address).notify(bad)
    path_manager.assert_idle()


def test_no_socket_means_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier.from_environment().enabled
    assert sdnotify.ready("up") is False
    assert sdnotify.watchdog() is False
    assert sdnotify.notify("STATUS=x") is False
    # Values systemd would never give an AF_UNIX client are refused, not guessed at.
    assert not Notifier("vsock:2:1234").enabled
    assert Notifier("relative/path").watchdog() is False
    assert not Notifier("@").enabled


def test_module_functions_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch, path_manager: FakeManager, abstract_manager: FakeManager
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_manager.address)
    assert sdnotify.ready()
    assert path_manager.receive().assignments == ["READY=1"]
    assert sdnotify.status("one")
    assert path_manager.receive().assignments == ["STATUS=one"]

    monkeypatch.setenv("NOTIFY_SOCKET", abstract_manager.address)
    assert sdnotify.watchdog()
    assert abstract_manager.receive().assignments == ["WATCHDOG=1"]
    assert sdnotify.reloading()
    assert abstract_manager.receive().assignments[0] == "RELOADING=1"
    assert sdnotify.extend_timeout(1)
    assert abstract_manager.receive().assignments == ["EXTEND_TIMEOUT_USEC=1000000"]
    assert sdnotify.stopping("bye")
    assert abstract_manager.receive().assignments == ["STOPPING=1", "STATUS=bye"]
    path_manager.assert_idle()


def test_a_vanished_manager_is_reported_once_and_recovery_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = str(tmp_path / "notify")
    notifier = Notifier(address)
    caplog.set_level(logging.INFO, logger="gate_controller.service.sdnotify")

    # Nobody bound yet: the send fails (ENOENT), is reported by the return value, never raised.
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert address in warnings[0].getMessage()

    with _bound(address) as sock:
        manager = FakeManager(sock, address)
        assert notifier.watchdog() is True
        assert manager.receive().assignments == ["WATCHDOG=1"]
    assert any(r.levelno == logging.INFO and "work again" in r.getMessage() for r in caplog.records)


def test_a_bound_but_closed_socket_refuses(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    sock = _bound(address)
    sock.close()  # the path stays, nobody listens: ECONNREFUSED
    assert Notifier(address).ready() is False


def test_watchdog_interval_from_environment() -> None:
    me = os.getpid()
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me)}) == 30.0
    # Inherited by a child process: the watchdog is the parent's business.
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me + 1)}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=1) == 30.0
    for bad in ("0", "-5", "thirty", ""):
        assert watchdog_interval_s({"WATCHDOG_USEC": bad}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}) is None


def test_watchdog_interval_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "15000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 15.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval_s() is None


def test_notify_needs_an_assignment() -> None:
    with pytest.raises(ValueError):
        Notifier(None).notify()
    with pytest.raises(ValueError):
        Notifier(None, send_timeout_s=0)
