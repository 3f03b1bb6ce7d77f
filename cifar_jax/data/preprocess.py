"""Inside-the-step preprocessing: normalisation, augmentation and input noise, all from keys."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def normalize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """uint8 images → float32 (x/255 - mean) / std, with statistics from the training split; a
    [D, D] `std` is a ZCA matrix instead: (x/255 - mean), flattened per image, @ std."""
    centred = x.astype(jnp.float32) / 255.0 - mean
    if std.ndim != 2:
        return centred / std
    # full float32 (not TF32/bf16 passes on accelerators): the whitened inputs as computed on the host
    flat = jnp.dot(centred.reshape(x.shape[0], -1), std, precision=jax.lax.Precision.HIGHEST)
    return flat.reshape(x.shape)


def crop_flip(key: jax.Array, x: jax.Array, pad: int = 4) -> jax.Array:
    """Random crop after zero padding by `pad`, and horizontal flip with p = 0.5, per image."""
    n, h, w, _ = x.shape
    k_off, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_off, (n, 2), 0, 2 * pad + 1)
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
    x = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


# name → (key, normalised batch) → augmented batch
AUGMENTATIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "none": lambda key, x: x, "crop_flip": crop_flip}


def add_noise(key: jax.Array, x: jax.Array, gaussian_std: jax.Array, salt_pepper: jax.Array) -> jax.Array:
    """Gaussian noise N(0, σ²) and salt-and-pepper noise (a fraction p of inputs set to the
    batch min or max), on normalised inputs; σ = 0 and p = 0 return x exactly."""
    k_g, k_sp, k_sign = jax.random.split(key, 3)
    x = x + gaussian_std * jax.random.normal(k_g, x.shape)
    hit = jax.random.bernoulli(k_sp, salt_pepper, x.shape)
    salt = jax.random.bernoulli(k_sign, 0.5, x.shape)
    return jnp.where(hit, jnp.where(salt, x.max(), x.min()), x)
