"""The engine: grouped runs equal runs trained alone, every layout agrees, divergence is
isolated, and evaluation counts correctly."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.data import datasets, splits
from cifar_jax.nn import models
from cifar_jax.results import run_record
from cifar_jax.training import engine, step
from conftest import init_group  # noqa: E402


class Collect:
    """Callbacks that keep everything the engine reports, keyed by run index."""

    def __init__(self):
        self.epochs, self.untrained, self.final, self.logs = {}, {}, {}, []

    def on_compiled(self, seconds):
        pass

    def on_log(self, message):
        self.logs.append(message)

    def on_start(self, runs, untrained):
        for j, i in enumerate(runs):
            self.untrained[int(i)] = _flat(untrained, j)

    def on_epoch(self, runs, epoch, metrics, seconds):
        for j, i in enumerate(runs):
            rec = run_record.new("run", "run", 0, {}, {}, j)
            run_record.add_epoch(rec, epoch, metrics, j, seconds)
            self.epochs.setdefault(int(i), []).append({**rec["epochs"][0], "alive": bool(metrics.alive[j])})

    def on_end(self, runs, final):
        for j, i in enumerate(runs):
            grads = {} if final.grad_first is None else {"grad_first": final.grad_first[j], "grad_last": final.grad_last[j]}
            self.final[int(i)] = {**_flat({"test": final.test, "train": final.train}, j),
                                  "alive": bool(final.alive[j]), **grads}


def _flat(by_split, j):
    """{"test_loss": ..., "val_acc": ...} of run j from {split: run_record.Metrics}."""
    return {f"{split}_{k}": v for split, m in by_split.items() if m is not None for k, v in m.of_run(j).items()}


@pytest.fixture(scope="module")
def small_data():
    ds = datasets.synthetic(n_train=400, n_test=120, image_shape=(16, 16, 3))
    tr, va = splits.make_split(400, 320, 80, seed=0)
    mean, std = splits.norm_stats(ds.x_train, tr, "per_channel")
    return step.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test, tr, va, mean, std)


def _train(spec, runs, data_, epochs, layout, **kw):
    cb = Collect()
    state = engine.train_group(spec, step.stack_hparams(runs), data_, epochs, cb, layout=layout, **kw)
    return state, cb


def _assert_close(a, b, atol, rtol=0.0):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


RUNS = [dict(seed=0, lr=0.05, dropout=0.3), dict(seed=1, lr=0.02, l2=1e-3), dict(seed=2, lr=0.1, dropout=0.5)]


def test_group_of_three_equals_three_runs_alone(noise_data):
    """20 steps (batch 16, 320 images → 20 steps in one epoch): grouped params within 1e-5 of
    each run trained alone; BN statistics and dropout streams stay per run."""
    model = models.ModelConfig("mlp", hidden=(32, 16), norm="batch", init="he", use_dropout=True)
    spec = step.GroupSpec(model, batch_size=16, optimizer="momentum")
    grouped, _ = _train(spec, RUNS, noise_data, 1, "vmap_scan")
    assert int(grouped.step[0]) == 20
    for i, run in enumerate(RUNS):
        alone, _ = _train(spec, [run], noise_data, 1, "vmap_scan")
        _assert_close(jax.tree_util.tree_map(lambda x: x[i], grouped.params),
                      jax.tree_util.tree_map(lambda x: x[0], alone.params), 1e-5)
        _assert_close(jax.tree_util.tree_map(lambda x: x[i], grouped.batch_stats),
                      jax.tree_util.tree_map(lambda x: x[0], alone.batch_stats), 1e-6, rtol=1e-5)


def test_batchnorm_conv_group_equals_runs_alone_in_float64(noise_data):
    """The vmapped step of a batch-normed, dropout BaselineNet equals each run's own step over
    20 steps. In float64, because in float32 BN conv nets amplify the 1e-7 rounding difference
    between batched and single convolution kernels chaotically over steps (measured: 1e-7 at
    step 1, up to 1e-2 by step 20 at LR 0.1 with momentum), which would hide real mixing."""
    with jax.enable_x64(True):
        data64 = noise_data._replace(mean=noise_data.mean.astype(jnp.float64), std=noise_data.std.astype(jnp.float64))
        spec = step.GroupSpec(models.ModelConfig("baseline", norm="batch", use_dropout=True), batch_size=16,
                              optimizer="momentum")
        hp = jax.device_put(step.stack_hparams(RUNS))
        state = init_group(spec, hp)
        f64 = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, t)
        state = state._replace(params=f64(state.params), batch_stats=f64(state.batch_stats),
                               opt_state=f64(state.opt_state))
        idx = jax.vmap(lambda h: step.epoch_indices(h, 0, data64.train_idx, 16))(hp)
        group_step = jax.jit(jax.vmap(functools.partial(step.train_step, spec), in_axes=(0, None, 0)))
        one_step = jax.jit(functools.partial(step.train_step, spec))
        alone = [jax.tree_util.tree_map(lambda x: x[i], state) for i in range(3)]
        for s in range(20):
            state, _ = group_step(state, data64, idx[:, s])
            alone = [one_step(alone[i], data64, idx[i, s])[0] for i in range(3)]
        for i in range(3):
            assert state.params["fc1"]["kernel"].dtype == jnp.float64
            _assert_close(jax.tree_util.tree_map(lambda x: x[i], state.params), alone[i].params, 1e-10)
            _assert_close(jax.tree_util.tree_map(lambda x: x[i], state.batch_stats), alone[i].batch_stats, 1e-10)


@pytest.mark.parametrize("model", [models.ModelConfig("mlp", hidden=(24,), init="he", use_dropout=True),
                                   models.ModelConfig("baseline", (16,), channels=(4, 8), kernels=(3, 3), use_dropout=True)])
def test_every_layout_gives_the_same_metrics(noise_data, model):
    spec = step.GroupSpec(model, batch_size=32, eval_train="epoch", eval_test=True, loss_every=3, grad_stats=True)
    results = {layout: _train(spec, RUNS[:2], noise_data, 2, layout)
               for layout in step.LAYOUTS if layout != "auto"}
    ref_state, ref = results["seq_loop"]
    for layout, (state, cb) in results.items():
        _assert_close(state.params, ref_state.params, 1e-5)
        for i in range(2):
            for e in range(2):
                for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "train_eval_acc", "loss_trace",
                          "grad_norm", "test_acc", "loss_noise"):
                    assert cb.epochs[i][e][k] == pytest.approx(ref.epochs[i][e][k], abs=1e-5), (layout, k)
                assert len(cb.epochs[i][e]["loss_trace"]) == 3  # 10 steps, a point every 3
            for k in ("test_acc", "test_loss", "train_acc"):
                assert cb.final[i][k] == pytest.approx(ref.final[i][k], abs=1e-5), (layout, k)


def test_divergent_run_leaves_group_mates_bit_identical(small_data):
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(32,), init="he"), batch_size=16)
    sane = [dict(seed=0, lr=0.05), dict(seed=1, lr=0.05), dict(seed=2, lr=0.02)]
    wild = [dict(seed=0, lr=1e6)] + sane[1:]
    s_ok, cb_ok = _train(spec, sane, small_data, 2, "vmap_scan")
    s_bad, cb_bad = _train(spec, wild, small_data, 2, "vmap_scan")
    assert not bool(s_bad.alive[0]) and bool(s_bad.alive[1:].all()) and bool(s_ok.alive.all())
    for i in (1, 2):
        for x, y in zip(jax.tree_util.tree_leaves(s_ok.params), jax.tree_util.tree_leaves(s_bad.params)):
            np.testing.assert_array_equal(np.asarray(x[i]), np.asarray(y[i]))
        assert cb_ok.final[i]["test_loss"] == cb_bad.final[i]["test_loss"]
    # The diverged run stopped updating: its parameters are finite and its metrics are NaN.
    assert all(np.isfinite(np.asarray(x[0])).all() for x in jax.tree_util.tree_leaves(s_bad.params))
    assert np.isnan(cb_bad.epochs[0][-1]["train_loss"]) and np.isnan(cb_bad.final[0]["test_acc"])
    assert not cb_bad.final[0]["alive"]


def test_runs_starting_from_the_same_variables_share_one_untrained_evaluation(small_data, monkeypatch):
    """One run at a time, a seed's second LR starts from the first's variables: its untrained
    numbers are the first's, evaluated once; a run of a new seed (or normal init at another σ) is
    evaluated itself, and the records equal those of evaluating every run."""
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(16,), init="normal"), batch_size=32)
    runs = [dict(seed=s, lr=lr, init_scale=sigma) for s, sigma in ((0, 0.1), (1, 0.1), (0, 0.01))
            for lr in (0.05, 0.01)]
    evaluated = []
    real = engine._eval_splits
    monkeypatch.setattr(engine, "_eval_splits", lambda prog, state, data, splits, n: (
        evaluated.append(splits), real(prog, state, data, splits, n))[1])
    _, shared = _train(spec, runs, small_data, 1, "seq_scan")
    assert evaluated.count(("val", "test")) == 3  # of 6 chunks: one per (seed, σ)
    assert shared.untrained[1] == shared.untrained[0] and shared.untrained[3] == shared.untrained[2]
    assert shared.untrained[2] != shared.untrained[0] and shared.untrained[4] != shared.untrained[0]
    monkeypatch.setattr(engine, "_untrained", lambda chunk, state, splits, seen: real(
        chunk.prog, state, chunk.data, splits, chunk.n))
    _, alone = _train(spec, runs, small_data, 1, "seq_scan")
    assert shared.untrained == alone.untrained and shared.final == alone.final


@pytest.mark.parametrize("loop", ["loop", "scan"])
def test_runs_in_threads_compute_what_they_compute_one_after_another(noise_data, loop):
    """par layouts train the runs one per host thread, as many at a time as CPU cores: every
    record and final state equals the seq layout's, bit for bit."""
    spec = step.GroupSpec(models.ModelConfig("baseline", (16,), channels=(4, 8), kernels=(3, 3), use_dropout=True),
                          batch_size=32, eval_train="epoch", loss_every=3)
    runs = RUNS + [dict(seed=3, lr=0.05)]
    seq_state, seq = _train(spec, runs, noise_data, 2, f"seq_{loop}")
    par_state, par = _train(spec, runs, noise_data, 2, f"par_{loop}")
    for a, b in zip(jax.tree_util.tree_leaves(seq_state), jax.tree_util.tree_leaves(par_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert par.untrained == seq.untrained and par.final == seq.final
    assert {i: [{k: v for k, v in e.items() if "seconds" not in k} for e in es] for i, es in par.epochs.items()} == \
        {i: [{k: v for k, v in e.items() if "seconds" not in k} for e in es] for i, es in seq.epochs.items()}


def test_a_run_failing_in_its_thread_stops_the_group_with_its_error(noise_data):
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(8,), init="he"), batch_size=32)

    class FailsRunTwo(Collect):
        def on_epoch(self, runs, epoch, metrics, seconds):
            if 2 in runs:
                raise RuntimeError("planted failure of run 2")
            super().on_epoch(runs, epoch, metrics, seconds)

    cb = FailsRunTwo()
    with pytest.raises(RuntimeError, match="planted failure of run 2"):
        engine.train_group(spec, step.stack_hparams([dict(seed=s) for s in range(4)]), noise_data, 3, cb,
                           layout="par_loop")
    assert 2 not in cb.epochs and 2 not in cb.final


def test_evaluate_counts_every_example_once(small_data):
    """Padding to the eval batch is masked: accuracy equals a direct full-batch computation."""
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(8,), init="he"), eval_batch_size=7)
    state = step.init_run(spec, jax.tree_util.tree_map(lambda a: a[0], step.stack_hparams([{}])), (16, 16, 3))
    idx = small_data.val_idx
    got = step.evaluate(spec, state, small_data.x, small_data.y, idx, small_data.mean, small_data.std)
    x = (small_data.x[idx].astype(jnp.float32) / 255 - small_data.mean) / small_data.std
    logits = spec.net.apply({"params": state.params}, x, train=False)
    acc = float((logits.argmax(-1) == small_data.y[idx]).mean())
    assert float(got[1]) == pytest.approx(acc, abs=1e-6)
    assert 0.0 <= float(got[2]) <= 1.0 and float(got[2]) >= float(got[1])


def test_training_learns_the_synthetic_set(small_data):
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(64,), init="he"), batch_size=32)
    _, cb = _train(spec, [dict(seed=0, lr=0.05)], small_data, 5, "vmap_scan")
    assert cb.final[0]["test_acc"] > 0.6 > cb.untrained[0]["test_acc"]


def test_epoch_order_is_a_permutation_from_the_seed(small_data):
    hp = jax.tree_util.tree_map(lambda a: a[0], step.stack_hparams([dict(seed=3)]))
    a = np.asarray(step.epoch_indices(hp, 0, small_data.train_idx, 32))
    b = np.asarray(step.epoch_indices(hp, 1, small_data.train_idx, 32))
    assert a.shape == (10, 32) and len(np.unique(a)) == 320
    assert set(a.ravel()) == set(np.asarray(small_data.train_idx).tolist())
    assert not np.array_equal(a, b)


def test_group_too_big_for_memory_is_split_into_chunks(noise_data):
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(64,), init="he"), batch_size=32)
    runs = [dict(seed=i, lr=0.02 * (i + 1)) for i in range(6)]
    whole, ref = _train(spec, runs, noise_data, 1, "vmap_scan")
    assert not ref.logs
    limit = 2 * sum(x.nbytes for x in jax.tree_util.tree_leaves(noise_data)) + 200_000
    parts, cb = _train(spec, runs, noise_data, 1, "vmap_scan", memory_limit=limit)
    assert len(cb.logs) == 1 and "runs at a time" in cb.logs[0]
    _assert_close(parts.params, whole.params, 1e-6)
    assert [cb.final[i]["test_acc"] for i in range(6)] == pytest.approx([ref.final[i]["test_acc"] for i in range(6)], abs=1e-6)


def test_bf16_compute_keeps_float32_master_weights(noise_data):
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(64,), norm="batch", init="he"), batch_size=32,
                          precision="bf16")
    state, cb = _train(spec, [dict(seed=0, lr=0.05)], noise_data, 3, "vmap_scan")
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves((state.params, state.batch_stats)))
    losses = [e["train_loss"] for e in cb.epochs[0]]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_frozen_layers_stay_bit_identical_while_dense_layers_train(noise_data):
    model = models.ModelConfig("baseline", norm="batch")
    pre = step.GroupSpec(model, batch_size=32)
    pretrained, _ = _train(pre, RUNS[:2], noise_data, 1, "seq_loop")
    convs = ("conv1", "conv2", "conv3")
    frozen = convs + tuple(f"bn_{k}" for k in convs)
    initial = {"params": {k: pretrained.params[k] for k in frozen},
               "batch_stats": {f"bn_{k}": pretrained.batch_stats[f"bn_{k}"] for k in convs}}
    spec = step.GroupSpec(model, batch_size=32, frozen=frozen)
    retrain = [dict(seed=10, lr=0.05), dict(seed=11, lr=0.05)]
    fresh, _ = _train(step.GroupSpec(model, batch_size=32), retrain, noise_data, 0, "seq_loop")
    after, _ = _train(spec, retrain, noise_data, 2, "seq_loop", initial=initial)
    for name in frozen:
        for a, b in zip(jax.tree_util.tree_leaves(after.params[name]), jax.tree_util.tree_leaves(pretrained.params[name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name in (f"bn_{k}" for k in convs):  # frozen BN layers use (and keep) their running statistics
        for a, b in zip(jax.tree_util.tree_leaves(after.batch_stats[name]), jax.tree_util.tree_leaves(pretrained.batch_stats[name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The dense layers were re-initialised from the retraining seed, then trained.
    assert not np.allclose(after.params["fc1"]["kernel"], fresh.params["fc1"]["kernel"])
    assert not np.allclose(after.batch_stats["bn_fc1"]["mean"], fresh.batch_stats["bn_fc1"]["mean"])


def test_in_step_measurements_equal_hand_computed_ones(noise_data):
    """mean |g|, std |g| and ‖g‖ per tensor over the first and last 3 steps, ‖g‖ averaged per
    epoch and the loss trace (every 4 steps) of a tiny MLP with LR 0 (so every step's gradient is
    at the initial parameters)."""
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(6,), init="he"), batch_size=32, grad_stats=True,
                          grad_window=3, loss_every=4)
    run = dict(seed=4, lr=0.0, total_steps=10)
    state, cb = _train(spec, [run], noise_data, 1, "vmap_scan")
    hp = jax.tree_util.tree_map(lambda a: a[0], step.stack_hparams([run]))
    params = jax.tree_util.tree_map(lambda x: x[0], state.params)
    idx = np.asarray(step.epoch_indices(hp, 0, noise_data.train_idx, 32))

    def loss(p, i):
        x = (noise_data.x[i].astype(jnp.float32) / 255 - noise_data.mean) / noise_data.std
        logits = spec.net.apply({"params": p}, x, train=True)
        return optax_ce(logits, noise_data.y[i])

    grads = [jax.tree_util.tree_leaves(jax.grad(loss)(params, i)) for i in idx]
    names = step.param_names(params)
    assert names == ["fc1/bias", "fc1/kernel", "fc2/bias", "fc2/kernel"]
    for t in range(len(names)):
        first = np.concatenate([np.abs(np.asarray(g[t])).ravel() for g in grads[:3]])
        last = np.concatenate([np.abs(np.asarray(g[t])).ravel() for g in grads[-3:]])
        np.testing.assert_allclose(cb.final[0]["grad_first"][t], [first.mean(), first.std(),
                                   np.mean([np.linalg.norm(np.asarray(g[t])) for g in grads[:3]])], rtol=2e-4)
        np.testing.assert_allclose(cb.final[0]["grad_last"][t][:2], [last.mean(), last.std()], rtol=2e-4)
        np.testing.assert_allclose(cb.epochs[0][0]["grad_norm"][t],
                                   np.mean([np.linalg.norm(np.asarray(g[t])) for g in grads]), rtol=2e-4)
    step_losses = [float(loss(params, i)) for i in idx]  # 10 steps: points over steps 0-3 and 4-7
    np.testing.assert_allclose(cb.epochs[0][0]["loss_trace"], [np.mean(step_losses[:4]), np.mean(step_losses[4:8])],
                               rtol=1e-5)
    np.testing.assert_allclose(cb.epochs[0][0]["loss_noise"], np.sqrt(np.mean(np.diff(step_losses) ** 2) / 2), rtol=1e-4)


def optax_ce(logits, y):
    import optax
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_each_run_draws_its_own_dropout_masks_fresh_every_step(noise_data):
    """Two runs with identical parameters and batches but different seeds take different steps
    under dropout (their own mask streams); the same run at another step draws new masks; at
    rate 0 the seed makes no difference."""
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(32,), init="he", use_dropout=True), batch_size=16)
    train_step = jax.jit(jax.vmap(functools.partial(step.train_step, spec), in_axes=(0, None, 0)))
    idx = jnp.stack([noise_data.train_idx[:16]] * 2)

    def after_one_step(rate, seeds=(0, 1), start=0):
        hp = jax.device_put(step.stack_hparams([dict(seed=s, lr=0.1, dropout=rate) for s in seeds]))
        state = init_group(spec, hp)
        same = jax.tree_util.tree_map(lambda x: jnp.stack([x[0], x[0]]), state.params)  # run 1 gets run 0's params
        state = state._replace(params=same, step=jnp.full(2, start, jnp.int32))
        return np.asarray(train_step(state, noise_data, idx)[0].params["fc1"]["kernel"])

    drop = after_one_step(0.5)
    assert not np.allclose(drop[0], drop[1])
    plain = after_one_step(0.0)
    np.testing.assert_array_equal(plain[0], plain[1])
    same_seed = after_one_step(0.5, seeds=(0, 0))
    np.testing.assert_array_equal(same_seed[0], same_seed[1])
    assert not np.allclose(after_one_step(0.5, seeds=(0, 0), start=1)[0], same_seed[0])


def test_label_smoothing_trains_on_smoothed_targets(noise_data):
    """One SGD step with α = 0.2 equals a hand-written step on optax's smoothed-label loss; α = 0
    is the plain cross-entropy step exactly."""
    import optax
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(8,), init="he"), batch_size=16)
    idx = noise_data.train_idx[:16]
    hp0 = jax.tree_util.tree_map(lambda a: a[0], step.stack_hparams([dict(seed=3, lr=0.5)]))
    state = step.init_run(spec, hp0, (8, 8, 3))
    x = (noise_data.x[idx].astype(jnp.float32) / 255 - noise_data.mean) / noise_data.std
    y = noise_data.y[idx]

    def manual(alpha):
        def loss(p):
            logits = spec.net.apply({"params": p}, x, train=True)
            targets = optax.smooth_labels(jax.nn.one_hot(y, 10), alpha)
            return optax.softmax_cross_entropy(logits, targets).mean()
        return jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, state.params, jax.grad(loss)(state.params))

    for alpha in (0.2, 0.0):
        hp = {**hp0, "label_smoothing": jnp.float32(alpha)}
        new, _ = step.train_step(spec, state._replace(hp=hp), noise_data, idx)
        _assert_close(new.params, manual(alpha), 1e-6)
    plain, _ = step.train_step(spec, state, noise_data, idx)  # the default (0) is the plain loss
    _assert_close(plain.params, new.params, 0.0)


@pytest.mark.parametrize("layout", ["seq_scan", "seq_loop"])
def test_progress_inside_an_epoch_reaches_the_callbacks(small_data, layout, monkeypatch):
    """With the interval at 0 every report point becomes a progress line: steps done rise within
    the epoch, up to the epoch's steps (a scanned epoch: from the second epoch on, after one long
    enough to want them); the numbers trained are the same as without progress."""
    monkeypatch.setattr(engine, "PROGRESS_SECONDS", 0.0)
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(8,), init="he"), batch_size=32)
    lines = []

    class WithProgress(Collect):
        def on_progress(self, runs, epoch, done, seconds, *, steps):
            lines.append((epoch, done, steps))

    state = engine.train_group(spec, step.stack_hparams([dict(seed=0, lr=0.05)]), small_data, 2, WithProgress(),
                               layout=layout)
    steps = 320 // 32
    assert {e for e, _, _ in lines} == ({2} if layout.endswith("scan") else {1, 2}) and all(s == steps for _, _, s in lines)
    assert [d for e, d, _ in lines if e == 2] == sorted(d for e, d, _ in lines if e == 2) and max(d for _, d, _ in lines) == steps
    plain, _ = _train(spec, [dict(seed=0, lr=0.05)], small_data, 2, layout)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if layout.endswith("scan"):  # the first epoch's program calls no host: the persistent cache keeps it
        chunk, hp = engine._lay_out(spec, step.stack_hparams([dict(seed=0, lr=0.05)]), np.arange(1), small_data,
                                    layout, jax.local_devices())
        state = chunk.prog["init"](hp)
        text = {k: chunk.prog[k].lower(state, chunk.data, jnp.int32(0)).as_text() for k in ("epoch", "heard_epoch")}
        assert "callback" not in text["epoch"] and "callback" in text["heard_epoch"]
