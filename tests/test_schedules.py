"""Schedules equal their closed forms; per-run array parameters equal constants."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.training import schedules

STEPS = np.arange(0, 5000, 7)


def test_inverse_time_per_epoch():
    spe = 703
    got = schedules.lr_at("inverse_time", STEPS, lr=0.1, decay_rate=0.25, decay_every=spe, staircase=1)
    np.testing.assert_allclose(got, 0.1 / (1 + 0.25 * (STEPS // spe)), rtol=1e-6)


def test_inverse_time_per_step():
    got = schedules.lr_at("inverse_time", STEPS, lr=0.1, decay_rate=1e-3)
    np.testing.assert_allclose(got, 0.1 / (1 + 1e-3 * STEPS), rtol=1e-6)


def test_exponential_and_step():
    np.testing.assert_allclose(schedules.lr_at("exponential", STEPS, lr=0.1, decay_rate=0.95, decay_every=450),
                               0.1 * 0.95 ** (STEPS / 450), rtol=1e-5)
    np.testing.assert_allclose(
        schedules.lr_at("step", STEPS, lr=0.1, decay_rate=0.5, decay_every=1000, staircase=1),
        0.1 * 0.5 ** (STEPS // 1000), rtol=1e-6)


def test_linear_and_cosine():
    total = 3000
    frac = np.minimum(STEPS / total, 1.0)
    np.testing.assert_allclose(schedules.lr_at("linear", STEPS, lr=0.1, lr_min=0.001, total_steps=total),
                               0.1 + (0.001 - 0.1) * frac, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(schedules.lr_at("cosine", STEPS, lr=0.1, lr_min=0.0, total_steps=total),
                               0.05 * (1 + np.cos(math.pi * frac)), rtol=1e-5, atol=1e-7)


def test_cyclic_triangular():
    n_s, lo, hi = 2250, 1e-5, 0.1
    got = schedules.lr_at("cyclic", STEPS, lr=hi, lr_min=lo, half_cycle=n_s)
    pos = STEPS % (2 * n_s)
    want = np.where(pos <= n_s, lo + pos / n_s * (hi - lo), hi - (pos - n_s) / n_s * (hi - lo))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert got[0] == pytest.approx(lo) and schedules.lr_at("cyclic", [n_s], lr=hi, lr_min=lo, half_cycle=n_s)[0] == pytest.approx(hi)


def test_per_run_arrays_equal_constants():
    """A vmapped batch of runs with different schedule kinds and parameters gives, per run,
    exactly what that run's schedule with constant parameters gives."""
    runs = [("constant", dict(lr=0.05)), ("inverse_time", dict(lr=0.1, decay_rate=0.25, decay_every=703, staircase=1)),
            ("exponential", dict(lr=0.2, decay_rate=0.9, decay_every=100)),
            ("cyclic", dict(lr=0.1, lr_min=1e-5, half_cycle=450)), ("cosine", dict(lr=0.3, total_steps=2000))]
    p = {k: jnp.asarray([r[1].get(k, d) for r in runs], jnp.float32) for k, d in schedules.PARAM_DEFAULTS.items()}
    p["schedule"] = jnp.asarray([schedules.SCHEDULE_IDS[r[0]] for r in runs], jnp.int32)
    steps = jnp.asarray(STEPS, jnp.float32)
    batched = jax.jit(jax.vmap(lambda q: jax.vmap(lambda s: schedules.learning_rate(q, s))(steps)))(p)
    for i, (name, params) in enumerate(runs):
        np.testing.assert_allclose(np.asarray(batched[i]), schedules.lr_at(name, STEPS, **params), rtol=1e-6)
