"""The training-dynamics instruments: sharpness against the dense Hessian, the same value for a run
in a group as alone and in every layout, the noise scale against a problem whose gradient
covariance is known, and instruments that are off leave the program and the records as they were."""
import dataclasses
import functools

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest
from tests.test_engine import RUNS, Collect

from cifar_jax.data import splits
from cifar_jax.nn import models
from cifar_jax.study import config
from cifar_jax.training import dynamics, engine, step
from conftest import init_group  # noqa: E402


def _tiny_data(classes: int = 3) -> step.Data:
    """4×4 grey noise images: nets small enough for a dense Hessian."""
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (96, 4, 4, 1), np.uint8), rng.integers(0, classes, 96)
    tr, va = splits.make_split(96, 64, 32, seed=0)
    mean, std = splits.norm_stats(x, tr, "per_channel")
    return step.put_data(x, y, x[:32], y[:32], tr, va, mean, std)


TINY_NETS = [models.ModelConfig("mlp", hidden=(6,), init="he", num_classes=3),
             models.ModelConfig("baseline", hidden=(4,), channels=(2,), kernels=(3,), norm="batch", num_classes=3)]


@pytest.mark.parametrize("model,iters", list(zip(TINY_NETS, (40, 20))), ids=["mlp", "conv_bn"])
def test_sharpness_equals_the_extreme_eigenvalues_of_the_dense_hessian(model, iters):
    """λ_max and λ_min by Lanczos (train.sharpness_of, as the engine calls it) against numpy's
    eigvalsh of jax's dense Hessian of the same objective, in float64, after a few trained steps
    (so the net is off its initialisation) with an L2 term in the objective. The conv net's loop is
    unrolled (compile time linear in the iterations), and 20 reach its 77-dimensional ends to 1e-12."""
    with jax.enable_x64(True):
        data = _tiny_data()
        data = data._replace(mean=data.mean.astype(jnp.float64), std=data.std.astype(jnp.float64))
        spec = step.GroupSpec(model, batch_size=16, sharpness_every=1, sharpness_iters=iters, sharpness_examples=48)
        hp = jax.tree_util.tree_map(lambda a: a[0], step.stack_hparams([dict(seed=0, lr=0.3, l2=1e-3)]))
        state = step.init_run(spec, hp, (4, 4, 1))
        f64 = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, t)
        state = state._replace(params=f64(state.params), batch_stats=f64(state.batch_stats),
                               opt_state=f64(state.opt_state), probes=f64(state.probes))
        idx = step.epoch_indices(hp, 0, data.train_idx, 16)
        train_step = jax.jit(functools.partial(step.train_step, spec))
        for s in range(4):
            state, _ = train_step(state, data, idx[s])
        values, _ = jax.jit(functools.partial(step.sharpness_of, spec))(state, data)

        sub = step.sharpness_subset(spec, data.train_idx)
        x, y = step.preprocess.normalize(data.x[sub], data.mean, data.std), data.y[sub]
        flat, unravel = ravel_pytree(state.params)
        loss = lambda f: step.objective(spec, unravel(f), state.batch_stats, hp, x, y, jax.random.PRNGKey(0), 0.0)[0]
        dense = np.linalg.eigvalsh(np.asarray(jax.jit(jax.jacrev(jax.jacrev(loss)))(flat)))
        assert flat.dtype == jnp.float64 and flat.size < 150
        np.testing.assert_allclose(float(values[0]), dense[-1], rtol=1e-3)
        np.testing.assert_allclose(float(values[1]), dense[0], rtol=1e-3)
        assert dense[0] < 0 < dense[-1]  # an indefinite Hessian: both ends are really tested


def test_lanczos_converges_from_its_own_warm_starts_at_the_default_iterations():
    """The default of a few iterations per evaluation, each started from the last Ritz vector, reaches
    the dense λ_max within 1e-3 at fixed weights (what happens between evaluations when training is slow)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        a = rng.normal(size=(120, 120))
        h = (a + a.T) / 2 + np.diag(np.linspace(0, 30, 120))
        dense = np.linalg.eigvalsh(h)
        v = jnp.asarray(rng.normal(size=120))
        matvec = lambda u: jnp.asarray(h) @ u
        iters = step.GroupSpec.__dataclass_fields__["sharpness_iters"].default
        for _ in range(8):
            top, bottom, v = dynamics.lanczos(matvec, v, iters)
        np.testing.assert_allclose(float(top), dense[-1], rtol=1e-3)


def test_lanczos_is_exact_past_the_dimension():
    """More iterations than dimensions: the Krylov space closes and continues from a fresh direction,
    so the extreme Ritz values are the operator's own (no spurious zero from a closed space)."""
    with jax.enable_x64(True):
        h = np.diag([5.0, 3.0, 2.0, 1.5])
        top, bottom, vec = dynamics.lanczos(lambda u: jnp.asarray(h) @ u, jnp.ones(4), 7)
        assert float(top) == pytest.approx(5.0, rel=1e-9) and float(bottom) == pytest.approx(1.5, rel=1e-9)
        assert abs(float(vec[0])) == pytest.approx(1.0, rel=1e-9)


def test_a_vmapped_group_gives_each_run_its_own_sharpness(noise_data):
    spec = step.GroupSpec(models.ModelConfig("baseline", (16,), "batch", channels=(4, 8), kernels=(3, 3),
                                             use_dropout=True), batch_size=16,
                          sharpness_every=1, sharpness_iters=6, sharpness_examples=64)
    hp = jax.device_put(step.stack_hparams(RUNS))
    state = init_group(spec, hp)
    group, _ = jax.jit(jax.vmap(functools.partial(step.sharpness_of, spec), in_axes=(0, None)))(state, noise_data)
    one = jax.jit(functools.partial(step.sharpness_of, spec))
    for i in range(len(RUNS)):
        alone, _ = one(jax.tree_util.tree_map(lambda a: a[i], state), noise_data)
        np.testing.assert_allclose(np.asarray(group[i]), np.asarray(alone), rtol=1e-5)


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_every_layout_records_the_same_instruments(noise_data, unit):
    """Sharpness (per epoch, or before every 4th step) and the noise scale (from the halves of each
    batch, or from windows of two steps), recorded through the engine in every layout, agree with
    one run at a time (seq_loop)."""
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(24,), init="he", use_dropout=True), batch_size=32,
                          sharpness_every=1 if unit == "epoch" else 4, sharpness_unit=unit, sharpness_iters=5,
                          sharpness_examples=64, noise_scale=True, noise_window=0 if unit == "epoch" else 2)
    out = {}
    for layout in ("seq_loop", "seq_scan", "vmap_scan", "map_loop"):
        cb = Collect()
        engine.train_group(spec, step.stack_hparams(RUNS[:2]), noise_data, 2, cb, layout=layout)
        out[layout] = cb
    keys = ["sharpness", "sharpness_min", *(["sharpness_trace", "sharpness_min_trace"] if unit == "step" else []),
            "b_simple", "b_simple_g2", "b_simple_trace"]
    for layout, cb in out.items():
        for i in range(2):
            for e in range(2):
                entry, ref = cb.epochs[i][e], out["seq_loop"].epochs[i][e]
                for k in keys:
                    np.testing.assert_allclose(entry[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=f"{layout} {k}")
                assert np.isfinite(entry["sharpness"]) and entry["sharpness"] > 0
                if unit == "step":
                    assert len(entry["sharpness_trace"]) == 3  # 10 steps: before steps 0, 4 and 8
                    assert entry["sharpness"] == entry["sharpness_trace"][-1]


@pytest.mark.parametrize("window", [0, 4])
def test_the_noise_scale_of_linear_regression_is_the_analytic_one(window):
    """Linear regression y = x·w* + ε, x ~ N(0, I_d), ε ~ N(0, σ²), loss ½(x·θ − y)², at a fixed θ:
    with δ = θ − w*, G = δ and Σ = δδᵀ + (|δ|² + σ²)I, so |G|² = |δ|² and tr Σ = |δ|² + d(|δ|² + σ²).
    The step's own measurement over many batches (dynamics.noise_halves: each half of the batch
    against the whole; or dynamics.noise_update: the mean gradient of `window` steps as the big
    batch) and dynamics.noise_scale recover both within 10%."""
    d, sigma, batch, steps = 20, 0.5, 32, 4000
    rng = np.random.default_rng(0)
    w_star = rng.normal(size=d)
    delta = rng.normal(size=d) * 0.3
    theta = {"w": jnp.asarray(w_star + delta, jnp.float32)}

    def draw(key):
        kx, ke = jax.random.split(key)
        x = jax.random.normal(kx, (batch, d))
        return x, x @ jnp.asarray(w_star, jnp.float32) + sigma * jax.random.normal(ke, (batch,))

    grad = lambda x, y: jax.grad(lambda p: 0.5 * jnp.mean((x @ p["w"] - y) ** 2))(theta)

    def step(window_sum, i):
        x, y = draw(jax.random.PRNGKey(i))
        if window:
            return dynamics.noise_update(window_sum, grad(x, y), i, window)
        halves = jax.vmap(grad)(x.reshape(2, batch // 2, d), y.reshape(2, batch // 2))
        return window_sum, dynamics.noise_halves(halves, grad(x, y))

    _, parts = jax.lax.scan(step, jax.tree_util.tree_map(jnp.zeros_like, theta), jnp.arange(steps))
    sums = np.asarray(parts).sum(0)
    g2, trace, b_simple = dynamics.noise_scale(sums[0] / steps, sums[1] / sums[2], *dynamics.noise_batches(batch, window))
    true_g2 = float(delta @ delta)
    true_trace = true_g2 + d * (true_g2 + sigma ** 2)
    assert sums[2] == (steps // window if window else steps)
    assert g2 == pytest.approx(true_g2, rel=0.10)
    assert trace == pytest.approx(true_trace, rel=0.10)
    assert b_simple == pytest.approx(true_trace / true_g2, rel=0.20)


def test_instruments_that_are_off_change_neither_the_program_nor_the_records(noise_data):
    """The default spec's step is the same program as before the instruments existed: no probes in
    the state, three columns per step, and a run's config has no instrument keys."""
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(8,), init="he"), batch_size=32)
    hp = jax.tree_util.tree_map(lambda a: a[0], step.stack_hparams([dict(seed=0)]))
    state = step.init_run(spec, hp, (8, 8, 3))
    assert state.probes == {}
    _, sums = step.train_step(spec, state, noise_data, jnp.arange(32))
    assert sums.shape == (3,)
    on = dataclasses.replace(spec, sharpness_every=2, noise_scale=True)

    def program(s):
        st = step.init_run(s, hp, (8, 8, 3))
        return jax.make_jaxpr(functools.partial(step.train_step, s))(st, noise_data, jnp.arange(32)).jaxpr
    off, noise = program(spec), program(on)
    sharp = program(dataclasses.replace(spec, sharpness_every=1, sharpness_unit="step"))
    assert len(off.eqns) < len(noise.eqns)  # the noise scale's ops are absent when it is off
    assert len(sharp.eqns) == len(off.eqns)  # sharpness is measured between steps, never inside one
    cfg = config.parse("--seeds=1", "--dataset=synthetic")
    run = config.grid(cfg, 640, 10)[0]
    assert not {"sharpness_every", "noise_scale", "init_seed", "order_seed"} & set(run.config)
    cfg_on = config.parse("--seeds=1", "--dataset=synthetic", "--sharpness_every=2", "--noise_scale")
    run_on = config.grid(cfg_on, 640, 10)[0]
    assert run_on.config["sharpness_every"] == 2 and run_on.config["noise_window"] == 0
    one = config.grid(config.parse("--seeds=1", "--dataset=synthetic", "--noise_scale", "--batch_size=1,2"), 640, 10)
    assert [r.spec.noise_scale for r in one] == [False, True]  # a batch of one has no halves
    assert run_on.spec == dataclasses.replace(on, model=run_on.spec.model, batch_size=64, eval_batch_size=500,
                                              conv_impl="auto")


def test_order_and_init_seeds_default_to_the_run_seed(noise_data):
    """--order_seed and --init_seed unset give the numbers of before; set, they change only their part."""
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(8,), init="he", use_dropout=True), batch_size=32)
    hp = step.stack_hparams([dict(seed=3), dict(seed=3, order_seed=3, init_seed=3), dict(seed=3, order_seed=4),
                             dict(seed=3, init_seed=4)])
    state = init_group(spec, jax.device_put(hp))
    idx = jax.vmap(lambda h: step.epoch_indices(h, 0, noise_data.train_idx, 32))(state.hp)
    leaf = lambda i: np.asarray(state.params["fc1"]["kernel"][i])
    np.testing.assert_array_equal(leaf(0), leaf(1))
    np.testing.assert_array_equal(leaf(0), leaf(2))
    assert not np.array_equal(leaf(0), leaf(3))
    np.testing.assert_array_equal(idx[0], idx[1])
    np.testing.assert_array_equal(idx[0], idx[3])
    assert not np.array_equal(idx[0], idx[2])
