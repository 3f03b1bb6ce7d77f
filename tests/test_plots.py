"""Tests for cifar_jax.plots.charts: every figure is a readable PNG, also with diverged runs and no validation split."""

import json
import math

import matplotlib.image
import numpy as np
import pytest

from cifar_jax.io import files
from cifar_jax.plots import charts
from cifar_jax.results import run_record, summary
from experiments import grid_study, lr_schedule, lr_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_record(config_name="lr=0.1", seed=0, lr=0.1, status="done", n_epochs=8, val=True):
    """A synthetic run record with noisy decreasing loss and rising accuracy."""
    rng = np.random.default_rng(seed)
    epochs = []
    for e in range(1, n_epochs + 1):
        loss = 2.3 * math.exp(-0.2 * e) + 0.05 * rng.random()
        entry = {"epoch": e, "lr": lr / (1 + 0.25 * (e - 1)), "train_loss": loss, "train_acc": 0.9 - loss / 3,
                 "train_top5": 0.95, "seconds": 1.0}
        if val:
            entry.update(val_loss=loss + 0.1, val_acc=0.85 - loss / 3, val_top5=0.9)
        else:
            entry.update(val_loss=float("nan"))
        epochs.append(entry)
    diverged_epoch = None
    if status == "diverged":
        diverged_epoch = 4
        for entry in epochs[diverged_epoch - 1:]:
            entry.update(train_loss=float("nan"), val_loss=float("nan"), train_acc=0.1, val_acc=0.1)
        epochs[diverged_epoch - 2]["train_loss"] = 40.0
    return {"run_id": f"{config_name},seed={seed}", "config_name": config_name, "seed": seed,
            "config": {"lr": lr, "seed": seed, "num_classes": 10}, "status": status,
            "diverged_epoch": diverged_epoch, "untrained": {"val": {"loss": 2.3, "acc": 0.1, "top5": 0.5}},
            "epochs": epochs,
            "test": {"loss": 1.0 + 0.1 * seed, "acc": 0.6 + 0.01 * seed, "top5": 0.9} if status == "done" else None,
            "final_train": None}


def assert_png(path):
    """The file is a non-empty PNG that matplotlib reads back as an image."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


@pytest.fixture
def config_with_diverged():
    return [make_record(seed=s) for s in range(3)] + [make_record(seed=3, status="diverged")]


def test_curve_and_mean_std():
    rec = make_record(n_epochs=3, val=False)
    assert run_record.curve(rec, "val_acc").shape == (3,) and np.isnan(run_record.curve(rec, "val_acc")).all()
    mean, std = charts.mean_std([np.array([1.0, 2.0, 3.0]), np.array([3.0, np.nan])])
    np.testing.assert_allclose(mean, [2.0, 2.0, 3.0])
    np.testing.assert_allclose(std, [np.std([1.0, 3.0], ddof=1), 0.0, 0.0])


def test_moving_average_shrinks_at_edges():
    y = np.array([0.0, 3.0, 6.0, 9.0])
    np.testing.assert_allclose(charts.moving_average(y, 3), [1.5, 3.0, 6.0, 7.5])
    np.testing.assert_allclose(charts.moving_average(y, 1), y)
    np.testing.assert_allclose(charts.moving_average(y[:1], 5), [0.0])


def test_four_panel(tmp_path, config_with_diverged):
    assert_png(charts.four_panel(config_with_diverged, tmp_path / "four.png", "BaselineNet, lr=0.1"))
    no_val = [make_record(seed=s, val=False) for s in range(2)]
    assert_png(charts.four_panel(no_val, tmp_path / "four_noval.png", "no validation split"))


def test_val_comparison(tmp_path, config_with_diverged):
    by_config = {"lr=0.1": config_with_diverged,
                 "lr=0.05": [make_record("lr=0.05", s, lr=0.05, n_epochs=3) for s in range(2)],
                 "no val": [make_record("no val", 0, val=False)]}
    assert_png(charts.val_comparison(by_config, tmp_path / "cmp.png", "LR sweep"))


def test_test_table(tmp_path, config_with_diverged):
    records = config_with_diverged + [make_record("lr=0.05", s, lr=0.05) for s in range(2)]
    assert_png(charts.test_table(summary.summarize(records), tmp_path / "table.png", "Test results"))


def test_schedule_shapes(tmp_path):
    t = np.arange(50)
    curves = {"inverse-time": 0.1 / (1 + 0.25 * t), "exponential": 0.1 * 0.95 ** t,
              "step": 0.1 * 0.5 ** (t // 15), "linear": 0.1 * (1 - t / 50),
              "cosine": 0.05 * (1 + np.cos(np.pi * t / 50))}
    assert_png(lr_schedule.schedule_shapes(curves, tmp_path / "shapes.png", "Decay shapes"))


def test_class_distribution(tmp_path):
    rng = np.random.default_rng(0)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    labels = {"train": rng.integers(0, 10, 4500), "val": rng.integers(0, 10, 500), "test": rng.integers(0, 10, 1000)}
    assert_png(charts.class_distribution(labels, classes, tmp_path / "classes.png"))
    with pytest.raises(files.ResultsError, match="labels"):
        charts.class_distribution({"train": np.array([10])}, classes, tmp_path / "bad.png")


def test_lr_range_and_lr_curves(tmp_path):
    records = [make_record(f"lr={lr:g}", s, lr=lr, n_epochs=3, status="diverged" if lr > 0.2 else "done")
               for lr in (0.5, 0.3, 0.1, 1e-2, 1e-4, 1e-6) for s in range(2)]
    assert_png(lr_sweep.lr_range(records, tmp_path / "range.png"))
    no_val = [make_record(f"lr={lr:g}", 0, lr=lr, val=False) for lr in (0.1, 0.01)]
    assert_png(lr_sweep.lr_range(no_val, tmp_path / "range_noval.png"))
    assert_png(charts.lr_curves(records, tmp_path / "lrs.png"))


# ----------------------------------------------------------------------------- diverged runs (issue 11)

def diverged_at(record: dict, epoch: int) -> dict:
    """The record as a run that diverged at `epoch` stores it (non-finite numbers are null on disk)."""
    nan = float("nan")
    for entry in record["epochs"][epoch - 1:]:
        entry.update(train_loss=nan, val_loss=nan, train_acc=nan, val_acc=nan)
    record.update(status="diverged", diverged_epoch=epoch, test={"loss": nan, "acc": nan, "top5": nan})
    return json.loads(files.to_json(record))


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions build, in order (instead of their PNG files)."""
    figures = []
    monkeypatch.setattr(charts, "write", lambda fig, path, crop=False: figures.append(fig) or path)
    return figures


def legend(fig) -> list[str]:
    return [t.get_text() for lg in fig.legends for t in lg.get_texts()]


def test_curves_show_a_diverged_run_up_to_its_divergence(tmp_path, drawn):
    all_diverged = [diverged_at(make_record(seed=s), 1) for s in range(2)]
    charts.four_panel(all_diverged, tmp_path / "a.png", "all diverged at once")
    texts = [t.get_text() for ax in drawn[0].axes for t in ax.texts]
    assert texts == ["all 2 seeds diverged at epochs 1, 1"] * 4  # not "no data (no validation split?)"
    some = [make_record(seed=0), diverged_at(make_record(seed=1), 3)]
    charts.four_panel(some, tmp_path / "b.png", "one diverged")
    assert "seed 1 diverged at epoch 3" in legend(drawn[1])
    val_acc = drawn[1].axes[3]
    dashed = [line for line in val_acc.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and np.isfinite(dashed[0].get_ydata()).sum() == 2  # epochs 1-2, before it diverged


def test_comparisons_keep_configurations_whose_seeds_diverged(tmp_path, drawn):
    by_config = {"lr=1": [diverged_at(make_record("lr=1", s, lr=1.0), 1 + s) for s in range(2)],
                 "lr=0.5": [make_record("lr=0.5", 0, lr=0.5), diverged_at(make_record("lr=0.5", 1, lr=0.5), 3)],
                 "lr=0.1": [make_record("lr=0.1", s) for s in range(2)]}
    charts.val_comparison(by_config, tmp_path / "cmp.png", "LR sweep")
    assert legend(drawn[0]) == ["lr=1 (all 2 seeds diverged at epochs 1, 2)",
                                "lr=0.5 (n=1, 1 of 2 seeds diverged at epoch 3)", "lr=0.1 (n=2)"]
    grid_study.training_comparison(by_config, tmp_path / "train.png", "Optimisers")
    assert "lr=1 (all 2 seeds diverged at epochs 1, 2)" in legend(drawn[1])


def test_comparison_smoothing_adapts_to_short_runs(tmp_path, drawn):
    for epochs in (8, 12, 50):
        charts.val_comparison({"a": [make_record(n_epochs=epochs)]}, tmp_path / "cmp.png", "t", smooth=5)
    titles = [fig._suptitle.get_text() for fig in drawn]
    assert "moving average" not in titles[0]  # 8 epochs: no smoothing
    assert "centred 2-epoch" in titles[1] and "centred 5-epoch" in titles[2]


def test_accuracy_against_shows_every_seed_and_puts_exploding_losses_on_a_log_axis(tmp_path, drawn):
    """seeds/004's weight-scale panels: a final loss that explodes to 1e7 at large scales gets a log
    axis (not a linear one up to 1.7e7), and seeds that split into learners and non-learners are
    drawn as dots beside the mean ± std bar that would cross chance."""
    stat = lambda values: summary.statistics(values)
    rows = [{"config": f"init_scale={s:g}", "values": {"init_scale": s},
             "best_train_acc": stat([0.9, 0.1] if s == 0.1 else [0.5, 0.52]),
             "best_val_acc": stat([0.4, 0.41]), "final_train_loss": stat([loss, loss * 1.1])}
            for s, loss in ((1e-3, 2.3), (1e-2, 1.0), (1e-1, 1.5), (1.0, 1.7e7))]
    charts.accuracy_against(rows, "init_scale", tmp_path / "best.png", "weight scale", panels=charts.BEST_PANELS)
    train_ax, _, loss_ax = drawn[0].axes[:3]
    assert loss_ax.get_yscale() == "log" and train_ax.get_yscale() == "linear" and train_ax.get_xscale() == "log"
    dots = np.concatenate([c.get_offsets() for c in train_ax.collections if len(c.get_offsets()) == 8])
    assert sorted(dots[:, 1].round(1).tolist()) == [10.0, 50.0, 50.0, 50.0, 52.0, 52.0, 52.0, 90.0]
