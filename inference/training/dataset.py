"""Training examples: generated scans with exact ground truth, and labelled field samples.

An example is the normalized model-space image of a whole scan, plus per-cell targets and
weights for every output channel (``not_empty`` then the anomaly labels), plus "bag" flags for
labels known to be present somewhere without a location (field samples without regions: the
loss then asks only that the scan's maximum for that channel be high).

Cell targets: a cell is positive when at least `POS_FRACTION` of one of its model pixels is
covered by the object's mask; cells partly covered or next to a positive cell get weight 0 (the
boundary is ambiguous at this resolution and should not be punished either way).

Generated sets are cached under a directory in /tmp keyed by everything that shapes them (seed,
count, geometry and the source of the generator), so retraining with the same seed reuses them
and any change to the generator invalidates them.

Field samples: a directory of ``NAME.npz`` archive scans, each with ``NAME.json``::

    {"finding": "clean" | "contraband" | "misdeclared", "labels": ["weapon", ...],
     "declared": "empty" | ... | null,                  (optional, else the scan's meta)
     "regions": [{"x", "y", "w", "h", "label"}, ...]}   (optional)

``smartgate synth`` writes exactly this layout, and the gate stores inspection results so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.errors import ScanFormatError
from inference.preprocess import normalize_scan
from inference.scan import Scan, load_scan
from inference.synthetic import CATEGORIES, generate_scenario
from inference.training.geometry import Geometry

__all__ = [
    "FINDINGS",
    "Example",
    "ExampleSet",
    "FieldSample",
    "WorldFilter",
    "build_synthetic_set",
    "field_example",
    "in_region",
    "load_field_samples",
    "projected_example",
    "split_seed",
    "synthetic_example",
    "world_key",
]

_log = logging.getLogger(__name__)

FINDINGS = ("clean", "contraband", "misdeclared")
POS_FRACTION = {"not_empty": 0.2, "default": 0.3}
TARGETS_VERSION = "targets/5"
# Scenario mixture of the training split. Weapons (small, thin steel) are the hardest class and
# get the largest share; dense legitimate loads (machinery, coils, mixed) get extra clean
# examples; evaluation and calibration use the unbiased 'random' mixture. Every scan is drawn in
# a randomized world (`inference.synthetic.world`).
TRAIN_MIX: dict[str, float] = {
    "clean": 0.24, "machinery": 0.05, "mixed": 0.03, "coils": 0.03, "empty": 0.12, "misdeclared_empty": 0.07,
    "weapon": 0.20, "dense_object": 0.12, "organic_mass": 0.09, "vehicle": 0.05,
}
WorldFilter = Mapping[str, tuple[str, ...]]
X_QUANT = 160.0  # cached inputs are uint8 = round(x * 160): 0.006 resolution up to x = 1.59
_SPLITS = {"train": 1, "val": 2, "test": 3, "val_empty": 4}


def split_seed(split: str, base_seed: int, index: int) -> int:
    """Seeds of the train/val/test splits never collide (independent SeedSequence streams)."""
    state = np.random.SeedSequence([base_seed, _SPLITS[split], index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


@dataclass(frozen=True)
class Example:
    """One scan in model space. ``x`` is uint8 (see `X_QUANT`), padded to a multiple of the stride."""

    x: npt.NDArray[np.uint8]          # (rows, width, channels)
    targets: npt.NDArray[np.uint8]    # (cell_rows, cell_cols, outputs)
    weights: npt.NDArray[np.uint8]    # (cell_rows, cell_cols, outputs), 0 = ignore
    bag: npt.NDArray[np.uint8]        # (outputs,), 1 = present somewhere, location unknown
    width: int                        # valid model columns
    tag: str                          # scenario / finding, for statistics
    world: str = ""                   # the world's categorical knobs, "energy=4/6;chassis=..."


@dataclass(frozen=True)
class FieldSample:
    path: Path
    scan: Scan
    finding: str
    labels: tuple[str, ...]
    declared: str | None
    regions: tuple[dict[str, Any], ...]


def _pad_width(width: int, g: Geometry) -> int:
    return max(g.tile_width, -(-width // g.stride) * g.stride)


def _quant_x(planar: npt.NDArray[np.float32], padded: int) -> npt.NDArray[np.uint8]:
    """Planar float features -> (rows, width, channels) uint8, the layout the trainer batches."""
    x = planar.transpose(1, 2, 0)
    q: npt.NDArray[np.uint8] = np.clip(np.rint(x * X_QUANT), 0, 255).astype(np.uint8)
    if q.shape[1] < padded:
        q = np.asarray(np.pad(q, ((0, 0), (0, padded - q.shape[1]), (0, 0))), dtype=np.uint8)
    return q


def _cell_fraction(mask: npt.NDArray[np.bool_], width: int, padded: int, g: Geometry) -> npt.NDArray[np.float32]:
    """Max, per cell, of the fraction of each model pixel covered by the mask."""
    frac = cv2.resize(mask.astype(np.float32), (width, g.rows), interpolation=cv2.INTER_AREA)
    if padded > width:
        frac = np.pad(frac, ((0, 0), (0, padded - width)))
    cells = frac.reshape(g.cell_rows, g.stride, padded // g.stride, g.stride)
    return np.asarray(cells.max(axis=(1, 3)), dtype=np.float32)


def _dense_channel(frac: npt.NDArray[np.float32], threshold: float,
                   ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    pos = (frac >= threshold).astype(np.uint8)
    near = cv2.dilate(pos, np.ones((3, 3), np.uint8)) > 0
    ignore = ((frac > 0) | near) & (pos == 0)
    return pos, (~ignore).astype(np.uint8)


def _targets_from_masks(masks: dict[str, npt.NDArray[np.bool_]], width: int, padded: int, g: Geometry,
                        ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    shape = (g.cell_rows, padded // g.stride, len(g.outputs))
    targets = np.zeros(shape, dtype=np.uint8)
    weights = np.ones(shape, dtype=np.uint8)
    for k, name in enumerate(g.outputs):
        mask = masks.get("cargo" if name == "not_empty" else name)
        if mask is None or not mask.any():
            continue
        frac = _cell_fraction(mask, width, padded, g)
        targets[..., k], weights[..., k] = _dense_channel(frac, POS_FRACTION.get(name, POS_FRACTION["default"]))
    return targets, weights


def world_key(world: Mapping[str, object]) -> str:
    """The categorical knobs of a world as one string (leave-one-out bookkeeping)."""
    return ";".join(f"{c}={world.get(c)}" for c in CATEGORIES)


def in_region(key: str, region: WorldFilter) -> bool:
    """Whether a `world_key` lies in a region ``{category: values}`` of the randomization space."""
    parts = dict(p.split("=", 1) for p in key.split(";") if "=" in p)
    return any(parts.get(c) in values for c, values in region.items())


def synthetic_example(seed: int, g: Geometry, kind: str = "train") -> Example:
    """One generated example in a randomized world; ``kind`` is a scenario name or ``"train"``
    (`TRAIN_MIX`)."""
    if kind == "train":
        pick = np.random.default_rng([seed, 0x7EA1]).choice(len(TRAIN_MIX), p=list(TRAIN_MIX.values()))
        kind = list(TRAIN_MIX)[int(pick)]
    syn = generate_scenario(seed, kind, world="random", with_masks=True)
    x, width = normalize_scan(syn.scan, g.input_spec(), g.normalization())
    padded = _pad_width(width, g)
    targets, weights = _targets_from_masks(syn.masks, width, padded, g)
    tag = "+".join(sorted({r.label for r in syn.regions})) or ("empty" if not syn.not_empty else "clean")
    return Example(x=_quant_x(x, padded), targets=targets, weights=weights,
                   bag=np.zeros(len(g.outputs), np.uint8), width=width, tag=tag, world=world_key(syn.world))


# --- field samples ------------------------------------------------------------------------------


def _read_label(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ScanFormatError(f"{path}: unreadable label file: {err}") from err
    if not isinstance(raw, dict):
        raise ScanFormatError(f"{path}: label file must hold a JSON object")
    if raw.get("finding") not in FINDINGS:
        raise ScanFormatError(f"{path}: 'finding' must be one of {FINDINGS} (got {raw.get('finding')!r})")
    labels = raw.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise ScanFormatError(f"{path}: 'labels' must be a list of strings")
    regions = raw.get("regions", [])
    if not isinstance(regions, list):
        raise ScanFormatError(f"{path}: 'regions' must be a list")
    for r in regions:
        if not isinstance(r, dict) or not all(isinstance(r.get(k), int) for k in ("x", "y", "w", "h")) \
                or not isinstance(r.get("label"), str):
            raise ScanFormatError(f"{path}: each region needs integer x, y, w, h and a string label")
    return raw


def load_field_samples(directory: Path) -> list[FieldSample]:
    """Every ``*.json`` label file in ``directory`` with its ``.npz`` scan beside it."""
    samples: list[FieldSample] = []
    for label_path in sorted(Path(directory).glob("*.json")):
        scan_path = label_path.with_suffix(".npz")
        if not scan_path.is_file():
            raise ScanFormatError(f"{label_path}: no scan {scan_path.name} beside it")
        raw = _read_label(label_path)
        scan = load_scan(scan_path)
        declared = raw.get("declared", scan.declared)
        samples.append(FieldSample(path=scan_path, scan=scan, finding=raw["finding"],
                                   labels=tuple(raw.get("labels", [])), declared=declared,
                                   regions=tuple(raw.get("regions", []))))
    return samples


def field_example(sample: FieldSample, g: Geometry) -> Example:
    """Targets from an inspection result: dense where known, bag where only presence is known."""
    x, width = normalize_scan(sample.scan, g.input_spec(), g.normalization())
    padded = _pad_width(width, g)
    shape = (g.cell_rows, padded // g.stride, len(g.outputs))
    targets = np.zeros(shape, dtype=np.uint8)
    weights = np.ones(shape, dtype=np.uint8)
    bag = np.zeros(len(g.outputs), dtype=np.uint8)
    weights[:, -(-width // g.stride):, :] = 0  # padding is not part of the scan
    rows, cols = sample.scan.rows, sample.scan.columns
    present = set(sample.labels) & set(g.labels)
    if sample.finding == "clean":
        present = set()
    for k, name in enumerate(g.labels, start=1):
        boxes = [r for r in sample.regions if r["label"] == name]
        if boxes:
            mask = np.zeros((rows, cols), dtype=bool)
            for r in boxes:
                mask[max(r["y"], 0):r["y"] + r["h"], max(r["x"], 0):r["x"] + r["w"]] = True
            t, w = _dense_channel(_cell_fraction(mask, width, padded, g), POS_FRACTION["default"])
            targets[..., k], weights[..., k] = t, w * weights[..., k]
        elif name in present:
            weights[..., k] = 0
            bag[k] = 1
    declared_empty = (sample.declared or "").strip().lower() == "empty"
    if "empty" in sample.labels or (declared_empty and sample.finding == "clean"):
        pass  # dense negative: nothing in the box
    elif "not_empty" in sample.labels or sample.finding in ("contraband", "misdeclared") or not declared_empty:
        weights[..., 0] = 0
        bag[0] = 1
    tag = f"field:{sample.finding}"
    return Example(x=_quant_x(x, padded), targets=targets, weights=weights, bag=bag, width=width, tag=tag)


def projected_example(original: Scan, projected: Scan, label: str, g: Geometry, *, visible: float = 0.03,
                      ) -> Example:
    """A threat projected into a clean scan (`inference.adaptation.tip`) as a training example:
    the object's own pixels (where the projection attenuated the scan by more than ``visible``,
    ln units, in any channel) are the mask of ``label``, every other anomaly channel is a dense
    negative, and the load (``not_empty``) is known to be there but not where (a bag label)."""
    if original.pixels.shape != projected.pixels.shape:
        raise ValueError("the projected scan must have the original's shape")
    before = np.log(original.pixels.astype(np.float32) + 1.0)
    after = np.log(projected.pixels.astype(np.float32) + 1.0)
    mask = (before - after).max(axis=0) > visible
    x, width = normalize_scan(projected, g.input_spec(), g.normalization())
    padded = _pad_width(width, g)
    targets, weights = _targets_from_masks({label: mask}, width, padded, g)
    weights[:, -(-width // g.stride):, :] = 0  # padding is not part of the scan
    weights[..., 0] = 0
    bag = np.zeros(len(g.outputs), dtype=np.uint8)
    bag[0] = 1
    return Example(x=_quant_x(x, padded), targets=targets, weights=weights, bag=bag, width=width,
                   tag=f"tip:{label}")


# --- example sets -------------------------------------------------------------------------------


class ExampleSet:
    """Examples concatenated along the width axis (one big array each), with an index."""

    def __init__(self, examples: Iterable[Example], g: Geometry) -> None:
        items = list(examples)
        self.geometry = g
        self.tags = [e.tag for e in items]
        self.worlds = [e.world for e in items]
        self.widths = np.array([e.x.shape[1] for e in items], dtype=np.int64)
        self.valid = np.array([e.width for e in items], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(np.int64)
        self.x = np.concatenate([e.x for e in items], axis=1) if items else np.zeros((g.rows, 0, 2), np.uint8)
        self.targets = np.concatenate([e.targets for e in items], axis=1) if items else np.zeros((0,), np.uint8)
        self.weights = np.concatenate([e.weights for e in items], axis=1) if items else np.zeros((0,), np.uint8)
        self.bag = np.stack([e.bag for e in items]) if items else np.zeros((0, len(g.outputs)), np.uint8)

    def __len__(self) -> int:
        return len(self.widths)

    def example(self, i: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        s, w = int(self.starts[i]), int(self.widths[i])
        cs, cw = s // self.geometry.stride, w // self.geometry.stride
        return self.x[:, s:s + w], self.targets[:, cs:cs + cw], self.weights[:, cs:cs + cw]

    def without(self, region: WorldFilter) -> ExampleSet:
        """The examples whose world lies outside ``region`` (leave-one-out training sets)."""
        keep = [i for i, key in enumerate(self.worlds) if not in_region(key, region)]
        out = ExampleSet([], self.geometry)
        stride = self.geometry.stride
        xs, ts, ws = [], [], []
        for i in keep:
            s, w = int(self.starts[i]), int(self.widths[i])
            xs.append(self.x[:, s:s + w])
            ts.append(self.targets[:, s // stride:(s + w) // stride])
            ws.append(self.weights[:, s // stride:(s + w) // stride])
        out.x = np.concatenate(xs, axis=1)
        out.targets = np.concatenate(ts, axis=1)
        out.weights = np.concatenate(ws, axis=1)
        out.bag = self.bag[keep]
        out.widths, out.valid = self.widths[keep], self.valid[keep]
        out.tags = [self.tags[i] for i in keep]
        out.worlds = [self.worlds[i] for i in keep]
        out.starts = np.concatenate([[0], np.cumsum(out.widths)[:-1]]).astype(np.int64)
        return out

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, x=self.x, targets=self.targets, weights=self.weights, bag=self.bag, widths=self.widths,
                 valid=self.valid, tags=np.array(self.tags), worlds=np.array(self.worlds))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, g: Geometry) -> ExampleSet:
        with np.load(path, allow_pickle=False) as z:
            self = cls([], g)
            self.x, self.targets, self.weights, self.bag = z["x"], z["targets"], z["weights"], z["bag"]
            self.widths, self.valid = z["widths"], z["valid"]
            self.tags = [str(t) for t in z["tags"]]
            self.worlds = [str(t) for t in z["worlds"]] if "worlds" in z.files else [""] * len(self.tags)
        self.starts = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(np.int64)
        return self


def _source_digest() -> str:
    """Hash of the code that shapes generated examples, so a generator change invalidates caches.

    `TARGETS_VERSION` stands for this module's target construction: bump it when that changes.
    """
    import inference.conditioning as cond
    import inference.preprocess as pre
    import inference.synthetic as syn

    h = hashlib.sha256(TARGETS_VERSION.encode())
    for path in sorted(Path(str(syn.__file__)).parent.glob("*.py")):
        h.update(path.read_bytes())
    for mod in (cond, pre):
        h.update(Path(str(mod.__file__)).read_bytes())
    return h.hexdigest()[:16]


def _make_example(args: tuple[int, Geometry]) -> Example:
    return synthetic_example(args[0], args[1])


def _generate(seeds: list[int], g: Geometry, workers: int) -> Iterator[Example]:
    if workers <= 1:
        for s in seeds:
            yield synthetic_example(s, g)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_make_example, [(s, g) for s in seeds], chunksize=8)


def build_synthetic_set(split: str, base_seed: int, count: int, g: Geometry, *, cache_dir: Path | None,
                        workers: int = 2) -> ExampleSet:
    """Generate (or load from cache) ``count`` examples of a split."""
    key = hashlib.sha256(repr((split, base_seed, count, g, _source_digest())).encode()).hexdigest()[:20]
    path = cache_dir / f"{split}-{count}-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        _log.info("using cached %s set %s", split, path)
        return ExampleSet.load(path, g)
    seeds = [split_seed(split, base_seed, i) for i in range(count)]
    examples = []
    for i, ex in enumerate(_generate(seeds, g, workers)):
        examples.append(ex)
        if (i + 1) % 500 == 0:
            _log.info("generated %d/%d %s scans", i + 1, count, split)
    result = ExampleSet(examples, g)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        result.save(path)
    return result
