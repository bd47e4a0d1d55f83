"""Clean machinery a truck or a box carries: gensets and tail lifts (world knob ``equipment``).

A scanner at a real site sees machinery our boxes and trailers would otherwise never carry: an
engine block, an alternator and a lead-acid battery are dense, compact and made of the same
steel and lead as the generator's contraband. A review model that has seen only bare chassis
learns "a compact dense block below or in front of the box is suspect", and stops the trucks of
every site whose trailers carry a genset. This module draws such equipment, always ``structure``
(never a region, never cargo), side-on at the scan's heights; sizes in mm, ``thick`` the path of
the beam across the vehicle:

* ``genset`` under the trailer (under-slung genset, as under reefer chassis): a sheet-steel
  housing 800-1300 long and 550-750 high (at least 250 above the ground) hung below the beams
  anywhere between the kingpin and the axles, with a diesel engine block (350-550 x 300-450,
  200-380 of cast iron), an alternator (radius 110-160, 250-400 of steel and copper), a
  radiator (aluminium core, 60-150), an aluminium fuel tank with diesel, a muffler and, in 70 %
  of them, a lead-acid battery (250 x 200, 40-70 of lead plates and 100 of acid and case). On
  a reefer box the genset is clipped on the box's front wall instead in 50 % of cases (the same
  parts in a 400-500 long, 700-950 high frame in front of the box's upper front end), and
  always when no chassis is in view.
* ``tail_lift`` at the rear of the trailer: either a slider lift folded under the rear
  (aluminium platform edge-on, 80-140 high, 1200-2000 long) or a cantilever lift folded up
  behind the doors (platform standing 1500-2200 high), with steel lifting arms, two hydraulic
  cylinders, the hydraulic power pack (a steel box of 150-300 across) and the rear underrun bar.

The parts are drawn from their own random stream (``World.equipment_seed``): a scan without
equipment is the same scan, pixel for pixel, as before the knob existed, and a scan with it
holds the same vehicle, box, load and ground truth plus the machinery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.synthetic.canvas import AL, FE, ORG, PB, Canvas

__all__ = ["EQUIPMENT", "Trailer", "draw_equipment"]

EQUIPMENT: tuple[str, ...] = ("none", "genset", "tail_lift")


@dataclass(frozen=True)
class Trailer:
    """Where the trailer drawn by `vehicle` put its parts (mm along the scene and above ground)."""

    x0: float
    x1: float
    top: float          # top of the main beams
    beam_h: float
    rear_axle: float    # first rear axle


def _genset_parts(cv: Canvas, rng: np.random.Generator, frame: tuple[float, float, float, float]) -> None:
    """Housing and machinery of a genset in ``frame`` (x, length, top, height) in mm."""
    x, length, top, height = frame
    bottom = top - height
    c0, c1 = cv.col_of(x), cv.col_of(x + length)
    cv.add_box(FE, c0, c1, cv.row_of(top), cv.row_of(bottom), thick=2 * rng.uniform(1.5, 3.0), layer="structure")
    cv.add_edge_sheet(FE, c0, c1, cv.row_of(top), 4.0, across_mm=rng.uniform(800, 1400))
    cv.add_edge_sheet(FE, c0, c1, cv.row_of(bottom + 40), 4.0, across_mm=rng.uniform(800, 1400))
    # Engine block: cast iron, the densest part.
    ew, eh = min(rng.uniform(350, 550), 0.6 * length), min(rng.uniform(300, 450), 0.7 * height)
    ex = x + rng.uniform(0.05, 0.95) * (length - ew)
    ey = bottom + rng.uniform(0.1, 0.25) * height
    cv.add_box(FE, cv.col_of(ex), cv.col_of(ex + ew), cv.row_of(ey + eh), cv.row_of(ey),
               thick=rng.uniform(200, 380), layer="structure")
    # Alternator beside it, seen end-on.
    ar = rng.uniform(110, 160)
    ax = ex + ew + ar + 20 if ex + ew + 2 * ar + 40 < x + length else ex - ar - 20
    cv.add_disc(FE, cv.col_of(ax), cv.row_of(ey + eh / 2), ar, rng.uniform(250, 400))
    # Radiator at one end of the housing: aluminium fins, mostly air.
    rx = x + 30 if rng.random() < 0.5 else x + length - 150
    cv.add_box(AL, cv.col_of(rx), cv.col_of(rx + 120), cv.row_of(top - 0.1 * height), cv.row_of(bottom + 0.15 * height),
               thick=rng.uniform(60, 150), layer="structure")
    # Fuel tank in the lower part: aluminium shell, diesel.
    ty1 = bottom + rng.uniform(0.2, 0.35) * height
    cv.add_box(AL, c0, c1, cv.row_of(ty1), cv.row_of(bottom), thick=2 * 3.0, layer="structure")
    cv.add_box(ORG, c0, c1, cv.row_of(ty1 - 0.3 * (ty1 - bottom)), cv.row_of(bottom),
               thick=rng.uniform(250, 500) * 0.85, layer="structure")
    # Muffler: a thin steel drum on top.
    mx = x + rng.uniform(0.1, 0.6) * length
    cv.add_box(FE, cv.col_of(mx), cv.col_of(mx + 0.3 * length), cv.row_of(top - 20), cv.row_of(top - 180),
               thick=2 * 1.5 * 2 + 30.0, layer="structure")
    if rng.random() < 0.7:  # starter battery: lead plates in acid
        bx = x + rng.uniform(0.05, 0.7) * length
        by = bottom + rng.uniform(0.35, 0.6) * height
        cv.add_box(PB, cv.col_of(bx), cv.col_of(bx + 250), cv.row_of(by + 200), cv.row_of(by),
                   thick=rng.uniform(40, 70), layer="structure")
        cv.add_box(ORG, cv.col_of(bx), cv.col_of(bx + 250), cv.row_of(by + 200), cv.row_of(by), thick=100.0,
                   layer="structure")


def _tail_lift(cv: Canvas, rng: np.random.Generator, trailer: Trailer, deck: float) -> None:
    low = trailer.top - trailer.beam_h
    x1 = trailer.x1
    if rng.random() < 0.5:  # slider: platform folded flat under the rear of the chassis
        length = rng.uniform(1200, 2000)
        px0 = x1 - length - rng.uniform(0, 200)
        py = low - rng.uniform(80, 250)
        cv.add_box(AL, cv.col_of(px0), cv.col_of(px0 + length), cv.row_of(py), cv.row_of(py - rng.uniform(80, 140)),
                   thick=2400.0 * rng.uniform(0.03, 0.06), layer="structure")
        arm_x, arm_top = px0 + length - rng.uniform(600, 900), low
    else:  # cantilever: platform folded up behind the doors
        px0 = x1 + rng.uniform(30, 120)
        cv.add_box(AL, cv.col_of(px0), cv.col_of(px0 + rng.uniform(80, 150)), cv.row_of(deck + rng.uniform(1500, 2200)),
                   cv.row_of(deck - 150), thick=2400.0 * rng.uniform(0.03, 0.06), layer="structure")
        arm_x, arm_top = x1 - rng.uniform(500, 800), deck - 100
    # Lifting arms (two, seen overlapping), two hydraulic cylinders and the power pack.
    cv.add_box(FE, cv.col_of(arm_x), cv.col_of(arm_x + rng.uniform(700, 1100)), cv.row_of(arm_top),
               cv.row_of(arm_top - 150), thick=2 * rng.uniform(10, 20), layer="structure")
    cy = arm_top - rng.uniform(150, 300)
    cv.add_box(FE, cv.col_of(arm_x), cv.col_of(arm_x + rng.uniform(500, 700)), cv.row_of(cy), cv.row_of(cy - 90),
               thick=2 * rng.uniform(25, 40), layer="structure")
    cv.add_box(ORG, cv.col_of(arm_x), cv.col_of(arm_x + 500), cv.row_of(cy - 15), cv.row_of(cy - 75), thick=2 * 55.0,
               layer="structure")
    pack_x = trailer.rear_axle - rng.uniform(600, 1200)
    cv.add_box(FE, cv.col_of(pack_x), cv.col_of(pack_x + rng.uniform(300, 450)), cv.row_of(low - 30),
               cv.row_of(low - 30 - rng.uniform(280, 380)), thick=rng.uniform(150, 300), layer="structure")
    # Rear underrun bar: a hollow steel section across the whole width.
    cv.add_box(FE, cv.col_of(x1 - 150), cv.col_of(x1), cv.row_of(low - 50), cv.row_of(low - 170),
               thick=2300.0 * rng.uniform(0.06, 0.1), layer="structure")


def draw_equipment(cv: Canvas, equipment: str, seed: int, *, trailer: Trailer | None, container: str,
                   box_start_mm: float, box_top_mm: float, deck: float) -> None:
    """Draw ``equipment`` (`EQUIPMENT`) on the vehicle; ``trailer`` None: no chassis in view."""
    if equipment == "none":
        return
    rng = np.random.default_rng([seed, 0xE0])
    if equipment == "genset":
        clip_on = container == "reefer" and (trailer is None or rng.random() < 0.5)
        if clip_on:
            length = rng.uniform(400, 500)
            top = box_top_mm - rng.uniform(50, 250)
            _genset_parts(cv, rng, (box_start_mm - length - rng.uniform(20, 80), length, top, rng.uniform(700, 950)))
        elif trailer is not None:
            length = rng.uniform(800, 1300)
            # Anywhere from behind the kingpin to before the axles.
            lo = trailer.x0 + 400
            x = rng.uniform(lo, max(lo + 1, trailer.rear_axle - 700 - length))
            top = trailer.top - trailer.beam_h - rng.uniform(0, 80)
            _genset_parts(cv, rng, (x, length, top, min(rng.uniform(550, 750), top - 250)))
    elif equipment == "tail_lift" and trailer is not None:
        _tail_lift(cv, rng, trailer, deck)
