"""seeds/000 §1.1: learning-rate sweep of BaselineNet (5 LRs × 5 seeds, one group), and with
--lr_range the range test over a log grid from 0.5 down to 1e-6 that finds the unstable and the
no-learning ends.

    python -m experiments.lr_sweep --flagfile=experiments/flags/lr_sweep.flags
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.io.files import ResultsError
from cifar_jax.plots import charts
from cifar_jax.results import run_record, studydir
from cifar_jax.study import cli, config, prepare, progress, runner

OPTIONS = table(
    Option("lr_range", False, "Also run the LR range test (log grid from --range_max down to --range_min).", kind="bool"),
    Option("range_max", 0.5, "Largest LR of the range test.", low=0.0, low_open=True),
    Option("range_min", 1e-6, "Smallest LR of the range test (below --range_max).", low=0.0, low_open=True),
    Option("range_points", 12, "Number of LRs in the range test (log-spaced).", kind="int", low=2),
    Option("range_epochs", 2, "Epochs per range-test run.", kind="int", low=1),
)


def range_lrs(cfg: config.Config) -> tuple[float, ...]:
    """The range test's log grid, largest first."""
    own = cfg.own
    if own.range_min >= own.range_max:
        raise config.ConfigError(f"--range_min={own.range_min:g} --range_max={own.range_max:g}: need range_min < range_max")
    return tuple(float(f"{x:.3g}") for x in np.geomspace(own.range_max, own.range_min, own.range_points))


def range_ends(records: list[dict]) -> tuple[float | None, float | None]:
    """(unstable end, no-learning end): the smallest LR from which every larger LR diverged or
    ended above its untrained loss, and the largest LR below which validation accuracy gained
    less than 2 points over the untrained model."""
    rows = sorted(((r["config"]["lr"], run_record.failed(r), _gain(r)) for r in records), reverse=True)
    unstable = None
    for lr, failed, _ in rows:
        if not failed:
            break
        unstable = lr
    no_learning = None
    for lr, _, gain in reversed(rows):
        if gain >= 0.02:
            break
        no_learning = lr
    return unstable, no_learning


def _gain(rec: dict) -> float:
    val = run_record.last(rec, "val_acc")
    return float(val - run_record.untrained(rec, "val")["acc"]) if np.isfinite(val) else 0.0


def run_range_test(cfg: config.Config, prepared: prepare.Prepared, parent: studydir.StudyDir) -> None:
    """The range test: one seed per LR, all in one group, in a sub-study `range_test`; it chooses
    the sweep's LRs from training and validation numbers, so it never evaluates the test set."""
    rcfg = cfg.replace(lrs=range_lrs(cfg), epochs=cfg.own.range_epochs, seeds=cfg.seeds[:1])
    runs = config.grid(rcfg, len(prepared.train_idx), prepared.dataset.num_classes)
    sub = studydir.StudyDir(parent.root / "range_test")
    runner.execute(sub, runs, prepared.without_test(), rcfg)
    if not runner.is_lead():
        return
    records = [sub.record(r.run_id) for r in runs]
    lr_range(records, parent.figures_dir / "lr_range_test.png")
    unstable, no_learning = range_ends(records)
    lines = [f"| {r['config']['lr']:.3g} | {r['status']} | {run_record.last(r, 'train_loss'):.3f} | "
             f"{100 * run_record.last(r, 'val_acc'):.1f}% |" for r in records]
    text = ("# LR range test\n\n| lr | status | final train loss | final val acc |\n|---|---|---|---|\n"
            + "\n".join(lines) + f"\n\nunstable from lr ≥ {unstable}; no learning at lr ≤ {no_learning}\n")
    parent.write_text("range_test.md", text)
    progress.log(text)


def main(cfg: config.Config) -> None:
    """The sweep (and with --lr_range the range test first)."""
    if cfg.own.lr_range:
        range_lrs(cfg)  # validate before any work
    runner.run(cfg, "lr_sweep", "LR sweep",
               lambda p: config.grid(cfg, len(p.train_idx), p.dataset.num_classes),
               before=(lambda st, p, _: run_range_test(cfg, p, st)) if cfg.own.lr_range else None)


# ----------------------------------------------------------------------------- figures

def _final(record: dict, key: str) -> float:
    """Last-epoch value of `key` (NaN when absent)."""
    values = run_record.curve(record, key)
    return float(values[-1]) if values.size else np.nan


def _lr(record: dict) -> float:
    """The run's (initial) learning rate from its config, which must be positive for a log axis."""
    lr = record.get("config", {}).get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ResultsError(f"run {record.get('run_id')!r}: config 'lr' must be a positive number, got {lr!r}")
    return float(lr)


def _range_panel(ax: Axes, points: list[tuple[float, float, bool]], diverged_at: float, color: tuple) -> None:
    """Runs as dots, per-LR mean as a line, diverged runs as X at a fixed axes height."""
    ok = [(lr, y) for lr, y, div in points if not div and np.isfinite(y)]
    if ok:
        lrs, ys = np.array(ok).T
        ax.scatter(lrs, ys, s=18, color=color, alpha=0.5, label="run")
        grid = np.unique(lrs)
        ax.plot(grid, [ys[lrs == g].mean() for g in grid], "-o", color=color, lw=1.8, ms=4, label="mean per LR")
    bad = [lr for lr, _, div in points if div]
    if bad:
        ax.plot(bad, [diverged_at] * len(bad), "X", color=charts.PALETTE[3], ms=9, clip_on=False,
                transform=ax.get_xaxis_transform(), label="diverged")
    if not ok and not bad:
        charts.no_data(ax, "no validation data")


@charts.styled
def lr_range(records: list[dict], path: Path | str, title: str = "Learning-rate range test") -> Path:
    """Final train loss and validation accuracy against learning rate (log axis), chance level dotted."""
    if not records:
        raise ResultsError("lr_range: no records")
    diverged = [r.get("status") == "diverged" for r in records]
    lrs = [_lr(r) for r in records]
    losses = [(lr, _final(r, "train_loss"), d) for lr, r, d in zip(lrs, records, diverged)]
    accs = [(lr, 100 * _final(r, "val_acc"), d) for lr, r, d in zip(lrs, records, diverged)]
    chance = 100.0 / records[0]["config"].get("num_classes", 10)
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2, sharex=True)
    _range_panel(ax_loss, losses, 0.96, charts.PALETTE[0])
    _range_panel(ax_acc, accs, 0.04, charts.PALETTE[1])
    ax_acc.axhline(chance, ls=":", color="0.3", lw=1.5, label=f"chance ({chance:.3g}%)")
    ax_acc.set_ylim(bottom=0)  # separates the chance line from the diverged markers
    ax_loss.set_xscale("log")
    return charts.finish_pair(fig, title, "learning rate", ((ax_loss, "Final train loss", "cross-entropy loss"),
                                                            (ax_acc, "Final validation accuracy", "accuracy (%)")), path)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
