"""experiments.search: Optuna proposes, the lab trains each round of trials as one study part. The
storage holds every trial told its value from the records; a rerun trains nothing again, and a
search stopped before it told a round's trials tells them from their records."""
import json
import sys

import numpy as np
import optuna
import pytest

from cifar_jax.study import config, runner
from conftest import run_experiment, study_records, trained_epochs
from experiments import search

TINY = ("--dataset=synthetic", "--split=256/64", "--test_size=64", "--epochs=2", "--seeds=2", "--batch_size=32",
        "--model=mlp", "--hidden=16", "--layout=seq_scan")
SPACE = "--space=lr=1e-3:0.5:log;l2=1e-6:1e-2:log"


def _trials(root):
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{root / 'search' / 'optuna.db'}")
    return study.trials


def _values_from_records(root) -> dict[int, float]:
    """Each trial's mean final validation accuracy over its seeds, from the round parts' records."""
    by_trial: dict[int, list[float]] = {}
    for part in sorted((root / "search").glob("round-*")):
        for rec in study_records(part).values():
            by_trial.setdefault(int(rec["config_name"].split("=")[1]), []).append(rec["epochs"][-1]["val_acc"])
    return {n: float(np.mean(v)) for n, v in by_trial.items()}


def test_space_entries_and_bad_ones():
    known = {**config.CORE, **search.OPTIONS}
    dims = search.parse_space("lr=1e-4:0.5:log; hidden=64|128,128 ;dropout=0:0.5;warmup_steps=0:100", known)
    assert [(d.name, d.low, d.high, d.log, d.choices) for d in dims] == [
        ("lr", 1e-4, 0.5, True, ()), ("hidden", None, None, False, ("64", "128,128")), ("dropout", 0.0, 0.5, False, ()),
        ("warmup_steps", 0.0, 100.0, False, ())]
    assert type(dims[3].distribution(known["warmup_steps"])).__name__ == "IntDistribution"
    for bad, message in (("", "--space is empty"), ("lr", "is not NAME="), ("seeds=1:3", "is not NAME="),
                         ("lr=0.1", "give LOW:HIGH"), ("lr=0.5:0.1", "need LOW < HIGH"), ("l2=0:1:log", "both > 0"),
                         ("lr=1e-3:1;lr=1e-2:1", "names an option twice")):
        with pytest.raises(config.ConfigError, match=message):
            search.parse_space(bad, known)


def test_rounds_of_trials_are_told_their_records_values_and_a_rerun_trains_nothing(tmp_path):
    args = (*TINY, SPACE, "--rounds=2", "--trials=3", f"--results_dir={tmp_path}")
    first = run_experiment("search", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    trials = _trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    want = _values_from_records(tmp_path)
    assert {t.number: t.value for t in trials} == pytest.approx(want, abs=1e-12)
    assert len({(t.params["lr"], t.params["l2"]) for t in trials}) == 6  # six proposals, each trained
    saved = json.loads((tmp_path / "search" / "search.json").read_text())
    assert saved["best"]["value"] == max(want.values()) and saved["run_epochs"] == 6 * 2 * 2
    assert (tmp_path / "search" / "figures" / "search.png").stat().st_size > 10_000

    again = run_experiment("search", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert trained_epochs(again.stdout) == [] and again.stdout.count("6 of 6 runs already finished, skipped") == 2
    assert [(t.number, t.state.name, t.value) for t in _trials(tmp_path)] == [(t.number, t.state.name, t.value) for t in trials]


class Stop(Exception):
    pass


def test_a_search_stopped_before_telling_a_round_tells_it_from_the_records(tmp_path, monkeypatch):
    args = (*TINY, SPACE, "--rounds=2", "--trials=2", f"--results_dir={tmp_path}")
    real = runner.run

    def run(cfg, name, title, *a, **kw):
        done = real(cfg, name, title, *a, **kw)
        if kw.get("part") == "round-001":
            raise Stop  # the second round trained, not told
        return done

    monkeypatch.setattr(runner, "run", run)
    with pytest.raises(Stop):
        run_experiment("search", *args)
    monkeypatch.undo()
    assert [t.state.name for t in _trials(tmp_path)] == ["COMPLETE", "COMPLETE", "RUNNING", "RUNNING"]
    again = run_experiment("search", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert trained_epochs(again.stdout) == []
    trials = _trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert {t.number: t.value for t in trials} == pytest.approx(_values_from_records(tmp_path), abs=1e-12)


def test_halving_inside_a_round_reports_rungs_and_prunes_trials(tmp_path):
    """Trials of three widths (three groups) halved together at epoch 1: the pruned ones are told
    pruned with their rung value as Optuna's intermediate value."""
    done = run_experiment("search", *TINY, "--epochs=3", "--space=lr=1e-3:0.5:log;hidden=8|16,16|32", "--rounds=1",
                          "--trials=4", "--prune=halving", "--prune_rungs=1", "--prune_keep=0.5",
                          f"--results_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    trials = _trials(tmp_path)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    records = study_records(tmp_path / "search" / "round-000")
    for t in trials:
        recs = [r for r in records.values() if r["config_name"] == search.trial_name(t.number)]
        assert t.intermediate_values == pytest.approx({1: np.mean([r["epochs"][0]["val_acc"] for r in recs])})
        assert {r["status"] for r in recs} == {"done" if t.state.name == "COMPLETE" else "pruned"}
    assert "| pruned |" in (tmp_path / "search" / "search.md").read_text()


def test_without_optuna_one_line_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    done = run_experiment("search", *TINY, SPACE, f"--results_dir={tmp_path}")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "pip install optuna" in done.stderr and "[search]" in done.stderr
