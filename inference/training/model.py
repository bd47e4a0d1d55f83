"""The network: a small fully convolutional net producing per-cell logits at stride 8.

Sized for the gate computer: with the stage widths of `geometry.WIDTHS` (32/56/80/112) about
0.34 M parameters, ~490 M multiply-accumulates per 256 x 256 tile, int8 (model 2.0.0 had
24/48/64/96: 0.24 M and ~340 M). Dilated convolutions at
the end give each cell a receptive field of about 135 model pixels (1.7 m), enough to see a
pallet around a concealed object or the wheels and engine of a car. TensorFlow is only imported
here and in train.py (the ``train`` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from inference.training.base_weights import blocks_of, layer_names
from inference.training.geometry import WIDTHS, Geometry

__all__ = ["CONV_LAYERS", "WIDTHS", "build_export_model", "build_folded_model", "build_model", "fold_batch_norm",
           "folded_weights_of", "set_folded_weights"]

CONV_LAYERS = layer_names(0)
"""The convolutions in order; each ``cN`` is conv + batch norm + ReLU6, ``head`` a 1 x 1 conv. A
continued network may have residual blocks between ``c7`` and ``head`` (`build_folded_model`)."""
BLOCK_DILATION = 2
"""Dilation of the 3 x 3 convolution in each residual block (`build_folded_model`)."""
FoldedWeights = dict[str, tuple[Any, Any]]
"""Per layer of `CONV_LAYERS`: (kernel ``(kh, kw, in, out)``, bias ``(out,)``) with batch norm folded in."""


def _layout(widths: tuple[int, int, int, int]) -> list[tuple[str, int, int, int]]:
    """(name, filters, stride, dilation) of the ``cN`` blocks."""
    return [("c1", widths[0], 2, 1), ("c2", widths[1], 2, 1), ("c3", widths[1], 1, 1), ("c4", widths[2], 2, 1),
            ("c5", widths[2], 1, 1), ("c6", widths[3], 1, 2), ("c7", widths[3], 1, 4)]


def _cbr(x: Any, filters: int, stride: int = 1, dilation: int = 1, name: str = "") -> Any:
    x = tf.keras.layers.Conv2D(filters, 3, strides=stride, dilation_rate=dilation, padding="same",
                               use_bias=False, name=f"{name}_conv")(x)
    x = tf.keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return tf.keras.layers.ReLU(6.0, name=f"{name}_relu")(x)


def build_model(g: Geometry, widths: tuple[int, int, int, int] = WIDTHS) -> Any:
    """Training model: any width, outputs logits ``(batch, rows/8, width/8, 1 + labels)``."""
    inp = tf.keras.Input((g.rows, None, len(g.channels)), name="scan")
    x = inp
    for name, filters, stride, dilation in _layout(widths):
        x = _cbr(x, filters, stride, dilation, name=name)
    logits = tf.keras.layers.Conv2D(len(g.outputs), 1, name="head")(x)
    return tf.keras.Model(inp, logits, name="smartgate_xray")


def build_folded_model(g: Geometry, widths: tuple[int, int, int, int] = WIDTHS, blocks: int = 0) -> Any:
    """The same network with every batch norm folded into its convolution (conv with bias +
    ReLU6): what the int8 model computes. Fine-tuning starts from it, because the folded weights
    are what a shipped ``.tflite`` holds (`inference.training.base_weights`), and a handful of
    site scans is too few to re-estimate batch statistics anyway.

    ``blocks`` bottleneck residual blocks follow ``c7`` (`base_weights.deepened`, which a continued
    run uses to add them): 1 x 1 to half the width + ReLU6, 3 x 3 dilated + ReLU6, 1 x 1 back,
    added to the block's input, ReLU6."""
    inp = tf.keras.Input((g.rows, None, len(g.channels)), name="scan")
    x = inp
    for name, filters, stride, dilation in _layout(widths):
        x = tf.keras.layers.Conv2D(filters, 3, strides=stride, dilation_rate=dilation, padding="same",
                                   use_bias=True, name=f"{name}_conv")(x)
        x = tf.keras.layers.ReLU(6.0, name=f"{name}_relu")(x)
    inner = widths[3] // 2
    for k in range(1, blocks + 1):
        y = tf.keras.layers.Conv2D(inner, 1, name=f"r{k}a_conv")(x)
        y = tf.keras.layers.ReLU(6.0, name=f"r{k}a_relu")(y)
        y = tf.keras.layers.Conv2D(inner, 3, dilation_rate=BLOCK_DILATION, padding="same", name=f"r{k}b_conv")(y)
        y = tf.keras.layers.ReLU(6.0, name=f"r{k}b_relu")(y)
        y = tf.keras.layers.Conv2D(widths[3], 1, name=f"r{k}c_conv")(y)
        x = tf.keras.layers.Add(name=f"r{k}_add")([x, y])
        x = tf.keras.layers.ReLU(6.0, name=f"r{k}_relu")(x)
    logits = tf.keras.layers.Conv2D(len(g.outputs), 1, name="head")(x)
    return tf.keras.Model(inp, logits, name="smartgate_xray")


def fold_batch_norm(trained: Any) -> FoldedWeights:
    """The folded weights of a `build_model` network (inference-mode batch norm)."""
    out: FoldedWeights = {}
    for name in CONV_LAYERS[:-1]:
        kernel = trained.get_layer(f"{name}_conv").get_weights()[0]
        bn = trained.get_layer(f"{name}_bn")
        gamma, beta, mean, var = bn.get_weights()
        factor = gamma / np.sqrt(var + bn.epsilon)
        out[name] = ((kernel * factor).astype(np.float32), (beta - mean * factor).astype(np.float32))
    kernel, bias = trained.get_layer("head").get_weights()
    out["head"] = (kernel.astype(np.float32), bias.astype(np.float32))
    return out


def _blocks_in(model: Any) -> int:
    return blocks_of(layer.name.removesuffix("_conv") for layer in model.layers)


def folded_weights_of(model: Any) -> FoldedWeights:
    """The weights of a `build_folded_model` network, per layer of `CONV_LAYERS` and its residual
    blocks (`base_weights.layer_names`)."""
    out: FoldedWeights = {}
    for name in layer_names(_blocks_in(model)):
        kernel, bias = model.get_layer(_folded_layer(name)).get_weights()
        out[name] = (kernel.astype(np.float32), bias.astype(np.float32))
    return out


def _folded_layer(name: str) -> str:
    return name if name == "head" else f"{name}_conv"


def set_folded_weights(model: Any, weights: FoldedWeights) -> None:
    """Load folded weights into a `build_folded_model` network; layers and shapes must match exactly."""
    if blocks_of(weights) != _blocks_in(model):
        raise ValueError(f"weights with {blocks_of(weights)} residual blocks do not fit a network with "
                         f"{_blocks_in(model)}")
    for name in layer_names(blocks_of(weights)):
        layer = model.get_layer(_folded_layer(name))
        kernel, bias = weights[name]
        want = [tuple(w.shape) for w in layer.get_weights()]
        if want != [tuple(kernel.shape), tuple(bias.shape)]:
            raise ValueError(f"layer {name}: weights {kernel.shape}/{bias.shape} do not fit the network {want}")
        layer.set_weights([kernel, bias])


def build_export_model(trained: Any, g: Geometry) -> Any:
    """Fixed-shape inference model (one tile, per-cell logits) sharing the trained weights.

    The logistic function is applied by the runtime (metadata ``activation: logits``): int8
    logits keep confident cells apart, int8 probabilities would not.
    """
    inp = tf.keras.Input((g.rows, g.tile_width, len(g.channels)), batch_size=1, name="scan_tile")
    logits = trained(inp, training=False)
    return tf.keras.Model(inp, logits, name="smartgate_xray_tile")
