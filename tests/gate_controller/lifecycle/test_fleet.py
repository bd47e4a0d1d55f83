"""Model switches and drift alarms on the gate, with a real mosquitto, the real review worker and
real packages: refused packages, canary failure, live-rate rollback, drift raised and cleared."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gate_controller.config.schema import CanaryConfig, DriftConfig
from gate_controller.core.ports import CommandRefused
from gate_controller.hub.hub_side import HubClient
from gate_controller.hub.link import BirthInfo, HubLink
from gate_controller.hub.outbox import Outbox
from gate_controller.lifecycle.drift import DriftMonitor
from gate_controller.lifecycle.fleet import ModelManager
from inference.adaptation import ENVELOPE_FILE, Envelope
from inference.package import PackageStore, build_package, generate_key, load_private_key, pack
from inference.package.manifest import Manifest
from inference.reviewer import Reviewer
from inference.runtime import DEFAULT_MODEL_PATH
from inference.scan import Scan, save_scan
from inference.synthetic import generate_scan
from inference.worker import ReviewWorker
from tests.support.broker import BROKER_MARKS, HUB_USER, MosquittoBroker, running_broker
from tests.support.hub import GATE, ROOT, SITE, Collector, mqtt_config, write_key
from tests.support.inference import edit_after_signing, shipped_version

pytestmark = [*BROKER_MARKS, pytest.mark.slow]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_key(d / "hub.key", d / "hub.pub")
    generate_key(d / "rogue.key", d / "rogue.pub")
    return {"hub": d / "hub.key", "pub": d / "hub.pub", "rogue": d / "rogue.key"}


@pytest.fixture(scope="module")
def clean_scans() -> list[Scan]:
    return [generate_scan(300 + i, cargo="cartons").scan for i in range(8)]


@dataclass
class Gate:
    outbox: Outbox
    worker: ReviewWorker
    models: ModelManager
    drift: DriftMonitor
    store: PackageStore


@asynccontextmanager
async def gate(broker: MosquittoBroker, tmp_path: Path, keys: dict[str, Path], *, samples: Path,
               canary: CanaryConfig | None = None, drift: DriftConfig | None = None,
               model: Path | None = None) -> AsyncIterator[Gate]:
    outbox = Outbox.open(tmp_path / "outbox.sqlite3", root_topic=ROOT, site=SITE, gate=GATE)
    store = PackageStore(tmp_path / "models")
    worker = ReviewWorker(model, trusted_keys=[keys["pub"]])  # as the daemon: the worker checks signatures too
    models = ModelManager(store=store, trusted_keys=[keys["pub"]], reviewer=worker, emit=outbox.emit_event,
                          samples_dir=samples, canary=canary or CanaryConfig(), fallback_model=model)
    hub = HubLink(mqtt_config(broker, write_key(tmp_path)), site=SITE, gate=GATE, outbox=outbox,
                  birth=lambda: BirthInfo(lanes=["L1"], links={}), models=models)
    monitor = DriftMonitor(drift or DriftConfig(), emit=outbox.emit_event, model_path=lambda: worker.model_path)
    task = asyncio.create_task(hub.run())
    try:
        await worker.start()
        async with asyncio.timeout(10):
            await hub.wait_connected()
        yield Gate(outbox, worker, models, monitor, store)
    finally:
        await models.wait_idle()
        await monitor.wait_idle()
        await worker.close()
        await hub.shutdown(grace_s=3.0)
        await task
        outbox.close()


def events(collector: Collector, code: str) -> list[dict[str, Any]]:
    return [e for e in collector.json_on("/events") if e["code"] == code]


def write_samples(directory: Path, scans: list[tuple[Scan, str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for scan, finding in scans:
        save_scan(scan, directory / f"{scan.scan_id}.npz")
        (directory / f"{scan.scan_id}.json").write_text(json.dumps({
            "format": "smartgate.sample/1", "scan_id": scan.scan_id, "scan_file": f"{scan.scan_id}.npz",
            "finding": finding, "labels": []}))
    return directory


def trigger_happy(out: Path, keys: dict[str, Path], version: str, files: dict[str, bytes] | None = None) -> Manifest:
    """The shipped network with a suspect threshold that calls nearly everything suspect."""
    spec = json.loads(DEFAULT_MODEL_PATH.with_suffix(".json").read_text())
    thresholds = {**spec["thresholds"], "suspect": 0.02, "region": 0.01}
    return build_package(DEFAULT_MODEL_PATH, out, key=load_private_key(keys["hub"]), name="xray", version=version,
                         spec_update={"thresholds": thresholds}, files=files)


def test_packages_over_mqtt_installed_or_refused_with_an_event(broker: MosquittoBroker, tmp_path: Path,
                                                                keys: dict[str, Path]) -> None:
    """The hub publishes packages retained on models/{name}/{version}: a good one is installed, a
    forged, a truncated and a wrongly hashed one are each refused with a MODEL_PACKAGE alarm."""
    def package(version: str, signer: str = "hub") -> Path:
        out = tmp_path / f"pkg-{version}"
        build_package(DEFAULT_MODEL_PATH, out, key=load_private_key(keys[signer]), name="xray", version=version)
        return out

    tampered = package("2.0.3")
    data = bytearray((tampered / "xray_anomaly.tflite").read_bytes())
    data[-100] ^= 0x55
    (tampered / "xray_anomaly.tflite").write_bytes(bytes(data))
    truncated = pack(package("2.0.2"))
    published = {"2.0.1": pack(package("2.0.1", signer="rogue")), "2.0.2": truncated[: len(truncated) * 2 // 3],
                 "2.0.3": pack(tampered), "2.0.4": b"\x00" * 1024, "2.1.0": pack(package("2.1.0"))}
    hub = HubClient(broker.url, username=HUB_USER[0], password=HUB_USER[1], ca_file=str(broker.tls.ca_file))

    async def main() -> None:
        with Collector(broker, client_id="c-packages") as collector:
            await asyncio.to_thread(hub.connect)
            try:
                for version, payload in published.items():
                    await asyncio.to_thread(hub.publish_model, SITE, "xray", version, payload)
                async with gate(broker, tmp_path, keys, samples=tmp_path / "samples") as g:
                    await asyncio.to_thread(collector.wait_for, lambda c: len(events(c, "MODEL_PACKAGE")) == 5, 30.0)
                    assert [r["version"] for r in g.store.installed()] == ["2.1.0"]
                    assert g.worker.model_info is not None
                    assert g.worker.model_info.version == shipped_version()  # installing never switches
                    digest = g.store.installed()[0]["digest"]
                    await g.models.activate("xray", "2.1.0", digest, by="ops@hub")
                    assert (await g.worker.review(generate_scan(3).scan)).version == "2.1.0"
                    # A reconnect delivers the retained packages again: nothing new, no new alarms.
                    await g.models.receive_package("xray", "2.0.1", published["2.0.1"])
                    await g.models.receive_package("xray", "2.1.0", published["2.1.0"])
                    await asyncio.to_thread(collector.wait_for, lambda c: len(events(c, "MODEL_ACTIVATED")) == 1)
            finally:
                for version in published:  # withdraw them: an empty retained message
                    await asyncio.to_thread(hub.publish_model, SITE, "xray", version, b"")
                await asyncio.to_thread(hub.close)
            by_source = {e["detail"]["source"]: e for e in events(collector, "MODEL_PACKAGE")}
            assert len(events(collector, "MODEL_PACKAGE")) == 5
            assert by_source["models/xray/2.1.0"]["detail"]["ok"] is True
            assert "does not verify" in by_source["models/xray/2.0.1"]["detail"]["error"]
            assert "truncated" in by_source["models/xray/2.0.2"]["detail"]["error"]
            assert "SHA-256" in by_source["models/xray/2.0.3"]["detail"]["error"]
            assert "not a model package" in by_source["models/xray/2.0.4"]["detail"]["error"]
            for version in ("2.0.1", "2.0.2", "2.0.3", "2.0.4"):
                refused = by_source[f"models/xray/{version}"]
                assert (refused["type"], refused["severity"], refused["detail"]["ok"]) == ("alarm", "error", False)
            # The deliberately broken ones are not contract messages; everything the gate sent is.
            assert collector.contract_problems(ignore=("/models/xray/2.0.2", "/models/xray/2.0.4")) == []

    asyncio.run(main())


def test_canary_failure_keeps_the_current_model(broker: MosquittoBroker, tmp_path: Path, keys: dict[str, Path],
                                                clean_scans: list[Scan]) -> None:
    anomalies = [generate_scan(400 + i, cargo="cartons", anomalies=("weapon",)).scan for i in range(3)]
    samples = write_samples(tmp_path / "samples", [(s, "clean") for s in clean_scans] +
                            [(s, "contraband") for s in anomalies])
    manifest = trigger_happy(tmp_path / "pkg", keys, "2.0.0")

    async def main() -> None:
        with Collector(broker, client_id="c-canary") as collector:
            async with gate(broker, tmp_path, keys, samples=samples) as g:
                await g.models.install(pack(tmp_path / "pkg"), source="test")
                pid = g.worker.pid
                with pytest.raises(CommandRefused, match="canary failed"):
                    await g.models.activate("xray", "2.0.0", manifest.digest, by="ops@hub")
                assert g.worker.pid == pid  # never switched
                assert g.store.active() is None
                result = await g.worker.review(clean_scans[0])
                assert result.version == shipped_version()
                await asyncio.to_thread(collector.wait_for, lambda c: len(events(c, "MODEL_ROLLED_BACK")) == 1)
            canary = events(collector, "MODEL_CANARY")[0]["detail"]
            assert canary["passed"] is False
            assert canary["compared"] == len(clean_scans) + len(anomalies)
            assert canary["candidate"]["false_alarms"] > canary["current"]["false_alarms"]
            rolled = events(collector, "MODEL_ROLLED_BACK")[0]
            assert rolled["detail"]["reason"] == "canary"
            assert events(collector, "MODEL_ACTIVATED") == []

    asyncio.run(main())


def test_live_suspect_share_rolls_back(broker: MosquittoBroker, tmp_path: Path, keys: dict[str, Path],
                                       clean_scans: list[Scan]) -> None:
    manifest = trigger_happy(tmp_path / "pkg", keys, "2.0.0")
    canary = CanaryConfig(watch_scans=8, max_suspect_share=0.25)

    async def main() -> None:
        with Collector(broker, client_id="c-watch") as collector:
            # No labelled samples yet: the canary has nothing to replay and passes.
            async with gate(broker, tmp_path, keys, samples=tmp_path / "none", canary=canary) as g:
                await g.models.install(pack(tmp_path / "pkg"), source="test")
                result = await g.models.activate("xray", "2.0.0", manifest.digest, by="ops@hub")
                assert result["passed"] is True
                assert result["samples"] == 0
                seen = []
                for scan in clean_scans:
                    review = await g.worker.review(scan)
                    seen.append(review.verdict)
                    g.models.observe("L1", review)
                await g.models.wait_idle()
                assert seen.count("suspect") + seen.count("unavailable") > 2, seen
                assert g.store.active() is None  # back to the configured (shipped) model
                assert g.store.previous() is None
                assert (await g.worker.review(clean_scans[0])).version == shipped_version()
                await asyncio.to_thread(collector.wait_for, lambda c: len(events(c, "MODEL_ROLLED_BACK")) == 1)
            activated = events(collector, "MODEL_ACTIVATED")[0]["detail"]
            assert activated["version"] == "2.0.0"
            assert activated["watch_scans"] == 8
            rolled = events(collector, "MODEL_ROLLED_BACK")[0]["detail"]
            assert "live suspect share" in rolled["reason"]
            assert rolled["rolled_back"]["version"] == "2.0.0"

    asyncio.run(main())


def test_package_edited_after_activation_is_refused_by_the_worker(broker: MosquittoBroker, tmp_path: Path,
                                                                  keys: dict[str, Path],
                                                                  clean_scans: list[Scan]) -> None:
    """A package activated locally (`smartgate model activate`, which verifies it) and edited on
    disk before the daemon picks the switch up, its manifest's hashes recomputed: the review worker
    checks the signature, refuses it, the previous package keeps serving, the store is put back,
    and a MODEL_ROLLED_BACK alarm says why."""
    for version in ("2.0.1", "2.0.2"):
        build_package(DEFAULT_MODEL_PATH, tmp_path / f"pkg-{version}", key=load_private_key(keys["hub"]),
                      name="xray", version=version)

    async def main() -> None:
        with Collector(broker, client_id="c-edited") as collector:
            async with gate(broker, tmp_path, keys, samples=tmp_path / "none") as g:
                for version in ("2.0.1", "2.0.2"):
                    assert await g.models.install(pack(tmp_path / f"pkg-{version}"), source="test") is not None
                first = g.store.verified("xray", "2.0.1", g.models.keys())
                await g.models.activate("xray", "2.0.1", first.manifest.digest, by="ops@hub")
                assert (await g.worker.review(clean_scans[0])).version == "2.0.1"
                pid = g.worker.pid
                # What `smartgate model activate` does, then the edit.
                second = g.store.verified("xray", "2.0.2", g.models.keys())
                g.store.activate(second, reason="activated locally")
                edit_after_signing(g.store.path_of("xray", "2.0.2"))
                await g.models.poll()
                assert g.worker.pid == pid
                assert g.worker.model_path == g.store.path_of("xray", "2.0.1")
                active = g.store.active()
                assert active is not None
                assert active.version == "2.0.1"
                result = await g.worker.review(clean_scans[1])
                assert result.error is None
                assert result.version == "2.0.1"
                await g.models.poll()  # the refusal is audited once, not at every poll
                await asyncio.to_thread(collector.wait_for, lambda c: len(events(c, "MODEL_ROLLED_BACK")) == 1)
            rolled = events(collector, "MODEL_ROLLED_BACK")
            assert len(rolled) == 1
            detail = rolled[0]["detail"]
            assert rolled[0]["type"] == "alarm"
            assert rolled[0]["severity"] == "error"
            assert (detail["reason"], detail["version"], detail["local"]) == ("load", "2.0.2", True)
            assert "package refused by the review worker" in detail["detail"]
            assert "signature does not verify" in detail["detail"]
            assert detail["kept"] == str(tmp_path / "models" / "xray" / "2.0.1")
            local = [e["detail"] for e in events(collector, "MODEL_ACTIVATED") if e["detail"].get("local")]
            assert [e["version"] for e in local] == ["2.0.2"]

    asyncio.run(main())


def _hardened(scan: Scan, power: float) -> Scan:
    """The low-energy channel's transmission raised to a power: a changed spectrum or filter."""
    pixels = scan.pixels.astype(np.float64)
    air = float(np.percentile(pixels[1], 99.5))
    pixels[1] = air * np.clip(pixels[1] / air, 1e-6, 1.0) ** power
    return Scan(pixels=np.clip(pixels, 0, 65535).astype(scan.pixels.dtype), scan_id=f"{scan.scan_id}-h",
                bits=scan.bits, pixel_mm=scan.pixel_mm)


def test_drift_alarm_raised_by_perturbed_scans_and_cleared(broker: MosquittoBroker, tmp_path: Path,
                                                          keys: dict[str, Path], clean_scans: list[Scan]) -> None:
    reviewer = Reviewer()
    envelope = Envelope.fit([reviewer.analyse(s).input_stats for s in clean_scans], source="test")
    pkg = tmp_path / "pkg"
    build_package(DEFAULT_MODEL_PATH, pkg, key=load_private_key(keys["hub"]), name="xray", version="2.0.0",
                  files={ENVELOPE_FILE: envelope.to_json().encode()})
    drift = DriftConfig(window=8, min_scans=8, max_suspect_share=0.5, max_unavailable_share=0.5,
                        max_input_distance=3.0)

    async def main() -> None:
        with Collector(broker, client_id="c-drift") as collector:
            async with gate(broker, tmp_path, keys, samples=tmp_path / "none", drift=drift, model=pkg) as g:
                async def stream(scans: list[Scan]) -> None:
                    for scan in scans:
                        g.drift.observe("L1", await g.worker.review(scan))

                await stream(clean_scans)
                assert g.drift.envelope is not None
                calm = g.drift.figures("L1")
                assert calm.out_of_bounds == ()
                assert calm.input_distance is not None
                assert calm.input_distance < 1.0
                await stream([_hardened(s, 1.5) for s in clean_scans])
                drifted = g.drift.figures("L1")
                # A changed spectrum moves the input statistics (model 1.1.0 also saw threats everywhere;
                # 2.0.0, trained on many spectra, mostly does not: the suspect share may stay in bounds).
                assert "input_distance" in drifted.out_of_bounds
                assert set(drifted.out_of_bounds) <= {"input_distance", "suspect_share"}
                assert drifted.input_distance is not None
                assert drifted.input_distance > 3.0
                await stream(clean_scans)
                assert g.drift.figures("L1").out_of_bounds == ()
                await g.drift.wait_idle()
                await asyncio.to_thread(collector.wait_for, lambda c: len(events(c, "MODEL_DRIFT")) == 2)
            raised, cleared = events(collector, "MODEL_DRIFT")
            assert (raised["lane"], raised["active"], cleared["active"]) == ("L1", True, False)
            assert raised["detail"]["out_of_bounds"]  # the first figure to leave its bounds raises it
            assert set(raised["detail"]["out_of_bounds"]) <= {"input_distance", "suspect_share"}
            assert cleared["detail"]["out_of_bounds"] == []
            assert collector.contract_problems() == []

    asyncio.run(main())
