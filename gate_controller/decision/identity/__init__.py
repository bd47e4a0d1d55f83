"""Container identity from the OCR reads of several cameras (ISO 6346), and plate fusion.

A container number is only as good as its evidence. The gate fuses every camera's read of one
container into per-position character probabilities, finds the most probable number that passes
the ISO 6346 check digit, and accepts it only when that number is overwhelmingly more probable than
every other valid number *and* the structural rules below hold. Otherwise the number is not
accepted and ``reason`` says why; nothing downstream may then release the truck.

How a set of reads becomes a number (docs/decisions.md has the worked reasoning):

1. Clean each read (upper case, no separators) and place its characters on the 11 positions:
   directly for an 11-character read that agrees with the others, by edit-distance alignment for
   truncated, padded or shifted reads.
2. Position-aware normalization: positions 1-4 are letters (4 is the category ``U``/``J``/``Z``),
   5-11 digits, so ``O``/``I``/``B``/``S``/``Z`` read in a digit position mean ``0``/``1``/``8``/``5``/``2``
   and the reverse in a letter position (plus a few weaker documented look-alikes). A normalized
   character counts with reduced confidence.
3. Each placed character is evidence about its position: the read character with its (per-character,
   else per-read) confidence, the rest of the probability spread over visually confusable
   characters first. Positions combine independently across reads.
4. The check digit constraint couples the positions; a dynamic programme over the weighted sum
   modulo 11 gives the most probable *valid* number and its exact posterior probability among all
   valid numbers (``confidence``). Candidates from low-confidence characters are enumerated for the
   explanation and to name a rival when the decision is "ambiguous".
5. Acceptance: posterior >= ``min_confidence`` (so exactly one valid candidate has real support), and
   a single read is accepted only as read and only when strong; at most ``max_corrections``
   positions may hold a character no read saw; the check digit itself is never invented; a
   correction never lands in a check digit blind spot (letters of equal value modulo 11, e.g.
   A/K/U; a remainder of 10); no read in the group may be a different valid number.

Where each step lives: ``number`` (the ISO 6346 format, check digit, normalization and blind
spots), ``alignment`` (placing reads on the 11 positions), ``fusion`` (steps 1-4), ``acceptance``
(step 5, ``identify``), ``grouping`` (the reads of two containers on one truck), ``plates`` and
``reads`` (the values in and out).
"""

from __future__ import annotations

from gate_controller.decision.identity.acceptance import identify
from gate_controller.decision.identity.grouping import group_container_reads, identify_containers
from gate_controller.decision.identity.number import check_remainder, is_valid_number
from gate_controller.decision.identity.plates import fuse_plate
from gate_controller.decision.identity.reads import (
    ContainerIdentity,
    IdentityReason,
    IdentitySettings,
    OcrRead,
    PlateRead,
    reads_from_json,
)

__all__ = [
    "ContainerIdentity",
    "IdentityReason",
    "IdentitySettings",
    "OcrRead",
    "PlateRead",
    "check_remainder",
    "fuse_plate",
    "group_container_reads",
    "identify",
    "identify_containers",
    "is_valid_number",
    "reads_from_json",
]
