"""`smartgate hub watch|notice|command` against a real broker and a running hub link."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gate_controller.cli import main as smartgate
from gate_controller.hub.commands import CommandDispatcher, ReplayCache
from gate_controller.hub.hub_side import describe
from gate_controller.hub.link import BirthInfo, HubLink
from gate_controller.hub.outbox import Outbox
from tests.support.broker import BROKER_MARKS, MosquittoBroker, free_port, running_broker
from tests.support.hub import COMMAND_KEY, GATE, ROOT, SITE, RecordingTarget, mqtt_config, transaction_record, write_key

pytestmark = BROKER_MARKS


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


def connection(broker: MosquittoBroker) -> list[str]:
    assert broker.tls is not None
    return [broker.url, "--site", SITE, "--tls-ca", str(broker.tls.ca_file), "--username", "hub",
            "--password-file", str(broker.password_file("hub")), "--timeout", "5"]


def test_command_notice_and_watch(broker: MosquittoBroker, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    key_file = write_key(tmp_path)
    wrong_key = tmp_path / "wrong-key"
    wrong_key.write_text("not the key\n")
    target = RecordingTarget()

    async def main() -> None:
        outbox = Outbox.open(tmp_path / "o.db", root_topic=ROOT, site=SITE, gate=GATE)
        replay = ReplayCache(tmp_path / "r.db", window_s=86400)
        dispatcher = CommandDispatcher(key=COMMAND_KEY, target=target, outbox=outbox, replay=replay)
        hub = HubLink(mqtt_config(broker, key_file), site=SITE, gate=GATE, outbox=outbox, commands=dispatcher,
                      birth=lambda: BirthInfo(lanes=["L1"], links={"scanner-l1": "up"}))
        task = asyncio.create_task(hub.run())
        try:
            async with asyncio.timeout(10):
                await hub.wait_connected()
            code = await asyncio.to_thread(smartgate, ["hub", "command", *connection(broker), "--gate", GATE,
                                                       "--key-file", str(key_file), "lane.mode", "lane=L1",
                                                       "mode=closed"])
            assert code == 0
            reply = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert reply["ok"] is True
            assert target.calls == [("lane.mode", {"lane": "L1", "mode": "closed"})]

            code = await asyncio.to_thread(smartgate, ["hub", "command", *connection(broker), "--gate", GATE,
                                                       "--key-file", str(wrong_key), "rebirth"])
            assert code == 1
            assert json.loads(capsys.readouterr().out)["error"] == "bad signature"

            code = await asyncio.to_thread(smartgate, ["hub", "notice", *connection(broker), "--key-file",
                                                       str(key_file), "MSKU1234565", "hold", "--ref", "X-1"])
            assert code == 0
            notice = json.loads(capsys.readouterr().out)
            assert notice["status"] == "hold"

            await outbox.complete_transaction(transaction_record(5))
            # The status and the notice are retained; the transaction and the reply are not (the
            # watcher gets what arrives after it subscribed), so publish one more after it starts.
            watcher = asyncio.create_task(asyncio.to_thread(
                smartgate, ["hub", "watch", *connection(broker), "--count", "3", "--idle-exit", "5", "--validate"]))
            await asyncio.sleep(0.5)
            await outbox.complete_transaction(transaction_record(6))
            assert await watcher == 0
            lines = capsys.readouterr().out.strip().splitlines()
            assert any(line.startswith("STATUS") and "ONLINE" in line for line in lines), lines
            assert any(line.startswith("NOTICE") and "MSKU1234565 hold" in line for line in lines), lines
            assert any(line.startswith("TRANSACTION") and "RELEASE" in line for line in lines), lines
            assert not any("NOT PER CONTRACT" in line for line in lines)

            code = await asyncio.to_thread(smartgate, ["hub", "notice", *connection(broker), "--delete",
                                                       "MSKU1234565"])
            assert code == 0
        finally:
            await hub.shutdown()
            await task
            outbox.close()
            replay.close()

    asyncio.run(main())


def test_watch_json_lines(broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]) -> None:
    code = smartgate(["hub", "watch", *connection(broker), "--json", "--count", "1", "--idle-exit", "3"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) <= 1
    for line in out:
        record = json.loads(line)
        assert record["topic"].startswith(f"smartgate/v1/{SITE}/")


def test_unreachable_broker_and_missing_reply(broker: MosquittoBroker, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    key_file = write_key(tmp_path)
    down = f"mqtt://127.0.0.1:{free_port()}"
    assert smartgate(["hub", "watch", down, "--site", SITE, "--idle-exit", "1"]) == 69
    assert "cannot connect" in capsys.readouterr().err
    # Nobody serves gate NOPE: no reply within the timeout.
    args = connection(broker)
    args[args.index("--timeout") + 1] = "1"
    assert smartgate(["hub", "command", *args, "--gate", "NOPE", "--key-file", str(key_file), "rebirth"]) == 75
    assert "no reply" in capsys.readouterr().err
    assert smartgate(["hub", "command", *args, "--gate", GATE, "--key-file", str(key_file), "rebirth",
                      "bogus"]) == 78


def test_describe_renders_every_kind() -> None:
    tx = {**transaction_record(1), "seq": 4, "historical": True}
    line = describe(f"{ROOT}/transactions", json.dumps(tx).encode())
    assert "RELEASE by auto" in line
    assert "MSKU1234565[released]" in line
    assert "(historical)" in line
    assert "seq 4" in line
    event = {"seq": 5, "type": "alarm", "code": "ESTOP", "severity": "critical", "active": True, "lane": "L1",
             "detail": {}}
    assert describe(f"{ROOT}/events", json.dumps(event).encode()).startswith("ALARM")
    assert "OFFLINE (shutdown)" in describe(f"{ROOT}/status", b'{"state":"offline","reason":"shutdown"}')
    assert "REFUSED: nope" in describe(f"{ROOT}/reply", b'{"request_id":"r","ok":false,"error":"nope"}')
    assert "(5 bytes)" in describe(f"{ROOT}/scans/S1/preview", b"\xff\xd8\xff\x00\x00")
    assert "not JSON" in describe(f"{ROOT}/events", b"\xff\xfe")
