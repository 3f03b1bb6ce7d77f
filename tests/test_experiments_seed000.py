"""seeds/000 studies end to end on synthetic data: the dropout sweep (§2.1) and BatchNormNet (§3.4)."""
import json
import re
from pathlib import Path

import pytest

from experiments import dropout_sweep
from conftest import Finished, run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ["--dataset=synthetic", "--split=512/256", "--batch_size=64", "--epochs=2", "--seeds=2",
         "--model=mlp", "--hidden=16", "--init=he"]
RATES = [0.0, 0.2, 0.4, 0.6, 0.8]


def run(module: str, *args: str) -> Finished:
    return run_experiment(module, *args)


def test_dropout_sweep_writes_the_gap_per_rate_and_resumes_without_retraining(tmp_path):
    args = [*SYNTH, "--dropout=" + ",".join(map(str, RATES)), f"--results_dir={tmp_path}"]
    first = run("dropout_sweep", *args)
    assert first.returncode == 0, first.stderr
    assert "group 1/1] 10 runs" in first.stdout and "best rate:" in first.stdout
    study = tmp_path / "dropout_sweep"
    for name in ("generalisation_gap", "val_comparison", "test_table", "curves_dropout=0", "curves_dropout=0.8"):
        assert (study / "figures" / f"{name}.png").stat().st_size > 10_000, name
    gap = json.loads((study / "generalisation_gap.json").read_text())
    assert [r["rate"] for r in gap["rows"]] == RATES and gap["best_rate"] in RATES
    assert gap["train_metrics"] == "epochs" and all(r["acc_gap"]["n"] == 2 for r in gap["rows"])
    table = (study / "generalisation_gap.md").read_text()
    assert len(re.findall(r"^\| [\d.]+ \| dropout=", table, re.M)) == len(RATES)
    assert "running averages" in table and f"best rate: **{gap['best_rate']:g}**" in table
    stamps = {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*.json")}

    second = run("dropout_sweep", *args)
    assert second.returncode == 0, second.stderr
    assert "10 of 10 runs already finished" in second.stdout and "epoch 1/2" not in second.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*.json")}


def _record(rate: float, seed: int, train_acc: float, val_acc: float, final_train: dict | None) -> dict:
    return {"run_id": f"dropout={rate:g},seed={seed}", "config_name": f"dropout={rate:g}", "seed": seed,
            "config": {"dropout": rate}, "status": "done", "final_train": final_train,
            "epochs": [{"epoch": 1, "train_acc": train_acc, "train_loss": 1.0, "val_acc": val_acc, "val_loss": 1.5}]}


def test_gap_uses_eval_mode_train_metrics_only_when_every_run_has_them():
    eval_mode = {"loss": 0.5, "acc": 0.9, "top5": 1.0}
    records = [_record(0.5, s, 0.6, 0.7 + 0.02 * s, eval_mode) for s in range(2)] + [_record(0.0, 0, 0.8, 0.6, eval_mode)]
    assert dropout_sweep.train_source(records) == "final_train"
    rows = dropout_sweep.gap_rows(records, "final_train")
    assert [r["rate"] for r in rows] == [0.0, 0.5]
    assert rows[1]["acc_gap"]["mean"] == pytest.approx(0.9 - 0.71) and rows[1]["loss_gap"]["mean"] == pytest.approx(-1.0)
    assert dropout_sweep.best_row(rows)["rate"] == 0.5
    records[0]["final_train"] = None
    assert dropout_sweep.train_source(records) == "epochs"
    assert dropout_sweep.gap_rows(records, "epochs")[0]["acc_gap"]["mean"] == pytest.approx(0.2)


def test_batchnorm_trains_three_configurations_in_two_groups(tmp_path):
    out = run("batchnorm", *SYNTH, "--compare_dropout=0.6", f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "group 1/2] 2 runs" in out.stdout and "group 2/2] 4 runs" in out.stdout  # baseline + dropout share one
    study = tmp_path / "batchnorm"
    summary = json.loads((study / "summary.json").read_text())
    assert list(summary["configs"]) == ["BatchNormNet", "BaselineNet", "DropoutNet p=0.6"]
    assert all(c["n_done"] == 2 for c in summary["configs"].values())
    config = {r["run_id"]: r for r in json.loads((study / "config.json").read_text())["runs"]}
    assert config["BatchNormNet,seed=0"]["model"]["norm"] == "batch"
    assert config["BaselineNet,seed=0"]["model"]["norm"] == "none" and config["BaselineNet,seed=0"]["dropout"] == 0
    assert config["DropoutNet p=0.6,seed=0"]["dropout"] == pytest.approx(0.6)
    for name in ("val_comparison", "test_table", "curves_BatchNormNet", "curves_BaselineNet"):
        assert (study / "figures" / f"{name}.png").stat().st_size > 10_000, name
    assert "| BatchNormNet |" in (study / "test_table.md").read_text()


def test_batchnorm_refuses_norm_and_dropout_flags(tmp_path):
    out = run("batchnorm", "--dataset=synthetic", "--norm=batch", f"--results_dir={tmp_path}/results")
    assert out.returncode == 2 and out.stderr.startswith("error: --norm/--dropout")
    assert out.stderr.strip().count("\n") == 0 and not (tmp_path / "results").exists()
