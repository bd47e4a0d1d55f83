"""A gate process killed with SIGKILL at the worst moments; the restarted process delivers."""

from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import BROKER_MARKS, MosquittoBroker, running_broker
from tests.support.hub import Collector, mqtt_config, write_key

pytestmark = [*BROKER_MARKS, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


class Child:
    """``python -m tests.support.hub_child``: the outbox and hub link in a process of their own."""

    def __init__(self, broker: MosquittoBroker, tmp_path: Path, mode: str) -> None:
        settings = mqtt_config(broker, write_key(tmp_path)).model_dump(mode="json")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.hub_child", "--db", str(tmp_path / "outbox.sqlite3"),
             "--mqtt", json.dumps(settings), mode],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def expect(self, word: str, timeout: float = 20.0) -> list[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                parts = line.split()
                if parts and parts[0] == word:
                    return parts[1:]
        self.kill()
        err = self.proc.stderr.read() if self.proc.stderr else ""
        raise AssertionError(f"child never said {word}; stderr:\n{err[-3000:]}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no cleanup, no DISCONNECT, no close of the outbox
        self.proc.wait()
        self._close()

    def wait(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def rows_with(db: Path, msg_id: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE msg_id = ?", (msg_id,)).fetchone()[0])
    finally:
        conn.close()


def test_killed_between_commit_and_puback(broker: MosquittoBroker, tmp_path: Path) -> None:
    with Collector(broker, client_id="c-crash-1") as collector:
        child = Child(broker, tmp_path, "commit")
        try:
            child.expect("CONNECTED")
            broker.pause()  # the PUBLISH will reach the socket, the PUBACK will never come back
            child.send("go")
            msg_id, seq = child.expect("COMMITTED")
            child.expect("PUBLISHED")
            time.sleep(0.1)
        finally:
            child.kill()
            broker.resume()
        assert rows_with(tmp_path / "outbox.sqlite3", msg_id) == 1  # committed, not acknowledged: kept

        restarted = Child(broker, tmp_path, "drain")
        boot_id, recovered = restarted.expect("DRAINED")
        assert restarted.wait() == 0
        assert (boot_id, recovered) == ("2", "-")
        assert rows_with(tmp_path / "outbox.sqlite3", msg_id) == 0

        collector.wait_for(lambda c: any(t["msg_id"] == msg_id for t in c.json_on("/transactions")))
        collector.wait_for(lambda c: (c.json_on("/status") or [{}])[-1].get("reason") == "shutdown")
        copies = [t for t in collector.json_on("/transactions") if t["msg_id"] == msg_id]
        assert 1 <= len(copies) <= 2  # at-least-once: the dead process's PUBLISH may also get through
        assert {t["seq"] for t in copies} == {int(seq)}
        assert copies[-1]["historical"] is True  # re-sent from the backlog by the restarted process
        assert copies[-1]["boot_id"] == 1  # the boot that committed it
        wills = [s for s in collector.json_on("/status") if s.get("reason") == "connection-lost"]
        assert any(w["boot_id"] == 1 for w in wills)  # the killed process's Will
        assert collector.contract_problems() == []


def test_killed_with_an_open_transaction(broker: MosquittoBroker, tmp_path: Path) -> None:
    with Collector(broker, client_id="c-crash-2") as collector:
        child = Child(broker, tmp_path, "open")
        try:
            (transaction_id,) = child.expect("OPENED")
        finally:
            child.kill()
        restarted = Child(broker, tmp_path, "drain")
        boot_id, recovered = restarted.expect("DRAINED")
        assert restarted.wait() == 0
        assert (boot_id, recovered) == ("2", transaction_id)
        collector.wait_for(lambda c: any(t["transaction_id"] == transaction_id
                                         for t in c.json_on("/transactions")))
        time.sleep(0.3)
        copies = [t for t in collector.json_on("/transactions") if t["transaction_id"] == transaction_id]
        assert len(copies) == 1
        assert copies[0]["recovered"] is True
        assert "CANCELLED" in copies[0]["decision"]["reasons"]
        assert copies[0]["decision"]["action"] == "release"
        assert copies[0]["boot_id"] == 2
        assert collector.contract_problems() == []

    # A third start finds nothing left to recover.
    third = Child(broker, tmp_path, "drain")
    assert third.expect("DRAINED") == ["3", "-"]
    assert third.wait() == 0


def test_killed_while_the_broker_is_down(broker: MosquittoBroker, tmp_path: Path) -> None:
    with Collector(broker, client_id="c-crash-3") as collector:
        broker.stop()
        child = Child(broker, tmp_path, "commit-offline")
        try:
            msg_id, seq = child.expect("COMMITTED")
            time.sleep(0.3)  # a few refused connects
        finally:
            child.kill()
        broker.start()
        restarted = Child(broker, tmp_path, "drain")
        restarted.expect("DRAINED")
        assert restarted.wait() == 0
        collector.wait_for(lambda c: any(t["msg_id"] == msg_id for t in c.json_on("/transactions")))
        copies = [t for t in collector.json_on("/transactions") if t["msg_id"] == msg_id]
        assert [t["seq"] for t in copies] == [int(seq)]
        assert copies[0]["historical"] is True
        assert collector.contract_problems() == []
