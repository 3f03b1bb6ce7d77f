"""Loss surfaces and linear paths between weights, evaluated with the points as a run axis.

Pure functions over variable pytrees (one run, no run axis): filter-normalised random directions
(Li et al. 2018, arXiv 1712.09913), the variables at every point of a 2-D plane or a 1-D linear
path (stacked along a leading "point" axis, as a group stacks runs), one jitted, vmapped
evaluation of all points (`step.evaluate`, chunked so memory stays bounded) and the error barrier
of a path (Frankle et al. 2020, arXiv 1912.05671).

Filters: a parameter tensor of two or more axes (conv kernel HWIO, dense kernel [out, in]) has
one filter per output: per index of a conv kernel's last axis (an output channel) and of a dense
kernel's first (an output unit, as Li et al.'s code takes the rows of PyTorch's [out, in]
weights); its direction is a Gaussian
whose every filter is scaled to the norm of that filter of the weights. Vectors (biases,
batch- and layer-norm scale and bias) get a zero direction, as Li et al. do with
`ignore='biasbn'`.

Batch norm, evaluated in eval mode (running statistics): on a plane every point keeps the
centre run's final running statistics, as Li et al.; on a path between two sets of variables the
running statistics are interpolated linearly together with the parameters (a convex combination
of variances stays positive), so each end point is exactly that end's own model.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax.training import step

Tree = Any  # a pytree of arrays: params or batch_stats of one run


def has_filters(leaf: Any) -> bool:
    """Whether a parameter tensor gets a direction: kernels (2+ axes) do, vectors do not."""
    return np.ndim(leaf) >= 2


def filter_axis(leaf: Any) -> int:
    """The axis of a kernel's filters (its outputs): 0 of a dense kernel [out, in], the last of a
    conv kernel HWIO."""
    return 0 if np.ndim(leaf) == 2 else np.ndim(leaf) - 1


def filter_norms(leaf: jax.Array) -> jax.Array:
    """The norm of every filter of a kernel (over all axes but `filter_axis`): [filters]."""
    axis = filter_axis(leaf)
    return jnp.sqrt(jnp.sum(jnp.square(leaf), axis=tuple(a for a in range(leaf.ndim) if a != axis)))


def random_direction(key: jax.Array, params: Tree) -> Tree:
    """A filter-normalised Gaussian direction in parameter space: every filter of a kernel has the
    norm of the same filter of `params`; biases and normalisation parameters are zero."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))

    def one(k: jax.Array, w: jax.Array) -> jax.Array:
        if not has_filters(w):
            return jnp.zeros_like(w)
        d = jax.random.normal(k, w.shape, w.dtype)
        along = [-1 if a == filter_axis(w) else 1 for a in range(w.ndim)]
        return d * (filter_norms(w) / filter_norms(d)).reshape(along)

    return jax.tree_util.tree_unflatten(treedef, [one(k, w) for k, w in zip(keys, leaves)])


def plane(params: Tree, d1: Tree, d2: Tree, alphas: np.ndarray, betas: np.ndarray) -> Tree:
    """θ + a·d1 + b·d2 for every a in `alphas` (outer) and b in `betas` (inner): every leaf gets a
    leading point axis of len(alphas)·len(betas), point i·len(betas) + j at (alphas[i], betas[j])."""
    a, b = (jnp.asarray(v, jnp.float32) for v in np.meshgrid(alphas, betas, indexing="ij"))
    a, b = a.ravel(), b.ravel()
    shift = lambda c, x: c.reshape(-1, *[1] * x.ndim) * x
    return jax.tree_util.tree_map(lambda w, x, y: w + shift(a, x) + shift(b, y), params, d1, d2)


def line(start: Tree, end: Tree, ts: np.ndarray) -> Tree:
    """(1 − t)·start + t·end for every t of `ts`, as a leading point axis (computed as
    start + t·(end − start), and `end` itself at t = 1: the end points are exactly the two
    models, and a path between equal variables is constant); give (params, batch_stats) to
    interpolate the running statistics with the parameters."""
    t = jnp.asarray(ts, jnp.float32)

    def mix(x: jax.Array, y: jax.Array) -> jax.Array:
        c = t.reshape(-1, *[1] * x.ndim)
        return jnp.where(c == 1, y, x + c * (y - x))

    return jax.tree_util.tree_map(mix, start, end)


def repeat(tree: Tree, n: int) -> Tree:
    """The same variables at `n` points (e.g. the centre's running statistics on a plane)."""
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), tree)


@functools.lru_cache(maxsize=None)
def _evaluator(spec: step.GroupSpec, chunk: int):
    """The jitted evaluation of [chunks, chunk] points: `lax.map` over the chunks of a `vmap` over
    the points of each (one compiled program whatever the number of points)."""
    def one(params, batch_stats, x, y, idx, mean, std):
        state = step.TrainState(params, batch_stats, None, None, None, None, None)  # evaluate reads only these two
        return step.evaluate(spec, state, x, y, idx, mean, std)

    points = jax.vmap(one, in_axes=(0, 0, None, None, None, None, None))

    def run(params, batch_stats, x, y, idx, mean, std):
        return jax.lax.map(lambda pb: points(*pb, x, y, idx, mean, std), (params, batch_stats))

    return jax.jit(run)


def evaluate_points(spec: step.GroupSpec, params: Tree, batch_stats: Tree, x: jax.Array, y: jax.Array,
                    idx: jax.Array, mean: jax.Array, std: jax.Array, chunk: int = 16) -> np.ndarray:
    """Eval-mode [points, 3] (loss, top-1, top-5) of every point (the leading axis of `params` and
    `batch_stats`) over x[idx]: one vmapped evaluation of `chunk` points at a time inside one
    program (the last chunk padded by repeating its last point)."""
    n = jax.tree_util.tree_leaves(params)[0].shape[0]
    chunk = max(1, min(chunk, n))
    width = -(-n // chunk) * chunk

    def blocks(tree: Tree) -> Tree:
        pad = lambda v: jnp.concatenate([v, jnp.repeat(v[-1:], width - n, 0)]) if width > n else v
        return jax.tree_util.tree_map(lambda v: pad(v).reshape(width // chunk, chunk, *v.shape[1:]), tree)

    out = _evaluator(spec, chunk)(blocks(params), blocks(batch_stats), x, y, idx, mean, std)
    return np.asarray(out).reshape(width, 3)[:n]


def auto_chunk(platform: str) -> int:
    """Points per vmapped pass by backend: 1 on CPU, where vmapping a conv net's points makes XLA's
    grouped convolutions (0.36x one point at a time for BaselineNet, benchmarks/loss_surface.py),
    so the points go one after another inside the one program; 32 on an accelerator."""
    return 1 if platform == "cpu" else 32


def barrier(errors: np.ndarray) -> float:
    """The barrier of a path (Frankle et al.): max over t of E(t) minus the mean of the end
    points' E; 0 when the path never rises above its ends' mean (the max includes the ends)."""
    errors = np.asarray(errors, np.float64)
    return float(errors.max() - 0.5 * (errors[0] + errors[-1]))
