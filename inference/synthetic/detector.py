"""The detector line: pulses over a moving truck, gain, noise, defects, afterglow, bit depth.

* Speed: each output pulse samples a canvas column; a slower truck stretches objects, a stop
  repeats the same column for a while (`speed_profile`).
* Signal: ``I = I_air * T * gain_row * gain_pulse + dark`` with the air level a fraction of full
  scale, per-row gain non-uniformity, a slow pulse-to-pulse drift and jitter.
* Afterglow: the scintillator lags, ``S[c] = (1 - a) * S[c] + a * S[c - 1]``: streaks behind
  dense edges.
* Noise: photon noise (scaled Poisson, Gaussian approximation) and electronic noise, both scaled
  by the world's noise regime.
* Defects: dead rows (0), stuck rows (full scale or a fixed level), noisy rows (x 8-20 noise).
* Output: 16 bit, or 8 bit as the 16-bit value shifted right by 8 (what a GFP/1 8-bit scanner
  sends).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from inference.synthetic.world import World

__all__ = ["digitize", "noise_terms", "speed_profile"]

FloatArray = npt.NDArray[np.float32]


def speed_profile(rng: np.random.Generator, out_columns: int, canvas_columns: int, world: World,
                  ) -> npt.NDArray[np.float64]:
    """Canvas column (float, increasing) sampled by each output pulse."""
    knots = max(3, out_columns // 300)
    amp = rng.uniform(0.0, world.speed_amp) if world.speed_amp > 0 else 0.0
    v = 1 + amp * rng.uniform(-1, 1, size=knots + 1)
    speed = np.interp(np.linspace(0, knots, out_columns), np.arange(knots + 1), v)
    slowdown = world.slowdown if world.slowdown is not None else rng.random() < 0.2
    if slowdown:  # a brief slowdown (driver braking in the tunnel)
        c = int(rng.integers(0, out_columns))
        width = int(rng.integers(20, 150))
        speed[max(0, c - width):c + width] *= rng.uniform(0.5, 0.8)
    if world.stop:  # the truck stops: the same column is sampled for many pulses
        c = int(rng.integers(out_columns // 10, out_columns - out_columns // 10))
        width = int(rng.integers(10, max(11, out_columns // 15)))
        speed[c:c + width] *= 0.02
    pos = np.concatenate([[0.0], np.cumsum(speed)[:-1]])
    pos *= (canvas_columns - 1) / max(pos[-1], 1e-9)
    return pos


def _afterglow(signal: FloatArray, a: float) -> None:
    """First-order lag along the pulses, in place (a short loop: one vector op per pulse)."""
    keep = np.float32(1.0 - a)
    lag = np.float32(a)
    for c in range(1, signal.shape[1]):
        signal[:, c] = signal[:, c] * keep + signal[:, c - 1] * lag


def noise_terms(world: World) -> tuple[np.float32, np.float32]:
    """``(photon, read2)``: a pixel's noise variance is ``signal * photon + read2`` (counts^2)."""
    return np.float32(world.quantum ** 2), np.float32((2.5 * world.electronic) ** 2)


def digitize(trans: tuple[FloatArray, ...], world: World, rng: np.random.Generator,
             ) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Transmission planes (output grid) -> detector counts ``(channels, rows, columns)``."""
    channels = len(trans)
    rows, cols = trans[0].shape
    full = 65535.0
    i0 = world.air_fraction * full
    drift = np.cumsum(rng.normal(0, world.pulse_drift, size=cols))
    drift -= drift.mean()
    col_gain = (i0 * (1 + drift + rng.normal(0, 0.002, size=cols))).astype(np.float32)
    row_gain = (1 + rng.normal(0, max(world.row_gain_sigma, 1e-6), size=(channels, rows, 1))).astype(np.float32)
    photon, read2 = noise_terms(world)
    dark = np.float32(world.dark_fraction * full)
    dead = rng.choice(rows, size=min(world.dead_rows, rows), replace=False) if world.dead_rows else []
    stuck = rng.choice(rows, size=min(world.stuck_rows, rows), replace=False) if world.stuck_rows else []
    noisy = rng.choice(rows, size=min(world.noisy_rows, rows), replace=False) if world.noisy_rows else []
    stuck_level = full if rng.random() < 0.6 else float(rng.uniform(0.2, 0.9) * full)
    out = np.empty((channels, rows, cols), dtype=np.uint16 if world.bits == 16 else np.uint8)
    for c in range(channels):
        signal = trans[c] * col_gain[None, :]
        signal *= row_gain[c]
        if world.afterglow > 0:
            _afterglow(signal, world.afterglow)
        sigma = np.sqrt(signal * photon + read2)
        if len(noisy):
            sigma[noisy] *= np.float32(rng.uniform(8, 20))
        noise = rng.standard_normal(size=(rows, cols), dtype=np.float32)
        noise *= sigma
        noise += signal
        noise += dark
        if len(dead):
            noise[dead] = 0.0
        if len(stuck):
            noise[stuck] = stuck_level
        np.clip(np.rint(noise, out=noise), 0, full, out=noise)
        if world.bits == 16:
            out[c] = noise
        else:
            out[c] = (noise.astype(np.uint16) >> 8).astype(np.uint8)
    return out
