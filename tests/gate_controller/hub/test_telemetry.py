"""Telemetry (contract section 6) and its Prometheus endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gate_controller.hub.hub_side import contract_errors
from gate_controller.hub.outbox import Outbox
from gate_controller.hub.telemetry import Telemetry, TelemetrySnapshot
from tests.support.hub import GATE, ROOT, SITE, transaction_record


def snapshot() -> TelemetrySnapshot:
    return TelemetrySnapshot(
        links={"scanner-l1": "up", "ocr-l1": "down"}, lanes={"L1": "idle", "L2": "closed"},
        counters={"transactions": 12, "release": 10, "hold-2": 2},
        inference_p50_ms=201.5, inference_p95_ms=260.0, inference_count=12,
        review_lanes={"L1": LANE_FIGURES, "L2": {**LANE_FIGURES, "input_distance": None, "drift": False}},
    )


LANE_FIGURES = {"window": 40, "suspect_share": 0.05, "unavailable_share": 0.025, "input_distance": 4.2,
                "drift": True}


def test_telemetry_payload_follows_the_contract(tmp_path: Path) -> None:
    async def main() -> None:
        outbox = Outbox.open(tmp_path / "o.db", root_topic=ROOT, site=SITE, gate=GATE)
        try:
            await outbox.complete_transaction(transaction_record(1))
            telemetry = Telemetry(snapshot=snapshot, outbox=outbox, publish=outbox.enqueue_telemetry,
                                  interval_s=0.05, disk_path=tmp_path)
            payload = await telemetry.collect()
            assert contract_errors(f"{ROOT}/telemetry", json.dumps(payload).encode()) == []
            assert payload["backlog"]["pending"] == 1
            assert payload["backlog"]["oldest_age_s"] is not None
            assert payload["boot_id"] == 1
            assert payload["links"] == {"scanner-l1": "up", "ocr-l1": "down"}
            assert payload["inference"] == {"p50_ms": 201.5, "p95_ms": 260.0, "count": 12, "lanes": {
                "L1": LANE_FIGURES, "L2": {**LANE_FIGURES, "input_distance": None, "drift": False}}}
            assert payload["rss_mb"] > 10
            assert payload["disk_free_mb"] > 0
            # run() queues one message per interval through the outbox until stopped.
            task = asyncio.create_task(telemetry.run())
            await asyncio.sleep(0.3)
            telemetry.stop()
            await task
            rows = await outbox.fetch_after(0, 100)
            telemetry_rows = [r for r in rows if r.kind == "telemetry"]
            assert 3 <= len(telemetry_rows) <= 7
            assert all(r.qos == 0 and r.topic == f"{ROOT}/telemetry" for r in telemetry_rows)
            for row in telemetry_rows:
                assert contract_errors(row.topic, row.payload) == []
        finally:
            outbox.close()

    asyncio.run(main())


def test_cpu_percent_measures_the_process(tmp_path: Path) -> None:
    clock = {"t": 100.0}

    async def main() -> None:
        outbox = Outbox.open(tmp_path / "o.db", root_topic=ROOT, site=SITE, gate=GATE)
        try:
            telemetry = Telemetry(snapshot=snapshot, outbox=outbox, publish=outbox.enqueue_telemetry,
                                  interval_s=30, disk_path=tmp_path, clock=lambda: clock["t"])
            before = os.times()
            deadline = time.process_time() + 0.2
            while time.process_time() < deadline:
                pass
            spent = (os.times().user + os.times().system) - (before.user + before.system)
            clock["t"] += 1.0  # one second of "wall" time in which we burned ``spent`` of CPU
            payload = await telemetry.collect()
            assert payload["cpu_percent"] == pytest.approx(spent * 100, abs=5)
            assert payload["uptime_s"] == 1.0
        finally:
            outbox.close()

    asyncio.run(main())


def _scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body: str = response.read().decode()
        return body


def test_prometheus_endpoint_serves_the_same_figures(tmp_path: Path) -> None:
    async def main() -> None:
        outbox = Outbox.open(tmp_path / "o.db", root_topic=ROOT, site=SITE, gate=GATE)
        try:
            for i in range(3):
                await outbox.complete_transaction(transaction_record(i))
            telemetry = Telemetry(snapshot=snapshot, outbox=outbox, publish=outbox.enqueue_telemetry,
                                  interval_s=3600, disk_path=tmp_path, prometheus_port=0,
                                  hub_connected=lambda: False)
            task = asyncio.create_task(telemetry.run())
            try:
                for _ in range(100):
                    if telemetry.prometheus_port:
                        break
                    await asyncio.sleep(0.01)
                port = telemetry.prometheus_port
                assert port is not None
                text = await asyncio.to_thread(_scrape, port)
                with pytest.raises(urllib.error.HTTPError) as missing:
                    await asyncio.to_thread(_scrape, port, "/other")
                assert missing.value.code == 404
                missing.value.close()
                payload = await telemetry.collect()
            finally:
                telemetry.stop()
                await task
        finally:
            outbox.close()
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in text.splitlines() if line and not line.startswith("#")}
        assert samples["smartgate_backlog_pending"] == payload["backlog"]["pending"] == 3
        assert samples["smartgate_boot_id"] == 1
        assert samples['smartgate_link_up{link="scanner-l1"}'] == 1
        assert samples['smartgate_link_up{link="ocr-l1"}'] == 0
        assert samples['smartgate_lane_state{lane="L2",state="closed"}'] == 1
        assert samples['smartgate_events_total{name="hold_2"}'] == 2
        assert samples['smartgate_inference_latency_ms{quantile="0.95"}'] == 260.0
        assert samples["smartgate_inference_total"] == 12
        assert samples['smartgate_review_suspect_share{lane="L1"}'] == 0.05
        assert samples['smartgate_review_unavailable_share{lane="L1"}'] == 0.025
        assert samples['smartgate_review_input_distance{lane="L1"}'] == 4.2
        assert 'smartgate_review_input_distance{lane="L2"}' not in samples  # no envelope: no figure
        assert samples['smartgate_review_window{lane="L2"}'] == 40
        assert samples['smartgate_model_drift{lane="L1"}'] == 1
        assert samples['smartgate_model_drift{lane="L2"}'] == 0
        assert samples["smartgate_hub_connected"] == 0
        assert samples["smartgate_disk_free_megabytes"] == pytest.approx(payload["disk_free_mb"], rel=0.01)
        assert "# TYPE smartgate_events_total counter" in text

    asyncio.run(main())


def test_prometheus_endpoint_answers_head_and_refuses_other_methods(tmp_path: Path) -> None:
    async def main() -> tuple[int, bytes, int]:
        outbox = Outbox.open(tmp_path / "o.db", root_topic=ROOT, site=SITE, gate=GATE)
        telemetry = Telemetry(snapshot=snapshot, outbox=outbox, publish=outbox.enqueue_telemetry,
                              interval_s=3600, disk_path=tmp_path, prometheus_port=0)
        try:
            await telemetry.start_server()
            port = telemetry.prometheus_port
            assert port is not None

            def request(method: str) -> tuple[int, bytes]:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method=method)
                try:
                    with urllib.request.urlopen(req, timeout=5) as response:
                        return response.status, response.read()
                except urllib.error.HTTPError as err:
                    err.close()
                    return err.code, b""

            head_status, head_body = await asyncio.to_thread(request, "HEAD")
            post_status, _ = await asyncio.to_thread(request, "POST")
            # stop() closes the endpoint even though run() never started.
            telemetry.stop()
            await asyncio.sleep(0.2)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return head_status, head_body, post_status
        finally:
            telemetry.stop()
            outbox.close()

    head_status, head_body, post_status = asyncio.run(main())
    assert (head_status, head_body) == (200, b"")
    assert post_status == 405
