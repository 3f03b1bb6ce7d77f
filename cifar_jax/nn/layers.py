"""Convolution, max-pooling and the dense layer, written so that a group of runs trains fast.

Vmapped over runs, XLA's convolution becomes a grouped convolution whose weight gradient (a
`batch_group_count` convolution) is slow on GPU and CPU, and `reduce_window` max-pooling has a
`select_and_scatter` gradient. Here every stride-1 'same' convolution has one of these forms, all
computing the same function (tested against `lax.conv_general_dilated` in float64):

- `xla`: `lax.conv_general_dilated`, autodiff gradients (the reference);
- `vjp_taps`: the XLA convolution forward and its own VJP: the input gradient is the transposed
  convolution (a plain convolution, fast grouped like the forward), the weight gradient one
  batched matmul per kernel tap (shifted input ⊗ output gradient, summed over batch and space);
- `im2col`: the k·k shifted inputs concatenated into patches [n, h, w, k·k·cin], one matmul with
  the reshaped kernel; autodiff gradients (matmuls, and pads for the input gradient).
Measured (benchmarks/README.md), two more forms lost everywhere and were removed: the own VJP
with an im2col weight gradient, and a forward pass summing one matmul per tap.

`max_pool` is a reshape and max, its gradient routed to the first maximum of each window in
row-major order, exactly as `flax.linen.max_pool`'s (ties included). Training uses its own VJP
(`pool="vjp"`); forward-mode differentiation, which a custom VJP forbids, uses the same routing as
a JVP (`pool="jvp"`): the sharpness's forward-over-reverse Hessian-vector products (3.5× faster
than reverse over reverse for BaselineNet on the CPU).

`Dense` keeps its kernel [out, in], so that XLA:CPU's weight gradient needs no transpose.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cifar_jax.config.registry import lookup

_DIMS = ("NHWC", "HWIO", "NHWC")


def _check(x: jax.Array, w: jax.Array) -> int:
    """The 'same' padding of a stride-1 convolution with an odd square kernel."""
    k = w.shape[0]
    if w.ndim != 4 or w.shape[1] != k or k % 2 == 0 or x.shape[-1] != w.shape[2]:
        raise ValueError(f"need NHWC inputs and an odd square HWIO kernel; got {x.shape} and {w.shape}")
    return k // 2


def conv_xla(x: jax.Array, w: jax.Array) -> jax.Array:
    """Stride-1 'same' convolution of NHWC `x` with HWIO `w` (XLA's convolution)."""
    p = _check(x, w)
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(p, p), (p, p)], dimension_numbers=_DIMS)


def _shifted(x: jax.Array, k: int) -> list[jax.Array]:
    """The k·k views of the zero-padded `x` that kernel tap (i, j) multiplies, row-major."""
    p, (h, w) = k // 2, x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return [padded[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)]


@jax.custom_vjp
def conv_vjp_taps(x: jax.Array, w: jax.Array) -> jax.Array:
    """`conv_xla` with its own gradient: the transposed convolution for x, tap matmuls for w."""
    return conv_xla(x, w)


def _conv_vjp_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return conv_xla(x, w), (x, w)


def _conv_vjp_bwd(res: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    k = w.shape[0]
    dx = conv_xla(dy, jnp.flip(w, (0, 1)).swapaxes(2, 3))  # the transposed convolution
    taps = [jnp.einsum("nhwc,nhwd->cd", s, dy) for s in _shifted(x, k)]  # Σ over n, h, w per tap
    return dx, jnp.stack(taps).reshape(w.shape).astype(w.dtype)


conv_vjp_taps.defvjp(_conv_vjp_fwd, _conv_vjp_bwd)


def conv_im2col(x: jax.Array, w: jax.Array) -> jax.Array:
    """The convolution as one matmul of patches [n, h, w, k·k·cin] (tap-major) with the kernel."""
    _check(x, w)
    k = w.shape[0]
    return jnp.concatenate(_shifted(x, k), -1) @ w.reshape(-1, w.shape[-1])


CONVS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "xla": conv_xla, "vjp_taps": conv_vjp_taps, "im2col": conv_im2col}


CONV_IMPLS = ("auto", *CONVS)  # --conv_impl: "auto" picks per backend and precision

# The measured-fastest convolution per (backend, precision) (README.md, "Performance"): GPU
# (H200): im2col 1.95 ms per 25-run fp32 group step against 2.22 (vjp_taps) and 5.03 (xla);
# bf16: vjp_taps 1.54 ms against 2.87 (xla) (im2col in bf16 not yet measured). CPU (2 cores, one
# run at a time): xla and vjp_taps within noise (20-22 ms per step), im2col 46 ms; xla stays.
AUTO_CONV = {("gpu", "fp32"): "im2col", ("gpu", "bf16"): "vjp_taps"}


def auto_conv_impl(precision: str = "fp32", backend: str | None = None) -> str:
    """The measured-fastest convolution implementation (`CONVS`) for the backend and precision;
    XLA's own where nothing else was measured faster (CPU)."""
    return AUTO_CONV.get((backend or jax.default_backend(), precision), "xla")


class Conv(nn.Module):
    """A stride-1 'same' convolution layer with `nn.Conv`'s parameters (names, shapes, init)
    and a chosen implementation; `dtype` None computes in the promoted input/parameter dtype."""

    features: int
    kernel_size: int
    use_bias: bool
    kernel_init: Any
    bias_init: Any
    impl: str = "xla"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        dtype = self.dtype or jnp.promote_types(x.dtype, kernel.dtype)
        y = lookup(CONVS, self.impl, "conv_impl")(x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(dtype)
        return y


class Dense(nn.Module):
    """A dense layer with its kernel stored [out, in] (as PyTorch stores a Linear weight), drawn by
    `kernel_init` as [in, out]: the values of `nn.Dense`'s kernel, transposed. On XLA:CPU the
    weight gradient of an [in, out] kernel comes out [out, in] and is transposed inside the
    update, which cost the seeds/002 MLP group a third of its step (README, "Performance")."""

    features: int
    use_bias: bool
    kernel_init: Any
    bias_init: Any
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        draw = lambda key, shape, dtype: self.kernel_init(key, shape[::-1], dtype).T
        kernel = self.param("kernel", draw, (self.features, x.shape[-1]), jnp.float32)
        dtype = self.dtype or jnp.promote_types(x.dtype, kernel.dtype)
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (((x.ndim - 1,), (1,)), ((), ())))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(dtype)
        return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool(x: jax.Array, window: int) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // window, window, w // window, window, c).max((2, 4))


def _pool_fwd(x: jax.Array, window: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = _pool(x, window)
    return y, (x, y)


def _pool_bwd(window: int, res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = res
    n, h, w, c = x.shape
    xr = x.reshape(n, h // window, window, w // window, window, c)
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for i in range(window):
        cols = []
        for j in range(window):
            first = (xr[:, :, i, :, j, :] == y) & ~taken  # the first maximum in row-major order
            taken = taken | first
            cols.append(jnp.where(first, g, jnp.zeros_like(g)))
        rows.append(jnp.stack(cols, 3))
    return (jnp.stack(rows, 2).reshape(x.shape),)


_pool.defvjp(_pool_fwd, _pool_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _pool_jvp(x: jax.Array, window: int) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // window, window, w // window, window, c).max((2, 4))


@_pool_jvp.defjvp
def _pool_tangent(window: int, primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    """The tangent of the first maximum of each window in row-major order (linear in the tangent,
    so reverse mode transposes it into `_pool_bwd`'s routing)."""
    (x,), (t,) = primals, tangents
    n, h, w, c = x.shape
    xr, tr = x.reshape(n, h // window, window, w // window, window, c), t.reshape(n, h // window, window, w // window, window, c)
    y = xr.max((2, 4))
    taken, out = jnp.zeros(y.shape, bool), jnp.zeros_like(y)
    for i in range(window):
        for j in range(window):
            first = (xr[:, :, i, :, j, :] == y) & ~taken
            taken = taken | first
            out = out + jnp.where(first, tr[:, :, i, :, j, :], jnp.zeros_like(out))
    return y, out


POOLS = {"vjp": _pool, "jvp": _pool_jvp}  # how max_pool is differentiated (the same function and gradient)


def max_pool(x: jax.Array, window: int, pool: str = "vjp") -> jax.Array:
    """window×window max-pooling with stride `window` (VALID: a ragged edge is dropped), NHWC;
    equal to `nn.max_pool(x, (window, window), strides=(window, window))`, gradient included;
    `pool` picks its differentiation rule (`POOLS`)."""
    h, w = x.shape[1] // window * window, x.shape[2] // window * window
    return POOLS[pool](x[:, :h, :w, :], window)
