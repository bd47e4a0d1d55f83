"""Domain randomization: the scanner, the vehicle and the container type, sampled per scan.

A review model trained on one simulated scanner learns that scanner. `sample_world` draws every
knob that differs between real scanners and trucks from the documented ranges below, so the
model sees a family of machines; `nominal_world` is the reference scanner of the simulator and
the tests (4/6 MeV dual energy, 256 rows over 1.1-4.3 m, 16 bit, clean detector).

Categorical knobs (`CATEGORIES`) can be restricted, which is how the leave-one-out evaluation
holds a whole region of the space out of training (`sample_world(rng, exclude=...)`) and tests
on it alone (``only=...``). The ranges, also in docs/image-review.md:

======================  ====================================================================
knob                    range (per scan)
======================  ====================================================================
energy                  dual 4/6, 6/9, 3/6 MeV (25/20/20 %) or single energy (35 %);
                        material response per source (`physics.ENERGIES`) x U(0.92, 1.08)
                        per material, low/high ratio excess x U(0.85, 1.15)
rows                    128, 192, 256, 384, 512, 768, 1024
detector span           bottom 0.2-1.2 m above ground, top 4.1-4.7 m
column pitch            3.5-10 mm per pulse
bits                    16 (70 %) or 8 (30 %, the 16-bit signal >> 8)
air level               0.35-0.97 of full scale; dark offset 0-1 % of full scale
gain                    per-row non-uniformity sigma 0-6 %; pulse drift 0.02-0.1 % per pulse
noise regime            low (quantum/electronic x 0.5-1), normal (x 1-2), high (x 2-4.5)
scatter, blur           scatter 0-5 % of the signal (broad); blur sigma 0-1.3 px each way
afterglow               none (65 %) or 2-30 % lag per pulse
row defects             dead 0-3, stuck 0-3 (full scale or mid level), noisy 0-3 rows, each
                        present in 20 % of scans
speed                   +-0-25 % variation, a slowdown in 20 %, a stop in 10 % of scans
air before/after        0.1-1.5 m each
chassis                 skeletal, flatbed, extendable (30/30/30 %), no chassis in view (10 %)
tractor                 none in view, cab skipped (drive axles under the box), cab partly scanned
container               dry, high_cube, reefer, tank, open_top, flat_rack
layout                  one box (20/40/45 ft), 2 x 20 ft with a gap, no box (bare chassis or
                        empty trailer: empty scenarios only)
equipment               none, genset (under the trailer, or clipped on a reefer's front wall),
                        tail lift (60/25/15 %; `equipment.py`); drawn after every other knob,
                        so a world without equipment is the same world as before the knob
======================  ====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from inference.synthetic.equipment import EQUIPMENT

__all__ = [
    "CATEGORIES",
    "CHASSIS",
    "CONTAINER_TYPES",
    "ENERGY_SETTINGS",
    "EQUIPMENT",
    "NOISE_REGIMES",
    "World",
    "nominal_world",
    "sample_world",
]

ENERGY_SETTINGS: tuple[str, ...] = ("4/6", "6/9", "3/6", "single")
CHASSIS: tuple[str, ...] = ("skeletal", "flatbed", "extendable", "none")
CONTAINER_TYPES: tuple[str, ...] = ("dry", "high_cube", "reefer", "tank", "open_top", "flat_rack")
NOISE_REGIMES: tuple[str, ...] = ("low", "normal", "high")
TRACTOR: tuple[str, ...] = ("none", "skipped", "partly")
LAYOUTS: tuple[str, ...] = ("box", "twin", "none")

CATEGORIES: dict[str, tuple[str, ...]] = {
    "energy": ENERGY_SETTINGS,
    "chassis": CHASSIS,
    "container": CONTAINER_TYPES,
    "noise": NOISE_REGIMES,
    "equipment": EQUIPMENT,
}
_WEIGHTS: dict[str, tuple[float, ...]] = {
    "energy": (0.25, 0.2, 0.2, 0.35),
    "chassis": (0.3, 0.3, 0.3, 0.1),
    "container": (0.3, 0.2, 0.15, 0.1, 0.13, 0.12),
    "noise": (0.3, 0.45, 0.25),
    "equipment": (0.6, 0.25, 0.15),
}
MU_JITTER: tuple[float, float] = (0.92, 1.08)
"""A scanner's own spectral calibration: each material's coefficient x U(MU_JITTER)."""
RATIO_JITTER: tuple[float, float] = (0.85, 1.15)
"""... and the low/high ratio excess x U(RATIO_JITTER)."""
_NOISE_RANGE = {"low": (0.5, 1.0), "normal": (1.0, 2.0), "high": (2.0, 4.5)}
_ROWS = (128, 192, 256, 384, 512, 768, 1024)
_ROW_WEIGHTS = (0.1, 0.1, 0.25, 0.2, 0.15, 0.1, 0.1)


@dataclass(frozen=True)
class World:
    """Everything about one scan that is neither cargo nor anomaly."""

    energy: str = "4/6"
    single_mev: float = 6.0           # source energy of a single-energy scanner
    mu_jitter: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    ratio_jitter: float = 1.0
    rows: int = 256
    span_bottom_mm: float = 1100.0
    span_top_mm: float = 4300.0
    col_mm: float | None = None       # None: from the nominal pulse count of the length
    bits: int = 16
    air_fraction: float = 0.9
    dark_fraction: float = 25.0 / 65535.0
    row_gain_sigma: float = 0.003
    pulse_drift: float = 0.0006
    noise: str = "normal"
    quantum: float = 1.0
    electronic: float = 1.0
    scatter: float = 0.0
    blur_rows: float = 0.0
    blur_cols: float = 0.0
    afterglow: float = 0.0
    dead_rows: int = 0
    stuck_rows: int = 0
    noisy_rows: int = 0
    speed_amp: float = 0.18
    slowdown: bool | None = None      # None: 20 % of scans
    stop: bool = False
    air_before_mm: float = 180.0
    air_after_mm: float = 180.0
    chassis: str = "skeletal"
    tractor: str = "none"
    container: str | None = None      # None: dry or high_cube at random (the reference world)
    layout: str = "box"
    dents: bool = False
    equipment: str = "none"
    equipment_seed: int = 0           # the parts' own random stream (`equipment.draw_equipment`)

    @property
    def channels(self) -> int:
        return 1 if self.energy == "single" else 2

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mu_jitter"] = [round(v, 4) for v in self.mu_jitter]
        return out

    def slice_key(self, category: str) -> str:
        """The value of one `CATEGORIES` knob (for leave-one-out bookkeeping)."""
        return str(getattr(self, category))


def nominal_world(**changes: Any) -> World:
    """The reference scanner and a skeletal trailer, optionally changed."""
    return replace(World(), **changes)


def _pick(rng: np.random.Generator, category: str, allowed: tuple[str, ...]) -> str:
    values = CATEGORIES[category]
    weights = np.array([w for v, w in zip(values, _WEIGHTS[category], strict=True) if v in allowed])
    choices = [v for v in values if v in allowed]
    return str(choices[int(rng.choice(len(choices), p=weights / weights.sum()))])


def sample_world(rng: np.random.Generator, *, exclude: Mapping[str, tuple[str, ...]] | None = None,
                 only: Mapping[str, tuple[str, ...]] | None = None, empty_scene: bool = False) -> World:
    """Draw one world. ``exclude``/``only`` restrict categorical knobs (`CATEGORIES`) to leave a
    region out, or to sample inside it. ``empty_scene`` allows layouts without a container."""
    allowed: dict[str, tuple[str, ...]] = {}
    for category, values in CATEGORIES.items():
        keep = tuple(v for v in values if v not in (exclude or {}).get(category, ()))
        if only and category in only:
            keep = tuple(v for v in keep if v in only[category])
        if not keep:
            raise ValueError(f"no {category} value left to sample")
        allowed[category] = keep
    energy = _pick(rng, "energy", allowed["energy"])
    noise = _pick(rng, "noise", allowed["noise"])
    lo, hi = _NOISE_RANGE[noise]
    defects = [int(rng.integers(1, 4)) if rng.random() < 0.2 else 0 for _ in range(3)]
    r = rng.random()
    layout = "box" if r < 0.88 else ("twin" if r < 0.96 or not empty_scene else "none")
    world = World(
        energy=energy,
        single_mev=float(rng.choice([4.0, 6.0, 9.0])),
        mu_jitter=tuple(float(v) for v in rng.uniform(*MU_JITTER, size=4)),
        ratio_jitter=float(rng.uniform(*RATIO_JITTER)),
        rows=int(rng.choice(_ROWS, p=np.array(_ROW_WEIGHTS) / sum(_ROW_WEIGHTS))),
        span_bottom_mm=float(rng.uniform(200, 1200)),
        span_top_mm=float(rng.uniform(4100, 4700)),
        col_mm=float(rng.uniform(3.5, 10.0)),
        bits=16 if rng.random() < 0.7 else 8,
        air_fraction=float(rng.uniform(0.35, 0.97)),
        dark_fraction=float(rng.uniform(0.0, 0.01)),
        row_gain_sigma=float(rng.uniform(0.0, 0.06)),
        pulse_drift=float(rng.uniform(0.0002, 0.001)),
        noise=noise,
        quantum=float(rng.uniform(lo, hi)),
        electronic=float(rng.uniform(lo, hi)),
        scatter=float(rng.uniform(0.0, 0.05)),
        blur_rows=float(rng.uniform(0.0, 1.3)),
        blur_cols=float(rng.uniform(0.0, 1.3)),
        afterglow=0.0 if rng.random() < 0.65 else float(rng.uniform(0.02, 0.3)),
        dead_rows=defects[0],
        stuck_rows=defects[1],
        noisy_rows=defects[2],
        speed_amp=float(rng.uniform(0.0, 0.25)),
        slowdown=bool(rng.random() < 0.2),
        stop=bool(rng.random() < 0.1),
        air_before_mm=float(rng.uniform(100, 1500)),
        air_after_mm=float(rng.uniform(100, 1500)),
        chassis=_pick(rng, "chassis", allowed["chassis"]),
        tractor=str(rng.choice(TRACTOR, p=[0.4, 0.35, 0.25])),
        container=_pick(rng, "container", allowed["container"]),
        layout=layout,
        dents=bool(rng.random() < 0.3),
    )
    return _with_equipment(world, rng, allowed)


def _with_equipment(world: World, rng: np.random.Generator, allowed: Mapping[str, tuple[str, ...]]) -> World:
    """Draw the equipment last (the knobs before it stay as they were drawn without it). Without a
    chassis in view only a reefer's clipped-on genset can be seen; a region that asks for
    equipment under the trailer gets a chassis."""
    equipment = _pick(rng, "equipment", allowed["equipment"])
    seed = int(rng.integers(0, 2**31))
    changes: dict[str, Any] = {"equipment": equipment, "equipment_seed": seed}
    if world.chassis == "none" and equipment != "none" and (equipment, world.container) != ("genset", "reefer"):
        with_chassis = tuple(c for c in allowed["chassis"] if c != "none")
        if with_chassis:
            changes["chassis"] = _pick(rng, "chassis", with_chassis)
    return replace(world, **changes)
