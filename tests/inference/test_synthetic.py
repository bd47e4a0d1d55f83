"""The synthetic scan generator: determinism, geometry, physics, ground truth, speed."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.scan import Scan, load_scan, save_scan
from inference.synthetic import (
    ANOMALY_CLASSES,
    CARGO_KINDS,
    CONTAINER_TYPES,
    ENERGY_SETTINGS,
    EQUIPMENT,
    LOW_HIGH_RATIO,
    SCENARIOS,
    SyntheticScan,
    generate_scan,
    generate_scenario,
    nominal_world,
    sample_world,
)
from inference.synthetic.anomaly import HIDING_PLACES
from inference.synthetic.visibility import DETECTABLE_DPRIME, dprime


def _att(scan: Scan, channel: int) -> np.ndarray:
    air = np.percentile(scan.pixels[channel], 99.5)
    return np.log(air / np.maximum(scan.pixels[channel].astype(np.float64), 1.0))


def test_same_seed_same_scan_and_other_seed_differs() -> None:
    a = generate_scan(11, cargo="cartons", anomalies=("weapon",))
    b = generate_scan(11, cargo="cartons", anomalies=("weapon",))
    c = generate_scan(12, cargo="cartons", anomalies=("weapon",))
    assert a.scan.sha256() == b.scan.sha256()
    assert a.regions == b.regions
    assert a.scan.sha256() != c.scan.sha256()


def test_default_40ft_shape_dtype_and_meta() -> None:
    syn = generate_scan(1)
    scan = syn.scan
    assert scan.pixels.shape == (2, 256, 2400)
    assert scan.pixels.dtype == np.uint16
    assert scan.bits == 16
    assert 5.0 < scan.pixel_mm < 5.5
    assert scan.scan_id == "SYN-00000001"
    assert syn.cargo in CARGO_KINDS
    assert scan.meta["synthetic"]["seed"] == 1
    # High values are air: the top rows (above the roof) are bright, the roof line is dark.
    assert np.median(scan.pixels[0, :5, 100:-100]) > 0.8 * 65535


@pytest.mark.parametrize(("length", "columns"), [(20, 1200), (40, 2400), (45, 2700)])
def test_lengths(length: int, columns: int) -> None:
    assert generate_scan(3, length_ft=length, cargo="empty").scan.columns == columns


def test_options_rows_channels_bits_columns() -> None:
    scan = generate_scan(4, rows=128, channels=1, bits=8, columns=1800, scan_id="X-1").scan
    assert scan.pixels.shape == (1, 128, 1800)
    assert scan.pixels.dtype == np.uint8
    assert scan.scan_id == "X-1"


def test_fast_enough() -> None:
    generate_scan(0)
    t0 = time.perf_counter()
    for seed in range(3):
        generate_scan(seed, cargo="mixed", anomalies=("weapon", "dense_object"))
    per_scan = (time.perf_counter() - t0) / 3
    assert per_scan < 0.5, f"{per_scan:.3f} s per 40 ft scan"


@pytest.mark.parametrize("label", ANOMALY_CLASSES)
def test_anomaly_region_ground_truth_and_attenuation(label: str) -> None:
    clean = generate_scan(21, cargo="cartons", clutter=False)
    syn = generate_scan(21, cargo="cartons", anomalies=(label,), clutter=False)
    assert len(syn.regions) == 1
    r = syn.regions[0]
    assert r.label == label
    assert r.x >= 0
    assert r.x + r.w <= syn.scan.columns
    assert r.y >= 0
    assert r.y + r.h <= syn.scan.rows
    assert r.w > 2
    assert r.h > 2
    # The injected object attenuates: the box is darker than the same box without the object.
    box = (slice(r.y, r.y + r.h), slice(r.x, r.x + r.w))
    assert _att(syn.scan, 0)[box].mean() > _att(clean.scan, 0)[box].mean() + 0.1
    assert label in syn.labels
    assert "not_empty" in syn.labels
    assert syn.finding == "contraband"


def _visible(label: str, seed: int, **kwargs: Any) -> SyntheticScan:
    """The first scan from ``seed`` on whose object the detector column sees (objects hidden in
    a chassis may lie below it)."""
    while True:
        syn = generate_scan(seed, anomalies=(label,), **kwargs)
        if syn.regions:
            return syn
        assert label not in syn.labels
        seed += 1


def _excess_ratio(syn: SyntheticScan, **kwargs: Any) -> float:
    """Low/high ratio of the attenuation the object adds (the same scene without it subtracted)."""
    bare = generate_scan(syn.scan.meta["synthetic"]["seed"], **kwargs)
    r = syn.regions[0]
    box = (slice(r.y, r.y + r.h), slice(r.x, r.x + r.w))
    hi = _att(syn.scan, 0)[box] - _att(bare.scan, 0)[box]
    lo = _att(syn.scan, 1)[box] - _att(bare.scan, 1)[box]
    sel = (hi > 0.3) & (hi < 5.0)
    return float(np.median(lo[sel] / hi[sel]))


def test_dual_energy_separates_organic_from_metal() -> None:
    organic = _visible("organic_mass", 31, cargo="empty", clutter=False)
    dense = _visible("dense_object", 31, cargo="empty", clutter=False)
    r_org = _excess_ratio(organic, cargo="empty", clutter=False)
    r_metal = _excess_ratio(dense, cargo="empty", clutter=False)
    # Low energy attenuates more than high energy, and more so for organic material.
    assert r_org > r_metal > 1.0
    assert abs(r_org - LOW_HIGH_RATIO[0]) < 0.12


def test_empty_and_declared_empty_findings() -> None:
    empty = generate_scan(5, cargo="empty", declared="empty")
    assert empty.labels == ("empty",)
    assert empty.finding == "clean"
    assert not empty.not_empty
    loaded = generate_scan(5, cargo="bags", declared="empty")
    assert loaded.finding == "misdeclared"
    assert loaded.not_empty
    assert loaded.scan.declared == "empty"
    # cargo None with declared empty means a truthful empty box.
    assert generate_scan(6, declared="empty").cargo == "empty"


def test_masks_for_training() -> None:
    syn = generate_scan(8, cargo="drums", anomalies=("dense_object",), with_masks=True)
    assert set(syn.masks) == {"cargo", "dense_object"}
    for mask in syn.masks.values():
        assert mask.shape == (256, 2400)
        assert mask.dtype == bool
    r = syn.regions[0]
    inside = syn.masks["dense_object"][r.y:r.y + r.h, r.x:r.x + r.w].sum()
    assert inside == syn.masks["dense_object"].sum() > 0
    assert syn.masks["cargo"].mean() > 0.02


def test_speed_changes_stretch_columns_consistently() -> None:
    # Same cargo, two seeds: region boxes follow the stretched columns (object width varies).
    widths = {generate_scan(s, cargo="empty", anomalies=("dense_object",)).regions[0].w for s in range(40, 46)}
    assert len(widths) > 1


def test_archive_round_trip(tmp_path: Path) -> None:
    syn = generate_scan(9, cargo="machinery", anomalies=("weapon",), declared="machinery")
    path = save_scan(syn.scan, tmp_path / "s.npz")
    back = load_scan(path)
    assert back.sha256() == syn.scan.sha256()
    assert back.declared == "machinery"
    assert back.meta["synthetic"]["regions"][0]["label"] == "weapon"
    wire = Scan.from_wire(syn.scan.wire_bytes(), columns=2400, rows=256, channels=2, bits=16,
                          scan_id="W", pixel_mm=syn.scan.pixel_mm)
    assert np.array_equal(wire.pixels, syn.scan.pixels)


@pytest.mark.parametrize("kind", SCENARIOS)
def test_every_scenario_generates(kind: str) -> None:
    syn = generate_scenario(100, kind, length_ft=20)
    assert syn.scan.columns == 1200
    if kind in ANOMALY_CLASSES:
        assert kind in {r.label for r in syn.regions}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="cargo"):
        generate_scan(1, cargo="gold")
    with pytest.raises(ValueError, match="anomaly"):
        generate_scan(1, anomalies=("bomb",))
    with pytest.raises(ValueError, match="length_ft"):
        generate_scan(1, length_ft=30)
    with pytest.raises(ValueError, match="channels"):
        generate_scan(1, channels=3)
    with pytest.raises(ValueError, match="scenario"):
        generate_scenario(1, "nothing")


# --- the randomized world ---------------------------------------------------------------------


def test_random_worlds_vary_every_scanner_knob() -> None:
    scans = [generate_scenario(seed, "random", world="random") for seed in range(60)]
    worlds = [s.world for s in scans]
    assert {w["energy"] for w in worlds} == set(ENERGY_SETTINGS)
    assert len({w["rows"] for w in worlds}) >= 5
    assert {w["bits"] for w in worlds} == {8, 16}
    assert len({w["container"] for w in worlds}) >= 5
    assert len({w["chassis"] for w in worlds}) >= 3
    for syn in scans:
        w = syn.world
        assert syn.scan.pixels.shape[:2] == (1 if w["energy"] == "single" else 2, w["rows"])
        assert syn.scan.bits == w["bits"]
        assert syn.scan.pixels.dtype == (np.uint8 if w["bits"] == 8 else np.uint16)
        # The pulse pitch follows the world; the scan still spans the vehicle and its margins.
        assert 3.0 < syn.scan.pixel_mm < 11.0
        for r in syn.regions:
            assert 0 <= r.x < r.x + r.w <= syn.scan.columns
            assert 0 <= r.y < r.y + r.h <= syn.scan.rows


def test_same_seed_same_random_world() -> None:
    a = generate_scenario(77, "weapon", world="random")
    b = generate_scenario(77, "weapon", world="random")
    assert a.world == b.world
    assert a.scan.sha256() == b.scan.sha256()


def test_exclude_and_only_restrict_the_world() -> None:
    for seed in range(40):
        w = sample_world(np.random.default_rng(seed), exclude={"energy": ("6/9",), "container": ("reefer",)})
        assert w.energy != "6/9"
        assert w.container != "reefer"
        only = sample_world(np.random.default_rng(seed), only={"noise": ("high",)})
        assert only.noise == "high"
        assert only.quantum >= 2.0
    with pytest.raises(ValueError, match="energy"):
        sample_world(np.random.default_rng(0), exclude={"energy": ENERGY_SETTINGS})


@pytest.mark.parametrize("container", CONTAINER_TYPES)
def test_every_container_type_with_cargo_and_anomaly(container: str) -> None:
    world = nominal_world(container=container, tractor="skipped", chassis="flatbed")
    empty = generate_scan(5, cargo="empty", world=world, clutter=False)
    syn = generate_scan(5, cargo="cartons", anomalies=("dense_object",), world=world, clutter=False)
    assert syn.world["container"] == container
    assert len(syn.regions) == 1
    r = syn.regions[0]
    box = (slice(r.y, r.y + r.h), slice(r.x, r.x + r.w))
    assert _att(syn.scan, 0)[box].mean() > _att(empty.scan, 0)[box].mean() + 0.1


def test_twin_twenty_and_bare_chassis_layouts() -> None:
    twin = generate_scan(6, cargo="bags", world=nominal_world(layout="twin", col_mm=6.0))
    single = generate_scan(6, cargo="bags", length_ft=20, world=nominal_world(col_mm=6.0))
    assert twin.scan.columns > 1.9 * single.scan.columns
    # Declared empty on a trailer without container: nothing is cargo.
    bare = generate_scan(7, cargo="empty", declared="empty", world=nominal_world(layout="none"), with_masks=True)
    assert not bare.not_empty
    assert not bare.masks["cargo"].any()
    # A loaded scan never ends up without a box.
    assert generate_scan(7, cargo="bags", world=nominal_world(layout="none")).world["layout"] == "box"


def test_anomalies_are_hidden_in_the_vehicle_too() -> None:
    places = set()
    recorded: dict[str, int] = {}
    for seed in range(80):
        syn = generate_scenario(seed, "dense_object", world="random")
        bottom = syn.world["span_top_mm"] - syn.world["span_bottom_mm"]
        for r in syn.regions:
            # Below the box floor (chassis, fuel tank): the region's centre is low in the column.
            low = (r.y + r.h / 2) / syn.scan.rows > 0.8
            places.add("low" if low else "load")
            recorded[r.place] = recorded.get(r.place, 0) + 1
            assert r.as_dict()["place"] == r.place
            if r.place in ("chassis", "fuel_tank"):
                assert low, (seed, r)
        assert bottom > 0
    assert places == {"low", "load"}
    # The region says where the object was hidden: mostly the load, the rest in the vehicle.
    assert set(recorded) <= set(HIDING_PLACES)
    assert recorded["load"] > sum(recorded.values()) / 2
    assert len(recorded) >= 3, recorded


def _rows_of(syn: SyntheticScan, low_mm: float, high_mm: float) -> slice:
    """Scan rows between two heights above the ground."""
    w = syn.world
    per_row = (w["span_top_mm"] - w["span_bottom_mm"]) / syn.scan.rows
    return slice(max(int((w["span_top_mm"] - high_mm) / per_row), 0),
                 min(int((w["span_top_mm"] - low_mm) / per_row), syn.scan.rows))


@pytest.mark.parametrize(("equipment", "container", "chassis", "where"), [
    ("genset", "dry", "skeletal", "below"),
    ("genset", "reefer", "none", "front"),
    ("tail_lift", "dry", "flatbed", "below"),
])
def test_equipment_is_clean_structure_of_its_own(equipment: str, container: str, chassis: str, where: str) -> None:
    base = nominal_world(container=container, chassis=chassis, span_bottom_mm=250.0, rows=384, col_mm=8.0,
                         equipment_seed=5)
    bare = generate_scan(9, cargo="cartons", anomalies=("weapon",), world=base, with_masks=True)
    fitted = generate_scan(9, cargo="cartons", anomalies=("weapon",), world=replace(base, equipment=equipment),
                           with_masks=True)
    # Never cargo, never a region: the ground truth is the bare vehicle's.
    assert fitted.world["equipment"] == equipment
    assert fitted.regions == bare.regions
    assert fitted.labels == bare.labels
    assert np.array_equal(fitted.masks["cargo"], bare.masks["cargo"])
    # Without equipment its stream is not used at all.
    assert generate_scan(9, cargo="cartons", anomalies=("weapon",),
                         world=replace(base, equipment_seed=6)).scan.sha256() == bare.scan.sha256()
    added = _att(fitted.scan, 1) - _att(bare.scan, 1)
    box = slice(int(0.3 * added.shape[1]), int(0.7 * added.shape[1]))
    inside = _rows_of(bare, 1800.0, 3500.0)
    assert abs(float(np.median(added[inside, box]))) < 0.02  # the load is untouched
    if where == "front":   # clipped on the front wall of the reefer, above the deck
        front = slice(0, int(0.15 * added.shape[1]))
        assert added[_rows_of(bare, 2000.0, 4200.0), front].max() > 1.0
        assert np.median(added[_rows_of(bare, 300.0, 1000.0)]) < 0.02
    else:                  # under the trailer
        assert added[_rows_of(bare, 300.0, 1100.0)].max() > 1.0
        assert np.median(added[_rows_of(bare, 2000.0, 4200.0)]) < 0.02


def test_equipment_is_drawn_after_every_other_knob() -> None:
    counts = dict.fromkeys(EQUIPMENT, 0)
    for seed in range(300):
        w = sample_world(np.random.default_rng(seed))
        plain = sample_world(np.random.default_rng(seed), only={"equipment": ("none",)})
        counts[w.equipment] += 1
        same = {k for k, v in plain.as_dict().items() if w.as_dict()[k] == v}
        changed = set(plain.as_dict()) - same
        # Only the equipment (and, for equipment under an unseen trailer, the chassis) moves.
        assert changed <= {"equipment", "equipment_seed", "chassis"}, changed
        if "chassis" in changed:
            assert plain.chassis == "none"
            assert w.equipment != "none"
        lift = sample_world(np.random.default_rng(seed), only={"equipment": ("tail_lift",)})
        assert lift.equipment == "tail_lift"
        assert lift.chassis != "none"
    assert 0.5 * 300 < counts["none"] < 0.7 * 300
    assert counts["genset"] > 50
    assert counts["tail_lift"] > 25
    assert nominal_world().equipment == "none"


def test_detector_defects_and_single_energy() -> None:
    world = nominal_world(dead_rows=2, stuck_rows=1, energy="single")
    syn = generate_scan(8, cargo="cartons", world=world)
    px = syn.scan.pixels
    assert px.shape[0] == 1
    constant = [r for r in range(px.shape[1]) if px[0, r].min() == px[0, r].max()]
    assert len(constant) == 3
    eight = generate_scan(8, cargo="cartons", world=nominal_world(bits=8))
    assert eight.scan.bits == 8
    assert eight.scan.pixels.max() > 200


def test_energy_pairs_differ_in_material_separation() -> None:
    def ratio(energy: str) -> float:
        world = nominal_world(energy=energy)
        syn = _visible("organic_mass", 31, cargo="empty", clutter=False, world=world)
        return _excess_ratio(syn, cargo="empty", clutter=False, world=world)

    assert ratio("3/6") > ratio("4/6") > ratio("6/9") > 1.0


def test_modules_stay_small() -> None:
    package = Path(__file__).resolve().parents[2] / "inference" / "synthetic"
    for path in package.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 500, path.name


def test_detectability_of_an_object_in_air_behind_steel_and_at_eight_bits() -> None:
    w = nominal_world()
    scene = [np.full((20, 30), 1.0, np.float32)]          # a load: T = 0.37
    obj = [np.zeros((20, 30), np.float32)]
    obj[0][8:12, 10:20] = 0.05                             # a faint object: 5 % more attenuation
    with_obj = [scene[0] + obj[0]]
    assert dprime(scene, [np.zeros_like(obj[0])], w) == 0.0
    seen = dprime(with_obj, obj, w)
    assert seen > 4 * DETECTABLE_DPRIME
    # Behind 12 nat of steel the beam is spent: below the gate's floor nothing changes.
    spent = [scene[0] + 12.0 + obj[0]]
    assert dprime(spent, obj, w) == 0.0
    # Coarser output and more noise see less of the same object.
    assert dprime(with_obj, obj, replace(w, bits=8)) < seen
    assert dprime(with_obj, obj, replace(w, quantum=3.0, electronic=3.0)) < seen


def test_an_object_the_scanner_could_not_show_is_no_anomaly_of_the_scan() -> None:
    # Dense objects in tank containers: some sit where the liquid's deepest chord has spent the
    # beam. The scan's pixels are the same either way; only the ground truth knows the difference.
    world = nominal_world(container="tank")
    outcomes = {"seen": 0, "unseen": 0}
    for seed in range(12):
        syn = generate_scan(seed, cargo="bulk", anomalies=("dense_object",), world=world, with_masks=True)
        meta = syn.scan.meta["synthetic"]
        assert len(meta["dprime"]) == len(syn.regions)
        if syn.regions:
            outcomes["seen"] += 1
            assert min(meta["dprime"]) >= DETECTABLE_DPRIME
            assert syn.finding == "contraband"
            assert "dense_object" in syn.masks
        for hidden in meta["unseen"]:
            outcomes["unseen"] += 1
            assert hidden["label"] == "dense_object"
            assert hidden["dprime"] < DETECTABLE_DPRIME
            assert not syn.regions
            assert syn.finding == "clean"
            assert syn.labels == ("not_empty",)
            assert "dense_object" not in syn.masks
    assert outcomes["seen"] >= 6, outcomes
    assert outcomes["unseen"] >= 2, outcomes
