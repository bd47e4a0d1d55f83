"""The truck under and around the container: tractor, trailer chassis families, running gear.

Seen from the side at the scan's heights (``world.span_bottom_mm`` may reach down to the wheels):

* tractor: none in view, cab skipped (the scan starts behind the cab: frame rails, fifth wheel
  and drive axles under the front of the box, side fuel tank), or the rear of the cab partly
  scanned (cab shell, seats, sometimes the engine of a cab-over);
* trailer chassis: ``skeletal`` (two I-beams, bolsters at the twist locks), ``flatbed`` (deck
  planks, side rails, dense cross members, the box sits higher), ``extendable`` (skeletal with
  a doubled telescopic section), or ``none`` (no chassis in view);
* running gear: 2-3 trailer axles (axle tubes seen end-on are black), dual tyres and rims,
  landing gear, spare wheel carrier, toolbox, a genset fuel tank under a reefer;
* equipment (world knob ``equipment``, `inference.synthetic.equipment`): a genset under the
  trailer or clipped on a reefer's front wall, or a tail lift at the rear.

Everything here is ``structure``; the fuel tanks, the frame and the space between the chassis
beams are recorded as hiding places for anomalies.
"""

from __future__ import annotations

import numpy as np

from inference.synthetic.canvas import AL, FE, ORG, Body, Canvas
from inference.synthetic.container import CONTAINER_HEIGHT_MM, LENGTHS_MM, draw_container
from inference.synthetic.equipment import Trailer, draw_equipment
from inference.synthetic.world import World

__all__ = ["DECK_HEIGHT_MM", "draw_vehicle", "scene_length_mm"]

DECK_HEIGHT_MM = {"skeletal": (1150.0, 1300.0), "extendable": (1150.0, 1300.0), "flatbed": (1400.0, 1550.0),
                  "none": (1100.0, 1500.0)}
_TWIN_GAP_MM = (50.0, 400.0)


def scene_length_mm(world: World, length_ft: int, rng: np.random.Generator,
                    ) -> tuple[float, float, list[float], float]:
    """(scene length, box start, box lengths and gaps, end of the cab) in mm."""
    cab_end = world.air_before_mm
    lead = world.air_before_mm
    if world.tractor == "partly":
        cab_end += float(rng.uniform(500, 2500))
        lead = cab_end + float(rng.uniform(300, 1000))
    elif world.tractor == "skipped":
        lead += float(rng.uniform(0, 600))
    if world.layout == "twin":
        gap = float(rng.uniform(*_TWIN_GAP_MM))
        boxes = [LENGTHS_MM[20], gap, LENGTHS_MM[20]]
    else:
        boxes = [LENGTHS_MM[length_ft]]
    return lead + sum(boxes) + world.air_after_mm, lead, boxes, cab_end


def _wheel(cv: Canvas, x_mm: float, radius: float) -> None:
    """Dual tyres on both sides seen side-on, rims, hub and the axle tube seen end-on (black)."""
    rng = cv.rng
    cx, cy = cv.col_of(x_mm), cv.row_of(radius)
    cv.add_disc(ORG, cx, cy, radius, 4 * 280.0 * 0.9)                # tread and sidewalls
    cv.add_disc(ORG, cx, cy, radius * 0.62, -4 * 280.0 * 0.9)        # the tyre is a ring
    cv.add_disc(FE, cx, cy, radius * 0.62, 4 * rng.uniform(8, 14))   # rims
    cv.add_disc(FE, cx, cy, rng.uniform(110, 150), rng.uniform(500, 1200))  # hubs, drums, axle tube


def _axles(cv: Canvas, x_mm: float, count: int, spacing: float, radius: float) -> None:
    for k in range(count):
        _wheel(cv, x_mm + k * spacing, radius)
    # Suspension: hanger brackets and air bags above the axles.
    cv.add_box(FE, cv.col_of(x_mm - 600), cv.col_of(x_mm + (count - 1) * spacing + 600),
               cv.row_of(radius + 260), cv.row_of(radius + 120), thick=2 * 40.0, layer="structure")


def _tractor(cv: Canvas, world: World, box_start: float, cab_end: float) -> None:
    rng = cv.rng
    frame_top = rng.uniform(950, 1100)
    # Frame rails from the scan start to behind the fifth wheel.
    fifth = box_start + rng.uniform(900, 1500)
    end = fifth + rng.uniform(700, 1200)
    cv.add_box(FE, 0, cv.col_of(end), cv.row_of(frame_top), cv.row_of(frame_top - 300), thick=2 * 9.0,
               layer="structure")
    cv.add_edge_sheet(FE, 0, cv.col_of(end), cv.row_of(frame_top), 10.0, across_mm=2 * 90.0)
    # Fifth wheel plate (edge-on, 60 mm steel across ~1 m).
    cv.add_box(FE, cv.col_of(fifth - 500), cv.col_of(fifth + 500), cv.row_of(frame_top + 180),
               cv.row_of(frame_top), thick=rng.uniform(250, 500), layer="structure")
    radius = rng.uniform(480, 530)
    _axles(cv, fifth - 650 if rng.random() < 0.6 else fifth, int(rng.integers(1, 3)), 1350.0, radius)
    # Side fuel tank(s) between the cab and the drive axles: aluminium shell with diesel.
    tank_x0 = max(cab_end + 50, 0.0)
    tank_len = rng.uniform(700, 1400)
    if tank_x0 + tank_len < fifth - 900:
        ty0, ty1 = cv.row_of(frame_top - 30), cv.row_of(frame_top - 30 - rng.uniform(550, 700))
        cv.add_box(AL, cv.col_of(tank_x0), cv.col_of(tank_x0 + tank_len), ty1, ty0, thick=2 * 4.0, layer="structure")
        cv.add_box(ORG, cv.col_of(tank_x0), cv.col_of(tank_x0 + tank_len), ty1 + (ty0 - ty1) * 0.3, ty0,
                   thick=rng.uniform(400, 650) * 0.85, layer="structure")
        cv.add_hiding_place("fuel_tank", cv.col_of(tank_x0) + 2, ty1 + 2, cv.col_of(tank_x0 + tank_len) - 2, ty0 - 2)
    if world.tractor == "partly":
        # The rear of the cab: shell, back wall, seats, bunk; sometimes the engine (cab-over).
        cab0 = world.air_before_mm
        cab1 = cab_end
        cab_bottom, cab_top = rng.uniform(1000, 1300), rng.uniform(3200, 3900)
        cv.add_box(FE, cv.col_of(cab0), cv.col_of(cab1), cv.row_of(cab_top), cv.row_of(cab_bottom),
                   thick=2 * 1.5, layer="structure")
        cv.add_vertical_sheet(FE, cv.col_of(cab1 - 20), cv.row_of(cab_top), cv.row_of(cab_bottom), 2.0,
                              across_mm=2300.0)
        cv.add_edge_sheet(FE, cv.col_of(cab0), cv.col_of(cab1), cv.row_of(cab_top), 2.0, across_mm=2300.0)
        cv.add_box(ORG, cv.col_of(cab0), cv.col_of(cab1), cv.row_of(cab_bottom + 1300), cv.row_of(cab_bottom + 200),
                   thick=rng.uniform(150, 450), layer="structure")
        if rng.random() < 0.5:
            ex = rng.uniform(cab0, max(cab0 + 1, cab1 - 800))
            cv.add_box(FE, cv.col_of(ex), cv.col_of(ex + 800), cv.row_of(cab_bottom + 300),
                       cv.row_of(max(cab_bottom - 500, 400)), thick=rng.uniform(250, 500), layer="structure")


def _trailer(cv: Canvas, world: World, x0: float, x1: float, deck: float) -> Trailer:
    """Trailer chassis from ``x0`` to ``x1`` (mm) with the deck (box bottom) at ``deck`` mm."""
    rng = cv.rng
    kind = world.chassis
    beam_h = rng.uniform(300, 450) if kind != "flatbed" else rng.uniform(350, 500)
    top = deck - (20.0 if kind != "flatbed" else 60.0)
    flange = rng.uniform(150, 200)
    c0, c1 = cv.col_of(x0), cv.col_of(x1)
    # Main beams: flanges edge-on (2 beams x flange width), webs (2 x 8-10 mm).
    for y in (top, top - beam_h + 15):
        cv.add_edge_sheet(FE, c0, c1, cv.row_of(y), 15.0, across_mm=2 * flange)
    cv.add_box(FE, c0, c1, cv.row_of(top), cv.row_of(top - beam_h), thick=2 * rng.uniform(8, 10), layer="structure")
    cv.add_hiding_place("chassis", c0 + 300 / cv.col_mm, cv.row_of(top - 20), c1 - 300 / cv.col_mm,
                        cv.row_of(top - beam_h + 20))
    pitch = rng.uniform(450, 650) if kind == "flatbed" else rng.uniform(800, 1400)
    x = x0 + pitch / 2
    while x < x1:
        cv.add_vertical_sheet(FE, cv.col_of(x), cv.row_of(top), cv.row_of(top - beam_h * 0.6), 6.0, across_mm=2300.0)
        x += pitch
    if kind == "flatbed":
        cv.add_box(ORG, c0, c1, cv.row_of(deck), cv.row_of(deck - 50), thick=2400.0 * 0.55, layer="structure")
        cv.add_box(FE, c0, c1, cv.row_of(deck - 50), cv.row_of(deck - 350), thick=2 * 6.0, layer="structure")
    elif kind == "extendable":
        xm = x0 + (x1 - x0) * rng.uniform(0.3, 0.5)
        length = (x1 - x0) * rng.uniform(0.2, 0.35)
        cv.add_box(FE, cv.col_of(xm), cv.col_of(xm + length), cv.row_of(top - 30), cv.row_of(top - beam_h + 30),
                   thick=2 * 8.0, layer="structure")
        cv.add_edge_sheet(FE, cv.col_of(xm), cv.col_of(xm + length), cv.row_of(top - 30), 12.0, across_mm=2 * 120.0)
    else:  # skeletal: bolsters under the twist locks at both ends
        for xb in (x0, x1 - 250):
            cv.add_box(FE, cv.col_of(xb), cv.col_of(xb + 250), cv.row_of(deck), cv.row_of(top - 150),
                       thick=2300.0 * 0.04, layer="structure")
    # Running gear: axles at the rear, landing gear at the front, spare wheel, toolbox.
    radius = rng.uniform(480, 530)
    count = int(rng.integers(2, 4))
    rear = x1 - rng.uniform(900, 2500) - (count - 1) * 1310.0
    _axles(cv, rear, count, 1310.0, radius)
    lg = x0 + rng.uniform(2200, 3000)
    for dx in (0.0, 40.0):
        cv.add_box(FE, cv.col_of(lg + dx), cv.col_of(lg + dx + 110), cv.row_of(top - beam_h), cv.row_of(300),
                   thick=2 * 6.0, layer="structure")
    cv.add_box(FE, cv.col_of(lg - 60), cv.col_of(lg + 200), cv.row_of(320), cv.row_of(240), thick=2300.0 * 0.1,
               layer="structure")
    if rng.random() < 0.5:  # spare wheel carrier: the wheel lies flat, seen edge-on
        sx = rng.uniform(lg + 1500, max(lg + 1600, rear - 2000))
        sy = top - beam_h - 100
        cv.add_box(ORG, cv.col_of(sx), cv.col_of(sx + 1000), cv.row_of(sy), cv.row_of(sy - 280),
                   thick=rng.uniform(500, 900), layer="structure")
        cv.add_box(FE, cv.col_of(sx + 250), cv.col_of(sx + 750), cv.row_of(sy - 60), cv.row_of(sy - 220),
                   thick=rng.uniform(300, 600), layer="structure")
    if rng.random() < 0.5:  # toolbox: thin steel box with tools
        tx = rng.uniform(lg + 500, max(lg + 600, rear - 1200))
        ty = top - beam_h - 50
        cv.add_box(FE, cv.col_of(tx), cv.col_of(tx + rng.uniform(500, 900)), cv.row_of(ty), cv.row_of(ty - 450),
                   thick=2 * 2.0 + rng.uniform(5, 40), layer="structure")
    if world.container == "reefer" and rng.random() < 0.6:  # genset fuel tank under the trailer
        fx = rng.uniform(lg + 800, max(lg + 900, rear - 1500))
        fy = top - beam_h - 30
        y0, y1 = cv.row_of(fy - 500), cv.row_of(fy)
        cv.add_box(AL, cv.col_of(fx), cv.col_of(fx + 900), y0, y1, thick=2 * 4.0, layer="structure")
        cv.add_box(ORG, cv.col_of(fx), cv.col_of(fx + 900), y0 + (y1 - y0) * 0.4, y1, thick=rng.uniform(300, 500),
                   layer="structure")
        cv.add_hiding_place("fuel_tank", cv.col_of(fx) + 2, y0 + 2, cv.col_of(fx + 900) - 2, y1 - 2)
    return Trailer(x0=x0, x1=x1, top=top, beam_h=beam_h, rear_axle=rear)


def draw_vehicle(cv: Canvas, world: World, box_start_mm: float, boxes_mm: list[float], *, container: str,
                 cab_end_mm: float) -> list[Body]:
    """Draw tractor, trailer and the container(s); returns the bodies cargo goes into.

    ``boxes_mm`` alternates box lengths and gaps (``[20 ft, gap, 20 ft]`` for a twin load).
    """
    rng = cv.rng
    deck = float(rng.uniform(*DECK_HEIGHT_MM[world.chassis]))
    total = sum(boxes_mm)
    if world.tractor != "none":
        _tractor(cv, world, box_start_mm, cab_end_mm)
    trailer = None
    if world.chassis != "none":
        trailer = _trailer(cv, world, box_start_mm - 50, box_start_mm + total + rng.uniform(0, 300), deck)
    box_top = deck + CONTAINER_HEIGHT_MM.get(container, 0.0) if world.layout != "none" else deck
    draw_equipment(cv, world.equipment, world.equipment_seed, trailer=trailer, container=container,
                   box_start_mm=box_start_mm, box_top_mm=box_top, deck=deck)
    bodies: list[Body] = []
    if world.layout == "none":
        # A bare chassis or an empty flatbed trailer: the load bed is the deck, nothing on it.
        bodies.append(Body(kind="none", x_start=cv.col_of(box_start_mm), x_end=cv.col_of(box_start_mm + total),
                           y_roof=cv.row_of(deck + 2600), y_bottom=cv.row_of(deck), y_floor=cv.row_of(deck),
                           y_top=cv.row_of(deck + 2500), x_in0=cv.col_of(box_start_mm + 100),
                           x_in1=cv.col_of(box_start_mm + total - 100)))
        return bodies
    x = box_start_mm
    for k, length in enumerate(boxes_mm):
        if k % 2 == 0:
            bodies.append(draw_container(cv, container, cv.col_of(x), length, deck, dents=world.dents))
        x += length
    return bodies

