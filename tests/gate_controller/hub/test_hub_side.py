"""The hub-side client misses nothing: a persistent session by default, across reconnects and broker restarts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from gate_controller.hub.hub_side import HubClient, ReceivedMessage
from tests.support.broker import GATE_USER, HUB_USER, MosquittoBroker, mosquitto_available

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(not mosquitto_available(), reason="needs mosquitto and mosquitto_passwd"),
]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(tmp_path_factory.mktemp("broker"), tls=False)
    b.start()
    yield b
    b.stop()


def hub(broker: MosquittoBroker, **options: object) -> HubClient:
    return HubClient(broker.url, username=HUB_USER[0], password=HUB_USER[1], **options)  # type: ignore[arg-type]


def gate_publishes(broker: MosquittoBroker, topic: str, count: int) -> None:
    publish.multiple([{"topic": topic, "payload": json.dumps({"seq": i}), "qos": 1} for i in range(count)],
                     hostname=broker.host, port=broker.port, client_id="test-gate",
                     auth={"username": GATE_USER[0], "password": GATE_USER[1]})


def drain(client: HubClient, want: int, timeout: float = 5.0) -> list[ReceivedMessage]:
    got: list[ReceivedMessage] = []
    while len(got) < want and (message := client.receive(timeout)) is not None:
        got.append(message)
    return got


def test_a_watcher_resumes_its_session_after_a_broker_restart(broker: MosquittoBroker, tmp_path: Path) -> None:
    topic = "smartgate/v1/T/G1/events"
    hub(broker, client_id="watch-resume", clean_session=True).connect().close()  # no leftovers
    first = hub(broker, client_id="watch-resume")
    first.connect()
    first.subscribe("smartgate/v1/T/#")
    first.close()
    broker.restart()  # SIGTERM: the broker saves its sessions
    gate_publishes(broker, topic, 20)  # while nobody watches
    with hub(broker, client_id="watch-resume") as second:  # same id, default session, no new subscribe
        got = drain(second, 20)
    assert [json.loads(m.payload)["seq"] for m in got] == list(range(20))
    assert all(m.qos == 1 for m in got)
    hub(broker, client_id="watch-resume").discard_session()


def test_a_clean_session_is_an_option_and_forgets(broker: MosquittoBroker) -> None:
    first = hub(broker, client_id="watch-clean", clean_session=True)
    first.connect()
    first.subscribe("smartgate/v1/C/#")
    first.close()
    gate_publishes(broker, "smartgate/v1/C/G1/events", 3)
    with hub(broker, client_id="watch-clean", clean_session=True) as second:
        assert drain(second, 1, timeout=1.0) == []


def test_a_generated_id_keeps_its_session_while_open_and_discards_it_on_close(broker: MosquittoBroker) -> None:
    client = hub(broker)
    assert not client.clean_session
    client.connect()
    client.subscribe("smartgate/v1/D/#")
    client_id = client.client_id
    client.close()
    gate_publishes(broker, "smartgate/v1/D/G1/events", 3)
    # Nobody can resume a generated id's session, so close() ended it: nothing was queued for it.
    with hub(broker, client_id=client_id) as again:
        assert drain(again, 1, timeout=1.0) == []
    hub(broker, client_id=client_id).discard_session()
