"""Learning-rate schedules as pure jnp functions of (per-run hyperparameters, step).

Every parameter is read from a dict of arrays, so within a group each run can have its own
schedule kind and parameters; `learning_rate` is vmapped over the run axis with the rest.

Parameters (all per run): lr (α0, or η_max for cyclic), lr_min (end value of linear/cosine,
η_min of cyclic), decay_rate (k of inverse-time, γ of exponential/step), decay_every (steps per
unit of t: 1 for t in steps, steps-per-epoch for t in epochs), staircase (1: t is floored, i.e.
the rate changes once per unit), total_steps (length of linear/cosine), half_cycle (n_s).
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax.config.registry import lookup

Params = Mapping[str, jax.Array]


def _t(p: Params, step: jax.Array) -> jax.Array:
    t = step / p["decay_every"]
    return jnp.where(p["staircase"] > 0, jnp.floor(t), t)


def constant(p: Params, step: jax.Array) -> jax.Array:
    """α0."""
    return p["lr"] * jnp.ones_like(step, jnp.float32)


def inverse_time(p: Params, step: jax.Array) -> jax.Array:
    """α0 / (1 + k·t)  (seeds/000 §1.2)."""
    return p["lr"] / (1.0 + p["decay_rate"] * _t(p, step))


def exponential(p: Params, step: jax.Array) -> jax.Array:
    """α0 · γ^t; with staircase and decay_every = n epochs this is the step schedule."""
    return p["lr"] * p["decay_rate"] ** _t(p, step)


def _fraction(p: Params, step: jax.Array) -> jax.Array:
    return jnp.clip(step / p["total_steps"], 0.0, 1.0)


def linear(p: Params, step: jax.Array) -> jax.Array:
    """α0 → lr_min linearly over total_steps, then lr_min."""
    return p["lr"] + (p["lr_min"] - p["lr"]) * _fraction(p, step)


def cosine(p: Params, step: jax.Array) -> jax.Array:
    """Half-cosine from α0 to lr_min over total_steps, then lr_min."""
    return p["lr_min"] + (p["lr"] - p["lr_min"]) * 0.5 * (1.0 + jnp.cos(jnp.pi * _fraction(p, step)))


def cyclic(p: Params, step: jax.Array) -> jax.Array:
    """Triangular cycles: η_min → η_max over n_s steps, back over n_s (seeds/002)."""
    pos = jnp.mod(step, 2 * p["half_cycle"]) / p["half_cycle"]
    return p["lr_min"] + (p["lr"] - p["lr_min"]) * jnp.where(pos <= 1.0, pos, 2.0 - pos)


SCHEDULES: dict[str, Callable[[Params, jax.Array], jax.Array]] = {
    "constant": constant, "inverse_time": inverse_time, "exponential": exponential,
    "step": exponential, "linear": linear, "cosine": cosine, "cyclic": cyclic,
}
SCHEDULE_IDS = {name: i for i, name in enumerate(SCHEDULES)}
PARAM_DEFAULTS = dict(lr=0.01, lr_min=0.0, decay_rate=0.0, decay_every=1.0, staircase=0.0,
                      total_steps=1.0, half_cycle=1.0)


def learning_rate(p: Params, step: jax.Array) -> jax.Array:
    """The LR of one run at `step`; p["schedule"] is an int id into SCHEDULES; over the first
    p["warmup_steps"] steps (none where p has no such entry) it ramps up linearly from
    1/warmup_steps of the schedule's."""
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.minimum(1.0, (step + 1) / jnp.maximum(p.get("warmup_steps", 0), 1))
    return warmup * jax.lax.switch(p["schedule"], list(SCHEDULES.values()), p, step)


def lr_at(name: str, steps: np.ndarray, **params: float) -> np.ndarray:
    """The schedule `name` evaluated at `steps` (host-side, for figures and tests)."""
    p = {k: jnp.float32(params.get(k, v)) for k, v in PARAM_DEFAULTS.items()}
    schedule = lookup(SCHEDULES, name, "schedule")
    return np.asarray(jax.vmap(lambda s: schedule(p, s))(jnp.asarray(steps, jnp.float32)))
