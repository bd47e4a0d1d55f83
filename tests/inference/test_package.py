"""Signed model packages: build, verify, refuse tampering, install with a version floor, switch."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from inference.package import (
    PackageError,
    PackageStore,
    build_package,
    generate_key,
    load_private_key,
    load_public_keys,
    pack,
    parse_version,
    unpack,
    verify_package,
)
from inference.package.keys import TrustedKey
from inference.package.loader import resolve_model_path
from inference.reviewer import Reviewer
from inference.worker import ReviewWorker
from tests.support.inference import shipped_model, shipped_version, synthetic

__all__ = ["shipped_model"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_key(d / "hub.key", d / "hub.pub")
    generate_key(d / "rogue.key", d / "rogue.pub")
    return {"hub": d / "hub.key", "hub_pub": d / "hub.pub", "rogue": d / "rogue.key", "rogue_pub": d / "rogue.pub"}


def trusted(keys: dict[str, Path]) -> list[TrustedKey]:
    return load_public_keys([keys["hub_pub"]])


def make(out: Path, keys: dict[str, Path], model: Path, version: str = "2.0.0", signer: str = "hub",
         **kwargs: object) -> Path:
    build_package(model, out, key=load_private_key(keys[signer]), name="xray", version=version,
                  provenance={"seed": 7}, figures={"false_alarm": 0.01}, **kwargs)  # type: ignore[arg-type]
    return out


def test_versions_compare_numerically() -> None:
    assert parse_version("1.10.0") > parse_version("1.9.9")
    assert parse_version("1.1") == parse_version("1.1.0")
    for bad in ("1.2-beta", "", "v1", "1..2"):
        with pytest.raises(PackageError):
            parse_version(bad)


def test_signed_package_verifies_and_reviews_like_its_model(tmp_path: Path, keys: dict[str, Path],
                                                           shipped_model: Path) -> None:
    pkg = make(tmp_path / "pkg", keys, shipped_model, files={"notes.txt": b"site A"})
    package = verify_package(pkg, trusted(keys))
    assert package.signed_by is not None
    assert package.manifest.provenance == {"seed": 7}
    assert set(package.manifest.files) == {"xray_anomaly.tflite", "xray_anomaly.json", "notes.txt"}
    assert package.spec.version == "2.0.0"  # the gate reports what it runs
    scan = synthetic(5, cargo="cartons").scan
    via_package = Reviewer(resolve_model_path(pkg)).review(scan)
    direct = Reviewer(shipped_model).review(scan)
    assert via_package.verdict == direct.verdict
    assert via_package.score == direct.score
    assert via_package.version == "2.0.0"


def test_forged_truncated_rehashed_and_padded_packages_are_refused(tmp_path: Path, keys: dict[str, Path],
                                                                   shipped_model: Path) -> None:
    good = make(tmp_path / "good", keys, shipped_model)
    forged = make(tmp_path / "forged", keys, shipped_model, signer="rogue")
    with pytest.raises(PackageError, match="does not verify with any trusted key"):
        verify_package(forged, trusted(keys))

    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    model = truncated / "xray_anomaly.tflite"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(PackageError, match="truncated or replaced"):
        verify_package(truncated, trusted(keys))

    rehashed = tmp_path / "rehashed"
    shutil.copytree(good, rehashed)
    data = bytearray((rehashed / "xray_anomaly.tflite").read_bytes())
    data[5000] ^= 0xFF
    (rehashed / "xray_anomaly.tflite").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="SHA-256"):
        verify_package(rehashed, trusted(keys))

    # Editing the manifest to match a swapped file breaks the signature instead.
    edited = tmp_path / "edited"
    shutil.copytree(rehashed, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    from inference.package.manifest import file_sha256
    manifest["files"]["xray_anomaly.tflite"]["sha256"] = file_sha256(edited / "xray_anomaly.tflite")
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="does not verify"):
        verify_package(edited, trusted(keys))

    padded = tmp_path / "padded"
    shutil.copytree(good, padded)
    (padded / "extra.py").write_text("import os")
    with pytest.raises(PackageError, match="not in the manifest"):
        verify_package(padded, trusted(keys))

    unsigned = tmp_path / "unsigned"
    shutil.copytree(good, unsigned)
    (unsigned / "manifest.sig").unlink()
    with pytest.raises(PackageError, match="unsigned"):
        verify_package(unsigned, trusted(keys))
    with pytest.raises(PackageError, match="no trusted keys"):
        verify_package(good, [])


def test_archive_roundtrip_is_deterministic_and_refuses_tricks(tmp_path: Path, keys: dict[str, Path],
                                                               shipped_model: Path) -> None:
    pkg = make(tmp_path / "pkg", keys, shipped_model)
    data = pack(pkg)
    assert pack(pkg) == data
    unpack(data, tmp_path / "out")
    verify_package(tmp_path / "out", trusted(keys))
    with pytest.raises(PackageError, match="truncated"):
        unpack(data[: len(data) // 2], tmp_path / "half")
    for name in ("../evil", "sub/x", ".hidden"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(PackageError, match="not a plain file"):
            unpack(buf.getvalue(), tmp_path / f"evil-{abs(hash(name))}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("manifest.json")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(PackageError, match="not a plain file"):
        unpack(buf.getvalue(), tmp_path / "link")


def test_store_enforces_the_version_floor_and_switches_atomically(tmp_path: Path, keys: dict[str, Path],
                                                                  shipped_model: Path) -> None:
    store = PackageStore(tmp_path / "models")
    v2 = store.install_archive(pack(make(tmp_path / "v2", keys, shipped_model, "2.0.0")), trusted(keys))
    # The same package again (a retained message after a reconnect) is a no-op.
    assert store.install_archive(pack(tmp_path / "v2"), trusted(keys)).manifest.digest == v2.manifest.digest
    v3 = store.install_dir(make(tmp_path / "v3", keys, shipped_model, "3.0.0"), trusted(keys))
    # An older, validly signed package cannot be replayed, even one never installed here.
    with pytest.raises(PackageError, match=r"not newer than 3\.0\.0"):
        store.install_dir(make(tmp_path / "v25", keys, shipped_model, "2.5.0"), trusted(keys))
    with pytest.raises(PackageError, match="different content"):
        store.install_dir(make(tmp_path / "v3b", keys, shipped_model, "3.0.0", files={"x.txt": b"1"}), trusted(keys))
    assert store.active() is None
    store.activate(v2, reason="test")
    store.activate(v3, reason="test")
    assert store.active_path() == tmp_path / "models" / "xray" / "3.0.0"
    previous = store.previous()
    assert previous is not None
    assert previous.version == "2.0.0"
    rolled, now = store.rollback(reason="test")
    assert rolled is not None
    assert rolled.version == "3.0.0"
    assert now is not None
    assert now.version == "2.0.0"
    roles = {r["version"]: r["role"] for r in store.installed()}
    assert roles == {"2.0.0": "active", "3.0.0": ""}
    # Tampering on disk after installation is caught when the package is activated again.
    (tmp_path / "models" / "xray" / "3.0.0" / "xray_anomaly.json").write_text("{}")
    with pytest.raises(PackageError):
        store.verified("xray", "3.0.0", trusted(keys))
    steps = [h["step"] for h in store.history()]
    assert steps == ["installed", "installed", "activated", "activated", "rolled_back"]


def test_worker_reload_switches_without_restart_and_keeps_serving_on_failure(
        tmp_path: Path, keys: dict[str, Path], shipped_model: Path) -> None:
    pkg = make(tmp_path / "pkg", keys, shipped_model, "4.0.0")
    broken = make(tmp_path / "broken", keys, shipped_model, "5.0.0")
    (broken / "xray_anomaly.tflite").write_bytes(b"garbage")
    scan = synthetic(9, cargo="cartons").scan

    async def main() -> None:
        async with ReviewWorker(shipped_model) as worker:
            first = await worker.review(scan)
            assert first.version == shipped_version()
            old_pid = worker.pid
            assert await worker.reload(pkg) is True
            assert worker.pid != old_pid
            after = await worker.review(scan)
            assert after.version == "4.0.0"
            assert after.score == first.score
            new_pid = worker.pid
            assert await worker.reload(broken) is False
            assert "did not load" in (worker.last_error or "")
            assert worker.pid == new_pid  # the working model kept serving
            assert (await worker.review(scan)).version == "4.0.0"

    asyncio.run(main())


def test_canary_counts_a_candidates_unavailable_verdicts_against_it() -> None:
    """A candidate whose guard calls every scan unavailable would stop every truck (manual): it
    fails the canary on the samples the current model reviews, it does not compare nothing and pass."""
    from inference.package.canary import CanarySample, compare

    samples = [CanarySample(name=f"c{i}", scan_path=Path(f"c{i}.npz"), positive=False, declared=None) for i in range(3)]
    samples += [CanarySample(name="p0", scan_path=Path("p0.npz"), positive=True, declared=None)]
    current = {"model": "m", "version": "1", "verdicts": {"c0": "clear", "c1": "clear", "c2": "unavailable",
                                                           "p0": "suspect"}}
    alien = {"model": "m", "version": "2", "verdicts": dict.fromkeys(("c0", "c1", "c2", "p0"), "unavailable")}
    result = compare(current, alien, samples)
    assert result["passed"] is False
    assert result["compared"] == 3  # c2: the current model cannot review it either
    assert result["candidate"]["false_alarms"] == 2
    assert result["candidate"]["detected"] == 0
    same = compare(current, {**current, "version": "2"}, samples)
    assert same["passed"] is True
    assert (same["candidate"]["false_alarms"], same["candidate"]["detected"]) == (0, 1)
