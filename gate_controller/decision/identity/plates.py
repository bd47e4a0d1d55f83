"""Licence plate fusion: no check digit, so the best supported text with a cautious confidence."""

from __future__ import annotations

from collections.abc import Sequence

from gate_controller.decision.identity.number import clean_text
from gate_controller.decision.identity.reads import OcrRead, PlateRead


def fuse_plate(reads: Sequence[OcrRead]) -> PlateRead | None:
    """The plate text most reads support, with a confidence that drops when cameras disagree.

    Plates have no check digit, so no correction is attempted: the winner is the cleaned text with
    the largest summed confidence; its confidence is the noisy-OR of the agreeing reads times the
    winner's share of all support. None when no read has text.
    """
    support: dict[str, list[float]] = {}
    for read in reads:
        text = clean_text(read.text)
        if text:
            support.setdefault(text, []).append(read.confidence)
    if not support:
        return None
    text, confs = max(support.items(), key=lambda kv: (sum(kv[1]), len(kv[1]), kv[0]))
    total = sum(sum(c) for c in support.values())
    miss = 1.0
    for c in confs:
        miss *= 1.0 - c
    share = sum(confs) / total if total > 0 else 0.0
    return PlateRead(text=text, confidence=(1.0 - miss) * share, raw=tuple(r.text for r in reads))
