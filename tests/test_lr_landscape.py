"""The LR landscape (experiments.lr_landscape): end to end on synthetic data, the boundary and
best-LR rules on hand-made records, and bad grid flags."""
import json
from pathlib import Path
import re

from conftest import Finished, run_experiment  # noqa: E402
import pytest

from cifar_jax.results import run_record
from experiments import lr_landscape

ROOT = Path(__file__).resolve().parents[1]
# an MLP keeps this fast on 2 cores; the experiment's code path is the same for BaselineNet
SYNTH = ["--dataset=synthetic", "--split=512/256", "--batch_size=64", "--epochs=2", "--seeds=2",
         "--model=mlp", "--hidden=16", "--init=he"]
GRID = ["--landscape_min=0.01", "--landscape_max=30", "--landscape_points=4"]  # 30 diverges
LRS = [0.01, 0.144, 2.08, 30.0]


def run(*args: str) -> Finished:
    return run_experiment("lr_landscape", *args)


def test_landscape_writes_figure_table_and_boundary(tmp_path):
    out = run(*SYNTH, *GRID, "--lr=0.5", f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "--lr is ignored" in out.stdout and "group 1/1] 8 runs" in out.stdout  # one group of 4 LRs x 2 seeds
    study = tmp_path / "lr_landscape"
    assert (study / "figures" / "lr_landscape.png").stat().st_size > 10_000
    assert not (study / "figures" / "val_comparison.png").exists()  # no forty-line figures
    summary = json.loads((study / "summary.json").read_text())
    assert list(summary["configs"]) == [f"lr={lr:g}" for lr in LRS]
    assert "| lr=30 |" in (study / "test_table.md").read_text()

    table = (study / "landscape.md").read_text()
    rows = re.findall(r"^\| (\**[\d.e+-]+\**) \| \**(\d+)\** \| \**(\d+)\** \|", table, re.M)
    assert [float(lr.strip("*")) for lr, _, _ in rows] == LRS
    assert all(seeds == "2" for _, seeds, _ in rows)
    assert rows[-1][2] == "2"  # both seeds of lr 30 diverged
    assert sum(lr.startswith("**") for lr, _, _ in rows) == 1  # the best LR, bold

    land = json.loads((study / "landscape.json").read_text())
    assert [r["lr"] for r in land["rows"]] == LRS and all(r["n_runs"] == 2 for r in land["rows"])
    assert land["rows"][-1]["n_diverged"] == 2 and land["rows"][-1]["val_acc"]["n"] == 0
    best, edge = land["best_lr"], land["boundary"]
    assert best in LRS and edge in LRS and edge > best
    assert f"**{best:.3g}**" in table and f"divergence boundary: lr **{edge:.3g}**" in table
    assert f"best LR (highest mean validation accuracy): {best:.3g}" in out.stdout
    assert f"divergence boundary: lr {edge:.3g}" in out.stdout
    assert (study / "figures" / f"curves_lr={best:g}.png").exists()


def _rec(lr: float, seed: int, *, status: str = "done", loss: float = 1.0, val_acc: float = 0.5) -> dict:
    """A finished run: last-epoch train loss and val accuracy, untrained loss 2.3."""
    nan = float("nan")
    return {"run_id": f"lr={lr:g},seed={seed}", "config_name": f"lr={lr:g}", "seed": seed,
            "config": {"lr": lr}, "status": status, "diverged_epoch": 2 if status == "diverged" else None,
            "untrained": {"val": {"loss": 2.3, "acc": 0.1, "top5": 0.5}},
            "epochs": [{"epoch": 1, "train_loss": 2.0, "val_acc": 0.2},
                       {"epoch": 2, "train_loss": nan if status == "diverged" else loss,
                        "val_acc": val_acc, "val_loss": 1.5}],
            "test": {"loss": 1.5, "acc": val_acc - 0.01, "top5": 0.9} if status == "done" else None}


def test_boundary_is_the_smallest_mostly_failed_lr_above_the_best():
    records = [
        _rec(1e-4, 0, loss=2.31, val_acc=0.12), _rec(1e-4, 1, loss=2.35, val_acc=0.11),  # did not learn
        _rec(0.01, 0, val_acc=0.55), _rec(0.01, 1, val_acc=0.57),
        _rec(0.05, 0, val_acc=0.60), _rec(0.05, 1, val_acc=0.62),  # best
        _rec(0.1, 0, val_acc=0.70), _rec(0.1, 1, status="diverged"), _rec(0.1, 2, loss=2.4, val_acc=0.1),
        _rec(0.3, 0, val_acc=0.58), _rec(0.3, 1, val_acc=0.56), _rec(0.3, 2, status="diverged"),
        _rec(1.0, 0, status="diverged"), _rec(1.0, 1, status="diverged"),
    ]
    assert [run_record.failed(r) for r in records[:2]] == [True, True]  # ended above the untrained loss
    rows = lr_landscape.landscape_rows(records)
    assert [r["lr"] for r in rows] == [1e-4, 0.01, 0.05, 0.1, 0.3, 1.0]
    assert [(r["n_runs"], r["n_diverged"], r["n_failed"]) for r in rows] == \
        [(2, 0, 2), (2, 0, 0), (2, 0, 0), (3, 1, 2), (3, 1, 1), (2, 2, 2)]
    # 0.1 has the highest mean val accuracy of its surviving seeds (40%) but 2 of 3 seeds failed
    assert rows[3]["val_acc"]["n"] == 2 and rows[3]["val_acc"]["mean"] == pytest.approx(0.4)
    assert lr_landscape.best_lr(rows) == 0.05
    # not 1e-4 (no learning, below the best) and not 1.0 (0.1 is the first mostly-failed LR above the best)
    assert lr_landscape.boundary(rows) == 0.1
    text = lr_landscape.landscape_markdown(rows, 0.05, 0.1)
    assert "| **0.05** | **2** | **0** | **0** | **61.00 ± 1.41** |" in text
    assert "| 0.1 | 3 | 1 | 1 | 40.00 ± 42.43 |" in text and "| 1 | 2 | 2 | 0 | – | – |" in text
    assert "divergence boundary: lr **0.1** (1/3 diverged, 2/3 diverged or ended ≥ untrained loss)" in text

    stable = [r for r in records if r["config"]["lr"] < 0.1]
    assert lr_landscape.boundary(lr_landscape.landscape_rows(stable)) is None
    broken = [_rec(lr, s, status="diverged") for lr in (0.5, 1.0) for s in range(2)]
    assert lr_landscape.best_lr(lr_landscape.landscape_rows(broken)) is None
    assert lr_landscape.boundary(lr_landscape.landscape_rows(broken)) == 0.5


@pytest.mark.parametrize("flag,needle", [
    ("--landscape_points=1", "--landscape_points=1"), ("--landscape_min=0", "--landscape_min=0: must be > 0"),
    ("--landscape_min=2", "landscape_min < landscape_max"), ("--landscape_points=100000", "distinct"),
    ("--dropout=0,0.5", "--dropout"),
])
def test_bad_grid_flags_are_one_line_and_leave_nothing(tmp_path, flag, needle):
    out = run("--dataset=synthetic", f"--results_dir={tmp_path}/results", flag)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], out.stderr
    assert not (tmp_path / "results").exists()
