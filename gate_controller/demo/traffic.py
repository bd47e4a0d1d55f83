"""The demo's traffic: which trucks come, what the hub says about their containers, and the verdict.

`plan_trucks` makes a deterministic mix that shows every kind of decision; `DemoResult` collects
what reached the hub and judges it (one transaction per truck, no ``seq`` gap, nothing unsafe).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge.simulator.trucks import ContainerSpec, TruckSpec, random_container_number, random_plate

__all__ = ["DemoResult", "DemoTruck", "plan_trucks"]

_SAFE_CARGO = ("cartons", "bags", "bulk", "machinery", "drums", "mixed")


@dataclass(frozen=True)
class DemoTruck:
    """One truck of the demo and what the hub says about its containers."""

    index: int
    lane: str
    spec: TruckSpec
    notices: tuple[tuple[str, str | None, str | None], ...]
    """Per container: (number, notice status or None for "never released", declared)."""
    story: str
    """What this truck is meant to show (printed in the live view)."""


@dataclass
class DemoResult:
    trucks: int = 0
    transactions: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    duplicates: int = 0
    seqs: list[int] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def seq_gaps(self) -> list[tuple[int, int]]:
        ordered = sorted(set(self.seqs))
        return [(a, b) for a, b in itertools.pairwise(ordered) if b != a + 1]

    @property
    def ok(self) -> bool:
        return not self.unsafe and not self.lost and not self.seq_gaps()


def _cargo(rng: random.Random) -> str:
    from inference.synthetic import CARGO_KINDS

    kinds = [k for k in CARGO_KINDS if k != "empty"]
    preferred = [k for k in kinds if any(k.startswith(p) for p in _SAFE_CARGO)]
    return rng.choice(preferred or kinds)


def plan_trucks(count: int, lanes: Sequence[str], *, seed: int = 7) -> list[DemoTruck]:
    """A traffic mix that shows every kind of decision, deterministic for a seed."""
    from inference.synthetic import ANOMALY_CLASSES

    rng = random.Random(seed)
    trucks: list[DemoTruck] = []
    for i in range(count):
        kind = i % 10
        two = kind in (2, 6)
        n = 2 if two else 1
        numbers = [random_container_number(rng) for _ in range(n)]
        length = 20 if two else rng.choice((20, 40))
        anomalies: tuple[str, ...] = ()
        statuses: list[str | None] = ["released"] * n
        declared: list[str | None] = [None] * n
        cargo: list[str | None] = [_cargo(rng) for _ in range(n)]
        story = "released, clean scan"
        if kind == 3:
            statuses[0], story = "hold", "customs hold"
        elif kind == 5:
            statuses[0], story = "inspect", "inspection ordered"
        elif kind == 7:
            statuses[0], story = None, "no release notice"
        elif kind == 8:
            anomalies = (rng.choice(list(ANOMALY_CLASSES)),)
            story = f"concealed {anomalies[0].replace('_', ' ')}"
        elif kind == 4 and i == 4:
            declared[0], story = "empty", "declared empty, carries cargo"
        elif kind == 4:
            declared[0], cargo[0], story = "empty", "empty", "declared empty, is empty"
        elif two:
            story = "2 x 20 ft, both released"
        containers = tuple(
            ContainerSpec(number=numbers[k], iso_type="22G1" if length == 20 else "42G1", length_ft=length,
                          cargo=cargo[k], anomalies=anomalies if k == 0 else (), declared=declared[k])
            for k in range(n)
        )
        spec = TruckSpec(plate=random_plate(rng), containers=containers, seed=seed * 1000 + i, ocr_quality=0.85)
        trucks.append(DemoTruck(
            index=i, lane=lanes[i % len(lanes)], spec=spec,
            notices=tuple((numbers[k], statuses[k], declared[k]) for k in range(n)), story=story,
        ))
    return trucks
