"""Hard examples mined from a training set with the shipped int8 model (`inference.training.mining`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from inference.errors import ModelError
from inference.reviewer import Reviewer
from inference.runtime import DEFAULT_MODEL_PATH
from inference.synthetic import generate_scenario
from inference.training.dataset import ExampleSet, synthetic_example
from inference.training.geometry import Geometry
from inference.training.mining import _TileModel, mine
from inference.training.train import _Batches

G = Geometry()


@pytest.fixture(scope="module")
def data() -> ExampleSet:
    kinds = ("clean", "dense_object", "weapon", "organic_mass", "empty")
    return ExampleSet([synthetic_example(3000 + i, G, kinds[i % len(kinds)]) for i in range(40)], G)


def test_mined_logits_are_the_gates() -> None:
    # The same scan through the gate's Reviewer and through the miner's tiles of the cached
    # model-space example: the same highest anomaly cell, up to the cache's input rounding.
    for seed, kind in ((11, "weapon"), (12, "clean")):
        example = synthetic_example(seed, G, kind)
        mined = _TileModel(DEFAULT_MODEL_PATH, G, 1).logits(example.x, G)[:, :-(-example.width // G.stride)]
        analysis = Reviewer(DEFAULT_MODEL_PATH).analyse(generate_scenario(seed, kind, world="random").scan)
        gate = analysis.anomaly.max()
        assert abs(mined[..., 1:].max() - math.log(gate / (1 - gate))) < 0.5
        assert mined.shape[1] == analysis.anomaly.shape[1]


def test_mining_finds_the_worst_clean_spots_and_the_missed_objects(data: ExampleSet) -> None:
    hard = mine(DEFAULT_MODEL_PATH, data, G, negative_share=0.25, threads=1)
    s = hard.summary
    assert s["scans"] == 40
    assert s["negatives"] == len(hard.negatives) == round(0.25 * 40)
    assert s["objects"] >= 24
    assert 0 < s["positives"] == len(hard.positives) < s["objects"]
    model = _TileModel(DEFAULT_MODEL_PATH, G, 1)
    for i, col in hard.positives:  # an object of the scan, scoring below the suspect threshold there
        _, t, _ = data.example(i)
        assert t[:, col, 1:].any()
        logits = model.logits(data.example(i)[0], G)
        hit = t[:, col, 1:] > 0
        assert logits[:, col, 1:][hit].min() < model.suspect_logit
    worst = []
    for i, col in hard.negatives:  # a clean cell in that column, scoring at least the floor
        _, t, w = data.example(i)
        clean = ~(t[:, col, 1:] > 0).any(axis=-1) & (w[:, col, 1:].min(axis=-1) > 0)
        assert clean.any()
        logits = model.logits(data.example(i)[0], G)
        worst.append(float(logits[:, col, 1:].max(axis=-1)[clean].max()))
    assert min(worst) >= s["negative_logit_floor"] - 1e-3
    assert s["negative_logit_floor"] > s["clean_logit_median"]


def test_batches_centre_the_hard_share_of_tiles_on_mined_spots(data: ExampleSet) -> None:
    hard = mine(DEFAULT_MODEL_PATH, data, G, threads=1)
    hard.negatives = []  # positives only: every tile centred on one shows an object
    batches = _Batches(data, G, np.random.default_rng(1), hard=hard, hard_share=1.0)
    _, t, _, _, _ = batches(24)
    assert all(t[b, ..., 1:].any() for b in range(24))
    # Without spots, no share is centred on them.
    assert _Batches(data, G, np.random.default_rng(1), hard=None, hard_share=0.5).hard_share == 0.0


def test_a_missing_model_is_refused(tmp_path: Path, data: ExampleSet) -> None:
    with pytest.raises(ModelError, match=r"missing\.tflite"):
        mine(tmp_path / "missing.tflite", data, G)
