"""Optimisers through optax, rebuilt each step from per-run (possibly traced) hyperparameters.

The optimiser *kind* is static for a group; its numbers (learning rate from the schedule,
momentum, weight decay) are per-run arrays. Rebuilding the transformation inside the traced step
keeps them arrays while the optimiser state keeps one structure. The L2 penalty λ·ΣW² belongs to
the loss (`l2_penalty`, weights only), distinct from weight decay (every parameter, PyTorch's way).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from cifar_jax.config.registry import lookup
from cifar_jax.nn import models

Hparams = Mapping[str, jax.Array]

# name → (learning rate, the run's hyperparameters) → optax transformation
OPTIMIZERS: dict[str, Callable[[Any, Hparams], optax.GradientTransformation]] = {
    "sgd": lambda lr, hp: optax.sgd(lr),
    "momentum": lambda lr, hp: optax.sgd(lr, momentum=hp["momentum"]),
    "nesterov": lambda lr, hp: optax.sgd(lr, momentum=hp["momentum"], nesterov=True),
    "rmsprop": lambda lr, hp: optax.rmsprop(lr, decay=hp["rmsprop_decay"], eps=hp["rmsprop_eps"]),
    "adam": lambda lr, hp: optax.adam(lr, b1=hp["adam_b1"], b2=hp["adam_b2"], eps=hp["adam_eps"]),
    "adamw": lambda lr, hp: optax.adamw(lr, b1=hp["adam_b1"], b2=hp["adam_b2"], eps=hp["adam_eps"],
                                        weight_decay=hp["weight_decay"]),
}


def make(name: str, lr: jax.Array | float, hp: Hparams, clip_norm: float | None = None,
         clip_value: float = 0.0) -> optax.GradientTransformation:
    """The optax transformation `name` at learning rate `lr` with the run's hyperparameters:
    gradient clipping (each element to ±clip_value, then the global norm), then (all but adamw)
    PyTorch's coupled weight decay g + wd·θ, then the optimiser (wd = 0 adds exactly nothing)."""
    tx = lookup(OPTIMIZERS, name, "optimizer")(lr, hp)
    if name != "adamw":
        tx = optax.chain(optax.add_decayed_weights(hp["weight_decay"]), tx)
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx
    return optax.chain(optax.clip(clip_value), tx) if clip_value else tx


def l2_penalty(params: Any, norm_too: bool = False) -> jax.Array:
    """Σ W² over weight matrices and conv kernels only (biases excluded, and the normalisations'
    γ and β unless `norm_too`)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(jnp.sum(p ** 2) for path, p in leaves
               if path[-1].key == "kernel" or (norm_too and models.is_norm_param(path)))
