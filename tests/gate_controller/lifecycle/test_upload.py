"""Labelled samples to the hub in chunks, behind transactions, across a broker restart, without loss."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gate_controller.hub.hub_side import ReceivedMessage, SampleAssembler
from gate_controller.hub.link import BirthInfo, HubLink
from gate_controller.hub.outbox import Outbox
from gate_controller.lifecycle.upload import SampleUploader
from inference.scan import save_scan
from inference.synthetic import generate_scan
from tests.support.broker import BROKER_MARKS, MosquittoBroker, running_broker
from tests.support.hub import GATE, ROOT, SITE, Collector, mqtt_config, transaction_record, write_key

pytestmark = [*BROKER_MARKS, pytest.mark.slow]


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


def write_samples(directory: Path, n: int) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        syn = generate_scan(900 + i, length_ft=20)
        name = f"T{i:03d}"
        save_scan(syn.scan, directory / f"{name}.npz")
        (directory / f"{name}.json").write_text(json.dumps({
            "format": "smartgate.sample/1", "transaction_id": name, "scan_file": f"{name}.npz",
            "finding": syn.finding, "labels": list(syn.labels), "labelled_at": "2026-12-06T10:00:00.000Z"}))
        names.append(name)
    return names


def test_upload_survives_a_broker_restart_and_yields_to_transactions(broker: MosquittoBroker, tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    names = write_samples(samples, 3)
    received = tmp_path / "hub"
    assembler = SampleAssembler(received)

    async def main() -> None:
        with Collector(broker, client_id="c-upload") as collector:
            outbox = Outbox.open(tmp_path / "outbox.sqlite3", root_topic=ROOT, site=SITE, gate=GATE)
            hub = HubLink(mqtt_config(broker, write_key(tmp_path)), site=SITE, gate=GATE, outbox=outbox,
                          birth=lambda: BirthInfo(lanes=["L1"], links={}))
            uploader = SampleUploader(samples_dir=samples, outbox=outbox, state_path=tmp_path / "uploads.json",
                                      hub_connected=lambda: hub.connected, chunk_bytes=64 * 1024)
            link = asyncio.create_task(hub.run())
            upload: asyncio.Task[int] | None = None
            try:
                async with asyncio.timeout(10):
                    await hub.wait_connected()
                # Something else waiting in the outbox goes first: nothing is chunked while it waits.
                await outbox.complete_transaction(transaction_record(1))
                upload = asyncio.create_task(uploader.upload_pending())
                async with asyncio.timeout(30):
                    while uploader.chunks_sent < 4:
                        await asyncio.sleep(0.02)
                await asyncio.to_thread(broker.restart)  # mid-upload
                await outbox.complete_transaction(transaction_record(2))
                async with asyncio.timeout(120):
                    assert await upload == 3
                    while outbox.pending_count():
                        await asyncio.sleep(0.1)
                assert uploader.pending() == []
                # Nothing is sent twice once it is through: a second run has nothing to do.
                assert await uploader.upload_pending() == 0
            finally:
                if upload is not None and not upload.done():
                    upload.cancel()
                await hub.shutdown(grace_s=3.0)
                await link
                outbox.close()
            def chunks_of(c: Collector) -> list[ReceivedMessage]:
                c.pump()
                return [m for m in c.messages if "/samples/" in m.topic]

            await asyncio.to_thread(collector.wait_for, lambda c: len({m.topic for m in chunks_of(c)})
                                    >= uploader.chunks_sent, 30.0)
            chunks = chunks_of(collector)
            topics = [m.topic for m in collector.messages if "/transactions" in m.topic or "/samples/" in m.topic]
            assert topics[0].endswith("/transactions")  # the waiting transaction went before any chunk
            for message in chunks:
                assembler.add(message.payload)
            assert sorted(assembler.completed) == names
            for name in names:
                for suffix in (".json", ".npz"):
                    assert (received / f"{name}{suffix}").read_bytes() == (samples / f"{name}{suffix}").read_bytes()
            header = json.loads(chunks[0].payload.partition(b"\n")[0])
            assert header["chunks"] > 1
            assert all(len(m.payload) <= 64 * 1024 + 512 for m in chunks)  # bounded
            assert collector.contract_problems() == []

    asyncio.run(main())


def test_resumes_where_it_stopped_and_resends_a_relabelled_sample(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    write_samples(samples, 2)

    class _Outbox:
        def __init__(self) -> None:
            self.chunks: list[tuple[str, int]] = []
            self.fail_at: int | None = 3

        def pending_count(self) -> int:
            return 0

        async def enqueue_sample_chunk(self, sample: str, chunk: int, payload: bytes) -> None:
            self.chunks.append((sample, chunk))
            if len(self.chunks) == self.fail_at:
                self.fail_at = None
                raise OSError("disk full")  # the commit fails mid-sample

    async def main() -> None:
        box = _Outbox()
        state = tmp_path / "uploads.json"
        first = SampleUploader(samples_dir=samples, outbox=box, state_path=state,  # type: ignore[arg-type]
                               hub_connected=lambda: True, chunk_bytes=200 * 1024)
        with pytest.raises(OSError, match="disk full"):
            await first.upload_pending()
        done_before = list(box.chunks)
        box.chunks.clear()
        again = SampleUploader(samples_dir=samples, outbox=box, state_path=state,  # type: ignore[arg-type]
                               hub_connected=lambda: True, chunk_bytes=200 * 1024)
        assert await again.upload_pending() == 2
        # The chunk that failed is sent again; the ones committed before are not.
        assert box.chunks[0] == done_before[-1]
        assert not set(done_before[:-1]) & set(box.chunks)
        box.chunks.clear()
        label = samples / "T001.json"
        label.write_text(label.read_text().replace('"finding"', '"relabelled": true, "finding"'))
        assert await again.upload_pending() == 1
        assert {s for s, _ in box.chunks} == {"T001"}

    asyncio.run(main())
