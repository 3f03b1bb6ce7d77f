"""Nothing lost, nothing mixed up: a study is owned by one process at a time, and an interrupted
study resumes mid-run to the same numbers as an uninterrupted one (the engine in process, then
whole studies killed with SIGKILL at random moments)."""
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cifar_jax.data import datasets, splits
from cifar_jax.io import files
from cifar_jax.io.snapshots import Snapshots
from cifar_jax.nn import models
from cifar_jax.results import run_record, studydir
from cifar_jax.training import engine, step
from conftest import study_records, trained_epochs

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


class Interrupted(Exception):
    pass


class Saving:
    """Callbacks that keep the per-epoch metrics and, like the study's writer, the state offered
    after each epoch; `stop_after` raises once that epoch is reported (an interruption)."""

    def __init__(self, stop_after=None, saved=None):
        self.metrics, self.saved, self.stop_after, self.final = {}, dict(saved or {}), stop_after, {}
        self.resumed = {}

    def on_compiled(self, seconds): pass
    def on_log(self, message): pass
    def on_start(self, runs, untrained): pass
    def on_resume(self, runs, epochs_done): self.resumed[tuple(runs)] = epochs_done

    def resume(self, runs, template):
        return self.saved.get(tuple(runs))

    def on_state(self, runs, epoch, state):
        self.saved[tuple(runs)] = (epoch, state())

    def on_epoch(self, runs, epoch, metrics, seconds):
        self.metrics[tuple(runs), epoch] = metrics
        if epoch == self.stop_after:
            raise Interrupted

    def on_end(self, runs, final):
        self.final[tuple(runs)] = final


@pytest.mark.parametrize("layout", ["vmap_scan", "seq_loop"])
def test_the_engine_resumes_to_the_same_numbers_bit_for_bit(layout):
    ds = datasets.synthetic(n_train=300, n_test=60, image_shape=(8, 8, 3))
    tr, va = splits.make_split(300, 240, 60, seed=0)
    mean, std = splits.norm_stats(ds.x_train, tr, "per_channel")
    d = step.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test, tr, va, mean, std)
    spec = step.GroupSpec(models.ModelConfig("mlp", hidden=(16,), norm="batch", use_dropout=True),
                          optimizer="adam", batch_size=32, grad_stats=True)
    hp = step.stack_hparams([dict(seed=0, lr=0.01, dropout=0.3, total_steps=28), dict(seed=1, lr=0.003, total_steps=28)])
    whole = Saving()
    end = engine.train_group(spec, hp, d, 4, whole, layout=layout)
    cut = Saving(stop_after=2)
    with pytest.raises(Interrupted):  # the first chunk (every run, or the first alone) stops after epoch 2
        engine.train_group(spec, hp, d, 4, cut, layout=layout)
    first = next(iter(cut.saved))
    assert cut.saved[first][0] == 2
    rest = Saving(saved=cut.saved)
    resumed_end = engine.train_group(spec, hp, d, 4, rest, layout=layout)
    assert rest.resumed == {first: 2}
    assert sorted(rest.metrics) == sorted((k, e) for k, e in whole.metrics if k != first or e > 2)
    for key, metrics in rest.metrics.items():
        for a, b in zip(jax.tree_util.tree_leaves(whole.metrics[key]), jax.tree_util.tree_leaves(metrics)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(end), jax.tree_util.tree_leaves(resumed_end)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for key, final in whole.final.items():
        np.testing.assert_array_equal(final.grad_last, rest.final[key].grad_last)


def test_snapshots_keep_the_newest_the_records_reached(tmp_path):
    snaps = Snapshots(tmp_path / "resume", every=1)
    state = {"w": np.arange(6.0).reshape(2, 3), "step": np.array([4, 4], np.int32)}
    template = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    snaps.save("k", 1, state)
    snaps.save("k", 2, {**state, "w": state["w"] + 1})
    assert snaps.load(["k"], template, recorded=1)[0] == 1  # epoch 2's records were never written
    epoch, got = snaps.load(["k"], template, recorded=2)
    assert epoch == 2 and np.array_equal(got["w"], state["w"] + 1) and got["step"].dtype == np.int32
    snaps.prune("k", 2)  # both kept: the one before the newest stands in for a damaged newest
    assert snaps.load(["k"], template, recorded=1)[0] == 1
    snaps.save("k", 3, state)
    snaps.prune("k", 3)
    assert snaps.load(["k"], template, recorded=1) is None and snaps.load(["k"], template, recorded=3)[0] == 3
    other = {"w": np.zeros((2, 4)), "step": np.zeros(2, np.int32)}
    assert snaps.load(["k"], jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), other), 2) is None
    snaps.remove("k")
    assert not (tmp_path / "resume").exists()


def test_a_record_truncated_to_a_snapshot_forgets_later_epochs():
    rec = {"epochs": [{"epoch": e} for e in (1, 2, 3)], "diverged_epoch": 3, "status": "incomplete"}
    cut = run_record.truncate(rec, 2)
    assert [e["epoch"] for e in cut["epochs"]] == [1, 2] and cut["diverged_epoch"] is None
    assert run_record.truncate({**rec, "diverged_epoch": 1}, 2)["diverged_epoch"] == 1


def test_a_study_lock_refuses_a_live_owner_and_takes_over_a_dead_ones(tmp_path, capsys):
    study = studydir.StudyDir(tmp_path / "s")
    with study.lock():
        assert json.loads((tmp_path / "s" / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(files.ResultsError, match=f"in use by process {os.getpid()} on "):
            with study.lock():
                pass
    assert not (tmp_path / "s").exists()  # released, and the empty study removed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".lock").write_text(json.dumps({"pid": dead.pid, "host": __import__("socket").gethostname()}))
    with study.lock():
        pass
    assert f"taking over the lock of process {dead.pid}" in capsys.readouterr().out


STUDY = ["-m", "experiments.grid_study", "--dataset=synthetic", "--model=mlp", "--split=3000/300", "--seeds=2",
         "--lr=0.05", "--dropout=0.2", "--snapshot_every=1", "--name=s"]


def _start(root, *extra):
    return subprocess.Popen([sys.executable, *STUDY, f"--results_dir={root}", f"--compile_cache={root.parent}/xla",
                             *extra], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _metrics(root):
    return study_records(root / "s")


def _leftovers(root):
    return [p for p in root.rglob("*") if ".tmp" in p.name or p.name == ".lock" or p.name == "resume"]


def _recorded(root):
    """Epochs recorded per run so far."""
    return {name: len(rec["epochs"]) for name, rec in _metrics(root).items()} if (root / "s" / "runs").is_dir() else {}


def _trained_again(out, recorded):
    """The (run, epoch) a rerun trained that its run had already recorded."""
    return [(run, epoch) for run, epoch in trained_epochs(out) if epoch <= recorded.get(run, 0)]


@pytest.mark.slow
def test_a_study_killed_at_random_moments_resumes_to_the_same_records(tmp_path):
    """Ten SIGKILLs at random moments of a study's length on this machine (start-up, compilation,
    mid-epoch, snapshot and record writes, summary and figures), each followed by a restart that
    resumes (and may be killed again); every study then ends with the records and summary of an
    uninterrupted run, no leftovers, and no epoch a run had recorded is trained again."""
    args = ("--hidden=256", "--epochs=8")
    t0 = time.perf_counter()
    ref = _start(tmp_path / "ref", *args)
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-2000:]
    compiled = sum(float(line.split("compiled in ")[1].split(" s")[0]) for line in out.splitlines() if "compiled in " in line)
    length = time.perf_counter() - t0 - compiled  # the victims find every program in the cache
    want, want_summary = _metrics(tmp_path / "ref"), json.loads((tmp_path / "ref" / "s" / "summary.json").read_text())
    # a resumed victim reaches its summary and figures early: late phases come up at these moments too
    moments = np.random.default_rng(0).uniform(0.05, 0.55, 10) * length
    roots, root, kills = [], None, 0
    for moment in moments:
        if root is None or (root / "s" / "summary.json").exists():  # a finished study: kill a fresh one
            root = tmp_path / f"study{len(roots)}"
            roots.append(root)
        recorded = _recorded(root)
        victim = _start(root, *args)
        time.sleep(moment)
        victim.send_signal(signal.SIGKILL)
        out, _ = victim.communicate()
        kills += victim.returncode == -signal.SIGKILL
        assert not _trained_again(out, recorded), f"killed at {moment:.1f} s"
    assert kills >= 8  # the others finished before their moment
    for root in roots:
        recorded = _recorded(root)
        again = _start(root, *args)
        out, err = again.communicate(timeout=600)
        assert again.returncode == 0, err[-2000:]
        assert not _trained_again(out, recorded)
        assert _metrics(root) == want
        assert json.loads((root / "s" / "summary.json").read_text()) == want_summary
        assert not _leftovers(root), _leftovers(root)


@pytest.mark.slow
def test_a_second_invocation_of_a_running_study_is_refused(tmp_path):
    owner = _start(tmp_path / "t", "--epochs=40", "--hidden=512")
    for _ in range(600):
        line = owner.stdout.readline()
        if "epoch 1/40" in line:
            break
    for extra in ("--epochs=40", "--epochs=2"):  # the same configuration and another one
        second = subprocess.run([sys.executable, *STUDY, f"--results_dir={tmp_path / 't'}", "--hidden=512", extra],
                                cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip().count("\n") == 0 and f"in use by process {owner.pid}" in second.stderr
    owner.kill()
    owner.wait()
    for rec in (tmp_path / "t" / "s" / "runs").glob("*.json"):
        assert json.loads(rec.read_text())["config"]["epochs"] == 40  # never the other invocation's
