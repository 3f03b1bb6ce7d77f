"""Train/validation splits of the official training set as index arrays, and normalisation
statistics computed from the training split only: per-element (mean, std), or (mean, ZCA matrix)."""
from __future__ import annotations

import functools
import re
from typing import Callable

import numpy as np

from cifar_jax.config.registry import lookup

_SPLIT_FORM = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*(:swap)?\s*")
_CHUNK = 2048  # images per chunk when summing statistics: ~50 MB of float64 for CIFAR
# ε of --normalization=zca, added to the covariance eigenvalues λ in x/255 units. CIFAR-10's mean
# eigenvalue (its mean per-pixel variance) is ≈ 0.06, so 1e-2 is ≈ 0.16 of it, close to the known
# choice ε = 0.1 × mean eigenvalue: directions with λ ≪ ε (fine detail and pixel noise, most of
# the spectrum) keep a variance λ/(λ + ε) ≪ 1 instead of being blown up to unit variance.
ZCA_EPSILON = 1e-2


def make_split(n: int, train_size: int, val_size: int, *, seed: int = 0,
               swap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) int32 index arrays into an n-image training set, each sorted ascending.

    Membership comes from np.random.default_rng(seed).permutation(n): train is its first
    train_size entries, val the next val_size (0 gives an empty val). Sorting only fixes the
    order within a split (visiting order is the per-run shuffle's job) and keeps gathers local.
    swap=True returns (val, train): the seeds/000 transfer study trains on the other half.
    """
    if train_size < 1 or val_size < 0:
        raise ValueError(f"split {train_size}/{val_size}: the train size must be >= 1 and the "
                         f"validation size >= 0")
    if swap and val_size < 1:
        raise ValueError(f"split {train_size}/{val_size}:swap would train on the empty validation "
                         f"set; give a validation size >= 1")
    if train_size + val_size > n:
        raise ValueError(f"split {train_size}/{val_size} needs {train_size + val_size} images but "
                         f"the training set has {n}")
    order = np.random.default_rng(seed).permutation(n)
    train = np.sort(order[:train_size]).astype(np.int32)
    val = np.sort(order[train_size:train_size + val_size]).astype(np.int32)
    return (val, train) if swap else (train, val)


def parse_split(text: str) -> tuple[int, int, bool]:
    """Parses --split text: "45000/5000" -> (45000, 5000, False); "25000/25000:swap" -> swap True."""
    match = _SPLIT_FORM.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not of the form TRAIN/VAL or TRAIN/VAL:swap (e.g. 45000/5000 or "
                         "25000/25000:swap)")
    return int(match[1]), int(match[2]), match[3] is not None


def norm_stats(x: np.ndarray, train_idx: np.ndarray, mode: str,
               zca_epsilon: float = ZCA_EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """float32 (mean, std) of x[train_idx]/255 such that the model input is (x/255 - mean) / std,
    or for zca (mean, W) such that it is (x/255 - mean) flattened @ W (preprocess.normalize).

    x is uint8 NHWC; only the train rows are read, in chunks. per_channel: shape (C,), over N,H,W;
    per_dim: (H, W, C), over N (each input dimension standardised, as in seeds/002); mean_image:
    mean (H, W, C) and std ones; mean_image_raw: the same mean with std 1/255, i.e. inputs in pixel
    units as CS231n (seeds/004) feeds them; none: zeros and ones of shape (C,). A std of 0 becomes 1.
    zca: mean (H, W, C) and the [D, D] ZCA whitening matrix (D = H·W·C in NHWC order) with
    `zca_epsilon` added to the covariance eigenvalues (seeds/001 bonus; see `zca`).
    """
    statistics = lookup(NORMALIZATIONS, mode, "normalization")
    if mode == "zca":
        statistics = functools.partial(statistics, epsilon=zca_epsilon)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"norm_stats: needs uint8 NHWC images, got {x.dtype} {list(x.shape)}")
    if len(train_idx) == 0:
        raise ValueError("norm_stats: the training split is empty")
    mean, std = statistics(x, train_idx)
    return mean.astype(np.float32), std.astype(np.float32)


def _mean_image(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, _ = _moments(x, idx, axes=(0,))
    return mean, np.ones_like(mean)


def _moments(x: np.ndarray, idx: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and std (0 replaced by 1) of x[idx]/255 over axes, summed chunk by chunk.

    Sums of raw uint8 values in float64 are exact integers (well below 2**53), so the only
    rounding is in the final division, and a constant input dimension gets std exactly 0 -> 1.
    """
    kept = [size for axis, size in enumerate(x.shape) if axis not in axes]
    total, total_sq = np.zeros(kept), np.zeros(kept)
    for start in range(0, len(idx), _CHUNK):
        chunk = x[idx[start:start + _CHUNK]].astype(np.float64)
        total += chunk.sum(axis=axes)
        total_sq += np.square(chunk).sum(axis=axes)
    count = len(idx) * int(np.prod([x.shape[a] for a in axes if a > 0]))
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean / 255.0, np.where(std == 0.0, 255.0, std) / 255.0


def zca(x: np.ndarray, idx: np.ndarray, epsilon: float = ZCA_EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean (H, W, C) of x[idx]/255 and W = U diag(1/sqrt(λ + ε)) Uᵀ from the eigenvalues
    λ and vectors U of its [D, D] covariance: (x/255 - mean) @ W has covariance U λ/(λ + ε) Uᵀ
    over idx, the identity at ε = 0, with the image's spatial layout kept (W is symmetric).

    The sums of products of raw uint8 values are exact integers in float64 (each below 2**53), so
    the statistics are the same bit for bit however the rows are chunked.
    """
    dims = int(np.prod(x.shape[1:]))
    total, products = np.zeros(dims), np.zeros((dims, dims))
    for start in range(0, len(idx), _CHUNK):
        chunk = x[idx[start:start + _CHUNK]].reshape(-1, dims).astype(np.float64)
        total += chunk.sum(axis=0)
        products += chunk.T @ chunk
    mean = total / len(idx)
    eigenvalues, vectors = np.linalg.eigh(products / len(idx) - np.outer(mean, mean))
    scale = 255.0 / np.sqrt(np.maximum(eigenvalues, 0.0) + epsilon * 255.0 ** 2)  # in x/255 units
    return (mean / 255.0).reshape(x.shape[1:]), (vectors * scale) @ vectors.T


# name → (uint8 images, training indices) → (mean, std) of x/255, or (mean, ZCA matrix) for zca
NORMALIZATIONS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "per_channel": lambda x, idx: _moments(x, idx, axes=(0, 1, 2)),
    "per_dim": lambda x, idx: _moments(x, idx, axes=(0,)),
    "mean_image": _mean_image,
    # CS231n's preprocessing: the mean image subtracted, pixel values left in 0-255 units
    "mean_image_raw": lambda x, idx: (_mean_image(x, idx)[0], np.full(x.shape[1:], 1 / 255.0)),
    "none": lambda x, idx: (np.zeros(x.shape[-1]), np.ones(x.shape[-1])),
    "zca": zca,
}
