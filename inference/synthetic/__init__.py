"""Seeded, physics-minded synthetic X-ray scans of trucks and containers, with ground truth.

No public cargo X-ray data can be had for this project, so the whole review loop (firmware
simulator, training, evaluation, tests) runs on scans made here. The package is split by what
shapes a real drive-through scan:

* `world`: domain randomization, the scanner and vehicle knobs sampled per scan, with their
  documented ranges (energies, rows and pitch, bit depth, air/dark, gain, noise, defects, speed,
  chassis family, tractor, container type) and the leave-one-out restrictions;
* `canvas`: per-material path lengths (organic, light metal, steel, lead-like) and ground truth;
* `vehicle`: tractor, trailer chassis (skeletal, flatbed, extendable), axles, wheels, tanks;
* `container`: dry, high-cube, reefer, tank, open-top, flat-rack bodies;
* `cargo`: cargo kinds; `anomaly`: anomaly classes and where they are hidden;
* `physics`: Beer-Lambert per energy with material response, scatter and blur;
* `detector`: speed, gain, noise, afterglow, row defects, bit depth;
* `scenario`: `generate_scan` and the named scenario mixtures (`generate_scenario`).

A 40 ft scan of the reference scanner (2400 x 256 x 2) takes a few tens of milliseconds.
"""

from __future__ import annotations

from inference.synthetic.anomaly import HIDING_PLACES
from inference.synthetic.canvas import ANOMALY_CLASSES, LOW_HIGH_RATIO, MATERIALS, MU_HIGH, Region, SyntheticScan
from inference.synthetic.cargo import CARGO_KINDS
from inference.synthetic.physics import ENERGIES
from inference.synthetic.scenario import SCENARIOS, generate_scan, generate_scenario
from inference.synthetic.world import (
    CATEGORIES,
    CHASSIS,
    CONTAINER_TYPES,
    ENERGY_SETTINGS,
    EQUIPMENT,
    NOISE_REGIMES,
    World,
    nominal_world,
    sample_world,
)

__all__ = [
    "ANOMALY_CLASSES",
    "CARGO_KINDS",
    "CATEGORIES",
    "CHASSIS",
    "CONTAINER_TYPES",
    "ENERGIES",
    "ENERGY_SETTINGS",
    "EQUIPMENT",
    "HIDING_PLACES",
    "LOW_HIGH_RATIO",
    "MATERIALS",
    "MU_HIGH",
    "NOISE_REGIMES",
    "SCENARIOS",
    "Region",
    "SyntheticScan",
    "World",
    "generate_scan",
    "generate_scenario",
    "nominal_world",
    "sample_world",
]
