"""Instruments of training dynamics, for one run (the engine vmaps them over a group's runs):
sharpness, the extreme eigenvalues of the loss Hessian, by Lanczos on Hessian-vector products;
and the gradient noise scale B_simple from gradient norms at two batch sizes.

Sharpness (`lanczos`, `sharpness`): k Lanczos iterations with full reorthogonalisation, each one
Hessian-vector product (`hvp`), give a k × k tridiagonal
matrix whose extreme eigenvalues converge to λ_max and λ_min first (so λ_min comes at no extra
cost); started from the previous evaluation's top Ritz vector, a few iterations keep λ_max
converged as training moves it. Which loss and which examples is the caller's (`train`).

Noise scale (McCandlish et al. 2018, arXiv 1812.06162, appendix A.1): with E|G_B|² = |G|² +
tr(Σ)/B for a batch of B examples, gradient norms at a small and a big batch size give unbiased
estimates of |G|² and tr(Σ); `noise_scale` forms them from their means (the smoothing before the
ratio) and B_simple = tr(Σ)/|G|². The two sizes come from the step itself at its own weights
(`noise_halves`: each half of the batch against the whole), or from a window of consecutive steps
(`noise_update`), whose weights move within the window.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def hvp(loss: Callable[[Any], jax.Array], params: Any) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """(v ↦ H v on flat vectors, the flat parameters): forward over reverse (`jax.jvp` of
    `jax.grad`), about two gradients' memory; `loss` must be forward-differentiable (no custom
    VJP inside: `step.GroupSpec.forward_net`)."""
    flat, unravel = ravel_pytree(params)
    grad = jax.grad(loss)

    def product(v: jax.Array) -> jax.Array:
        return ravel_pytree(jax.jvp(grad, (params,), (unravel(v.astype(flat.dtype)),))[1])[0]
    return product, flat


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, iters: int, unroll: bool = False
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(λ_max, λ_min, top Ritz vector) of a symmetric operator after `iters` Lanczos steps from
    `v0`. Every new vector is orthogonalised against all earlier ones (twice), so rounding does
    not bring back converged eigenvectors; where the Krylov space closes (an exact invariant
    subspace: the next vector's norm vanishes) it continues from a fresh direction orthogonal to
    it, so T's eigenvalues stay eigenvalues of the operator; once the whole space is spanned, the
    iterations left add the start vector's Rayleigh quotient, a value inside the spectrum, which
    leaves both ends as they are. `unroll` trades compile time (linear in `iters`) for speed
    where XLA:CPU runs the loop body many times slower inside a loop: convolutions (jax #12868)."""
    n, dtype = v0.shape[0], v0.dtype
    tiny = jnp.finfo(dtype).eps ** 0.5

    def orthogonal(V: jax.Array, w: jax.Array) -> jax.Array:
        w = w - V.T @ (V @ w)
        return w - V.T @ (V @ w)

    def body(i, carry):
        V, alpha, beta, v, scale = carry
        V = V.at[i].set(v)
        w = matvec(v)
        a = jnp.vdot(v, w)
        w = orthogonal(V, w)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(a) + b)
        spent = jnp.vdot(v, v) < 0.5  # the whole space was spanned: v is zero
        random = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), i), (n,), dtype)
        fresh = orthogonal(V, random)
        fresh = jnp.where(jnp.linalg.norm(fresh) > tiny * jnp.linalg.norm(random), fresh, 0.0)
        closed = b <= tiny * scale
        v = jnp.where(closed, fresh / jnp.maximum(jnp.linalg.norm(fresh), tiny), w / jnp.where(closed, 1.0, b))
        a = jnp.where(spent, alpha[0], a)
        return V, alpha.at[i].set(a), beta.at[i].set(jnp.where(closed, 0.0, b)), v, scale

    start = (jnp.zeros((iters, n), dtype), jnp.zeros(iters, dtype), jnp.zeros(iters, dtype),
             v0 / jnp.linalg.norm(v0), jnp.zeros((), dtype))
    V, alpha, beta, _, _ = jax.lax.fori_loop(0, iters, body, start, unroll=unroll)
    off = beta[:-1]
    values, vectors = jnp.linalg.eigh(jnp.diag(alpha) + jnp.diag(off, 1) + jnp.diag(off, -1))
    return values[-1], values[0], V.T @ vectors[:, -1]


def sharpness(loss: Callable[[Any], jax.Array], params: Any, v0: jax.Array, iters: int, unroll: bool = False
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(λ_max, λ_min, top Ritz vector) of the Hessian of `loss` at `params`, by `iters` Lanczos
    steps from the flat vector `v0` (e.g. the previous evaluation's Ritz vector)."""
    matvec, _ = hvp(loss, params)
    return lanczos(matvec, v0, iters, unroll)


# ----------------------------------------------------------------------------- gradient noise scale

NOISE_COLUMNS = ("small_sq", "big_sq", "windows")  # what a step adds to the epoch's sums


def squared_norm(tree: Any) -> jax.Array:
    """|g|² of a pytree of arrays."""
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree))


def noise_halves(half_grads: Any, grads: Any) -> jax.Array:
    """The fixed-weight measurement: [mean of the two half-batch gradients' |g|² (batch B/2), the
    step's |g|² (batch B), 1]; `half_grads` stacks the halves' gradients on a leading axis."""
    halves = jax.vmap(squared_norm)(half_grads)
    return jnp.stack([halves.mean(), squared_norm(grads), jnp.float32(1.0)])


def noise_batches(batch_size: int, window: int) -> tuple[int, int]:
    """(small, big) batch sizes of the two measurements: (B // 2, B) for the halves of the step's
    batch (window 0), (B, window·B) for a window of steps."""
    return (batch_size // 2, batch_size) if window == 0 else (batch_size, window * batch_size)


def noise_update(window_sum: Any, grads: Any, step: jax.Array, window: int) -> tuple[Any, jax.Array]:
    """One step of the two-batch-size measurement: the step's |g|² (batch B), and every `window`
    steps the squared norm of the window's mean gradient (batch window·B), after which the sum
    restarts. Returns the new window sum and [|g_B|², |G_window|² or 0, 1 at a window's end else 0]."""
    window_sum = jax.tree_util.tree_map(jnp.add, window_sum, grads)
    ends = (step + 1) % window == 0
    big = squared_norm(jax.tree_util.tree_map(lambda s: s / window, window_sum))
    window_sum = jax.tree_util.tree_map(lambda s: jnp.where(ends, jnp.zeros_like(s), s), window_sum)
    return window_sum, jnp.stack([squared_norm(grads), jnp.where(ends, big, 0.0), ends.astype(jnp.float32)])


def noise_scale(small_sq: Any, big_sq: Any, b_small: float, b_big: float) -> tuple[Any, Any, Any]:
    """(|G|², tr Σ, B_simple) from the mean squared gradient norms at batch sizes b_small < b_big:
    |G|² = (b_big·|G_big|² − b_small·|G_small|²)/(b_big − b_small), tr Σ = (|G_small|² − |G_big|²)
    /(1/b_small − 1/b_big); both unbiased, their ratio B_simple = tr Σ / |G|² is not."""
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace, trace / g2
