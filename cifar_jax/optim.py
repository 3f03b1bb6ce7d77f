"""Optimisers through optax, rebuilt each step from per-run (possibly traced) hyperparameters.

The optimiser *kind* is static for a group; its numbers (learning rate from the schedule,
momentum, weight decay) are per-run arrays. Rebuilding the transformation inside the traced step
keeps them arrays while the optimiser state keeps one structure. The L2 penalty λ·ΣW² belongs to
the loss (`l2_penalty`), distinct from AdamW's decoupled weight decay.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")


def make(name: str, lr: jax.Array | float, hp: Mapping[str, jax.Array],
         clip_norm: float | None = None) -> optax.GradientTransformation:
    """The optax transformation `name` at learning rate `lr` with the run's hyperparameters."""
    if name == "sgd":
        tx = optax.sgd(lr)
    elif name in ("momentum", "nesterov"):
        tx = optax.sgd(lr, momentum=hp["momentum"], nesterov=name == "nesterov")
    elif name == "rmsprop":
        tx = optax.rmsprop(lr, decay=hp["rmsprop_decay"], eps=hp["rmsprop_eps"])
    elif name == "adam":
        tx = optax.adam(lr, b1=hp["adam_b1"], b2=hp["adam_b2"], eps=hp["adam_eps"])
    elif name == "adamw":
        tx = optax.adamw(lr, b1=hp["adam_b1"], b2=hp["adam_b2"], eps=hp["adam_eps"], weight_decay=hp["weight_decay"])
    else:
        raise ValueError(f"--optimizer={name!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def l2_penalty(params: Any) -> jax.Array:
    """Σ W² over weight matrices and conv kernels only (biases and norm parameters excluded)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(jnp.sum(p ** 2) for path, p in leaves if path[-1].key == "kernel")
