"""Train, quantize (full int8), calibrate thresholds with LiteRT, and write model + metadata.

Reproducible from the seed: the data are generated from split seeds, batches are drawn from a
seeded numpy generator, TensorFlow runs with op determinism and a fixed seed, and the
representative set of the quantizer is drawn from the same generator.

Budget on the 2-core reference machine: about 9 min to generate the 12000 training scans
(cached afterwards, 7.1 GB), about 0.45 s per step of 16 tiles on two TensorFlow threads (8000
steps: 61 min), about 7 min to quantize and calibrate on 3600 validation scans.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.model_spec import (
    FORMAT,
    EnvelopeSpec,
    InputSpec,
    ModelSpec,
    OutputSpec,
    QuantizationSpec,
    ThresholdSpec,
    TilingSpec,
    file_sha256,
    load_spec,
    metadata_path_for,
)
from inference.scan import held_out
from inference.training.base_weights import (
    blocks_of,
    deepened,
    dequantized_weights,
    load_base_spec,
    widened,
    widths_of,
)
from inference.training.dataset import (
    X_QUANT,
    Example,
    ExampleSet,
    FieldSample,
    build_synthetic_set,
    field_example,
    load_field_samples,
)
from inference.training.geometry import WIDTHS, Geometry
from inference.training.mining import HardExamples, mine
from inference.training.projection import PROJECT_ANYWHERE, PROJECTED_LABELS, ObjectBank

__all__ = ["ROUND_LEARNING_RATE", "ROUND_PROJECT", "ROUND_STEPS", "TrainOptions", "convert_int8", "decision_loss",
           "make_train_step", "recalibrate", "round_options", "train", "weights_path_for"]

_log = logging.getLogger(__name__)

DECISION_BLOCK = 1
"""The decision rule written into new models' metadata (`OutputSpec.decision_block`): 1, each cell
on its own, as 2.4.0. The 2 x 2 rule (2.4.1) ranks the test stream better but raised the
reference scanner's false alarms from 2.0 to 3.2 % (docs/image-review.md), so it is not the
recipe's."""

MODEL_NAME = "smartgate-xray-anomaly"
MODEL_STEM = "xray_anomaly"
WEIGHTS_SUFFIX = ".weights.h5"
# Weight of positive cells in the loss, per output channel. Missing an object is the costly
# error, and weapons (small, thin steel, often superposed on machinery) and compact dense
# masses are the hardest classes: they get more weight. ``not_empty`` is a balanced task.
POS_WEIGHT: dict[str, float] = {"not_empty": 1.0, "dense_object": 4.0, "weapon": 5.0, "vehicle": 3.0,
                                "organic_mass": 3.0}


@dataclass
class TrainOptions:
    seed: int = 7
    scans: int = 12000
    val_scans: int = 3000
    val_empty_scans: int = 600
    steps: int = 8000
    batch: int = 16
    learning_rate: float = 2e-3
    out_dir: Path = Path(__file__).resolve().parent.parent / "models"
    version: str = "2.2.0"
    cache_dir: Path | None = Path(tempfile.gettempdir()) / "smartgate-train-cache"
    samples: list[Path] = field(default_factory=list)
    field_holdout: float = 0.2
    field_every: int = 4
    workers: int = 2
    threads: int = 2
    target_false_alarm: float = 0.015
    target_false_not_empty: float = 0.005
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)  # leave-one-out: region held out
    ema: float = 0.998
    widths: tuple[int, int, int, int] = WIDTHS
    peak_loss: float = 1.0  # weight of `decision_loss`; 0: off
    peak_per_class: bool = True  # `decision_loss` per class (True) or pooled over the classes
    init_weights: Path | None = None  # start from these weights (`weights_path_for`) instead of at random
    # Continue training an int8 model whose float weights are gone (the shipped one): its weights
    # are dequantized (`base_weights`) and the network is trained with batch norm folded.
    continue_from: Path | None = None
    widen_to: tuple[int, int, int, int] | None = None  # with continue_from: widen the network first
    deepen: int = 0  # with continue_from: add this many residual blocks after c7 (`base_weights.deepened`)
    hard_cells: int = 8
    project: float = 0.0  # share of training tiles that get a projected object (`projection`); 0: off
    project_objects: int = 3000  # rendered objects per projected class
    project_anywhere: float = PROJECT_ANYWHERE  # share of projected objects put anywhere in the box band
    mine_from: Path | None = None  # mine hard spots of the training set with this int8 model (`mining`)
    hard_share: float = 0.3  # share of training tiles centred on a mined spot
    hard_negatives: float = 0.15  # share of the training scans whose worst clean spot is mined


# One round of the shipped recipe (`make model`, docs/retraining.md): continue the previous model,
# tiles partly centred on the hard examples it mines, with threat projection.
ROUND_STEPS = 6000
ROUND_PROJECT = 0.3
ROUND_LEARNING_RATE = 5e-4


def round_options(opts: TrainOptions, previous: Path, *, steps: int = ROUND_STEPS,
                  project: float = ROUND_PROJECT, learning_rate: float = ROUND_LEARNING_RATE) -> TrainOptions:
    """``opts`` turned into a round continued from, and mined with, the int8 model ``previous``."""
    return replace(opts, continue_from=previous, mine_from=previous, steps=steps, project=project,
                   learning_rate=learning_rate)


def _split_field_samples(opts: TrainOptions) -> tuple[list[FieldSample], list[FieldSample]]:
    """The field samples of ``opts.samples``: (for training, held out for calibration), split
    by file-name hash so every run and `recalibrate` hold out the same ones."""
    train: list[FieldSample] = []
    calibration: list[FieldSample] = []
    for directory in opts.samples:
        for sample in load_field_samples(directory):
            (calibration if held_out(sample.path.name, opts.field_holdout) else train).append(sample)
    return train, calibration


class _Batches:
    """Random tiles of the synthetic set (70 % centred on an object when the scan has one); with
    ``hard`` spots (`mining.mine`), a share ``hard_share`` of the tiles is centred on one of them."""

    def __init__(self, data: ExampleSet, g: Geometry, rng: np.random.Generator, *,
                 bank: ObjectBank | None = None, project: float = 0.0, project_anywhere: float = PROJECT_ANYWHERE,
                 hard: HardExamples | None = None, hard_share: float = 0.0) -> None:
        self.data, self.g, self.rng = data, g, rng
        self.bank, self.project, self.project_anywhere = bank, project, project_anywhere
        self.hard_spots = hard.spots if hard is not None else []
        self.hard_share = hard_share if self.hard_spots else 0.0
        self.positive_cols = []
        for i in range(len(data)):
            _, t, _ = data.example(i)
            self.positive_cols.append(np.flatnonzero(t[..., 1:].any(axis=(0, 2))))

    def tile(self, i: int, centre: int | None = None,
             ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """A tile of example ``i``: around cell column ``centre`` when given, else around one of
        its objects (70 %) or anywhere."""
        g, rng = self.g, self.rng
        x, t, w = self.data.example(i)
        cells = g.tile_width // g.stride
        total = t.shape[1]
        pos = self.positive_cols[i]
        if centre is not None or (pos.size and rng.random() < 0.7):
            c = centre if centre is not None else int(rng.choice(pos))
            lo, hi = max(0, c - cells + 1), min(c, total - cells)
            start = int(rng.integers(lo, hi + 1)) if hi >= lo else max(0, min(c, total - cells))
        else:
            start = int(rng.integers(0, total - cells + 1))
        xs = x[:, start * g.stride:(start + cells) * g.stride].astype(np.float32) / X_QUANT
        ts, ws = t[:, start:start + cells].astype(np.float32), w[:, start:start + cells].astype(np.float32)
        if rng.random() < 0.5:  # trucks drive through in either direction
            xs, ts, ws = xs[:, ::-1], ts[:, ::-1], ws[:, ::-1]
        if self.bank is not None and rng.random() < self.project:
            xs, ts, ws = self.bank.project(xs, ts, ws, rng, anywhere=self.project_anywhere)
        return self.augment(xs), ts, ws

    def augment(self, xs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Strong photometric augmentation on top of the randomized world: channel gains, the
        material channel's contrast (another source's spectra), its loss (single energy),
        residual noise, blur."""
        rng = self.rng
        xs = xs * rng.uniform(0.9, 1.1, size=(1, 1, xs.shape[2])).astype(np.float32)
        if xs.shape[2] > 1:
            if rng.random() < 0.1:
                xs[..., 1] = 0.0
            else:
                xs[..., 1] *= np.float32(rng.uniform(0.75, 1.3))
        if rng.random() < 0.3:
            xs = xs + rng.normal(0.0, rng.uniform(0.002, 0.02), size=xs.shape).astype(np.float32)
        if rng.random() < 0.15:
            xs = np.asarray(cv2.GaussianBlur(np.ascontiguousarray(xs), (0, 0), sigmaX=rng.uniform(0.5, 1.2)),
                            dtype=np.float32)
            if xs.ndim == 2:
                xs = xs[:, :, None]
        return np.asarray(np.maximum(xs, -0.05), dtype=np.float32)

    def __call__(self, batch: int) -> tuple[npt.NDArray[np.float32], ...]:
        idx = self.rng.integers(0, len(self.data), size=batch)
        parts = []
        for i in idx:
            if self.hard_share > 0 and self.rng.random() < self.hard_share:
                spot, col = self.hard_spots[int(self.rng.integers(0, len(self.hard_spots)))]
                parts.append(self.tile(spot, col))
            else:
                parts.append(self.tile(int(i)))
        x = np.stack([p[0] for p in parts])
        t = np.stack([p[1] for p in parts])
        w = np.stack([p[2] for p in parts])
        valid = np.ones((batch, 1, t.shape[2], 1), np.float32)
        bag = np.zeros((batch, t.shape[3]), np.float32)
        return x, t, w, valid, bag


def _field_batch(examples: list[Example], rng: np.random.Generator, g: Geometry, batch: int = 4,
                 ) -> tuple[npt.NDArray[np.float32], ...]:
    picks = [examples[int(i)] for i in rng.integers(0, len(examples), size=min(batch, len(examples)))]
    width = max(e.x.shape[1] for e in picks)
    cells = width // g.stride
    k = len(g.outputs)
    x = np.zeros((len(picks), g.rows, width, len(g.channels)), np.float32)
    t = np.zeros((len(picks), g.cell_rows, cells, k), np.float32)
    w = np.zeros_like(t)
    valid = np.zeros((len(picks), 1, cells, 1), np.float32)
    bag = np.zeros((len(picks), k), np.float32)
    for b, e in enumerate(picks):
        ew = e.x.shape[1]
        x[b, :, :ew] = e.x.astype(np.float32) / X_QUANT
        t[b, :, :ew // g.stride] = e.targets
        w[b, :, :ew // g.stride] = e.weights
        valid[b, 0, :-(-e.width // g.stride)] = 1
        bag[b] = e.bag
    return x, t, w, valid, bag


def _recompute_batch_norm(model: Any, batches: _Batches, count: int) -> None:
    """Re-estimate the batch-norm statistics for the averaged weights (they were tracked for the
    raw ones): forward passes in training mode with the momentum kept, no weight update."""
    for _ in range(count):
        x, *_ = batches(16)
        model(x, training=True)


def _representative(batches: _Batches, count: int) -> Iterator[list[npt.NDArray[np.float32]]]:
    for _ in range(count):
        x, *_ = batches(1)
        yield [x]


def decision_loss(logits: Any, t: Any, w: Any, valid: Any, hard_cells: int, *, per_class: bool) -> Any:
    """The loss of the gate's decision on a batch of tiles (TensorFlow tensors shaped like the
    training step's): a scan is suspect when its highest anomaly cell reaches the threshold, and
    the region is labelled with the class scoring highest there. Per tile and anomaly class, the
    ``hard_cells`` highest cells free of every anomaly (positive weight in every anomaly channel,
    inside the scan) are asked to score low in that class, and the highest cell over an object
    of that class to score high in it; tiles without such cells add nothing. Taken per class, so
    one class cannot stand in for the others (the region's label stays meaningful): what model
    2.2.0 was trained with. With ``per_class=False`` the classes are pooled (each cell's highest
    anomaly logit, any object), as for model 2.1.0: one channel then carries every object and the
    region labels lose their meaning."""
    import tensorflow as tf

    if per_class:
        anomaly, positive = logits[..., 1:], t[..., 1:] > 0
    else:
        anomaly = tf.reduce_max(logits[..., 1:], axis=-1, keepdims=True)
        positive = tf.reduce_max(t[..., 1:], axis=-1, keepdims=True) > 0
    clean = (~tf.reduce_any(t[..., 1:] > 0, axis=-1)) & (tf.reduce_min(w[..., 1:], axis=-1) > 0) & (valid[..., 0] > 0)
    floor = tf.fill(tf.shape(anomaly), -30.0)
    masked = tf.transpose(tf.where(clean[..., None], anomaly, floor), (0, 3, 1, 2))
    flat = tf.reshape(masked, (tf.shape(anomaly)[0], tf.shape(anomaly)[3], -1))
    top = tf.math.top_k(flat, k=hard_cells).values
    counted = tf.cast(top > -29.0, tf.float32)
    neg = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros_like(top), logits=top)
    neg_loss = tf.reduce_sum(neg * counted) / (tf.reduce_sum(counted) + 1.0)
    peak = tf.reduce_max(tf.where(positive, anomaly, floor), axis=(1, 2))
    has = tf.cast(tf.reduce_any(positive, axis=(1, 2)), tf.float32)
    pos = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(peak), logits=peak)
    pos_loss = tf.reduce_sum(pos * has) / (tf.reduce_sum(has) + 1.0)
    return neg_loss + pos_loss


def make_train_step(model: Any, optimizer: Any, g: Geometry, *, peak_loss: float = 0.0,
                    hard_cells: int = 8, per_class: bool = True) -> Any:
    """The compiled training step ``step(x, t, w, valid, bag) -> loss``: weighted per-cell binary
    cross-entropy (positives weighted by `POS_WEIGHT`) plus the bag loss of labels known to be
    present without a location.

    With ``peak_loss`` > 0, `decision_loss` (per class, or pooled with ``per_class=False``) is
    added with that weight. The per-cell term alone
    spends its effort on every cell of an object and on the many easy background cells, while
    the threshold is set by the few clean cells that score highest (machinery, clutter,
    structures) and an object is found by its highest cell."""
    import tensorflow as tf

    chan_weight = tf.constant([POS_WEIGHT.get(name, 3.0) for name in g.outputs], dtype=tf.float32)

    def train_step(x: Any, t: Any, w: Any, valid: Any, bag: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=t, logits=logits)
            pos_w = 1.0 + (chan_weight - 1.0) * t
            dense = tf.reduce_sum(bce * w * pos_w) / (tf.reduce_sum(w) + 1.0)
            masked = tf.where(valid > 0, logits, tf.fill(tf.shape(logits), -30.0))
            bag_logit = tf.reduce_max(masked, axis=(1, 2))
            bag_bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(bag_logit), logits=bag_logit)
            bag_loss = tf.reduce_sum(bag_bce * bag) / (tf.reduce_sum(bag) + 1.0)
            loss = dense * len(g.outputs) + bag_loss
            if peak_loss > 0:
                loss += peak_loss * decision_loss(logits, t, w, valid, hard_cells, per_class=per_class)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return tf.function(train_step, reduce_retracing=True)


def convert_int8(export: Any, representative: Callable[[], Iterator[list[npt.NDArray[np.float32]]]]) -> bytes:
    """Full-integer (int8 in, int8 out) conversion of a fixed-shape export model."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(export)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def weights_path_for(model_path: Path) -> Path:
    """Where `train` keeps the float weights of ``model_path`` (a Keras checkpoint of
    `build_model`, for fine-tuning at the hub; generated, never in git)."""
    return model_path.with_name(model_path.stem + WEIGHTS_SUFFIX)


def train(opts: TrainOptions) -> Path:
    """Run the whole pipeline; returns the path of the written ``.tflite``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from inference.training.model import build_export_model, build_model

    g = Geometry()
    # The models a run starts from are checked before minutes of data generation.
    continued = load_base_spec(opts.continue_from, g, "--continue-from") if opts.continue_from else None
    if opts.mine_from is not None:
        load_base_spec(opts.mine_from, g, "--mine-from")
    started = time.monotonic()
    tf.keras.utils.set_random_seed(opts.seed)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(opts.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # A continued run draws other tiles and augmentations than the run it continues.
    rng = np.random.default_rng(opts.seed if opts.continue_from is None else [opts.seed, 1])

    data = build_synthetic_set("train", opts.seed, opts.scans, g, cache_dir=opts.cache_dir, workers=opts.workers)
    if opts.exclude:
        data = data.without(opts.exclude)
        _log.info("leave-one-out: %s held out of training", opts.exclude)
    gen_s = time.monotonic() - started
    _log.info("training set: %d scans, %d model columns (%.0f s)", len(data), int(data.widths.sum()), gen_s)
    field_samples, field_val = _split_field_samples(opts)
    field_train: list[Example] = [field_example(sample, g) for sample in field_samples]
    if opts.samples:
        _log.info("field samples: %d for training, %d held out for calibration", len(field_train), len(field_val))

    widths, blocks = opts.widths, 0
    if opts.continue_from is not None and continued is not None:
        model, widths, blocks = _continued_model(opts.continue_from, continued, g, widen_to=opts.widen_to,
                                                 deepen=opts.deepen, seed=opts.seed)
    else:
        model = build_model(g, widths)
    if opts.init_weights is not None:
        model.load_weights(str(opts.init_weights))
        _log.info("starting from the weights in %s", opts.init_weights)
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=opts.learning_rate * 0.1, decay_steps=max(1, opts.steps - 100),
        warmup_target=opts.learning_rate, warmup_steps=min(100, opts.steps // 10), alpha=0.05)
    # Weight averaging (EMA): the exported weights are the moving average of the trained ones.
    optimizer = tf.keras.optimizers.Adam(learning_rate=schedule, use_ema=opts.ema > 0,
                                         ema_momentum=opts.ema if opts.ema > 0 else 0.99)
    step = make_train_step(model, optimizer, g, peak_loss=opts.peak_loss, hard_cells=opts.hard_cells,
                           per_class=opts.peak_per_class)
    bank = None
    if opts.project > 0:
        bank = ObjectBank(g, per_label=opts.project_objects, seed=opts.seed, exclude=opts.exclude)
        _log.info("threat projection: %d rendered objects, into %.0f %% of the tiles", len(bank),
                  100 * opts.project)
    hard = None
    if opts.mine_from is not None:
        hard = mine(opts.mine_from, data, g, negative_share=opts.hard_negatives, threads=opts.threads)
    batches = _Batches(data, g, rng, bank=bank, project=opts.project, project_anywhere=opts.project_anywhere,
                       hard=hard, hard_share=opts.hard_share)
    t_train = time.monotonic()
    running = 0.0
    for i in range(1, opts.steps + 1):
        if field_train and i % opts.field_every == 0:
            loss = step(*_field_batch(field_train, rng, g))
        else:
            loss = step(*batches(opts.batch))
        running = 0.98 * running + 0.02 * float(loss) if i > 1 else float(loss)
        if i % 100 == 0 or i == opts.steps:
            _log.info("step %d/%d loss %.4f (%.0f s)", i, opts.steps, running, time.monotonic() - t_train)
    train_s = time.monotonic() - t_train
    if opts.ema > 0:
        optimizer.finalize_variable_values(model.trainable_variables)
        if opts.continue_from is None:  # a continued network has its batch norm folded
            _recompute_batch_norm(model, batches, 60)

    export = build_export_model(model, g)
    flatbuffer = convert_int8(export, lambda: _representative(batches, 300))

    opts.out_dir.mkdir(parents=True, exist_ok=True)
    model_path = opts.out_dir / f"{MODEL_STEM}.tflite"
    model_path.write_bytes(flatbuffer)
    # The float weights (EMA, batch norm re-estimated) beside the int8 model: what fine-tuning
    # at the hub (`python -m inference.training adapt`) starts from.
    model.save_weights(str(weights_path_for(model_path)))
    spec = _initial_spec(model_path, g, opts, {
        "seed": opts.seed,
        "framework": f"tensorflow {tf.__version__}",
        "data": (f"{len(data)} synthetic scans from inference.synthetic in randomized worlds (energies, "
                 "rows and pitch, bit depth, air/dark, gain, noise, scatter/blur, afterglow, row defects, "
                 "speed, chassis, tractor, container types, layouts, equipment; see docs/image-review.md), training "
                 "mixture TRAIN_MIX (30 % clean loaded incl. extra machinery/mixed/coils, 12 % empty, "
                 "7 % declared empty but loaded, 20 % weapon, 12 % dense_object, 9 % organic_mass, "
                 "5 % vehicle), objects labelled where the scanner could show them (ideal-observer d' >= 5); "
                 "random 256 x 256 tiles, augmented"
                 + (f", {opts.project:.0%} of them with a projected object ({opts.project_objects} rendered "
                    f"objects per class: {', '.join(PROJECTED_LABELS)}; {opts.project_anywhere:.0%} of them anywhere "
                    "in the box band, the rest into the load)" if opts.project > 0 else "")
                 + "; EMA of the weights"
                 + (f"; held out: {opts.exclude}" if opts.exclude else "")
                 + (f" + {len(field_train)} field samples" if field_train else "")),
        "steps": opts.steps,
        "batch": opts.batch,
        "tile": [g.rows, g.tile_width],
        "parameters": int(model.count_params()),
        "widths": list(widths),
        "blocks": blocks,
        "peak_loss": opts.peak_loss,
        "hard_cells": opts.hard_cells,
        "threads": opts.threads,
        "peak_per_class": opts.peak_per_class,
        "project": opts.project,
        "project_objects": opts.project_objects,
        "project_anywhere": opts.project_anywhere,
        "exclude": {category: list(values) for category, values in opts.exclude.items()},
        **({"hard_examples": {**hard.summary, "share_of_tiles": opts.hard_share}} if hard is not None else {}),
        "init_weights": opts.init_weights.name if opts.init_weights is not None else None,
        **({"continued_from": {"name": continued.name, "version": continued.version, "sha256": continued.sha256,
                               "steps": continued.training.get("steps"),
                               "widths": continued.training.get("widths"),
                               "blocks": continued.training.get("blocks", 0)}, "batch_norm": "folded"}
           if continued is not None else {}),
        "generation_s": round(gen_s, 1),
        "training_s": round(train_s, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
    })
    _write_spec(model_path, spec)
    spec = _calibrate(model_path, spec, opts, field_val)
    _write_spec(model_path, spec)
    _log.info("wrote %s (%d bytes) in %.0f s total", model_path, len(flatbuffer), time.monotonic() - started)
    return model_path


def _continued_model(model_path: Path, spec: ModelSpec, g: Geometry, *, widen_to: tuple[int, int, int, int] | None,
                     deepen: int = 0, seed: int) -> tuple[Any, tuple[int, int, int, int], int]:
    """The folded network of the int8 model ``model_path`` (metadata ``spec``) with its dequantized
    weights, widened to ``widen_to`` first if given (`base_weights.widened`) and given ``deepen``
    more residual blocks (`base_weights.deepened`), both function-preserving; with its stage widths
    and residual blocks."""
    from inference.training.model import build_folded_model, set_folded_weights

    weights = dequantized_weights(model_path)
    if widen_to is not None and widen_to != widths_of(weights):
        _log.info("widening %s from %s to %s (function-preserving)", spec.version,
                  "/".join(map(str, widths_of(weights))), "/".join(map(str, widen_to)))
        weights = widened(weights, widen_to, seed=seed)
    if deepen > 0:
        _log.info("deepening %s from %d to %d residual blocks (function-preserving)", spec.version,
                  blocks_of(weights), blocks_of(weights) + deepen)
        weights = deepened(weights, blocks_of(weights) + deepen, seed=seed)
    widths, blocks = widths_of(weights), blocks_of(weights)
    model = build_folded_model(g, widths, blocks)
    set_folded_weights(model, weights)
    _log.info("continuing %s %s (widths %s, %d residual blocks, weights dequantized, batch norm folded)", spec.name,
              spec.version, "/".join(map(str, widths)), blocks)
    return model, widths, blocks


def _initial_spec(model_path: Path, g: Geometry, opts: TrainOptions, training: dict[str, Any]) -> ModelSpec:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    in_q = QuantizationSpec(scale=float(inp["quantization"][0]), zero_point=int(inp["quantization"][1]))
    out_q = QuantizationSpec(scale=float(out["quantization"][0]), zero_point=int(out["quantization"][1]))
    return ModelSpec(
        format=FORMAT,
        name=MODEL_NAME,
        version=opts.version,
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model_file=model_path.name,
        sha256=file_sha256(model_path),
        input=InputSpec(name=str(inp["name"]), shape=_shape4(inp["shape"]),
                        dtype="int8", quantization=in_q, column_mm=g.column_mm, channels=g.channels),
        output=OutputSpec(name=str(out["name"]), shape=_shape4(out["shape"]),
                          dtype="int8", quantization=out_q, stride=g.stride, channels=g.outputs,
                          activation="logits", decision_block=DECISION_BLOCK),
        normalization=g.normalization(),
        tiling=TilingSpec(overlap=g.overlap),
        labels=g.labels,
        thresholds=ThresholdSpec(suspect=0.5, not_empty=0.5, region=0.3),
        training=training,
    )


def _shape4(shape: Any) -> tuple[int, int, int, int]:
    a, b, c, d = (int(v) for v in shape)
    return a, b, c, d


def _write_spec(model_path: Path, spec: ModelSpec) -> None:
    path = model_path.with_suffix(".json")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(spec.to_json(), encoding="utf-8")
    tmp.replace(path)


def _calibrate(model_path: Path, spec: ModelSpec, opts: TrainOptions,
               field_val: list[FieldSample]) -> ModelSpec:
    """Pick thresholds on the validation split (never the test split) with the int8 model in LiteRT."""
    from inference.reviewer import Reviewer
    from inference.training.evaluate import (
        collect_field,
        collect_synthetic,
        compute_metrics,
        declared_empty_metrics,
        not_empty_threshold,
        suspect_threshold,
    )

    reviewer = Reviewer(model_path, num_threads=1)
    held_out = opts.exclude or None
    mixture = collect_synthetic(reviewer, "val", opts.seed, opts.val_scans, exclude=held_out)
    mixture += collect_field(reviewer, field_val)
    # Declared-empty boxes are a small share of the mixture: more of them, truly empty and
    # loaded in turn, so the not-empty threshold rests on enough boxes. They are kept out of the
    # suspect threshold: extra easy anomaly-free scans would dilute the false-alarm rate.
    empties = collect_synthetic(reviewer, "val_empty", opts.seed, opts.val_empty_scans,
                                kinds=("empty", "misdeclared_empty"), exclude=held_out)
    records = mixture + empties
    suspect = suspect_threshold(mixture, opts.target_false_alarm)
    not_empty = not_empty_threshold(records, opts.target_false_not_empty)
    metrics = compute_metrics(mixture, suspect, not_empty, spec.labels)
    metrics["declared_empty"] = declared_empty_metrics(records, not_empty)
    _log.info("calibrated on %d validation scans: suspect %.3f, not_empty %.3f", len(records), suspect, not_empty)
    region = round(suspect * 0.6, 4)
    thresholds = spec.thresholds.model_copy(update={"suspect": suspect, "not_empty": not_empty, "region": region})
    envelope = _envelope(records, region)
    training = dict(spec.training)
    training["calibration"] = (
        f"suspect = lowest value with <= {opts.target_false_alarm:.1%} false-alarm scans (mixture only); "
        "not_empty = "
        f"above the <= {opts.target_false_not_empty:.1%} false 'not empty' bound, halfway (logit) to the "
        f"lowest loaded declared-empty box when they separate; on {len(records)} validation scans "
        f"({opts.val_scans} 'random' mixture + {opts.val_empty_scans} declared empty, splits 'val' and "
        "'val_empty', disjoint from training and test seeds), measured with LiteRT")
    return spec.model_copy(update={"thresholds": thresholds, "training": training, "envelope": envelope,
                                   "metrics": {"validation": metrics}})


def _envelope(records: list[Any], region: float) -> EnvelopeSpec:
    """The training envelope from the validation scans (randomized worlds, every regime)."""
    from inference.training.evaluate import flagged_share_at

    return EnvelopeSpec.around(
        flagged=max((flagged_share_at(r, region) for r in records), default=0.2),
        noise=max((r.signals.get("noise", 0.0) for r in records), default=0.02),
        air=min((r.signals.get("air_fraction", 1.0) for r in records), default=0.1),
        inverted=max((r.signals.get("inverted_share", 0.0) for r in records), default=0.2),
        what=f"{len(records)} validation scans")


def recalibrate(model_path: Path, opts: TrainOptions) -> ModelSpec:
    """Re-pick the thresholds of an existing model (no TensorFlow): same validation splits and
    rules as `train`, plus the held-out share of ``opts.samples``. Rewrites the metadata JSON;
    the model file, and so its SHA-256, are unchanged. Test figures from an earlier ``evaluate``
    no longer match the new thresholds and are dropped."""
    spec = load_spec(metadata_path_for(model_path))
    _, field_val = _split_field_samples(opts)
    spec = _calibrate(model_path, spec, opts, field_val)  # metrics: the new validation figures only
    _write_spec(model_path, spec)
    return spec
