"""Loss surfaces (cifar_jax.training.surfaces, experiments.loss_surface): filter-normalised directions, the
grid's centre is the run itself, path end points are the two models, chunked vmapped evaluation
equals one point at a time, and the experiment end to end with its one-line refusals."""
import json
import os
from pathlib import Path
import subprocess
import sys

from conftest import Finished, run_experiment  # noqa: E402
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.data import datasets, splits
from cifar_jax.nn import models
from cifar_jax.training import step, surfaces

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ["--dataset=synthetic", "--split=512/256", "--epochs=1", "--seeds=2", "--model=mlp", "--hidden=16",
         "--norm=batch", "--surface_points=5", "--surface_examples=64"]


def _random_variables(spec, shape, seed=0):
    """(params, batch_stats) of the model's structure with random values (running variances > 0)."""
    shapes = jax.eval_shape(lambda: spec.net.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False))
    rng = np.random.default_rng(seed)
    v = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes)
    stats = jax.tree_util.tree_map(jnp.abs, v.get("batch_stats", {}))
    return v["params"], stats


def test_every_filter_has_its_weight_filters_norm_and_vectors_get_zero():
    spec = step.GroupSpec(models.ModelConfig("baseline", norm="batch"))
    params, _ = _random_variables(spec, (32, 32, 3))
    d = surfaces.random_direction(jax.random.PRNGKey(3), params)
    kernels = 0
    for (path, w), dl in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(d)):
        name = "/".join(k.key for k in path)
        if w.ndim >= 2:  # conv HWIO: an output channel (last axis); dense [out, in]: an output unit (a row)
            kernels += 1
            rows = lambda a: np.asarray(a).reshape(-1, a.shape[-1]).T if a.ndim == 4 else np.asarray(a)
            np.testing.assert_allclose(np.linalg.norm(rows(dl), axis=1), np.linalg.norm(rows(w), axis=1), rtol=1e-6,
                                       err_msg=name)
            np.testing.assert_allclose(surfaces.filter_norms(w), np.linalg.norm(rows(w), axis=1), rtol=1e-6)
            assert np.std(np.asarray(dl)) > 0
        else:  # biases, BN scale and bias
            assert not np.asarray(dl).any(), name
    assert kernels == 5
    other = surfaces.random_direction(jax.random.PRNGKey(4), params)
    assert not np.allclose(jax.tree_util.tree_leaves(d)[-1], jax.tree_util.tree_leaves(other)[-1])


def test_plane_and_line_points():
    params = {"fc": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    d1 = jax.tree_util.tree_map(jnp.ones_like, params)
    d2 = jax.tree_util.tree_map(lambda x: 2 * jnp.ones_like(x), params)
    pts = surfaces.plane(params, d1, d2, np.array([-1.0, 0.0, 1.0]), np.array([0.0, 0.5]))
    assert pts["fc"]["kernel"].shape == (6, 2, 3)
    np.testing.assert_array_equal(pts["fc"]["kernel"][2], params["fc"]["kernel"])  # (0, 0)
    np.testing.assert_allclose(pts["fc"]["bias"][5], 1 + 1 + 1.0)  # (1, 0.5): 1 + 1·1 + 0.5·2
    other = jax.tree_util.tree_map(lambda x: x * 3.7 - 0.1, params)
    ts = np.linspace(0, 1, 7)
    path = surfaces.line(params, other, ts)
    for a, b, p in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(other), jax.tree_util.tree_leaves(path)):
        np.testing.assert_array_equal(p[0], a)
        np.testing.assert_array_equal(p[-1], b)
        np.testing.assert_allclose(p[3], (a + b) / 2, rtol=1e-6)
    same = surfaces.line(params, params, ts)
    for a, p in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(same)):
        np.testing.assert_array_equal(p, np.broadcast_to(a, p.shape))
    assert surfaces.barrier(np.array([0.2, 0.5, 0.3])) == pytest.approx(0.25)
    assert surfaces.barrier(np.array([0.3, 0.1, 0.3])) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def bn_case():
    """A BaselineNet with batch norm on 8x8 synthetic images, random variables, a train subset."""
    ds = datasets.synthetic(n_train=200, n_test=60, image_shape=(8, 8, 3))
    tr, va = splits.make_split(200, 160, 40, seed=0)
    mean, std = splits.norm_stats(ds.x_train, tr, "per_channel")
    dev = step.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test, tr, va, mean, std)
    spec = step.GroupSpec(models.ModelConfig("baseline", norm="batch"), eval_batch_size=32)
    params, stats = _random_variables(spec, (8, 8, 3))
    params = jax.tree_util.tree_map(lambda x: 0.1 * x, params)
    return spec, dev, params, stats


def test_the_grids_centre_is_the_runs_own_evaluation(bn_case):
    spec, dev, params, stats = bn_case
    own = np.asarray(step.evaluate(spec, step.TrainState(params, stats, None, None, None, None, None),
                                   dev.x, dev.y, dev.train_idx, dev.mean, dev.std))
    d1, d2 = (surfaces.random_direction(k, params) for k in jax.random.split(jax.random.PRNGKey(0)))
    coords = np.array([-0.5, 0.0, 0.5])
    grid = surfaces.plane(params, d1, d2, coords, coords)
    values = surfaces.evaluate_points(spec, grid, surfaces.repeat(stats, 9), dev.x, dev.y, dev.train_idx,
                                      dev.mean, dev.std, chunk=4)  # 9 points in chunks of 4: one padded
    np.testing.assert_allclose(values[4], own, atol=1e-6)
    assert np.all(np.delete(values[:, 0], 4) != own[0])  # the other points are other models
    one_by_one = np.concatenate([surfaces.evaluate_points(spec, jax.tree_util.tree_map(lambda x: x[i:i + 1], grid),
                                                          surfaces.repeat(stats, 1), dev.x, dev.y, dev.train_idx,
                                                          dev.mean, dev.std) for i in (0, 8)])
    np.testing.assert_allclose(values[[0, 8]], one_by_one, rtol=1e-5)


def run(*args: str) -> Finished:
    return run_experiment("loss_surface", *args)


def test_loss_surface_end_to_end_and_its_refusals(tmp_path):
    out = run(*SYNTH, f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    study = tmp_path / "loss_surface"
    s = json.loads((study / "surface.json").read_text())
    assert s["run"] == "default,seed=0" and s["other_run"] == "default,seed=1"
    for m in ("loss", "acc", "top5"):
        assert s["centre"]["test"][m] == pytest.approx(s["record_test"][m], abs=1e-5)
    with np.load(study / "surface.npz") as z:
        assert z["train_plane"].shape == z["test_plane"].shape == (5, 5, 3)
        np.testing.assert_allclose(z["init_test"][-1], z["test_plane"][2, 2], atol=1e-6)  # t = 1: the run itself
        np.testing.assert_allclose(z["other_test"][0], z["test_plane"][2, 2], atol=1e-6)
    assert "keeps the run's final running statistics" in (study / "surface.md").read_text()
    for name in ("surface_1d", "surface_2d"):
        assert (study / "figures" / f"{name}.png").stat().st_size > 10_000

    again = run(*SYNTH, f"--results_dir={tmp_path}", f"--source_study={study / 'source'}", "--name=again",
                "--run=default,seed=1", "--other_run=none")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "surface.json").read_text())["other_run"] is None

    plain = ["--dataset=synthetic", "--split=512/256", "--epochs=1", "--seeds=1", "--model=mlp", "--hidden=8"]
    assert subprocess.run([sys.executable, "-m", "experiments.lr_sweep", *plain, f"--results_dir={tmp_path}",
                           "--name=nockpt"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600).returncode == 0
    for args, needle in (([f"--source_study={tmp_path}/missing"], "no study with run records"),
                         ([f"--source_study={study / 'source'}", "--run=nope"], "--run=nope: no finished run"),
                         ([f"--source_study={tmp_path}/nockpt"], "run that study with --save_final"),
                         (["--surface_points=4"], "--surface_points=4: must be odd")):
        bad = run(*SYNTH, f"--results_dir={tmp_path}", "--name=bad", *args)
        assert bad.returncode == 2 and needle in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert not (tmp_path / "bad").exists()
