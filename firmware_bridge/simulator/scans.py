"""Scans of a whole truck from the synthetic generator of `inference.synthetic`.

A drive-through scanner scans the truck in one pass: one container gives one container scan,
two 20 ft containers give their two scans side by side (front container first). Ground truth of
every container (with its column offset) goes into ``meta["truck"]`` for the tests and the demo.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from firmware_bridge.simulator.trucks import TruckSpec
from inference.scan import Scan

__all__ = ["container_seed", "truck_scan"]


def container_seed(truck_seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"{truck_seed}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def truck_scan(truck: TruckSpec, *, scan_id: str, rows: int = 256, channels: int = 2, bits: int = 16) -> Scan:
    """Generate the scan of ``truck`` (a few tens of ms per 40 ft container; call it off the loop)."""
    from inference.synthetic import generate_scan

    parts: list[Scan] = []
    truth: list[dict[str, Any]] = []
    offset = 0
    for index, container in enumerate(truck.containers):
        seed = container_seed(truck.seed, index)
        generated = generate_scan(seed, length_ft=container.length_ft, cargo=container.cargo,
                                  anomalies=container.anomalies, declared=container.declared, rows=rows,
                                  channels=channels, bits=bits, scan_id=scan_id)
        part = generated.scan
        parts.append(part)
        truth.append({"number": container.number, "iso_type": container.iso_type,
                      "length_ft": container.length_ft, "column_offset": offset, "columns": part.columns,
                      "cargo": generated.cargo, "finding": generated.finding, "labels": list(generated.labels),
                      "declared": container.declared,
                      "regions": [r.as_dict() for r in generated.regions]})
        offset += part.columns
    pixels = parts[0].pixels if len(parts) == 1 else np.concatenate([p.pixels for p in parts], axis=2)
    declared = parts[0].declared if len(parts) == 1 else None
    meta = {"truck": {"plate": truck.plate, "seed": truck.seed, "speed_kmh": truck.speed_kmh,
                      "containers": truth}}
    return Scan(pixels=np.ascontiguousarray(pixels), scan_id=scan_id, bits=bits, pixel_mm=parts[0].pixel_mm,
                declared=declared, meta=meta)
