"""The network: a small fully convolutional net producing per-cell logits at stride 8.

Sized for the gate computer: with the stage widths of `geometry.WIDTHS` (24/48/64/96) about
0.24 M parameters, ~340 M multiply-accumulates per 256 x 256 tile, int8 (32/56/80/112 would be
0.34 M and ~490 M). Dilated convolutions at
the end give each cell a receptive field of about 135 model pixels (1.7 m), enough to see a
pallet around a concealed object or the wheels and engine of a car. TensorFlow is only imported
here and in train.py (the ``train`` extra).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from inference.training.geometry import WIDTHS, Geometry

__all__ = ["WIDTHS", "build_export_model", "build_model"]


def _cbr(x: Any, filters: int, stride: int = 1, dilation: int = 1, name: str = "") -> Any:
    x = tf.keras.layers.Conv2D(filters, 3, strides=stride, dilation_rate=dilation, padding="same",
                               use_bias=False, name=f"{name}_conv")(x)
    x = tf.keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return tf.keras.layers.ReLU(6.0, name=f"{name}_relu")(x)


def build_model(g: Geometry, widths: tuple[int, int, int, int] = WIDTHS) -> Any:
    """Training model: any width, outputs logits ``(batch, rows/8, width/8, 1 + labels)``."""
    inp = tf.keras.Input((g.rows, None, len(g.channels)), name="scan")
    x = _cbr(inp, widths[0], 2, name="c1")
    x = _cbr(x, widths[1], 2, name="c2")
    x = _cbr(x, widths[1], name="c3")
    x = _cbr(x, widths[2], 2, name="c4")
    x = _cbr(x, widths[2], name="c5")
    x = _cbr(x, widths[3], dilation=2, name="c6")
    x = _cbr(x, widths[3], dilation=4, name="c7")
    logits = tf.keras.layers.Conv2D(len(g.outputs), 1, name="head")(x)
    return tf.keras.Model(inp, logits, name="smartgate_xray")


def build_export_model(trained: Any, g: Geometry) -> Any:
    """Fixed-shape inference model (one tile, per-cell logits) sharing the trained weights.

    The logistic function is applied by the runtime (metadata ``activation: logits``): int8
    logits keep confident cells apart, int8 probabilities would not.
    """
    inp = tf.keras.Input((g.rows, g.tile_width, len(g.channels)), batch_size=1, name="scan_tile")
    logits = trained(inp, training=False)
    return tf.keras.Model(inp, logits, name="smartgate_xray_tile")
