"""A model of normal traffic on the network's own features (PaDiM-style, per detector row).

PaDiM (Defard et al., 2020) fits, for every position of the feature map, a Gaussian over the
features of anomaly-free images, and scores a new image by the Mahalanobis distance of each
position's features. Cargo scans are aligned along the detector (rows: floor, walls, roof and
chassis always at the same heights) but not along the scan (columns: any load anywhere), so the
Gaussians here are per feature-map *row*, pooled over all columns of the site's clean scans.
Covariances are shrunk towards a scaled identity (a few hundred scans give tens of thousands of
cells per row, but neighbouring cells are correlated).

Features are an intermediate feature map of the shipped network, read with LiteRT's
``experimental_preserve_all_tensors`` (no re-export): the last 4-D tensor on the output grid that
is not the output itself. A model without such a tensor falls back to the per-cell output logits.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import ModelError

__all__ = ["NormalAccumulator", "NormalModel", "pick_feature_tensor"]

FloatArray = npt.NDArray[np.float32]
_SHRINK = 0.05
_EPS = 1e-4


def pick_feature_tensor(details: list[dict[str, Any]], output: dict[str, Any]) -> dict[str, Any]:
    """The feature map PaDiM scores: the last tensor shaped ``(1, rows, cols, C)`` like the output grid."""
    out_shape = tuple(int(d) for d in output["shape"])
    candidates = [d for d in details if len(d["shape"]) == 4 and int(d["index"]) != int(output["index"])
                  and tuple(int(x) for x in d["shape"][:3]) == out_shape[:3]
                  and int(d["shape"][3]) > out_shape[3]]
    if not candidates:
        return output
    return max(candidates, key=lambda d: int(d["index"]))


def dequantized(feat: npt.NDArray[Any], quant: tuple[float, int]) -> FloatArray:
    scale, zero = quant
    out = feat.astype(np.float32)
    if scale:
        out -= np.float32(zero)
        out *= np.float32(scale)
    return out


class NormalAccumulator:
    """Running sums per row (float64): count, sum and sum of outer products of the features."""

    def __init__(self, rows: int, dims: int) -> None:
        self.n = np.zeros(rows, dtype=np.float64)
        self.s1 = np.zeros((rows, dims), dtype=np.float64)
        self.s2 = np.zeros((rows, dims, dims), dtype=np.float64)

    def add(self, feat: FloatArray) -> None:
        """``feat``: ``(rows, cols, dims)`` of one scan (valid columns only)."""
        f = feat.astype(np.float64)
        self.n += f.shape[1]
        self.s1 += f.sum(axis=1)
        self.s2 += np.einsum("rcd,rce->rde", f, f)

    def minus(self, other: NormalAccumulator) -> NormalAccumulator:
        out = NormalAccumulator(*self.s1.shape)
        out.n, out.s1, out.s2 = self.n - other.n, self.s1 - other.s1, self.s2 - other.s2
        return out

    def plus(self, other: NormalAccumulator) -> NormalAccumulator:
        out = NormalAccumulator(*self.s1.shape)
        out.n, out.s1, out.s2 = self.n + other.n, self.s1 + other.s1, self.s2 + other.s2
        return out

    def model(self) -> NormalModel:
        if (self.n < 2).any():
            raise ModelError("not enough clean cells to fit the normal model")
        n = self.n[:, None]
        mean = self.s1 / n
        cov = self.s2 / n[:, :, None] - np.einsum("rd,re->rde", mean, mean)
        dims = mean.shape[1]
        scale = np.trace(cov, axis1=1, axis2=2) / dims
        eye = np.eye(dims)[None]
        cov = (1 - _SHRINK) * cov + (_SHRINK * scale[:, None, None] + _EPS) * eye
        # Mahalanobis distance as a norm: d = ||W (f - mean)|| with W^T W = cov^-1 (Cholesky of the inverse).
        prec = np.linalg.inv(cov)
        prec = (prec + prec.transpose(0, 2, 1)) / 2
        whiten = np.linalg.cholesky(prec).transpose(0, 2, 1)
        return NormalModel(mean=mean.astype(np.float32), whiten=whiten.astype(np.float32))


@dataclass(frozen=True)
class NormalModel:
    mean: FloatArray
    """``(rows, dims)``"""
    whiten: FloatArray
    """``(rows, dims, dims)``: ``W`` with ``W^T W`` the inverse covariance of the row."""

    def distance(self, feat: FloatArray) -> FloatArray:
        """Mahalanobis distance of every cell, ``(rows, cols)``."""
        centred = feat - self.mean[:, None, :]
        white = np.matmul(centred, self.whiten.transpose(0, 2, 1))
        return np.asarray(np.sqrt(np.einsum("rcd,rcd->rc", white, white)), dtype=np.float32)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, whiten=self.whiten)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NormalModel:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                mean, whiten = np.asarray(z["mean"], np.float32), np.asarray(z["whiten"], np.float32)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"normal model arrays unreadable: {err}") from err
        if mean.ndim != 2 or whiten.shape != (*mean.shape, mean.shape[1]):
            raise ModelError(f"normal model arrays have inconsistent shapes {mean.shape} / {whiten.shape}")
        return cls(mean=mean, whiten=whiten)
