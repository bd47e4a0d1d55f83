"""`train --continue-from`: more training steps for an int8 model whose float weights are gone,
here with hard spots mined by it (`--mine-from`).

TensorFlow lives only in the training venv (``make .venv-train/.installed-train``): the tiny
continued run is made there in a child process, and its model is checked here with LiteRT.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from inference.model_spec import load_spec, metadata_path_for
from inference.runtime import DEFAULT_MODEL_PATH
from inference.training.dataset import X_QUANT, synthetic_example
from inference.training.geometry import Geometry

REPO = Path(__file__).resolve().parents[2]
TRAIN_PYTHON = Path(os.environ.get("SMARTGATE_TRAIN_PYTHON", str(REPO / ".venv-train" / "bin" / "python")))

# Continue the shipped model for a few steps at a learning rate too small to move it, then read
# the checkpoint back the way a site fine-tuning would (`site._base_weights`).
_CHILD = r"""
import sys
from pathlib import Path

import numpy as np

from inference.runtime import DEFAULT_MODEL_PATH
from inference.training.__main__ import main
from inference.training.base_weights import dequantized_weights
from inference.training.site import _base_weights

work = Path(sys.argv[1])
common = ["train", "--scans", "6", "--steps", "3", "--batch", "2", "--val-scans", "12", "--val-empty-scans", "4",
          "--no-cache", "--workers", "1", "--threads", "1", "--learning-rate", "1e-9", "--version", "0.0.1"]
codes = [main([*common, "--continue-from", str(work / "missing.tflite"), "--out", str(work / "never")]),
         main([*common, "--mine-from", str(work / "absent.tflite"), "--out", str(work / "never")]),
         main([*common, "--continue-from", str(DEFAULT_MODEL_PATH), "--mine-from", str(DEFAULT_MODEL_PATH),
               "--hard-share", "0.5", "--out", str(work / "cont")]),
         # Two residual blocks added (function-preserving), then one more on the deepened int8 model.
         main([*common, "--continue-from", str(DEFAULT_MODEL_PATH), "--deepen", "2", "--out", str(work / "deep")]),
         main([*common, "--continue-from", str(work / "deep" / "xray_anomaly.tflite"), "--deepen", "1",
               "--out", str(work / "deeper")])]
# Leave-one-out with rounds (here with threat projection): the held-out base model, one round on
# its own scans, then one round on a new seed's scans.
codes.append(main(["loo", "--joint", "--slice", "energy=6/9", "--scans", "8", "--steps", "2", "--rounds", "1",
                   "--round-seeds", "9", "--round-steps", "2", "--round-project", "0.3", "--val-scans", "8",
                   "--val-empty-scans", "4",
                   "--test-scans", "4", "--control-scans", "4", "--no-cache", "--workers", "1", "--threads", "1",
                   "--out", str(work / "loo")]))
print("EXIT CODES", *codes)
model = work / "cont" / "xray_anomaly.tflite"
read_back, source = _base_weights(model, None)
base = dequantized_weights(DEFAULT_MODEL_PATH)
worst = max(float(np.abs(read_back[k][0] - base[k][0]).max() / (np.abs(base[k][0]).max() + 1e-9)) for k in base)
print("CHECKPOINT", source["source"], f"{worst:.6f}")
deeper, source = _base_weights(work / "deeper" / "xray_anomaly.tflite", None)
print("DEEPER", source["source"], *deeper)
print("DEEPER INT8", *dequantized_weights(work / "deeper" / "xray_anomaly.tflite"))
"""


def _logits(model: Path, tile: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    interp.set_tensor(inp["index"], np.clip(np.rint(tile / s_in + z_in), -128, 127).astype(np.int8))
    interp.invoke()
    return np.asarray((interp.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out).ravel()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_continued_training_starts_from_the_int8_model(tmp_path: Path) -> None:
    if not TRAIN_PYTHON.is_file():
        pytest.skip(f"no training venv at {TRAIN_PYTHON} (make .venv-train/.installed-train)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([str(TRAIN_PYTHON), "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=800, check=False, cwd=tmp_path, preexec_fn=lambda: os.nice(10))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "EXIT CODES 1 1 0 0 0 0" in proc.stdout, log[-4000:]
    assert "missing.tflite" in proc.stderr  # the missing base model is named
    assert "absent.tflite" in proc.stderr
    # The checkpoint beside the continued model is the folded network, read back as such.
    checkpoint = proc.stdout.split("CHECKPOINT ")[1].split("\n")[0]
    assert checkpoint.startswith("keras checkpoint"), proc.stdout
    assert float(checkpoint.split()[-1]) < 0.01, proc.stdout

    model = tmp_path / "cont" / "xray_anomaly.tflite"
    shipped = load_spec(metadata_path_for(DEFAULT_MODEL_PATH))
    training = load_spec(metadata_path_for(model)).training
    assert training["continued_from"] == {"name": shipped.name, "version": shipped.version,
                                          "sha256": shipped.sha256, "steps": shipped.training["steps"],
                                          "widths": shipped.training["widths"], "blocks": 0}
    assert training["batch_norm"] == "folded"
    assert training["widths"] == shipped.training["widths"]
    # Hard spots were mined from the six training scans with the shipped model.
    mined = training["hard_examples"]
    assert (mined["model"], mined["scans"], mined["share_of_tiles"]) == ("xray_anomaly.tflite", 6, 0.5)
    assert mined["negatives"] == 1

    # The leave-one-out row is of the last round's model: base -> round on its scans -> round on
    # seed 9's new scans, each continued from the one before, every one without the slice.
    row = json.loads((tmp_path / "loo" / "loo.json").read_text())[0]
    assert row["slice"] == "energy=6/9"
    assert row["model"].endswith("joint/seed9/xray_anomaly.tflite")
    loo_base = load_spec(metadata_path_for(tmp_path / "loo" / "joint" / "xray_anomaly.tflite"))
    loo_round = load_spec(metadata_path_for(tmp_path / "loo" / "joint" / "round1" / "xray_anomaly.tflite"))
    loo_seed = load_spec(metadata_path_for(tmp_path / "loo" / "joint" / "seed9" / "xray_anomaly.tflite"))
    assert loo_round.training["continued_from"]["sha256"] == loo_base.sha256
    assert row["continued_from"]["sha256"] == loo_round.sha256
    assert (loo_base.training["seed"], loo_round.training["seed"], loo_seed.training["seed"]) == (7, 7, 9)
    assert (loo_base.training["project"], loo_round.training["project"]) == (0.0, 0.3)
    for spec in (loo_base, loo_round, loo_seed):
        assert "6/9" in spec.training["data"]  # held out of every stage's training
    # The base model is measured on the same test sets, so the rounds' own effect can be read off.
    assert row["base"]["held_out"]["scans"] == row["held_out"]["scans"]
    assert row["base"]["control"]["scans"] == row["control"]["scans"]

    # Three steps at a learning rate of 1e-9 leave the network as it was: the continued int8
    # model computes the shipped model's logits (up to requantization) on a real scan's tile.
    x = synthetic_example(20261207, Geometry(), "dense_object").x
    tile = x[None, :, :256].astype(np.float32) / X_QUANT
    before, after = _logits(DEFAULT_MODEL_PATH, tile), _logits(model, tile)
    assert np.corrcoef(before, after)[0, 1] > 0.99
    assert float(np.abs(after - before).mean()) < 0.1 * float(before.std())

    # Deepened networks: the residual blocks are recorded, read back from the checkpoint and from
    # the int8 model by name, and the deepened model still computes the shipped model's logits.
    blocks = [*(f"c{i}" for i in range(1, 8)), "r1a", "r1b", "r1c", "r2a", "r2b", "r2c", "r3a", "r3b", "r3c", "head"]
    assert proc.stdout.split("DEEPER ")[1].split("\n")[0].split() == ["keras", "checkpoint", *blocks], proc.stdout
    assert proc.stdout.split("DEEPER INT8 ")[1].split("\n")[0].split() == blocks, proc.stdout
    deep = load_spec(metadata_path_for(tmp_path / "deep" / "xray_anomaly.tflite")).training
    deeper = load_spec(metadata_path_for(tmp_path / "deeper" / "xray_anomaly.tflite"))
    assert (deep["blocks"], deeper.training["blocks"], deeper.training["continued_from"]["blocks"]) == (2, 3, 2)
    assert deeper.training["parameters"] > training["parameters"]
    deeper_logits = _logits(tmp_path / "deeper" / "xray_anomaly.tflite", tile)
    assert np.corrcoef(before, deeper_logits)[0, 1] > 0.99
