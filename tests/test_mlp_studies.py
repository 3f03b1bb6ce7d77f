"""The MLP studies' analysis (seeds/002, 003, 004): the option a figure puts on its x axis, accuracy
at chosen epochs, the depth × width verdict and heatmap, and one smoke section of each report."""
import json
from pathlib import Path
import sys

import numpy as np
import pytest

from cifar_jax.results import run_record

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import grid_study, mlp_grid  # noqa: E402
from conftest import reproduce_in_process  # noqa: E402


def record(name, seed, config, epochs, status="done"):
    return {"run_id": f"{name},seed={seed}", "config_name": name, "seed": seed, "status": status,
            "config": {"lr": 0.1, "batch_size": 64, "clip_norm": None, **config}, "epochs": epochs}


def test_the_varying_option_is_one_that_varies_within_a_line():
    recs = [record(f"norm={n},init_scale={s}", 0, {"init_scale": s, "norm": n}, []) for n in ("a", "b")
            for s in (0.1, 0.01)]
    assert grid_study.varying_option(recs) == "init_scale"
    per_optimizer = [record(f"optimizer={o},lr={lr}", 0, {"lr": lr}, []) for o, lr in (("sgd", 0.1), ("adam", 0.001))]
    assert grid_study.varying_option(per_optimizer) is None  # one learning rate per line: nothing to plot against
    sizes = [record(f"batch_size={b}", 0, {"batch_size": b}, []) for b in (1, 16, 256)]
    assert grid_study.varying_option(sizes) == "batch_size"


def test_accuracy_at_chosen_epochs_averages_the_seeds():
    epochs = lambda accs: [{"epoch": i + 1, "test_acc": a, "val_acc": a, "train_acc": a} for i, a in enumerate(accs)]
    recs = [record("net", 0, {}, epochs([0.1, 0.2, 0.3])), record("net", 1, {}, epochs([0.3, 0.4, 0.5]))]
    text = grid_study.at_epochs_markdown(recs, [1, 3, 5], "T")
    assert "| net | test | 20.00 ± 14.14 | 40.00 ± 14.14 | – |" in text


def _curves(val_loss, train_loss, train_acc, val_acc):
    return [{"epoch": i + 1, "val_loss": v, "train_loss": t, "train_eval_acc": train_acc, "val_acc": val_acc}
            for i, (v, t) in enumerate(zip(val_loss, train_loss))]


def test_the_grid_verdict_follows_its_rules():
    over = [record("n", 0, {}, _curves([1.5, 1.2, 1.4], [1.5, 1.0, 0.6], 0.9, 0.5))]
    assert mlp_grid.verdict(over)[0] == "overfits"
    under = [record("n", 0, {}, _curves([2.0, 1.8, 1.7], [2.0, 1.8, 1.7], 0.40, 0.39))]
    word, facts = mlp_grid.verdict(under)
    assert word == "underfits" and facts["gap_points"] == pytest.approx(1.0)
    fine = [record("n", 0, {}, _curves([2.0, 1.8, 1.79], [2.0, 1.8, 1.7], 0.45, 0.40))]
    assert mlp_grid.verdict(fine)[0] == "neither over- nor underfits"


def test_heatmap_writes_a_png_with_blank_cells(tmp_path):
    values = np.array([[50.0, 52.5], [np.nan, 48.0]])
    path = mlp_grid.heatmap(values, ["1", "2"], ["64", "128"], tmp_path / "h.png", "grid", "depth", "width")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_one_smoke_section_of_seed003_and_seed004_runs(tmp_path):
    """The depth × width grid (seeds/003) and the 50-image overfit grid (seeds/004) end to end on
    synthetic data, then their reports."""
    for report, section in (("seed003", "6.2"), ("seed004", "1.1")):
        reproduce_in_process(report, [section], tmp_path, "--dataset=synthetic")
    grid = json.loads((tmp_path / "seed003_grid_smoke" / "grid.json").read_text())
    assert np.array(grid["val_acc"]).shape == (2, 2) and grid["verdict"]
    assert "grid_val_acc.png" in (tmp_path / "seed003_report_smoke" / "report.md").read_text()
    rows = json.loads((tmp_path / "seed004_overfit_smoke" / "configs.json").read_text())
    assert len(rows) == 6 and {r["values"]["init_scale"] for r in rows} == {0.05, 0.01}
    report = (tmp_path / "seed004_report_smoke" / "report.md").read_text()
    assert "training_comparison.png" in report and "best_vs_" not in report  # two options vary: no x axis


def _mlp_run(seed: int, test_acc: float, status: str = "done") -> dict:
    """A (50, 50) MLP run at normal(σ) init that ended at `test_acc` (untrained loss ln 10)."""
    config = {"model": {"hidden": [50, 50], "norm": "none", "init": "normal", "num_classes": 10},
              "init_scale": 0.001, "l2": 0.005, "dropout": 0.0, "noise_std": 0.0, "salt_pepper": 0.0}
    loss = 2.3026 if test_acc < 0.11 else 1.5
    rec = record("init_scale=0.001", seed, config, [{"epoch": 1, "train_loss": loss, "val_acc": test_acc,
                                                     "val_loss": loss, "train_acc": test_acc}], status)
    rec["untrained"] = {"val": {"loss": 2.302585, "acc": 0.1, "top5": 0.5}}
    rec["test"] = None if status == "diverged" else {"loss": loss, "acc": test_acc, "top5": 0.5}
    return rec


def test_seeds_at_chance_are_counted_per_configuration():
    """seeds/002's small-σ nets without BN: some seeds never leave the uniform prediction, others
    learn; the table says how many stayed at chance (a diverged run is not one of them)."""
    recs = [_mlp_run(0, 0.1), _mlp_run(1, 0.45), _mlp_run(2, 0.1), _mlp_run(3, 0.1049), _mlp_run(4, 0.1, "diverged")]
    assert [run_record.at_chance(r) for r in recs] == [True, False, True, True, False]
    assert [run_record.failed(r) for r in recs] == [True, False, True, True, True]  # stuck runs end at ln 10
    (row,) = grid_study.config_rows(recs)
    assert row["n_at_chance"] == 3 and row["test_acc"]["n"] == 4 and row["n_above_uniform"] == 0
    assert "| 3/4 | 0/4 | 4/5, 1 diverged |" in grid_study.configs_markdown([row], "T")
    exploded = _mlp_run(5, 0.13)
    exploded["epochs"][-1]["train_loss"] = 1.7e7  # seeds/004 at weight scale 1: no overflow, a huge loss
    assert run_record.worse_than_uniform(exploded)
    assert not any(map(run_record.worse_than_uniform, recs))  # stuck at ln 10, learned, or diverged
    (row,) = grid_study.config_rows([exploded, recs[1]])
    assert "| 0/2 | 1/2 | 2/2 |" in grid_study.configs_markdown([row], "T")
    without_val = {**recs[1], "epochs": [{"epoch": 1, "train_loss": 1.5}], "untrained": {"test": {"loss": 2.3}}}
    assert not run_record.failed(without_val)  # the untrained test loss is the reference without a validation split
