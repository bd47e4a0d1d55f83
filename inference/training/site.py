"""``python -m inference.training adapt``: fine-tune the network on one site's scans, at the hub.

Where fitting the review around the network on the gate (`inference.adaptation`, ``smartgate model
adapt``) is not enough, the network itself is fine-tuned on the site's own backgrounds with the
training toolchain, and the result is a signed model package like any other (delivered with
``model.activate``, canary and rollback on the gates):

1. The site's officer-confirmed clean scans (the directory ``smartgate model adapt --clean``
   takes) are split by a hash of their names into a training part and a held-out part
   (``holdout``). Labelled field samples (``--samples``, the layout of `inference.training.dataset`)
   are split the same way.
2. Threat image projection (`inference.adaptation.tip`): generator threats are multiplied into
   the training scans (``tip_per_scan`` each, classes in turn); their boxes are the targets. The
   clean scans themselves are dense negatives. Optionally generated scans from the training world
   (``synthetic_scans``, a share ``synthetic_share`` of the batches) are replayed so the network
   does not forget what the site does not show; regions the base model was trained without stay
   out of them (`replay_exclude`).
3. The network starts from the base model's float weights (`inference.training.base_weights`:
   the Keras checkpoint of its training run, else dequantized from its ``.tflite``), checked
   against the base ``.tflite`` on real tiles, and is fine-tuned with the training loss for
   ``steps`` steps at a low learning rate, then quantized to int8 again.
4. The thresholds are recalibrated with LiteRT on the held-out part: clean scans (false alarms)
   and TIP scans made from other threats than the training ones (detection), plus held-out field
   samples; the base model is measured on the same scans for the before/after figures.
5. The package (network, metadata, ``report.json``) is signed with provenance: base model and
   weights, site data, seed, steps.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.adaptation.tip import ThreatObject, extract_threats, project
from inference.errors import ModelError
from inference.model_spec import ModelSpec, QuantizationSpec, file_sha256, load_spec, metadata_path_for
from inference.scan import Scan, held_out, load_scan, readable_scans
from inference.training.base_weights import blocks_of, dequantized_weights, load_base_spec, widths_of
from inference.training.dataset import (
    X_QUANT,
    Example,
    ExampleSet,
    FieldSample,
    field_example,
    load_field_samples,
    projected_example,
)
from inference.training.geometry import Geometry

__all__ = ["SiteOptions", "fine_tune", "replay_exclude"]

_log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
MIN_BASE_CORRELATION = 0.95
"""Lowest correlation between the starting float network's logits and the base ``.tflite``'s on
real tiles. The int8 rounding of weights and activations alone leaves about 0.99 (mean |logit|
difference about 8 % of the logits' spread, on the shipped model); weights of another model, or
mapped to the wrong layers, fall far below."""


@dataclass
class SiteOptions:
    clean_dir: Path
    version: str
    name: str | None = None
    model: Path | None = None
    weights: Path | None = None
    samples: list[Path] = field(default_factory=list)
    seed: int = 20261206
    steps: int = 1500
    batch: int = 8
    learning_rate: float = 5e-5
    holdout: float = 0.3
    tip_per_scan: int = 2
    threats_per_class: int = 8
    synthetic_scans: int = 400
    synthetic_share: float = 0.3
    target_false_alarm: float = 0.015
    min_scans: int = 20
    representative: int = 200
    threads: int = 2
    field_every: int = 4
    cache_dir: Path | None = Path(tempfile.gettempdir()) / "smartgate-train-cache"
    # Regions of the randomized world left out of the replayed scans; None: those the base model
    # was trained without (its metadata's ``training.exclude``), so the replay never shows the
    # network a world its base never saw (leave-one-out models).
    exclude: dict[str, tuple[str, ...]] | None = None


def replay_exclude(opts: SiteOptions, base_training: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """The regions the replayed generated scans leave out: ``opts.exclude`` when given, else the
    base model's own (``training.exclude`` of its metadata; none recorded: none)."""
    if opts.exclude is not None:
        return dict(opts.exclude)
    recorded = base_training.get("exclude") or {}
    if not isinstance(recorded, dict):
        raise ModelError(f"base model metadata: training.exclude is not a mapping ({recorded!r})")
    return {str(category): tuple(str(v) for v in values) for category, values in recorded.items()}


def _clean(path: Path, scan: Scan) -> FieldSample:
    """An officer-confirmed clean site scan as a labelled field sample (dense negative)."""
    return FieldSample(path=path, scan=scan, finding="clean", labels=(), declared=scan.declared, regions=())


def _by_label(threats: list[ThreatObject]) -> dict[str, list[ThreatObject]]:
    out: dict[str, list[ThreatObject]] = {}
    for threat in threats:
        out.setdefault(threat.label, []).append(threat)
    return out


def _tip(scan: Scan, threats: dict[str, list[ThreatObject]], label: str, index: int, rng: np.random.Generator,
         ) -> tuple[Scan, tuple[int, int, int, int]] | None:
    objects = threats.get(label)
    if not objects:
        return None
    return project(scan, objects[index % len(objects)], rng, scan_id=f"{scan.scan_id}-tip-{label}-{index}")


def _base_weights(base_path: Path, weights: Path | None) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    from inference.training.geometry import WIDTHS
    from inference.training.train import weights_path_for

    checkpoint = weights if weights is not None else weights_path_for(base_path)
    if checkpoint.is_file():
        from inference.training.model import build_folded_model, build_model, fold_batch_norm, folded_weights_of

        training = load_spec(metadata_path_for(base_path)).training
        recorded = training.get("widths")
        widths = WIDTHS
        if isinstance(recorded, list) and len(recorded) == 4:
            widths = (int(recorded[0]), int(recorded[1]), int(recorded[2]), int(recorded[3]))
        # A checkpoint of the network with batch norm (`train`) or folded (`train --continue-from`):
        # the base model's metadata says which `train` wrote; a --weights file may be either.
        folded_first = training.get("batch_norm") == "folded"
        blocks = int(training.get("blocks") or 0)  # residual blocks exist only in continued (folded) networks
        errors: list[str] = []
        for folded in (folded_first, not folded_first):
            trained = build_folded_model(Geometry(), widths, blocks) if folded else build_model(Geometry(), widths)
            try:
                trained.load_weights(str(checkpoint))
            except (ValueError, OSError) as err:
                errors.append(str(err))
                continue
            read = folded_weights_of(trained) if folded else fold_batch_norm(trained)
            return read, {"source": "keras checkpoint", "path": str(checkpoint),
                          "sha256": file_sha256(checkpoint)}
        raise ModelError(f"{checkpoint}: not a checkpoint of this network: {errors[0]}")
    return dequantized_weights(base_path), {"source": f"dequantized from {base_path.name} (int8)",
                                            "sha256": file_sha256(base_path)}


def _tiles(data: ExampleSet, g: Geometry, count: int) -> list[np.ndarray[Any, Any]]:
    """The first tile of up to ``count`` examples, unaugmented, in model space."""
    out = []
    for i in range(min(count, len(data))):
        x, _, _ = data.example(i)
        out.append(x[None, :, :g.tile_width].astype(np.float32) / X_QUANT)
    return out


def _deviation(model: Any, base_path: Path, tiles: list[np.ndarray[Any, Any]]) -> dict[str, float]:
    """How closely the float network reproduces the int8 base model's logits on ``tiles``."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(base_path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    refs, floats = [], []
    for x in tiles:
        q = np.clip(np.rint(x / s_in + z_in), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q)
        interp.invoke()
        refs.append(((interp.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out).ravel())
        floats.append(np.asarray(model(x, training=False), dtype=np.float32).ravel())
    if not refs:
        raise ModelError("no site tile to check the base weights on")
    r, f = np.concatenate(refs), np.concatenate(floats)
    d = np.abs(f - r)
    corr = float(np.corrcoef(r, f)[0, 1]) if r.std() > 0 and f.std() > 0 else 0.0
    return {"correlation": round(corr, 4), "mean_abs_logit": round(float(d.mean()), 4),
            "max_abs_logit": round(float(d.max()), 4), "logit_std": round(float(r.std()), 4),
            "output_step": round(float(s_out), 4), "tiles": len(tiles)}


def fine_tune(opts: SiteOptions, out: Path, *, sign: Callable[..., Any]) -> dict[str, Any]:
    """Run the whole pipeline and write the signed package to ``out``; returns the report.
    ``sign`` is `inference.package.build_package` with the key bound."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from inference.package.loader import resolve_model_path
    from inference.runtime import DEFAULT_MODEL_PATH

    started = time.monotonic()
    g = Geometry()
    base_path = resolve_model_path(opts.model) or DEFAULT_MODEL_PATH
    base_spec = load_base_spec(base_path, g)
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out} is not empty")
    if opts.weights is not None and not opts.weights.is_file():
        raise ModelError(f"--weights {opts.weights}: no such file")
    paths = readable_scans(opts.clean_dir)
    if len(paths) < opts.min_scans:
        raise ModelError(f"{opts.clean_dir}: {len(paths)} readable clean scans, at least {opts.min_scans} needed")
    fit = [p for p in paths if not held_out(p.stem, opts.holdout)]
    val = [p for p in paths if held_out(p.stem, opts.holdout)]
    if len(val) < 3 or len(fit) < 3:
        raise ModelError(f"{opts.clean_dir}: split gives {len(fit)} training and {len(val)} held-out scans; "
                         "add scans")
    samples_train: list[FieldSample] = []
    samples_val: list[FieldSample] = []
    for directory in opts.samples:
        for sample in load_field_samples(directory):
            (samples_val if held_out(sample.path.name, opts.holdout) else samples_train).append(sample)

    # 1-2. training examples: clean site scans, TIP scans, labelled samples
    train_threats = _by_label(extract_threats(g.labels, opts.threats_per_class, seed=opts.seed))
    rng = np.random.default_rng(opts.seed)
    examples: list[Example] = []
    tip_made = 0
    for i, path in enumerate(fit):
        scan = load_scan(path)
        examples.append(field_example(_clean(path, scan), g))
        for k in range(opts.tip_per_scan):
            label = g.labels[(i * opts.tip_per_scan + k) % len(g.labels)]
            projected = _tip(scan, train_threats, label, i * opts.tip_per_scan + k, rng)
            if projected is not None:
                examples.append(projected_example(scan, projected[0], label, g))
                tip_made += 1
    examples += [field_example(s, g) for s in samples_train if s.regions or s.finding == "clean"]
    bag_samples = [field_example(s, g) for s in samples_train if not s.regions and s.finding != "clean"]
    site = ExampleSet(examples, g)
    t_data = time.monotonic()
    _log.info("site training set: %d clean scans, %d TIP scans, %d labelled samples (%.0f s)", len(fit), tip_made,
              len(samples_train), t_data - started)

    report: dict[str, Any] = {
        "base_model": {"name": base_spec.name, "version": base_spec.version, "sha256": base_spec.sha256},
        "site": {"clean_dir": str(opts.clean_dir), "clean_scans": len(paths), "training_scans": len(fit),
                 "held_out_scans": len(val), "tip_training_scans": tip_made,
                 "samples": {"dirs": [str(d) for d in opts.samples], "training": len(samples_train),
                             "held_out": len(samples_val)},
                 "clean_digest": hashlib.sha256("".join(sorted(file_sha256(p) for p in paths)).encode()).hexdigest()},
    }
    flatbuffer, training = _train(opts, g, base_path, base_spec.training, site, bag_samples=bag_samples, rng=rng)
    report["training"] = training
    t_train = time.monotonic()

    # 4-5. calibrate with LiteRT on the held-out part, package
    from inference.training.site_calibration import calibrate_site

    with tempfile.TemporaryDirectory(prefix="smartgate-site-") as tmp:
        model_path = Path(tmp) / base_path.name
        model_path.write_bytes(flatbuffer)
        spec = _spec(model_path, base_spec, opts, training)
        metadata_path_for(model_path).write_text(spec.to_json(), encoding="utf-8")
        val_threats = _by_label(extract_threats(g.labels, max(2, opts.threats_per_class // 2),
                                                seed=opts.seed + 7_000_000))
        spec, validation = calibrate_site(model_path, base_path, spec, val=val, samples=samples_val,
                                          threats=val_threats, target_false_alarm=opts.target_false_alarm,
                                          seed=opts.seed)
        metadata_path_for(model_path).write_text(spec.to_json(), encoding="utf-8")
        report["validation"] = validation
        report["thresholds"] = spec.thresholds.model_dump()
        report["timing_s"] = {"data": round(t_data - started, 1), "training": round(t_train - t_data, 1),
                              "calibration": round(time.monotonic() - t_train, 1),
                              "total": round(time.monotonic() - started, 1)}
        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        provenance = {"fine_tuned_from": report["base_model"], "base_weights": training["base_weights"],
                      "seed": opts.seed, "steps": opts.steps, "site": report["site"],
                      "method": "fine-tuned on threat image projection into the site's clean scans "
                                "(python -m inference.training adapt); thresholds recalibrated on held-out "
                                "site scans and TIP scans with LiteRT"}
        figures = {"validation": {k: validation[k] for k in ("before", "after")}}
        sign(model_path, out, name=opts.name or base_spec.name, version=opts.version,
             files={REPORT_FILE: (json.dumps(report, indent=1) + "\n").encode()}, provenance=provenance,
             figures=figures)
    _log.info("wrote %s in %.0f s", out, time.monotonic() - started)
    return report


def _train(opts: SiteOptions, g: Geometry, base_path: Path, base_training: dict[str, Any], site: ExampleSet, *,
           bag_samples: list[Example], rng: np.random.Generator) -> tuple[bytes, dict[str, Any]]:
    """Fine-tune from the base weights; returns the int8 flatbuffer and the training record.
    ``base_training`` is the base model's ``training`` metadata (its seed and held-out regions
    pick the replayed scans)."""
    import tensorflow as tf

    from inference.training.dataset import build_synthetic_set
    from inference.training.model import build_export_model, build_folded_model, set_folded_weights
    from inference.training.train import _Batches, _field_batch, _representative, convert_int8, make_train_step

    tf.keras.utils.set_random_seed(opts.seed)
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(opts.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already running in this process: its threads stay as they are
        _log.warning("TensorFlow already initialized: --threads %d not applied", opts.threads)
    weights, source = _base_weights(base_path, opts.weights)
    widths = widths_of(weights)  # the base network's own stage widths and residual blocks
    model = build_folded_model(g, widths, blocks_of(weights))
    try:
        set_folded_weights(model, weights)
    except ValueError as err:
        raise ModelError(f"base weights do not fit the network: {err}") from err
    tiles = _tiles(site, g, 8)
    start = _deviation(model, base_path, tiles)
    _log.info("base weights (%s) reproduce %s: logit correlation %.4f, mean |difference| %.3f (spread %.2f)",
              source["source"], base_path.name, start["correlation"], start["mean_abs_logit"], start["logit_std"])
    if start["correlation"] < MIN_BASE_CORRELATION:
        raise ModelError(f"the weights ({source['source']}) do not reproduce {base_path}: logit correlation "
                         f"{start['correlation']} < {MIN_BASE_CORRELATION} (weights of another model?)")
    synthetic = None
    exclude = replay_exclude(opts, base_training)
    if opts.synthetic_scans > 0 and opts.synthetic_share > 0:
        replay = build_synthetic_set("train", int(base_training.get("seed", 7)), opts.synthetic_scans, g,
                                     cache_dir=opts.cache_dir, workers=opts.threads)
        if exclude:
            replay = replay.without(exclude)
            _log.info("replayed scans without %s: %d left", exclude, len(replay))
        synthetic = _Batches(replay, g, rng) if len(replay) else None
    batches = _Batches(site, g, rng)
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=opts.learning_rate * 0.1, decay_steps=max(1, opts.steps - opts.steps // 10),
        warmup_target=opts.learning_rate, warmup_steps=opts.steps // 10, alpha=0.1)
    step = make_train_step(model, tf.keras.optimizers.Adam(learning_rate=schedule), g)
    losses: list[float] = []
    running = 0.0
    t0 = time.monotonic()
    for i in range(1, opts.steps + 1):
        if bag_samples and i % opts.field_every == 0:
            loss = step(*_field_batch(bag_samples, rng, g))
        elif synthetic is not None and rng.random() < opts.synthetic_share:
            loss = step(*synthetic(opts.batch))
        else:
            loss = step(*batches(opts.batch))
        running = 0.95 * running + 0.05 * float(loss) if i > 1 else float(loss)
        if i % 50 == 0 or i == opts.steps:
            losses.append(round(running, 4))
            _log.info("step %d/%d loss %.4f (%.0f s)", i, opts.steps, running, time.monotonic() - t0)
    train_s = time.monotonic() - t0
    flatbuffer = convert_int8(build_export_model(model, g), lambda: _representative(batches, opts.representative))
    return flatbuffer, {
        "base_weights": source, "widths": list(widths), "start_deviation": start, "steps": opts.steps,
        "batch": opts.batch,
        "learning_rate": opts.learning_rate, "tip_per_scan": opts.tip_per_scan,
        "threats_per_class": opts.threats_per_class, "synthetic_scans": opts.synthetic_scans if synthetic else 0,
        "synthetic_share": opts.synthetic_share if synthetic else 0.0,
        "synthetic_exclude": {category: list(values) for category, values in exclude.items()}, "loss": losses,
        "training_s": round(train_s, 1), "framework": f"tensorflow {tf.__version__}",
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "threads": opts.threads,
    }


def _spec(model_path: Path, base: ModelSpec, opts: SiteOptions, training: dict[str, Any]) -> ModelSpec:
    """The base model's metadata for the new network: its quantization, hash and provenance."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    in_q = QuantizationSpec(scale=float(inp["quantization"][0]), zero_point=int(inp["quantization"][1]))
    out_q = QuantizationSpec(scale=float(out["quantization"][0]), zero_point=int(out["quantization"][1]))
    return base.model_copy(update={
        "name": opts.name or base.name, "version": opts.version,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_file": model_path.name, "sha256": file_sha256(model_path),
        "input": base.input.model_copy(update={"name": str(inp["name"]), "quantization": in_q}),
        "output": base.output.model_copy(update={"name": str(out["name"]), "quantization": out_q}),
        "training": {**training, "seed": opts.seed, "fine_tuned_from": f"{base.name} {base.version}",
                     "base_training": base.training},
        "metrics": {},
    })
