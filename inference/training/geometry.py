"""The model's input/output geometry and normalization, fixed at training time.

They end up in the shipped metadata; the runtime reads them from there, never from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.model_spec import InputSpec, NormalizationSpec
from inference.synthetic import ANOMALY_CLASSES

__all__ = ["WIDTHS", "Geometry"]

WIDTHS: tuple[int, int, int, int] = (32, 56, 80, 112)
"""Channels of the network's stages (`inference.training.model`); recorded in the metadata
(``training.widths``) so that fine-tuning rebuilds the same network around the saved weights."""


@dataclass(frozen=True)
class Geometry:
    """Tile 256 rows x 256 columns at 12.5 mm per column (about the row pitch of a 256-element
    detector over 3.2 m): a 40 ft scan is about 1000 model columns, 5 tiles. Fine enough for a
    pistol (about 16 x 10 model pixels); cells of 8 x 8 are 100 mm x 100 mm."""

    rows: int = 256
    tile_width: int = 256
    column_mm: float = 12.5
    stride: int = 8
    overlap: int = 32
    channels: tuple[str, ...] = ("high", "low_minus_high")
    scale: tuple[float, ...] = (8.0, 3.0)
    labels: tuple[str, ...] = ANOMALY_CLASSES

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("not_empty", *self.labels)

    @property
    def cell_rows(self) -> int:
        return self.rows // self.stride

    def input_spec(self) -> InputSpec:
        return InputSpec(name="scan_tile", shape=(1, self.rows, self.tile_width, len(self.channels)),
                         dtype="float32", column_mm=self.column_mm, channels=self.channels)

    def normalization(self) -> NormalizationSpec:
        return NormalizationSpec(scale=self.scale)
