"""The shipped model: loads with LiteRT, matches its metadata, and refuses every kind of damage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.errors import ModelError
from inference.model_spec import file_sha256, load_spec, metadata_path_for
from inference.reviewer import Reviewer
from inference.runtime import DEFAULT_MODEL_PATH, TfliteModel, runtime_name
from inference.synthetic import ANOMALY_CLASSES
from tests.support.inference import copy_model, rewrite_metadata, shipped_model

__all__ = ["shipped_model"]


def test_shipped_model_matches_metadata(shipped_model: Path) -> None:
    spec = load_spec(metadata_path_for(shipped_model))
    assert spec.sha256 == file_sha256(shipped_model)
    assert shipped_model.stat().st_size < 4 * 1024 * 1024
    assert spec.input.dtype == "int8"
    assert spec.output.dtype == "int8"
    assert spec.labels == ANOMALY_CLASSES
    assert spec.output.channels == ("not_empty", *ANOMALY_CLASSES)
    assert 0 < spec.thresholds.suspect < 1
    assert 0 < spec.thresholds.not_empty < 1
    assert spec.training.get("seed") is not None
    assert spec.training.get("data")
    assert "validation" in spec.metrics
    model = TfliteModel(shipped_model, num_threads=1)
    assert model.backend == runtime_name() == "ai_edge_litert"
    assert model.info.name == spec.name
    assert model.info.version == spec.version
    assert model.info.sha256 == spec.sha256
    tile = np.zeros(spec.input.shape, dtype=np.int8)
    out = model.run(tile)
    assert out.shape == tuple(spec.output.shape)
    assert out.dtype == np.int8


def test_default_path_is_the_shipped_model() -> None:
    assert Reviewer().model_path == DEFAULT_MODEL_PATH


def test_missing_model_and_metadata(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        TfliteModel(tmp_path / "none.tflite")
    model = copy_model(tmp_path)
    metadata_path_for(model).unlink()
    with pytest.raises(ModelError, match=r"metadata .* not found"):
        TfliteModel(model)


def test_corrupted_model_file_is_refused_by_checksum(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    data = bytearray(model.read_bytes())
    data[len(data) // 3] ^= 0x5A
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        Reviewer(model)


def test_corrupted_model_with_matching_checksum_is_refused_by_the_runtime(tmp_path: Path) -> None:
    # A broken file whose metadata was regenerated for it: the interpreter itself must refuse.
    model = copy_model(tmp_path)
    model.write_bytes(model.read_bytes()[:4096])
    rewrite_metadata(model)
    with pytest.raises(ModelError, match="refused the model"):
        Reviewer(model)
    model.write_bytes(b"not a flatbuffer at all" * 100)
    rewrite_metadata(model)
    with pytest.raises(ModelError, match="refused the model"):
        Reviewer(model)


def test_metadata_that_does_not_match_the_tensors(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    raw = json.loads(metadata_path_for(model).read_text())
    inp = dict(raw["input"], shape=[1, 128, 512, 2])
    out = dict(raw["output"], shape=[1, 16, 64, 5])
    rewrite_metadata(model, input=inp, output=out)
    with pytest.raises(ModelError, match="input tensor shape"):
        Reviewer(model)
    rewrite_metadata(model, input=dict(raw["input"], quantization={"scale": 0.5, "zero_point": 0}),
                     output=raw["output"])
    with pytest.raises(ModelError, match="quantization"):
        Reviewer(model)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": ["weapon"]}, "labels"),
        ({"format": "other/9"}, "format"),
        ({"thresholds": {"suspect": 1.5, "not_empty": 0.5}}, "suspect"),
        ({"tiling": {"overlap": 7}}, "overlap"),
    ],
)
def test_invalid_metadata(tmp_path: Path, change: dict[str, object], message: str) -> None:
    model = copy_model(tmp_path)
    rewrite_metadata(model, **change)
    with pytest.raises(ModelError, match=message):
        Reviewer(model)


def test_unreadable_metadata(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    metadata_path_for(model).write_text("{ not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        Reviewer(model)
