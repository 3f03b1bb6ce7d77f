"""Successive halving on the run axis (--prune=halving): a kept run's records equal the unpruned
study's, the decisions are the ranking of the records at each rung, pruned runs show as such, and a
study interrupted at a rung (in this process, or by kill -9) resumes to the same records."""
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from cifar_jax.config.registry import ConfigError
from cifar_jax.io import files
from cifar_jax.plots import charts
from cifar_jax.results import frames, studydir
from cifar_jax.study import config, halving, runner
from conftest import run_experiment, study_records, trained_epochs

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="synthetic", split="256/64", test_size=64, epochs=4, seeds=2, batch_size=32, model="mlp",
            hidden=[[16]], lr=[0.3, 0.1, 0.03, 0.01, 0.003, 0.001])
HALVING = dict(prune="halving", prune_rungs=[1, 2], prune_keep=0.5)


def _study(root: Path, layout: str = "seq_scan", **more) -> Path:
    """The tiny LR grid as a plain study (no figures), returning its directory."""
    cfg = config.build(**TINY, results_dir=str(root), layout=layout, **more)
    runner.run(cfg, "s", "Halving", lambda p: config.grid(cfg, len(p.train_idx), p.dataset.num_classes),
               figures=False)
    return root / "s"


@pytest.fixture(scope="module")
def unpruned(tmp_path_factory) -> Path:
    return _study(tmp_path_factory.mktemp("unpruned"))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    return _study(tmp_path_factory.mktemp("pruned"), **HALVING)


def test_rungs_counts_and_ranking():
    assert halving.default_rungs(9, 1 / 3) == (1, 3) and halving.default_rungs(50, 1 / 3) == (2, 6, 17)
    assert [halving.kept_count(n, 1 / 3) for n in (27, 9, 3, 1)] == [9, 3, 1, 1]
    assert halving.kept_count(5, 0.5) == 3
    scores = {"a": 0.5, "b": float("nan"), "c": 0.7, "d": 0.5}
    assert halving.rank(scores, "val_acc") == ["c", "a", "d", "b"]  # a tie keeps the given order; NaN last
    assert halving.rank(scores, "val_loss") == ["a", "d", "c", "b"]
    rec = lambda run_id, acc: {"run_id": run_id, "epochs": [{"epoch": 1, "val_acc": 0.1}, {"epoch": 2, "val_acc": acc}]}
    assert halving.score([rec("x", 0.2), rec("y", 0.4)], 2, "val_acc") == pytest.approx(0.3)
    assert np.isnan(halving.score([rec("x", 0.2), rec("y", None)], 2, "val_acc"))  # a diverged seed
    with pytest.raises(ValueError, match="no record of epoch 3"):
        halving.score([rec("x", 0.2)], 3, "val_acc")


@pytest.mark.parametrize("given, message", [
    (dict(prune_rungs=[1]), "--prune_rungs=1: give --prune=halving too"),
    (dict(prune="halving", prune_rungs=[2, 4]), r"every rung must be below --epochs \(4\)"),
    (dict(prune="halving", epochs=1), "1 epoch\\(s\\) leave no rung below --epochs"),
    (dict(prune="halving", split="256/0"), "--split has no validation images"),
    (dict(prune="halving", prune_keep=1.0), "--prune_keep"),
])
def test_bad_halving_options_are_one_line(given, message):
    with pytest.raises(ConfigError, match=message):
        config.build(**{**TINY, **given})


def test_a_rung_beyond_the_runs_epochs_is_refused_before_training(tmp_path):
    """grid_study's --cycles sets the epochs after the flags are checked: 1 cycle of n_s = 8 steps
    is 2 epochs of 8 steps here, so a rung at epoch 5 is refused in one line."""
    done = run_experiment("grid_study", "--dataset=synthetic", "--split=256/64", "--model=mlp", "--hidden=8",
                          "--batch_size=32", "--seeds=1", "--schedule=cyclic", "--lr_min=0.001", "--cycles=1",
                          "--half_cycle=8", "--prune=halving", "--prune_rungs=5", f"--results_dir={tmp_path}")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "every rung must be below the runs' epochs (2 here)" in done.stderr and trained_epochs(done.stdout) == []


def test_default_rungs_are_resolved_into_the_config():
    assert config.build(**{**TINY, "epochs": 9}, prune="halving").prune_rungs == (1, 3)
    assert config.build(**TINY).prune_rungs == ()


def test_a_kept_run_has_the_records_of_the_unpruned_study(pruned, unpruned):
    got, want = study_records(pruned), study_records(unpruned)
    kept = [name for name, rec in got.items() if rec["status"] == "done"]
    assert len(kept) == 4  # 6 configurations → 3 at epoch 1 → 2 at epoch 2, × 2 seeds
    for name in kept:
        assert got[name] == want[name]  # seq layout: bit-identical
    for name, rec in got.items():
        if rec["status"] == "pruned":
            assert rec["epochs"] == want[name]["epochs"][:rec["pruned_epoch"]] and rec["test"] is None
    assert not (pruned / "resume").exists()


def test_the_decisions_are_the_ranking_of_the_records_at_each_rung(pruned, unpruned):
    """Recomputed from the unpruned study's records: at epoch 1 the best half of the 6 learning
    rates by mean validation accuracy go on, at epoch 2 the best 2 of those."""
    want = study_records(unpruned)
    by_config: dict[str, list[dict]] = {}
    for rec in want.values():
        by_config.setdefault(rec["config_name"], []).append(rec)
    mean = lambda name, epoch: np.mean([r["epochs"][epoch - 1]["val_acc"] for r in by_config[name]])
    first = sorted(by_config, key=lambda name: -mean(name, 1))[:3]
    second = sorted(first, key=lambda name: -mean(name, 2))[:2]
    got = study_records(pruned)
    status = {rec["config_name"]: (rec["status"], rec.get("pruned_epoch")) for rec in got.values()}
    assert status == {name: ("done", None) if name in second else ("pruned", 2) if name in first else ("pruned", 1)
                      for name in by_config}
    assert halving.run_epochs(got.values()) == 2 * (6 * 1 + 3 * 1 + 2 * 2)  # of the full grid's 2 * 6 * 4


def test_pruned_runs_show_as_pruned_in_summary_table_and_frames(pruned):
    summary = json.loads((pruned / "summary.json").read_text())
    counts = {name: (c["n_done"], c["n_pruned"], c["n_incomplete"]) for name, c in summary["configs"].items()}
    assert sorted(counts.values()) == [(0, 2, 0)] * 4 + [(2, 0, 0)] * 2
    table = (pruned / "test_table.md").read_text()
    assert table.count("0/2, 2 pruned at epoch 1") == 3 and table.count("0/2, 2 pruned at epoch 2") == 1
    report = (pruned / "halving.md").read_text()
    assert "run-epochs of the full grid's 48" in report and report.count("| pruned at epoch") == 4
    assert charts.pruned_note(studydir.StudyDir(pruned).records()) == "pruned at epochs 1, 2"  # the figures' labels
    runs = {r["run_id"]: (r["status"], r["pruned_epoch"]) for r in frames.final_rows(pruned)}
    assert sorted(runs.values()) == [("done", None)] * 4 + [("pruned", 1)] * 6 + [("pruned", 2)] * 2


def test_a_vmapped_group_gathers_its_kept_runs_and_matches_the_unpruned_one(tmp_path):
    """Layout vmap_scan: the rung's survivors continue on a smaller run axis, from their own
    snapshots; their records equal the unpruned vmapped study's to 1e-6."""
    got = study_records(_study(tmp_path / "p", "vmap_scan", **HALVING))
    want = study_records(_study(tmp_path / "u", "vmap_scan"))
    kept = [name for name, rec in got.items() if rec["status"] == "done"]
    assert len(kept) == 4
    for name in kept:
        for a, b in zip(got[name]["epochs"], want[name]["epochs"]):
            np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(list(got[name]["test"].values()), list(want[name]["test"].values()), rtol=1e-6)


def test_other_halving_options_on_a_halved_study_are_refused(tmp_path, pruned):
    """Keeping more at epoch 1 would keep configurations this study pruned there: refused in one
    line rather than summarised as something neither policy made."""
    shutil.copytree(pruned, tmp_path / "s")
    with pytest.raises(files.ResultsError, match=r"was pruned at epoch 1 under other --prune_\* options"):
        _study(tmp_path, **{**HALVING, "prune_keep": 0.75})


class Stop(Exception):
    pass


@pytest.mark.parametrize("moment", ["first pruned record", "after the rung", "mid next segment"])
def test_a_study_interrupted_at_a_rung_resumes_to_the_same_records(tmp_path, monkeypatch, pruned, moment):
    """Stopped while a rung writes its pruned records, right after the rung, or one epoch into the
    next segment; the rerun makes the same decisions and ends with the same records."""
    real_write, real_rung = studydir.StudyDir.write_record, runner._rung

    def write(self, rec):
        real_write(self, rec)
        if moment == "first pruned record" and rec["status"] == "pruned":
            raise Stop
        if moment == "mid next segment" and rec["status"] == "incomplete" and len(rec["epochs"]) == 2:
            raise Stop

    def rung(*args):
        kept = real_rung(*args)
        if moment == "after the rung":
            raise Stop
        return kept

    monkeypatch.setattr(studydir.StudyDir, "write_record", write)
    monkeypatch.setattr(runner, "_rung", rung)
    with pytest.raises(Stop):
        _study(tmp_path, **HALVING)
    monkeypatch.undo()
    assert study_records(_study(tmp_path, **HALVING)) == study_records(pruned)
    assert not (tmp_path / "s" / "resume").exists()


def test_a_study_killed_at_a_rung_resumes_to_the_same_records_and_decisions(tmp_path, pruned):
    """kill -9 as the first rung's decision is printed; the rerun's decisions and records are the
    uninterrupted study's."""
    args = [sys.executable, "-m", "experiments.lr_sweep", f"--results_dir={tmp_path}", "--name=s",
            *(f"--{k}={v}" for k, v in dict(TINY, lr="0.3,0.1,0.03,0.01,0.003,0.001", hidden=16,
                                            prune="halving", prune_rungs="1,2", prune_keep=0.5, layout="seq_scan").items())]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    victim = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in victim.stdout:
        if "rung at epoch 1:" in line:
            victim.send_signal(signal.SIGKILL)
            break
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert line.split("rung at epoch 1:")[1] in again.stdout  # the same decision
    got, want = study_records(tmp_path / "s"), study_records(pruned)
    assert got.keys() == want.keys()
    for name, rec in got.items():  # lr_sweep's records are the plain study's (the same grid and flags)
        assert {k: v for k, v in rec.items() if k != "config"} == {k: v for k, v in want[name].items() if k != "config"}
