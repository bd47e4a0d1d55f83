"""`smartgate synth` and `smartgate review` end to end (in-process, real model, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gate_controller.cli import main
from inference.scan import load_scan
from tests.support.inference import copy_model


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    # A dense block in an empty box: a case any reviewer (and the model) flags.
    assert main(["synth", "--out", str(out), "--count", "1", "--seed", "500", "--kind", "dense_object",
                 "--cargo", "empty"]) == 0
    assert main(["synth", "--out", str(out), "--count", "2", "--seed", "501", "--kind", "empty",
                 "--kind", "clean"]) == 0
    return out


def test_synth_writes_archives_with_ground_truth(scans: Path) -> None:
    archives = sorted(scans.glob("*.npz"))
    assert [p.name for p in archives] == ["SYN-00000500.npz", "SYN-00000501.npz", "SYN-00000502.npz"]
    labels = [json.loads(p.with_suffix(".json").read_text()) for p in archives]
    assert labels[0]["finding"] == "contraband"
    assert labels[0]["regions"][0]["label"] == "dense_object"
    assert labels[1] == {"scan_id": "SYN-00000501", "finding": "clean", "labels": ["empty"], "declared": "empty",
                         "cargo": "empty", "regions": []}
    assert labels[2]["finding"] == "clean"
    assert "not_empty" in labels[2]["labels"]
    scan = load_scan(archives[0])
    assert scan.pixels.shape[0] == 2
    assert scan.meta["synthetic"]["regions"] == labels[0]["regions"]


def test_synth_rejects_unknown_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--out", str(tmp_path), "--count", "1", "--kind", "gold"]) == 64
    assert "unknown kind" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "--count", "1", "--cargo", "gold"]) == 64
    assert "unknown cargo" in capsys.readouterr().err


def test_review_lines_json_and_previews(scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in sorted(scans.glob("*.npz"))]
    assert main(["review", *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert " suspect " in lines[0]
    assert "dense_object" in lines[0]
    assert " clear " in lines[1]
    previews = tmp_path / "previews"
    assert main(["review", "--json", "--preview", str(previews), *files]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    # The third is a load of steel coils seen along their width: the model calls it clean, but
    # the beam did not cross the coils, so it is suspect for opaque areas alone.
    assert [o["verdict"] for o in objs] == ["suspect", "clear", "suspect"]
    assert objs[2]["opaque_m2"] > 1.0
    assert {r["label"] for r in objs[2]["regions"]} == {"opaque"}
    assert main(["review", "--json", "--opaque-area", "0", files[2]]) == 0
    unchecked = json.loads(capsys.readouterr().out)
    assert (unchecked["verdict"], unchecked["opaque_m2"], unchecked["regions"]) == ("clear", 0.0, [])
    for obj, path in zip(objs, files, strict=True):
        assert set(obj) == {"file", "scan_id", "verdict", "score", "not_empty_score", "regions", "opaque_m2",
                            "latency_ms", "conditioning", "envelope"}
        assert obj["envelope"]["inverted_share"] < 0.2  # channels in GFP/1's order
        assert "dead_rows" in obj["conditioning"]
        assert obj["file"] == path
        assert 0 <= obj["score"] <= 1
        assert 0 <= obj["not_empty_score"] <= 1
        jpg = previews / (Path(path).stem + ".jpg")
        assert cv2.imdecode(np.frombuffer(jpg.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None
    assert objs[0]["regions"][0]["label"] == "dense_object"
    assert objs[1]["not_empty_score"] < objs[2]["not_empty_score"]


def test_review_bad_file_and_bad_model(scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    good = str(sorted(scans.glob("*.npz"))[1])
    assert main(["review", "--json", str(bad), good]) == 1
    objs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert objs[0]["verdict"] == "unavailable"
    assert "bad.npz" in objs[0]["error"]
    assert objs[1]["verdict"] == "clear"
    assert main(["review", "--model", str(tmp_path / "none.tflite"), good]) == 3
    assert "not found" in capsys.readouterr().err
    model = copy_model(tmp_path / "m")
    model.write_bytes(model.read_bytes()[:-10])
    assert main(["review", "--model", str(model), good]) == 3
    assert "SHA-256" in capsys.readouterr().err


def test_synth_random_world(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path), "--count", "3", "--seed", "40", "--world", "random"]) == 0
    shapes = set()
    for path in sorted(tmp_path.glob("*.npz")):
        scan = load_scan(path)
        world = scan.meta["synthetic"]["world"]
        assert scan.pixels.shape[:2] == (1 if world["energy"] == "single" else 2, world["rows"])
        shapes.add(scan.pixels.shape)
    assert len(shapes) == 3
