"""The float weights a fine-tuning run starts from (no TensorFlow here).

Two sources, best first:

* the Keras checkpoint `python -m inference.training train` writes beside the model
  (``xray_anomaly.weights.h5``, float32, batch norm not yet folded; generated, not in git);
* the int8 ``.tflite`` itself: its convolutions hold the folded weights quantized per output
  channel (``w = scale_o * q``, bias ``b = scale_in * scale_o * q``), which are read back and
  dequantized here. That loses the int8 rounding (well under 1 % of a weight's range per
  channel), which the fine-tuning steps absorb; it is what lets a site fine-tune a model whose
  training run is gone, such as the shipped one.

Either way the result is the per-layer folded kernels and biases of
`inference.training.model.build_folded_model`, and the fine-tuning run checks them against the
base ``.tflite`` on real tiles before it trains (`inference.training.site`).

`load_base_spec` is the check every run that starts from an existing int8 model makes first
(site fine-tuning, `train --continue-from`, hard-example mining): the files are there and the
model's geometry and normalization are the training toolchain's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import ModelError
from inference.model_spec import ModelSpec, load_spec, metadata_path_for
from inference.training.geometry import Geometry

__all__ = ["LAYER_NAMES", "blocks_of", "check_base", "deepened", "dequantized_weights", "layer_names",
           "load_base_spec", "widened", "widths_of"]


def layer_names(blocks: int = 0) -> tuple[str, ...]:
    """The convolutions of the network in graph order: ``c1``..``c7``, then ``blocks`` residual
    blocks of three (``rKa``, ``rKb``, ``rKc``; `inference.training.model`), then ``head``."""
    return (*(f"c{i}" for i in range(1, 8)), *(f"r{k}{part}" for k in range(1, blocks + 1) for part in "abc"),
            "head")


LAYER_NAMES = layer_names(0)
"""`inference.training.model.CONV_LAYERS`, the network without residual blocks (repeated here:
that module imports TensorFlow)."""
_LAYER_IN_NAME = re.compile(r"/(c\d|r\d+[abc]|head)(?:_conv)?(?:_\d+)?/")

FloatArray = npt.NDArray[np.float32]


def _per_channel(values: npt.NDArray[Any], scales: npt.NDArray[Any], zero_points: npt.NDArray[Any],
                 axis: int) -> FloatArray:
    shape = [1] * values.ndim
    shape[axis] = -1
    scale = np.asarray(scales, dtype=np.float64).reshape(shape) if np.size(scales) > 1 else float(scales[0])
    zero = (np.asarray(zero_points, dtype=np.float64).reshape(shape) if np.size(zero_points) > 1
            else float(zero_points[0]) if np.size(zero_points) else 0.0)
    return ((values.astype(np.float64) - zero) * scale).astype(np.float32)


def check_base(spec: ModelSpec, g: Geometry, path: Path) -> None:
    """Refuse a base model whose input/output geometry or normalization is not ``g``'s."""
    if (spec.input.shape != (1, g.rows, g.tile_width, len(g.channels)) or tuple(spec.labels) != g.labels
            or tuple(spec.input.channels) != g.channels or spec.output.stride != g.stride):
        raise ModelError(f"{path}: the base model's input/output geometry is not the training toolchain's")
    if tuple(spec.normalization.scale) != g.scale:
        raise ModelError(f"{path}: input normalization {list(spec.normalization.scale)} differs from the "
                         f"network's {list(g.scale)} (a package adapted on a gate?): fine-tune from the network "
                         "package it was adapted from")


def load_base_spec(model_path: Path, g: Geometry, option: str | None = None) -> ModelSpec:
    """The metadata of the int8 model ``model_path`` (named ``option`` on the command line), after
    `check_base`; a missing ``.tflite`` or ``.json`` is a `ModelError`."""
    if not (model_path.is_file() and metadata_path_for(model_path).is_file()):
        named = f"{option} {model_path}" if option else str(model_path)
        raise ModelError(f"{named}: no such model (a .tflite with its .json beside it)")
    spec = load_spec(metadata_path_for(model_path))
    check_base(spec, g, model_path)
    return spec


def widths_of(weights: dict[str, tuple[FloatArray, FloatArray]]) -> tuple[int, int, int, int]:
    """The stage widths (`inference.training.geometry.WIDTHS`) of folded weights: models differ
    (2.0.0 has 24/48/64/96)."""
    return (int(weights["c1"][0].shape[3]), int(weights["c2"][0].shape[3]), int(weights["c4"][0].shape[3]),
            int(weights["c6"][0].shape[3]))


def blocks_of(names: Iterable[str]) -> int:
    """How many residual blocks (`deepened`) a network has after ``c7``, from its layer names (a
    folded weights dict iterates over them)."""
    return sum(1 for name in names if re.fullmatch(r"r\d+a", name))


def deepened(weights: dict[str, tuple[FloatArray, FloatArray]], blocks: int, *,
             seed: int) -> dict[str, tuple[FloatArray, FloatArray]]:
    """The folded weights of a deeper network computing the same function (the residual form of
    Net2DeeperNet, Chen, Goodfellow and Shlens, ICLR 2016; zero-initialized last layer of each
    block as in Goyal et al. 2017): ``blocks`` bottleneck residual blocks after ``c7`` in all,
    each a 1 x 1 convolution to half the last stage's width, a dilated 3 x 3 one, and a 1 x 1 one
    back to full width whose sum with the block's input goes through ReLU6. The new blocks' first
    two layers are He-initialized, their last one is zero, so each new block adds nothing (``c7``'s
    ReLU6 output stays in [0, 6], which the block's ReLU6 passes unchanged) until training moves it.
    Continuing a shipped model this way adds depth, context and non-linearity at the cells' scale
    for about 9 % more multiply-accumulates per block, and starts where the model stands."""
    have = blocks_of(weights)
    if blocks < have:
        raise ValueError(f"the network already has {have} residual blocks; cannot deepen it to {blocks}")
    rng = np.random.default_rng([seed, 0xDEE9])
    width = int(weights["c7"][0].shape[3])
    inner = width // 2

    def he(kh: int, cin: int, cout: int) -> FloatArray:
        drawn = rng.standard_normal((kh, kh, cin, cout)) * np.sqrt(2.0 / (kh * kh * cin))
        return np.asarray(drawn, dtype=np.float32)

    out = {name: (np.array(weights[name][0], np.float32), np.array(weights[name][1], np.float32))
           for name in layer_names(have)[:-1]}
    for k in range(have + 1, blocks + 1):
        out[f"r{k}a"] = (he(1, width, inner), np.zeros(inner, np.float32))
        out[f"r{k}b"] = (he(3, inner, inner), np.zeros(inner, np.float32))
        out[f"r{k}c"] = (np.zeros((1, 1, inner, width), np.float32), np.zeros(width, np.float32))
    out["head"] = (np.array(weights["head"][0], np.float32), np.array(weights["head"][1], np.float32))
    return out


_STAGE_OF = (0, 1, 1, 2, 2, 3, 3)
"""Which of the four stage widths each of c1..c7 has (`inference.training.model`'s layout)."""


def widened(weights: dict[str, tuple[FloatArray, FloatArray]], widths: tuple[int, int, int, int], *,
            seed: int, noise: float = 1e-3) -> dict[str, tuple[FloatArray, FloatArray]]:
    """The folded weights of a wider network computing the same function (Net2WiderNet, Chen,
    Goodfellow and Shlens, ICLR 2016): each new channel of a layer copies a random existing one
    (kernel and bias; ReLU6 acts per channel, so the copy's activation equals the original's), and
    the next layer's weights on every copy of a channel are that channel's weights divided by the
    number of copies, so its sums are unchanged. ``noise`` (relative, Gaussian) on those split
    weights breaks the copies' symmetry so that training can set them apart; 0 keeps the function
    exact. Continuing a shipped model on a wider network this way starts where the model stands
    instead of from scratch."""
    old = widths_of(weights)
    if blocks_of(weights):
        raise ValueError("a network with residual blocks cannot be widened: widen it before deepening it")
    if len(widths) != 4 or any(new < was for new, was in zip(widths, old, strict=True)):
        raise ValueError(f"widths {widths} must be four stage widths no narrower than the model's {old}")
    rng = np.random.default_rng([seed, 0x2E7])
    out = {name: (np.array(k, np.float32), np.array(b, np.float32)) for name, (k, b) in weights.items()}
    for i, name in enumerate(LAYER_NAMES[:-1]):
        kernel, bias = out[name]
        have, want = kernel.shape[3], widths[_STAGE_OF[i]]
        if want == have:
            continue
        mapping = np.concatenate([np.arange(have), rng.integers(0, have, want - have)])
        copies = np.bincount(mapping, minlength=have).astype(np.float32)
        out[name] = (kernel[..., mapping], bias[mapping])
        nxt = LAYER_NAMES[i + 1]
        next_kernel, next_bias = out[nxt]
        split = next_kernel[:, :, mapping, :] / copies[mapping][None, None, :, None]
        if noise > 0:
            split = split * (1.0 + noise * rng.standard_normal(split.shape)).astype(np.float32)
        out[nxt] = (split.astype(np.float32), next_bias)
    return out


def dequantized_weights(model_path: Path) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Per layer of `layer_names` (with the network's residual blocks): the folded (kernel
    ``(kh, kw, in, out)``, bias ``(out,)``) of the int8 network in ``model_path``. A model of
    another architecture is a `ModelError`."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(model_path), num_threads=1)
        interp.allocate_tensors()
        ops = interp._get_ops_details()  # the op graph is only exposed here
    except (ValueError, RuntimeError, OSError) as err:
        raise ModelError(f"{model_path}: cannot read the network: {err}") from err
    tensors = {int(t["index"]): t for t in interp.get_tensor_details()}
    convs = [op for op in ops if op["op_name"] == "CONV_2D"]
    extra = len(convs) - len(LAYER_NAMES)
    if extra < 0 or extra % 3:
        raise ModelError(f"{model_path}: {len(convs)} convolutions, the smartgate network has {len(LAYER_NAMES)} "
                         "plus three per residual block (another architecture cannot be fine-tuned from it)")
    out: dict[str, tuple[FloatArray, FloatArray]] = {}
    for name, op in zip(layer_names(extra // 3), convs, strict=True):
        _, filter_index, bias_index = (int(i) for i in op["inputs"][:3])
        filt, bias = tensors[filter_index], tensors[bias_index]
        found = _LAYER_IN_NAME.search(str(filt["name"]))
        if found is not None and found.group(1) != name:
            raise ModelError(f"{model_path}: convolution {len(out) + 1} is {found.group(1)}, expected {name}")
        fq, bq = filt["quantization_parameters"], bias["quantization_parameters"]
        if filt["dtype"] != np.int8 or len(fq["scales"]) == 0:
            raise ModelError(f"{model_path}: layer {name} is not an int8 quantized convolution")
        q = interp.get_tensor(filter_index)            # (out, kh, kw, in)
        kernel = _per_channel(q, fq["scales"], fq["zero_points"], int(fq["quantized_dimension"]))
        b = _per_channel(interp.get_tensor(bias_index), bq["scales"], bq["zero_points"], 0)
        out[name] = (np.ascontiguousarray(kernel.transpose(1, 2, 3, 0)), b)
    return out
