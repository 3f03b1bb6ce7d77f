"""Gradient checks: autodiff gradients against centred finite differences, per parameter tensor.

Run under `jax.enable_x64(True)` with float64 parameters and inputs: the centred
difference (f(θ + h·e_i) − f(θ − h·e_i)) / 2h then has error O(h²) + O(ε/h), about 1e-10 at
h = 1e-6, so a correct gradient gives relative errors far below 1e-6.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

_CHUNK = 256  # perturbed parameter vectors evaluated per vmapped call


def numerical_gradient(loss: Callable[[Any], jax.Array], params: Any, h: float = 1e-6) -> Any:
    """∂loss/∂θ of every parameter by centred differences (a pytree like `params`), `_CHUNK`
    coordinates per call of one compiled program (the last chunk padded, its extra rows dropped)."""
    flat, unravel = ravel_pytree(params)
    n = flat.shape[0]
    size = min(_CHUNK, n)

    @jax.jit
    def chunk(start: jax.Array) -> jax.Array:
        idx = jnp.minimum(start + jnp.arange(size), n - 1)
        step = jnp.zeros((size, n), flat.dtype).at[jnp.arange(size), idx].set(h)
        f = jax.vmap(lambda v: loss(unravel(v)))
        return (f(flat + step) - f(flat - step)) / (2 * h)

    out = np.concatenate([np.asarray(chunk(start)) for start in range(0, n, size)])[:n]
    return jax.jit(unravel)(out)


def relative_error(a: np.ndarray, b: np.ndarray, eps: float = 1e-30) -> float:
    """‖a − b‖ / max(eps, ‖a‖ + ‖b‖): 0 for equal tensors, 1 for opposite ones."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(eps, np.linalg.norm(a) + np.linalg.norm(b)))


def relative_errors(loss: Callable[[Any], jax.Array], params: Any, h: float = 1e-6) -> dict[str, float]:
    """{"layer/name": relative error of the autodiff gradient against centred differences}."""
    auto = jax.jit(jax.grad(loss))(params)
    numeric = numerical_gradient(loss, params, h)
    names = ["/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    return {name: relative_error(a, n) for name, a, n in
            zip(names, jax.tree_util.tree_leaves(auto), jax.tree_util.tree_leaves(numeric))}
