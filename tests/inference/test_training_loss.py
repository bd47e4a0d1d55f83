"""The decision loss of training (`inference.training.train.decision_loss`) on crafted tiles.

TensorFlow lives only in the training venv (``make .venv-train/.installed-train``): the loss is
evaluated there in a child process and its figures are checked here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_PYTHON = Path(os.environ.get("SMARTGATE_TRAIN_PYTHON", str(REPO / ".venv-train" / "bin" / "python")))

# Tiles of 4 x 4 cells, outputs (not_empty, dense_object, weapon, vehicle, organic_mass).
_CHILD = r"""
import json, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
from inference.training.train import decision_loss

def tile():
    logits = np.full((1, 4, 4, 5), -6.0, np.float32)
    return logits, np.zeros_like(logits), np.ones_like(logits), np.ones((1, 1, 4, 1), np.float32)

def loss(logits, t, w, valid, k=2, per_class=True):
    return float(decision_loss(tf.constant(logits), tf.constant(t), tf.constant(w), tf.constant(valid), k,
                               per_class=per_class))

out = {}
logits, t, w, valid = tile()
out["clean_low"] = loss(logits, t, w, valid)
logits[0, 1, 2, 2] = 6.0
out["clean_cell_high"] = loss(logits, t, w, valid)
w[0, 1, 2, 2] = 0.0
out["boundary_cell_high"] = loss(logits, t, w, valid)
w[0, 1, 2, 2] = 1.0
valid[0, 0, 2, 0] = 0.0
out["padding_cell_high"] = loss(logits, t, w, valid)
l2, t2, w2, v2 = tile()
l2[0, :, :, 0] = 8.0
out["not_empty_high"] = loss(l2, t2, w2, v2)

logits, t, w, valid = tile()
t[0, 2, 1:3, 2] = 1.0
out["object_low"] = loss(logits, t, w, valid)
logits[0, 2, 1, 4] = 6.0   # one cell of the weapon scores high, but as an organic mass
out["object_other_class_high"] = loss(logits, t, w, valid)
out["pooled_other_class_high"] = loss(logits, t, w, valid, per_class=False)
logits[0, 2, 1, 4] = -6.0
logits[0, 2, 1, 2] = 6.0   # one cell of the weapon scores high as a weapon
out["object_peak_high"] = loss(logits, t, w, valid)

# Only the hard_cells highest clean cells are trained: the third-highest gets no gradient.
logits, t, w, valid = tile()
logits[0, 0, 0, 1], logits[0, 0, 1, 1], logits[0, 0, 2, 1] = 4.0, 3.0, 2.0
var = tf.Variable(logits)
with tf.GradientTape() as tape:
    value = decision_loss(var, tf.constant(t), tf.constant(w), tf.constant(valid), 2, per_class=True)
grad = tape.gradient(value, var).numpy()
out["grad_top"] = [float(grad[0, 0, 0, 1]), float(grad[0, 0, 1, 1]), float(grad[0, 0, 2, 1])]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def figures() -> dict[str, object]:
    if not TRAIN_PYTHON.is_file():
        pytest.skip(f"no training venv at {TRAIN_PYTHON} (make .venv-train/.installed-train)")
    proc = subprocess.run([str(TRAIN_PYTHON), "-c", _CHILD], capture_output=True, text=True, cwd=REPO,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_highest_clean_cell_is_punished(figures: dict[str, float]) -> None:
    assert figures["clean_low"] < 0.01
    assert figures["clean_cell_high"] > 0.5


def test_cells_outside_the_decision_are_ignored(figures: dict[str, float]) -> None:
    # A boundary cell (weight 0), a padding column and the not_empty channel are no clean evidence.
    assert figures["boundary_cell_high"] < 0.01
    assert figures["padding_cell_high"] < 0.01
    assert figures["not_empty_high"] < 0.01


def test_an_object_is_found_by_its_highest_cell_in_its_own_class(figures: dict[str, float]) -> None:
    assert figures["object_low"] > 0.5
    assert figures["object_peak_high"] < 0.05
    # Another class cannot stand in: the region would carry the wrong label.
    assert figures["object_other_class_high"] == figures["object_low"]
    # Pooled over the classes (--no-peak-per-class, the loss of model 2.1.0), any class finds the object.
    assert figures["pooled_other_class_high"] < 0.05


def test_only_the_hardest_clean_cells_get_a_gradient(figures: dict[str, list[float]]) -> None:
    top, second, third = figures["grad_top"]
    assert top > 0  # pushed down
    assert second > 0
    assert third == 0.0
