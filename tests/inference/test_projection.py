"""Threat projection for training (no TensorFlow needed): rendered objects and their targets."""

from __future__ import annotations

import numpy as np
import pytest

from inference.conditioning import T_FLOOR
from inference.preprocess import normalize_scan
from inference.synthetic import generate_scan
from inference.training.dataset import ExampleSet, split_seed, synthetic_example
from inference.training.geometry import Geometry
from inference.training.projection import ObjectBank, ProjectedObject, render_object
from inference.training.train import _Batches

G = Geometry()


@pytest.fixture(scope="module")
def bank() -> ObjectBank:
    return ObjectBank(G, per_label=40, seed=3)


def test_bank_is_reproducible_and_holds_every_projected_class(bank: ObjectBank) -> None:
    again = ObjectBank(G, per_label=40, seed=3)
    assert len(bank) == 120
    for label in ("dense_object", "weapon", "organic_mass"):
        assert len(bank.objects[label]) == 40
        for a, b in zip(bank.objects[label], again.objects[label], strict=True):
            np.testing.assert_array_equal(a.x, b.x)
        for obj in bank.objects[label]:
            assert obj.x.shape[:2] == obj.coverage.shape
            assert obj.x.shape[2] == len(G.channels)
            assert (obj.coverage >= 0.3).any()
    other = ObjectBank(G, per_label=40, seed=4)
    assert not np.array_equal(other.objects["weapon"][0].x, bank.objects["weapon"][0].x)


def test_rendered_objects_have_the_generators_attenuation() -> None:
    """Peak high-energy attenuation of rendered objects against the same class drawn by the
    generator into an empty box and taken through the gate's own preprocessing (reference world)."""
    rng = np.random.default_rng(11)
    for label in ("dense_object", "organic_mass"):
        rendered = [render_object(label, rng, G, energies=("4/6",)) for _ in range(30)]
        peaks = [float(o.x[..., 0].max()) for o in rendered if o is not None]
        generated = []
        for i in range(12):
            syn = generate_scan(split_seed("test", 5, i), length_ft=20, cargo="empty", anomalies=(label,),
                                with_masks=True, clutter=False)
            mask = syn.masks.get(label)
            if mask is None or not mask.any() or syn.regions[0].y + syn.regions[0].h >= syn.scan.rows - 40:
                continue  # hidden in the floor or chassis: the structure adds to it
            x, _ = normalize_scan(syn.scan, G.input_spec(), G.normalization())
            box = syn.regions[0]
            sy, sx = G.rows / syn.scan.rows, x.shape[2] / syn.scan.columns
            patch = x[0, int(box.y * sy):int((box.y + box.h) * sy) + 1, int(box.x * sx):int((box.x + box.w) * sx) + 1]
            generated.append(float(patch.max()))
        assert len(generated) >= 4
        ratio = np.median(peaks) / np.median(generated)
        assert 0.5 < ratio < 2.0, (label, np.median(peaks), np.median(generated))
    # The material channel tells organic from steel as in the generated scans.
    steel = render_object("dense_object", np.random.default_rng(2), G, energies=("4/6",))
    organic = render_object("organic_mass", np.random.default_rng(2), G, energies=("4/6",))
    assert steel is not None
    assert organic is not None

    def ratio_of(obj: ProjectedObject) -> float:
        x = obj.x
        core = x[..., 0] > 0.5 * x[..., 0].max()
        return float((x[..., 1][core] * 3).mean() / (x[..., 0][core] * 8).mean())

    assert ratio_of(organic) > 2 * ratio_of(steel)


def test_projection_adds_the_object_and_its_targets(bank: ObjectBank) -> None:
    ex = synthetic_example(split_seed("train", 1, 0), G, kind="empty")
    xs = ex.x[:, :G.tile_width].astype(np.float32) / 160.0
    ts = ex.targets[:, :G.tile_width // G.stride].astype(np.float32)
    ws = ex.weights[:, :G.tile_width // G.stride].astype(np.float32)
    assert not ts[..., 1:].any()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        x2, t2, w2 = bank.project(xs, ts, ws, rng)
        added = x2 - xs
        assert added.min() >= -1e-6  # attenuation is only ever added
        assert x2.max() <= 255 / 160 + 1e-6
        positive = t2[..., 1:].sum(axis=(0, 1))
        assert (positive > 0).sum() == 1  # one object, one class
        k = 1 + int(np.argmax(positive))
        seen.add(G.outputs[k])
        cells = np.argwhere(t2[..., k] > 0)
        # Its positive cells lie where attenuation was added, and they hold cargo.
        for cy, cx in cells:
            assert added[cy * 8:cy * 8 + 8, cx * 8:cx * 8 + 8, 0].max() > 0.01
        assert (t2[..., 0][t2[..., k] > 0] == 1).all()
        assert (w2[..., k][t2[..., k] > 0] == 1).all()
        assert (w2[..., k] == 0).sum() > 0  # its border is ignored
        # The input arrays are left alone.
        assert not ts[..., 1:].any()
    assert seen == {"dense_object", "weapon", "organic_mass"}


def test_single_energy_tiles_get_no_material_channel(bank: ObjectBank) -> None:
    xs = np.zeros((G.rows, G.tile_width, 2), np.float32)
    xs[..., 0] = 0.2
    ts = np.zeros((G.cell_rows, G.tile_width // G.stride, 5), np.float32)
    ws = np.ones_like(ts)
    rng = np.random.default_rng(5)
    for _ in range(10):
        x2, _, _ = bank.project(xs, ts, ws, rng)
        assert x2[..., 1].max() == 0.0
        assert x2[..., 0].max() > 0.2


def test_no_object_is_projected_where_the_beam_is_spent(bank: ObjectBank) -> None:
    # Left half: a load the beam crosses; right half: the gate's transmission floor (a full
    # tank's deepest chord). An object there would leave no trace in a real scan.
    spent = float(-np.log(T_FLOOR) / G.scale[0])
    xs = np.zeros((G.rows, G.tile_width, 2), np.float32)
    xs[..., 0] = 0.4
    xs[:, G.tile_width // 2:, 0] = round(spent * 160) / 160
    ts = np.zeros((G.cell_rows, G.tile_width // G.stride, 5), np.float32)
    ts[..., 0] = 1.0  # cargo everywhere
    ws = np.ones_like(ts)
    rng = np.random.default_rng(11)
    landed = {"through": 0, "spent": 0}
    for _ in range(40):
        x2, t2, _ = bank.project(xs, ts, ws, rng, anywhere=0.0)
        added = x2 - xs
        assert np.abs(added[:, G.tile_width // 2:]).max() == 0.0
        assert not t2[:, G.tile_width // 2 // G.stride:, 1:].any()
        landed["through" if t2[..., 1:].any() else "spent"] += 1
    assert landed["through"] >= 10, landed
    assert landed["spent"] >= 10, landed


def test_bank_respects_a_held_out_energy_region() -> None:
    with pytest.raises(ValueError, match="dual-energy"):
        ObjectBank(G, per_label=1, seed=1, exclude={"energy": ("4/6", "6/9", "3/6")})
    ObjectBank(G, per_label=2, seed=1, exclude={"energy": ("6/9",)})


def test_training_batches_project_into_the_asked_share_of_tiles(bank: ObjectBank) -> None:
    data = ExampleSet([synthetic_example(split_seed("train", 2, i), G, kind=k)
                       for i, k in enumerate(("clean", "empty", "machinery"))], G)
    plain = _Batches(data, G, np.random.default_rng(1))
    projected = _Batches(data, G, np.random.default_rng(1), bank=bank, project=0.5)
    _, t_plain, *_ = plain(200)
    x, t, *_ = projected(200)
    assert not t_plain[..., 1:].any()  # clean scans, no projection: no object anywhere
    with_object = t[..., 1:].any(axis=(1, 2, 3))
    assert 0.35 < with_object.mean() < 0.65
    assert x.shape == (200, G.rows, G.tile_width, 2)


def test_projection_into_the_load_only(bank: ObjectBank) -> None:
    """``anywhere=0``: every object's cells lie on the tile's load; a tile without load is left alone."""
    empty = synthetic_example(split_seed("train", 1, 0), G, kind="empty")
    xs = empty.x[:, :G.tile_width].astype(np.float32) / 160.0
    ts = empty.targets[:, :G.tile_width // G.stride].astype(np.float32)
    ws = empty.weights[:, :G.tile_width // G.stride].astype(np.float32)
    assert not ts[..., 0].any()
    rng = np.random.default_rng(0)
    x2, t2, w2 = bank.project(xs, ts, ws, rng, anywhere=0.0)
    assert x2 is xs
    assert t2 is ts
    assert w2 is ws
    loaded = synthetic_example(split_seed("train", 2, 0), G, kind="clean")
    cols = int(np.argmax(loaded.targets[..., 0].any(axis=0)))  # the first column holding load
    start = min(cols, loaded.targets.shape[1] - G.tile_width // G.stride)
    xs = loaded.x[:, start * G.stride:start * G.stride + G.tile_width].astype(np.float32) / 160.0
    ts = loaded.targets[:, start:start + G.tile_width // G.stride].astype(np.float32)
    ws = loaded.weights[:, start:start + G.tile_width // G.stride].astype(np.float32)
    load = ts[..., 0] > 0
    assert load.any()
    def on_load(x2: np.ndarray) -> bool:
        """Whether the added object's bounding box holds a load cell (it is centred on one)."""
        ys, xs_ = np.nonzero((x2 - xs)[..., 0] > 1e-6)
        s = G.stride
        return bool(load[ys.min() // s:ys.max() // s + 1, xs_.min() // s:xs_.max() // s + 1].any())

    for _ in range(30):
        x2, t2, _ = bank.project(xs, ts, ws, rng, anywhere=0.0)
        assert on_load(x2)
        assert t2[..., 1:].any()
    # Anywhere in the band, objects also land off the load (the check above can fail).
    assert not all(on_load(bank.project(xs, ts, ws, rng, anywhere=1.0)[0]) for _ in range(30))
