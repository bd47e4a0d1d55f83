"""One scan from a seed: world, vehicle, box, cargo, anomalies, physics, detector, ground truth.

`generate_scan` draws a fully specified load in a given world (the reference scanner by
default); `generate_scenario` picks the load from a named scenario mixture and, with
``world="random"``, samples the scanner and vehicle too (`world.sample_world`). The same seed
always yields the same scan.

The canvas is drawn at most 384 rows high and 5 mm per column and resampled to the detector
grid together with the speed profile (one remap), so a 1024-row scanner costs little more to
simulate than a 256-row one; the noise, defects and bit depth are applied on the detector grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.scan import Scan
from inference.synthetic.anomaly import ANOMALY_DRAWERS, bbox_of, benign_clutter
from inference.synthetic.canvas import ANOMALY_CLASSES, ANOMALY_VISIBLE, CARGO_VISIBLE, Canvas, Region, SyntheticScan
from inference.synthetic.cargo import CARGO_KINDS, draw_cargo
from inference.synthetic.container import LENGTHS_MM
from inference.synthetic.detector import digitize, speed_profile
from inference.synthetic.physics import attenuation, response, transmission
from inference.synthetic.vehicle import draw_vehicle, scene_length_mm
from inference.synthetic.visibility import DETECTABLE_DPRIME, MARGIN_PX, dprime
from inference.synthetic.world import World, nominal_world, sample_world

__all__ = ["SCENARIOS", "generate_scan", "generate_scenario"]

FloatArray = npt.NDArray[np.float32]

_DEFAULT_COLUMNS = {20: 1200, 40: 2400, 45: 2700}
_CANVAS_MAX_ROWS = 384
_CANVAS_MIN_COL_MM = 5.0


def _check(length_ft: int, cargo: str | None, anomalies: Sequence[str], *, channels: int | None,
           bits: int | None, rows: int | None) -> None:
    if length_ft not in LENGTHS_MM:
        raise ValueError(f"length_ft must be one of {sorted(LENGTHS_MM)} (got {length_ft})")
    if cargo is not None and cargo not in CARGO_KINDS:
        raise ValueError(f"unknown cargo kind {cargo!r}; known: {', '.join(CARGO_KINDS)}")
    for a in anomalies:
        if a not in ANOMALY_CLASSES:
            raise ValueError(f"unknown anomaly class {a!r}; known: {', '.join(ANOMALY_CLASSES)}")
    if channels not in (None, 1, 2) or bits not in (None, 8, 16):
        raise ValueError("channels must be 1 or 2 and bits 8 or 16")
    if rows is not None and rows < 32:
        raise ValueError(f"rows must be >= 32 (got {rows})")


def _fit_world(world: World, rng: np.random.Generator, *, cargo: str, anomalies: Sequence[str],
               rows: int | None, channels: int | None, bits: int | None) -> World:
    """Apply explicit overrides and keep the load possible in the world (no car in a tank)."""
    changes: dict[str, Any] = {}
    if rows is not None:
        changes["rows"] = rows
    if bits is not None:
        changes["bits"] = bits
    if channels == 1 and world.energy != "single":
        changes["energy"] = "single"
    elif channels == 2 and world.energy == "single":
        changes["energy"] = "4/6"
    if world.container is None:
        changes["container"] = "high_cube" if rng.random() < 0.4 else "dry"
    container = changes.get("container", world.container)
    if container == "tank" and ("vehicle" in anomalies or cargo in ("vehicles", "coils", "machinery")):
        changes["container"] = "dry"
    if world.layout == "none" and (cargo != "empty" or anomalies):
        changes["layout"] = "box"
    return replace(world, **changes) if changes else world


def generate_scan(
    seed: int,
    *,
    length_ft: int = 40,
    cargo: str | None = None,
    anomalies: Sequence[str] = (),
    declared: str | None = None,
    rows: int | None = None,
    channels: int | None = None,
    bits: int | None = None,
    scan_id: str | None = None,
    columns: int | None = None,
    with_masks: bool = False,
    clutter: bool | None = None,
    world: World | None = None,
) -> SyntheticScan:
    """Generate one scan of a vehicle driven through the scanner.

    ``world`` None is the reference scanner (`nominal_world`); ``rows``/``channels``/``bits``
    override the world's. ``cargo`` None picks a kind at random (``"empty"`` when
    ``declared == "empty"``); ``declared="empty"`` with a non-empty cargo is the
    misdeclared-empty case. ``columns`` None uses the world's pulse pitch (the reference: 1200 /
    2400 / 2700 pulses for 20 / 40 / 45 ft). ``clutter`` adds benign small metal objects.
    """
    _check(length_ft, cargo, anomalies, channels=channels, bits=bits, rows=rows)
    rng = np.random.default_rng(seed)
    if cargo is None:
        cargo = "empty" if declared == "empty" else str(rng.choice(CARGO_KINDS[1:]))
    w = _fit_world(world if world is not None else nominal_world(), rng, cargo=cargo, anomalies=anomalies,
                   rows=rows, channels=channels, bits=bits)
    scene_mm, box_start, boxes, cab_end = scene_length_mm(w, length_ft, rng)
    if columns is not None:
        n_out = columns
    elif w.col_mm is None:
        n_out = _DEFAULT_COLUMNS[length_ft if w.layout != "twin" else 40]
    else:
        n_out = round(scene_mm / w.col_mm)
    if n_out < 200:
        raise ValueError(f"columns must be >= 200 (got {n_out})")
    pixel_mm = scene_mm / n_out
    canvas_col_mm = max(pixel_mm, _CANVAS_MIN_COL_MM)
    n_canvas = max(round(scene_mm / canvas_col_mm), 2)
    rows_c = min(w.rows, _CANVAS_MAX_ROWS)
    span = w.span_top_mm - w.span_bottom_mm
    cv = Canvas(rows_c, n_canvas, scene_mm / n_canvas, span / rows_c, w.span_top_mm, rng=rng, with_masks=with_masks)
    bodies = draw_vehicle(cv, w, box_start, boxes, container=str(w.container), cab_end_mm=cab_end)
    for body in bodies:
        cv.use(body)
        draw_cargo(cv, cargo)
    if (clutter if clutter is not None else rng.random() < 0.3) and bodies[0].kind != "none":
        cv.use(bodies[int(rng.integers(0, len(bodies)))])
        benign_clutter(cv)
    drawn: list[_Drawn] = []
    for label in anomalies:
        cv.use(bodies[int(rng.integers(0, len(bodies)))])
        cv.current = np.zeros((rows_c, n_canvas), dtype=np.float32)
        cv.last_place = "load"
        before = cv.t.copy()
        ANOMALY_DRAWERS[label](cv, label)
        visible = cv.current > ANOMALY_VISIBLE
        cv.current = None
        box = bbox_of(visible)
        if box is not None:
            drawn.append(_Drawn(box, label, cv.last_place, visible if with_masks else None,
                                _object_paths(cv.t, before, box)))
    # Detector grid: the speed profile along the pulses, the row pitch down the column.
    src_x = speed_profile(rng, n_out, n_canvas, w)
    ry = rows_c / w.rows
    map_x = np.ascontiguousarray(np.broadcast_to(src_x.astype(np.float32)[None, :], (w.rows, n_out)))
    ys = ((np.arange(w.rows, dtype=np.float32) + 0.5) * ry - 0.5).astype(np.float32)
    map_y = np.ascontiguousarray(np.broadcast_to(ys[:, None], (w.rows, n_out)))
    trans = []
    atts = []
    mus = response(w).mu
    for mu in mus:
        att = np.asarray(cv2.remap(attenuation(cv.t, mu), map_x, map_y, cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE), dtype=np.float32)
        atts.append(att)
        trans.append(transmission(att, w))
    pixels = digitize(tuple(trans), w, rng)
    regions: list[Region] = []
    seen_dprime: list[float] = []
    unseen: list[dict[str, Any]] = []
    for d in drawn:
        x, y, bw, bh = d.box
        ox0 = int(np.searchsorted(src_x, x - 1, side="right"))
        ox1 = min(int(np.searchsorted(src_x, x + bw, side="left")), n_out)
        oy0 = max(int(np.floor(y / ry)), 0)
        oy1 = min(int(np.ceil((y + bh) / ry)), w.rows)
        region = Region(x=ox0, y=oy0, w=max(1, ox1 - ox0), h=max(1, oy1 - oy0), label=d.label, place=d.place)
        d_prime = _region_dprime(region, d, atts, mus=mus, maps=(map_x, map_y), w=w)
        if d_prime < DETECTABLE_DPRIME:
            unseen.append({"label": d.label, "place": d.place, "dprime": round(d_prime, 2)})
            continue
        regions.append(region)
        seen_dprime.append(round(d_prime, 1))
        if with_masks and d.visible is not None:
            cv.class_masks[d.label] = cv.class_masks.get(d.label, np.zeros_like(d.visible)) | d.visible
    masks: dict[str, npt.NDArray[np.bool_]] = {}
    if with_masks:

        def warp(mask: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
            return np.asarray(cv2.remap(mask.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST) > 0)

        assert cv.cargo_att is not None
        masks["cargo"] = warp(cv.cargo_att > CARGO_VISIBLE)
        for label, m in cv.class_masks.items():
            masks[label] = warp(m)
    # Ground truth is what the scanner saw: an object hidden outside the detector column (a
    # chassis below it) has no region, and one the detector could not tell from noise (inside a
    # tank's liquid, beyond the scanner's penetration: `visibility`) is recorded as unseen; neither
    # is an anomaly of this scan.
    seen = sorted({r.label for r in regions})
    not_empty = cargo != "empty" or bool(seen)
    labels = list(seen)
    labels.append("not_empty" if not_empty else "empty")
    if seen:
        finding = "contraband"
    elif declared == "empty" and not_empty:
        finding = "misdeclared"
    else:
        finding = "clean"
    sid = scan_id if scan_id is not None else f"SYN-{seed & 0xFFFFFFFF:08X}"
    meta: dict[str, Any] = {
        "row_mm": round(span / w.rows, 4),
        "synthetic": {
            "seed": int(seed), "length_ft": length_ft, "cargo": cargo, "anomalies": seen,
            "finding": finding, "labels": labels, "regions": [r.as_dict() for r in regions],
            "dprime": seen_dprime, "unseen": unseen,
            "world": w.as_dict(),
        },
    }
    scan = Scan(pixels=pixels, scan_id=sid, bits=w.bits, pixel_mm=round(pixel_mm, 4), declared=declared, meta=meta)
    return SyntheticScan(scan=scan, regions=tuple(regions), labels=tuple(labels), cargo=cargo,
                         finding=finding, not_empty=not_empty, masks=masks, world=w.as_dict())


@dataclass(frozen=True)
class _Drawn:
    """One injected object before it is placed on the detector grid."""

    box: tuple[int, int, int, int]  # canvas (x, y, w, h) of its visible part
    label: str
    place: str
    visible: npt.NDArray[np.bool_] | None  # canvas mask (only with masks)
    paths: tuple[int, int, FloatArray]  # (x0, y0, per-material path lengths) around the box


_PATH_MARGIN = 8  # canvas pixels kept around an object's visible box (its faint edges)


def _object_paths(t: FloatArray, before: FloatArray, box: tuple[int, int, int, int],
                  ) -> tuple[int, int, FloatArray]:
    """The object's own path lengths: what drawing it added to the canvas, around its box."""
    x, y, bw, bh = box
    x0, y0 = max(x - _PATH_MARGIN, 0), max(y - _PATH_MARGIN, 0)
    x1, y1 = min(x + bw + _PATH_MARGIN, t.shape[2]), min(y + bh + _PATH_MARGIN, t.shape[1])
    return x0, y0, t[:, y0:y1, x0:x1] - before[:, y0:y1, x0:x1]


def _region_dprime(region: Region, d: _Drawn, atts: list[FloatArray], *, mus: tuple[FloatArray, ...],
                   maps: tuple[FloatArray, FloatArray], w: World) -> float:
    """`visibility.dprime` of a drawn object over its output region plus a margin."""
    rows, cols = atts[0].shape
    ys = slice(max(region.y - MARGIN_PX, 0), min(region.y + region.h + MARGIN_PX, rows))
    xs = slice(max(region.x - MARGIN_PX, 0), min(region.x + region.w + MARGIN_PX, cols))
    px0, py0, paths = d.paths
    mx = np.ascontiguousarray(maps[0][ys, xs] - np.float32(px0))
    my = np.ascontiguousarray(maps[1][ys, xs] - np.float32(py0))
    own = [np.asarray(cv2.remap(attenuation(paths, mu), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0.0), dtype=np.float32) for mu in mus]
    return dprime([a[ys, xs] for a in atts], own, w)


# --- scenarios: named mixtures used by `smartgate synth`, the simulator and training ---------


def _scenario_kwargs(kind: str, rng: np.random.Generator) -> dict[str, Any]:
    loaded = [k for k in CARGO_KINDS if k != "empty"]
    kw: dict[str, Any] = {"length_ft": int(rng.choice([20, 40, 40, 45]))}
    if kind == "random":
        r = rng.random()
        if r < 0.35:
            kind = "clean"
        elif r < 0.5:
            kind = "empty"
        elif r < 0.58:
            kind = "misdeclared_empty"
        else:
            kind = str(rng.choice(ANOMALY_CLASSES))
    if kind == "clean":
        kw["cargo"] = str(rng.choice(loaded))
    elif kind == "empty":
        kw.update(cargo="empty", declared="empty")
    elif kind == "misdeclared_empty":
        kw.update(cargo=str(rng.choice(["cartons", "bags", "machinery", "drums", "mixed", "bulk", "timber", "tyres"])),
                  declared="empty")
    elif kind in CARGO_KINDS:
        kw["cargo"] = kind
        if kind == "empty":
            kw["declared"] = "empty"
    elif kind in ANOMALY_CLASSES:
        hosts = [k for k in loaded if k not in ("vehicles", "coils")] + ["empty"]
        kw["cargo"] = str(rng.choice(hosts)) if kind != "vehicle" else str(rng.choice(["empty", "cartons"]))
        extra = [kind]
        if rng.random() < 0.1:
            extra.append(str(rng.choice(ANOMALY_CLASSES)))
        kw["anomalies"] = tuple(extra)
    else:
        raise ValueError(f"unknown scenario {kind!r}; known: {', '.join(SCENARIOS)}")
    return kw


SCENARIOS: tuple[str, ...] = ("random", "clean", "empty", "misdeclared_empty", *CARGO_KINDS[1:],
                              *ANOMALY_CLASSES)


def generate_scenario(seed: int, kind: str = "random", *, world: World | str = "nominal",
                      exclude: Mapping[str, tuple[str, ...]] | None = None,
                      only: Mapping[str, tuple[str, ...]] | None = None, **overrides: Any) -> SyntheticScan:
    """Generate a scan of a named scenario (see ``SCENARIOS``); the seed fixes everything.

    ``random`` is the mixture used for evaluation: 35 % clean loaded, 15 % empty, 8 % declared
    empty but loaded, 42 % with an anomaly (evenly over the classes). ``world``: ``"nominal"``
    (the reference scanner), ``"random"`` (domain randomization, restricted by
    ``exclude``/``only``, see `sample_world`) or a `World`.
    """
    rng = np.random.default_rng([seed, 0x5CA1AB1E])
    kw = _scenario_kwargs(kind, rng)
    kw.update(overrides)
    if isinstance(world, World):
        kw["world"] = world
    elif world == "random":
        empty_scene = kw.get("cargo") == "empty" and not kw.get("anomalies")
        kw["world"] = sample_world(np.random.default_rng([seed, 0x3D0]), exclude=exclude, only=only,
                                   empty_scene=empty_scene)
    elif world != "nominal":
        raise ValueError(f"world must be 'nominal', 'random' or a World (got {world!r})")
    return generate_scan(seed, **kw)
