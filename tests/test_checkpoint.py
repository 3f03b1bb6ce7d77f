"""Checkpoints: round trip, provenance checked, strict mismatches named, partial (transfer) restore,
atomicity and leftovers, every kind of damage one line, other process."""
import logging
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.io import checkpoint, files
from cifar_jax.nn import models

ROOT = Path(__file__).resolve().parents[1]
DROPOUT = models.ModelConfig("baseline", use_dropout=True)
BATCH = models.ModelConfig("baseline", norm="batch")
OF = {"study": "/studies/a", "run_id": "run"}  # the provenance every test checkpoint is saved with
CONFIG = {"model": "baseline", "norm": "batch", "lr": [0.1, 0.01]}


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
    path = checkpoint.save(tmp_path / "bn", params, stats, **OF, metrics={"val_acc": 0.61, "epochs": 3},
                           config=CONFIG)
    return path, params, stats


def test_round_trip_is_bit_identical_with_metadata(saved_bn):
    path, params, stats = saved_bn
    target = _variables(BATCH, seed=2)
    got_params, got_stats = checkpoint.restore(path, *target, expected=OF)
    _assert_trees_equal(got_params, params)
    _assert_trees_equal(got_stats, stats)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves((got_params, got_stats)))
    meta = checkpoint.load_metadata(path)
    assert meta["metrics"] == {"val_acc": 0.61, "epochs": 3}
    assert meta["config"] == CONFIG
    assert meta["manifest"]["params/conv1/kernel"] == {"shape": [3, 3, 3, 16], "dtype": "float32"}
    assert meta["manifest"]["batch_stats/bn_conv1/mean"] == {"shape": [16], "dtype": "float32"}


def test_round_trip_without_batch_stats(tmp_path):
    params, stats = _variables(DROPOUT)
    path = checkpoint.save(tmp_path / "drop", params, stats, **OF, metrics={}, config={})
    got_params, got_stats = checkpoint.restore(path, *_variables(DROPOUT, seed=5), expected={})
    _assert_trees_equal(got_params, params)
    assert got_stats == {}


def test_strict_restore_names_first_mismatching_parameter(saved_bn, tmp_path):
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"does not match the model: batch_stats/bn_conv1/mean is in the checkpoint but not"):
        checkpoint.restore(saved_bn[0], *_variables(DROPOUT), expected={})
    plain = checkpoint.save(tmp_path / "plain", *_variables(DROPOUT), **OF, metrics={}, config={})
    with pytest.raises(checkpoint.CheckpointError, match=r"plain .*: params/conv1/bias is in the checkpoint but not"):
        checkpoint.restore(plain, *_variables(models.ModelConfig("mlp", hidden=(50,))), expected={})


def test_strict_restore_names_missing_shape_and_dtype_mismatch(saved_bn):
    path = saved_bn[0]
    params, stats = _variables(BATCH)
    with pytest.raises(checkpoint.CheckpointError, match=r"params/bn_conv1/bias is in the checkpoint but not in"):
        checkpoint.restore(path, {k: v for k, v in params.items() if k != "bn_conv1"}, stats, expected={})
    wide = dict(params, fc1={"kernel": jnp.zeros((128, 1024))})
    shape_error = r"params/fc1/kernel has shape \(64, 1024\) in the checkpoint, \(128, 1024\) in the model"
    with pytest.raises(checkpoint.CheckpointError, match=shape_error):
        checkpoint.restore(path, wide, stats, expected={})
    half = jax.tree_util.tree_map(lambda x: x.astype(jnp.float16), params)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"params/bn_conv1/bias has dtype float32 in the checkpoint, float16 in the model"):
        checkpoint.restore(path, half, stats, expected={})


def test_partial_restore_keeps_convs_and_fresh_dense_layers(saved_bn, capsys):
    path, params, stats = saved_bn
    fresh_params, fresh_stats = _variables(BATCH, seed=7)
    got_params, got_stats, report = checkpoint.restore_partial(path, fresh_params, fresh_stats, expected=OF,
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
        checkpoint.restore_partial(saved_bn[0], half, stats, expected={}, keep=lambda p: "conv" in p)


def test_save_refuses_to_overwrite_and_leaves_no_temp_dirs(tmp_path):
    params, stats = _variables(DROPOUT)
    path = checkpoint.save(tmp_path / "ck", params, stats, **OF, metrics={"acc": np.float32(0.5)}, config={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    with pytest.raises(checkpoint.CheckpointError, match="already exists"):
        checkpoint.save(path, params, stats, **OF, metrics={}, config={})
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, params)
    checkpoint.save(path, doubled, stats, **OF, metrics={"acc": 0.7}, config={}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    _assert_trees_equal(checkpoint.restore(path, params, stats, expected={})[0], doubled)
    assert checkpoint.load_metadata(path)["metrics"] == {"acc": 0.7}


def test_missing_checkpoint_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    params, stats = _variables(DROPOUT)
    with pytest.raises(checkpoint.CheckpointError, match="nowhere"):
        checkpoint.restore(missing, params, stats, expected={})
    with pytest.raises(checkpoint.CheckpointError, match="nowhere"):
        checkpoint.load_metadata(missing)


def test_checkpoint_from_a_two_device_process_restores_here(tmp_path):
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from cifar_jax.io import checkpoint
        from cifar_jax.nn import models
        assert jax.device_count() == 2
        net = models.build(models.ModelConfig("baseline", norm="batch"))
        shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
        rng = np.random.default_rng(3)
        variables = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape, np.float32), shapes)
        replicated = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), P())
        variables = jax.device_put(variables, replicated)
        assert len(variables["params"]["conv1"]["kernel"].sharding.device_set) == 2
        checkpoint.save({str(tmp_path / "ck")!r}, variables["params"], variables["batch_stats"],
                        study="/studies/a", run_id="run", metrics={{}}, config={{}})
        flat = jax.tree_util.tree_flatten_with_path(variables)[0]
        np.savez({str(tmp_path / "values.npz")!r}, **{{checkpoint.path_str(k): np.asarray(x) for k, x in flat}})
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    params, stats = checkpoint.restore(tmp_path / "ck", *_variables(BATCH), expected=OF)
    expected = np.load(tmp_path / "values.npz")
    flat = jax.tree_util.tree_flatten_with_path({"params": params, "batch_stats": stats})[0]
    assert sorted(checkpoint.path_str(k) for k, _ in flat) == sorted(expected.files)
    for k, x in flat:
        assert x.sharding.device_set == {jax.devices()[0]}
        np.testing.assert_array_equal(np.asarray(x), expected[checkpoint.path_str(k)])


def test_provenance_is_stored_and_another_runs_checkpoint_is_refused_naming_the_field(saved_bn):
    path = saved_bn[0]
    meta = checkpoint.load_metadata(path)
    assert (meta["study"], meta["run_id"], meta["config"]) == ("/studies/a", "run", CONFIG)
    assert meta["path"] == str(path) and meta["code"]["versions"]["jax"] == jax.__version__
    assert len(meta["code"]["git"]["commit"]) == 40  # the tests run in the repository's checkout
    as_tuples = {"model": "baseline", "norm": "batch", "lr": (0.1, 0.01)}  # compared as JSON reads it back
    checkpoint.verify(path, {**OF, "config": as_tuples})
    for expected, message in [
            ({"study": "/studies/b"}, "study is '/studies/a' in the checkpoint, '/studies/b' expected"),
            ({**OF, "run_id": "other"}, "run_id is 'run' in the checkpoint, 'other' expected"),
            ({"config": {**CONFIG, "lr": [0.1]}}, r"config.lr is [0.1, 0.01] in the checkpoint, [0.1] expected"),
            ({"config": {**CONFIG, "epochs": 3}}, "config.epochs is missing in the checkpoint, 3 expected")]:
        for read in (lambda: checkpoint.restore(path, *_variables(BATCH), expected=expected),
                     lambda: checkpoint.verify(path, expected)):
            with pytest.raises(checkpoint.CheckpointError) as err:
                read()
            assert str(err.value) == f"checkpoint {path} is of another run: {message}"


def test_a_study_moved_with_its_checkpoints_stays_their_study(tmp_path):
    study = tmp_path / "a" / "transfer"
    checkpoint.save(study / "checkpoints" / "run", *_variables(DROPOUT), study=study, run_id="run",
                    metrics={}, config={})
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "transfer"
    checkpoint.verify(moved / "checkpoints" / "run", {"study": moved, "run_id": "run"})
    with pytest.raises(checkpoint.CheckpointError, match=f"study is '{study}' in the checkpoint, '{tmp_path}/c' expected"):
        checkpoint.verify(moved / "checkpoints" / "run", {"study": tmp_path / "c"})


def _data_file(path: Path) -> Path:
    """The largest array data file of a checkpoint (orbax's OCDBT chunks)."""
    return max((f for f in (path / "arrays").rglob("d/*") if f.is_file()), key=lambda f: f.stat().st_size)


def _truncate(path: Path) -> None:
    f = _data_file(path)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip(path: Path) -> None:
    """Flip one bit in the middle of the data file (orbax would read it without an error)."""
    f = _data_file(path)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1
    f.write_bytes(bytes(data))


def _another_model(path: Path) -> None:
    shutil.rmtree(path)
    checkpoint.save(path, *_variables(DROPOUT), **OF, metrics={}, config={})


ALTERED = r"is damaged: \S+/arrays/\S+ differs from its checksum in metadata.json$"
DAMAGE = {  # how → (damage, what the message says after the checkpoint's path)
    "truncated array file": (_truncate, ALTERED),
    "one bit flipped in an array file": (_flip, ALTERED),
    "no orbax _METADATA": (lambda p: (p / "arrays" / "_METADATA").unlink(), r"is damaged: \S+/arrays/_METADATA is missing$"),
    "garbage metadata.json": (lambda p: (p / "metadata.json").write_bytes(b"\x00{garbage"), r"metadata.json is not readable JSON"),
    "metadata.json of no checkpoint": (lambda p: (p / "metadata.json").write_text("[1, 2]"), r"metadata.json has no study, run_id"),
    "no metadata.json": (lambda p: (p / "metadata.json").unlink(), r"is damaged: \S+/metadata.json is missing$"),
    "another model's checkpoint": (_another_model, r"does not match the model.*: batch_stats/bn_conv1/mean is in the model"),
}


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # orbax's abandoned reads: quiet
def test_a_damaged_checkpoint_is_one_line_naming_it(saved_bn, how, caplog):
    path = saved_bn[0]
    damage, message = DAMAGE[how]
    damage(path)
    reads = [lambda: checkpoint.restore(path, *_variables(BATCH), expected=OF),
             lambda: checkpoint.restore_partial(path, *_variables(BATCH), expected=OF, keep=lambda leaf: "conv" in leaf)]
    if how != "another model's checkpoint":  # it is a sound checkpoint, of another model
        reads.append(lambda: checkpoint.verify(path, OF))
    with caplog.at_level(logging.WARNING):
        for read in reads:
            with pytest.raises(checkpoint.CheckpointError) as err:
                read()
            text = str(err.value)
            assert "\n" not in text and text.startswith(f"checkpoint {path} "), text
            assert re.search(message, text), text
    assert not [r for r in caplog.records if r.name == "absl"], "orbax's warnings are one line too many"


def test_a_checkpoint_that_was_never_saved_is_named(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=f"^checkpoint {tmp_path}/nowhere does not exist"):
        checkpoint.verify(tmp_path / "nowhere", {})


def test_the_leftovers_of_killed_saves_are_what_results_removes(tmp_path, monkeypatch):
    params, stats = _variables(DROPOUT)
    path = checkpoint.save(tmp_path / "ck", params, stats, **OF, metrics={}, config={})
    with monkeypatch.context() as mp:  # a kill: no clean-up runs after the temporary directories appear
        mp.setattr(shutil, "rmtree", lambda *args, **kwargs: None)
        checkpoint.save(path, params, stats, **OF, metrics={}, config={}, overwrite=True)  # leaves the old one
        with pytest.raises(files.ResultsError):  # a save that fails after its arrays are written
            checkpoint.save(tmp_path / "ck2", params, stats, **OF, metrics={"bad": object()}, config={})
    leftovers = sorted(p.name.split("-")[0] for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers == [".ck.old.tmp", ".ck2.tmp"]
    removed = files.remove_leftovers(tmp_path, min_age_s=0)
    assert len(removed) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    checkpoint.verify(path, OF)
