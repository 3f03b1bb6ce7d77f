"""Checkpoints: round trip, strict mismatches named, partial (transfer) restore, atomicity, other process."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax import checkpoint, models

ROOT = Path(__file__).resolve().parents[1]
DROPOUT = models.ModelConfig("baseline", use_dropout=True)
BATCH = models.ModelConfig("baseline", norm="batch")


def _variables(cfg, seed=0):
    """(params, batch_stats) with the model's exact structure on 32x32x3 images, random values
    (eval_shape, not init: compiling the conv init takes seconds on CPU)."""
    net = models.build(cfg)
    shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
    rng = np.random.default_rng(seed)
    variables = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), shapes)
    return variables["params"], variables.get("batch_stats", {})


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def saved_bn(tmp_path):
    """A BatchNorm baseline checkpoint (params and batch statistics)."""
    params, stats = _variables(BATCH, seed=1)
    path = checkpoint.save(tmp_path / "bn", params, stats, metrics={"val_acc": 0.61, "epochs": 3},
                           config={"model": "baseline", "norm": "batch", "lr": [0.1, 0.01]})
    return path, params, stats


def test_round_trip_is_bit_identical_with_metadata(saved_bn):
    path, params, stats = saved_bn
    target = _variables(BATCH, seed=2)
    got_params, got_stats = checkpoint.restore(path, *target)
    _assert_trees_equal(got_params, params)
    _assert_trees_equal(got_stats, stats)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves((got_params, got_stats)))
    meta = checkpoint.load_metadata(path)
    assert meta["metrics"] == {"val_acc": 0.61, "epochs": 3}
    assert meta["config"] == {"model": "baseline", "norm": "batch", "lr": [0.1, 0.01]}
    assert meta["manifest"]["params/conv1/kernel"] == {"shape": [3, 3, 3, 16], "dtype": "float32"}
    assert meta["manifest"]["batch_stats/bn_conv1/mean"] == {"shape": [16], "dtype": "float32"}


def test_round_trip_without_batch_stats(tmp_path):
    params, stats = _variables(DROPOUT)
    path = checkpoint.save(tmp_path / "drop", params, stats, metrics={}, config={})
    got_params, got_stats = checkpoint.restore(path, *_variables(DROPOUT, seed=5))
    _assert_trees_equal(got_params, params)
    assert got_stats == {}


def test_strict_restore_names_first_mismatching_parameter(saved_bn, tmp_path):
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"does not match the model: batch_stats/bn_conv1/mean is in the checkpoint but not"):
        checkpoint.restore(saved_bn[0], *_variables(DROPOUT))
    plain = checkpoint.save(tmp_path / "plain", *_variables(DROPOUT), metrics={}, config={})
    with pytest.raises(checkpoint.CheckpointError, match=r"plain .*: params/conv1/bias is in the checkpoint but not"):
        checkpoint.restore(plain, *_variables(models.ModelConfig("mlp", hidden=(50,))))


def test_strict_restore_names_missing_shape_and_dtype_mismatch(saved_bn):
    path = saved_bn[0]
    params, stats = _variables(BATCH)
    with pytest.raises(checkpoint.CheckpointError, match=r"params/bn_conv1/bias is in the checkpoint but not in"):
        checkpoint.restore(path, {k: v for k, v in params.items() if k != "bn_conv1"}, stats)
    wide = dict(params, fc1={"kernel": jnp.zeros((1024, 128))})
    shape_error = r"params/fc1/kernel has shape \(1024, 64\) in the checkpoint, \(1024, 128\) in the model"
    with pytest.raises(checkpoint.CheckpointError, match=shape_error):
        checkpoint.restore(path, wide, stats)
    half = jax.tree_util.tree_map(lambda x: x.astype(jnp.float16), params)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"params/bn_conv1/bias has dtype float32 in the checkpoint, float16 in the model"):
        checkpoint.restore(path, half, stats)


def test_partial_restore_keeps_convs_and_fresh_dense_layers(saved_bn, capsys):
    path, params, stats = saved_bn
    fresh_params, fresh_stats = _variables(BATCH, seed=7)
    got_params, got_stats, report = checkpoint.restore_partial(path, fresh_params, fresh_stats,
                                                               keep=lambda p: "conv" in p)
    for name in params:
        expected = params[name] if "conv" in name else fresh_params[name]
        _assert_trees_equal(got_params[name], expected)
    _assert_trees_equal(got_stats["bn_conv1"], stats["bn_conv1"])
    _assert_trees_equal(got_stats["bn_fc1"], fresh_stats["bn_fc1"])
    assert "params/conv1/kernel" in report["loaded"] and "batch_stats/bn_conv3/var" in report["loaded"]
    assert "params/fc1/kernel" in report["initialised"] and "params/fc2/bias" in report["initialised"]
    assert report["ignored"] == report["initialised"]
    out = capsys.readouterr().out
    assert "loaded" in out and "params/conv1" in out
    assert "initialised" in out and "params/fc2" in out


def test_partial_restore_refuses_a_selected_leaf_that_differs(saved_bn):
    params, stats = _variables(BATCH)
    half = dict(params, conv2=jax.tree_util.tree_map(lambda x: x.astype(jnp.float16), params["conv2"]))
    with pytest.raises(checkpoint.CheckpointError, match=r"params/conv2/kernel has dtype float32 in the checkpoint"):
        checkpoint.restore_partial(saved_bn[0], half, stats, keep=lambda p: "conv" in p)


def test_save_refuses_to_overwrite_and_leaves_no_temp_dirs(tmp_path):
    params, stats = _variables(DROPOUT)
    path = checkpoint.save(tmp_path / "ck", params, stats, metrics={"acc": np.float32(0.5)}, config={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    with pytest.raises(checkpoint.CheckpointError, match="already exists"):
        checkpoint.save(path, params, stats, metrics={}, config={})
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, params)
    checkpoint.save(path, doubled, stats, metrics={"acc": 0.7}, config={}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    _assert_trees_equal(checkpoint.restore(path, params, stats)[0], doubled)
    assert checkpoint.load_metadata(path)["metrics"] == {"acc": 0.7}


def test_missing_checkpoint_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    params, stats = _variables(DROPOUT)
    with pytest.raises(checkpoint.CheckpointError, match="nowhere"):
        checkpoint.restore(missing, params, stats)
    with pytest.raises(checkpoint.CheckpointError, match="nowhere"):
        checkpoint.load_metadata(missing)


def test_checkpoint_from_a_two_device_process_restores_here(tmp_path):
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from cifar_jax import checkpoint, models
        assert jax.device_count() == 2
        net = models.build(models.ModelConfig("baseline", norm="batch"))
        shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
        rng = np.random.default_rng(3)
        variables = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape, np.float32), shapes)
        replicated = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), P())
        variables = jax.device_put(variables, replicated)
        assert len(variables["params"]["conv1"]["kernel"].sharding.device_set) == 2
        checkpoint.save({str(tmp_path / "ck")!r}, variables["params"], variables["batch_stats"],
                        metrics={{}}, config={{}})
        flat = jax.tree_util.tree_flatten_with_path(variables)[0]
        np.savez({str(tmp_path / "values.npz")!r}, **{{checkpoint.path_str(k): np.asarray(x) for k, x in flat}})
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    params, stats = checkpoint.restore(tmp_path / "ck", *_variables(BATCH))
    expected = np.load(tmp_path / "values.npz")
    flat = jax.tree_util.tree_flatten_with_path({"params": params, "batch_stats": stats})[0]
    assert sorted(checkpoint.path_str(k) for k, _ in flat) == sorted(expected.files)
    for k, x in flat:
        assert x.sharding.device_set == {jax.devices()[0]}
        np.testing.assert_array_equal(np.asarray(x), expected[checkpoint.path_str(k)])
