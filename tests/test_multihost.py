"""Many hosts: a study split over 2 localhost processes (jax.distributed) gives the results of
one process (the reference, run in this one); each process writes only its own runs, and the
summary is written once."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import free_port, run_experiment

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--dataset=synthetic", "--split=512/256", "--model=mlp", "--hidden=16", "--init=he",
        "--lr=0.1,0.05", "--seeds=2", "--epochs=2", "--batch_size=64"]


def _command(module: str, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", f"experiments.{module}", *ARGS, f"--results_dir={results}", *extra]


def _env() -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _metrics(study: Path) -> dict:
    out = {}
    for p in (study / "runs").glob("*.json"):
        r = json.loads(p.read_text())
        test = [[r["test"]["loss"], r["test"]["acc"]]] if r["status"] == "done" else []  # a pruned run has none
        out[r["run_id"]] = [[e["train_loss"], e["val_acc"]] for e in r["epochs"]] + test
    return out


def _one_and_two(tmp_path: Path, module: str, *extra: str) -> tuple[dict, dict, list[tuple[str, str]]]:
    """The study's run metrics from 1 process and from 2, and the 2 processes' (stdout, stderr)."""
    single = run_experiment(module, *ARGS, f"--results_dir={tmp_path / 'one'}", *extra)
    assert single.returncode == 0, single.stderr
    port = free_port()
    procs = [subprocess.Popen(_command(module, tmp_path / "two", *extra, "--num_processes=2", f"--process_id={i}",
                                       f"--coordinator_address=127.0.0.1:{port}"),
                              env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    one, two = _metrics(tmp_path / "one" / module), _metrics(tmp_path / "two" / module)
    assert one.keys() == two.keys() and len(one) == 4
    for k in one:
        np.testing.assert_allclose(np.asarray(two[k]), np.asarray(one[k]), rtol=1e-5, atol=1e-6)
    assert "results and figures" in outs[0][0] and "results and figures" not in outs[1][0]
    assert "process 0 writes the summary" in outs[1][0]
    assert not (tmp_path / "two" / ".hosts").exists()  # each process's heartbeat file removed as it ends
    return one, two, outs


def test_two_processes_equal_one(tmp_path):
    _, _, outs = _one_and_two(tmp_path, "lr_sweep")
    # Each process trained (and wrote) only its own half of the group; process 0 wrote the summary.
    headers = [[line for line in out.splitlines() if "2 runs, model mlp" in line] for out, _ in outs]
    assert [len(h) for h in headers] == [1, 1]
    assert "lr=0.1,seed=0, lr=0.1,seed=1" in headers[0][0] and "lr=0.05" not in headers[0][0]
    assert "lr=0.05,seed=0, lr=0.05,seed=1" in headers[1][0] and "lr=0.1," not in headers[1][0]
    summary = json.loads((tmp_path / "two" / "lr_sweep" / "summary.json").read_text())
    assert summary["configs"]["lr=0.1"]["n_done"] == 2


def test_halving_over_two_processes_makes_the_decisions_of_one(tmp_path):
    """--prune=halving split over 2 processes: each trains its share up to the rung, both wait for
    every record there, make the same decision, and the kept runs' numbers are one process's."""
    one, two, outs = _one_and_two(tmp_path, "lr_sweep", "--epochs=3", "--prune=halving", "--prune_rungs=1",
                                  "--prune_keep=0.5")
    status = {n: [json.loads(p.read_text())["status"] for p in sorted((tmp_path / n / "lr_sweep" / "runs").glob("*.json"))]
              for n in ("one", "two")}
    assert status["one"] == status["two"] and sorted(status["one"]) == ["done", "done", "pruned", "pruned"]
    decisions = [[line for line in out.splitlines() if "rung at epoch 1" in line] for out, _ in outs]
    assert len(decisions[0]) == len(decisions[1]) == 1 and decisions[0] == decisions[1]
    assert {k: len(v) for k, v in two.items()} == {k: len(v) for k, v in one.items()}


def test_grid_study_over_two_processes_reports_once(tmp_path):
    """Its report (every run in the seeds/002 format) is printed by process 0 alone."""
    one, _, outs = _one_and_two(tmp_path, "grid_study")
    assert outs[0][0].count("Model parameters:") == len(one) and "Model parameters:" not in outs[1][0]


def test_dropout_sweep_over_two_processes_writes_its_analysis_once(tmp_path):
    """A study with its own analysis (the generalisation gap, from eval-mode train passes): the
    same numbers from 2 processes as from 1, and the analysis written by process 0 alone."""
    _, _, outs = _one_and_two(tmp_path, "dropout_sweep", "--dropout=0.3", "--eval_train=final")
    gaps = [json.loads((tmp_path / n / "dropout_sweep" / "generalisation_gap.json").read_text()) for n in ("one", "two")]
    assert gaps[0]["train_metrics"] == gaps[1]["train_metrics"] == "final_train"
    for a, b in zip(gaps[0]["rows"], gaps[1]["rows"]):
        assert a["config"] == b["config"] and a["acc_gap"]["n"] == b["acc_gap"]["n"] == 2
        np.testing.assert_allclose(b["acc_gap"]["values"], a["acc_gap"]["values"], rtol=1e-5, atol=1e-6)
    assert "generalisation gap" in outs[0][0] and "generalisation gap" not in outs[1][0]
