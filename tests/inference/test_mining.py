"""Hard examples mined from a training set with the shipped int8 model (`inference.training.mining`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from inference.errors import ModelError
from inference.preprocess import tile_offsets
from inference.reviewer import Reviewer, block_support
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
    # model-space example: the same highest anomaly cell, its logit within two steps of the int8
    # output (the cache stores the input rounded to uint8 before the int8 quantization).
    model = _TileModel(DEFAULT_MODEL_PATH, G, 1)
    for seed, kind in ((11, "weapon"), (12, "clean"), (16, "clean")):
        example = synthetic_example(seed, G, kind)
        # Under the model's decision rule, as the miner scores cells.
        mined = block_support(model.logits(example.x, G)[:, :-(-example.width // G.stride), 1:], model.decision_block)
        analysis = Reviewer(DEFAULT_MODEL_PATH).analyse(generate_scenario(seed, kind, world="random").scan)
        gate = analysis.anomaly.max()
        assert mined.shape[:2] == analysis.anomaly.shape[:2]
        assert abs(mined.max() - math.log(gate / (1 - gate))) <= 2 * model.s_out + 1e-4
        # The same spot: under a block rule the cells of the best block share its value, so the
        # first of them may differ by up to the block's size.
        cell = np.unravel_index(np.argmax(mined.max(axis=-1)), mined.shape[:2])
        gate_cell = np.unravel_index(np.argmax(analysis.anomaly.max(axis=-1)), mined.shape[:2])
        assert max(abs(int(a) - int(b)) for a, b in zip(cell, gate_cell, strict=True)) < model.decision_block


def test_the_miner_places_the_gates_tiles() -> None:
    # Tiles spread evenly over the scan's padded width, as on the gate (`tile_offsets`), not one
    # every tile_width - overlap columns with the last one flush.
    model = _TileModel(DEFAULT_MODEL_PATH, G, 1)
    x = np.random.default_rng(0).integers(0, 256, size=(G.rows, 640, 2), dtype=np.uint8)
    fed: list[np.ndarray] = []
    real = model.interp.set_tensor

    def record(index: int, value: np.ndarray) -> None:
        fed.append(value.copy())
        real(index, value)

    model.interp.set_tensor = record  # type: ignore[method-assign]
    model.logits(x, G, width=590)  # 592 columns once padded to whole cells; the rest is not the scan
    offsets = tile_offsets(592, G.tile_width, G.overlap, G.stride)
    assert offsets == (0, 168, 336)
    assert len(fed) == len(offsets)
    for tile, start in zip(fed, offsets, strict=True):
        assert np.array_equal(tile, model.table[x[None, :, start:start + G.tile_width]])


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
        logits = block_support(model.logits(data.example(i)[0], G)[..., 1:], model.decision_block)
        hit = t[:, col, 1:] > 0
        assert logits[:, col][hit].min() < model.suspect_logit
    worst = []
    for i, col in hard.negatives:  # a clean cell in that column, scoring at least the floor
        _, t, w = data.example(i)
        clean = ~(t[:, col, 1:] > 0).any(axis=-1) & (w[:, col, 1:].min(axis=-1) > 0)
        assert clean.any()
        logits = block_support(model.logits(data.example(i)[0], G)[..., 1:], model.decision_block)
        worst.append(float(logits[:, col].max(axis=-1)[clean].max()))
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
