"""seeds/000 §2.1: dropout-rate sweep of BaselineNet (dropout on fc1; 5 rates × 5 seeds, one
group, 25,000/25,000 split), plus the generalisation gap (train − validation) per rate at the end
of training and the rate with the best mean final validation accuracy.

    python -m experiments.dropout_sweep --flagfile=experiments/flags/dropout_sweep.flags

The train metrics of the gap are the last epoch's running averages (train mode, dropout on);
with --eval_train every run also has an eval-mode pass over the training split, which is used
instead. generalisation_gap.md/.json and figures/generalisation_gap.png say which one.
"""
from __future__ import annotations

import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
import numpy as np

from cifar_jax.io.files import ResultsError
from cifar_jax.plots import charts
from cifar_jax.results import run_record, studydir, summary
from cifar_jax.study import cli, config, progress, runner

TRAIN_SOURCES = {
    "final_train": "eval-mode pass over the training split after the last epoch (--eval_train)",
    "epochs": "running averages over the last epoch's batches (train mode, dropout active)",
}
GAPS = (("acc_gap", "train_acc", "val_acc"), ("loss_gap", "train_loss", "val_loss"))
FINAL = ("train_acc", "val_acc", "train_loss", "val_loss")


def train_source(records: list[dict]) -> str:
    """'final_train' when every run has eval-mode train metrics, else 'epochs' (one source for all runs)."""
    return "final_train" if records and all(run_record.final(r, "train") for r in records) else "epochs"


def final_metrics(record: dict, source: str) -> dict[str, float | None]:
    """Final train/val loss and accuracy of one run (None where not finite), train from `source`."""
    last = summary.metric_values(record)
    values = {k: last[k] for k in FINAL}
    if source == "final_train":
        train = run_record.final(record, "train")
        values["train_acc"], values["train_loss"] = train["acc"], train["loss"]
    return {k: v if v is not None and math.isfinite(v) else None for k, v in values.items()}


def gap_rows(records: list[dict], source: str) -> list[dict]:
    """Per configuration (ascending rate): final metrics and train − val gaps, statistics across done seeds."""
    rows = []
    for name, group in run_record.group_by_config(records).items():
        done = [final_metrics(r, source) for r in group if r["status"] == "done"]
        row = {"rate": group[0]["config"]["dropout"], "config": name, "n_runs": len(group)}
        for gap, train, val in GAPS:
            row[gap] = summary.statistics([m[train] - m[val] for m in done if None not in (m[train], m[val])])
        for key in FINAL:
            row[key] = summary.statistics([m[key] for m in done if m[key] is not None])
        rows.append(row)
    return sorted(rows, key=lambda r: r["rate"])


def best_row(rows: list[dict]) -> dict | None:
    """The configuration with the highest mean final validation accuracy (None when none has one)."""
    scored = [r for r in rows if r["val_acc"]["mean"] is not None]
    return max(scored, key=lambda r: r["val_acc"]["mean"]) if scored else None


def gap_markdown(rows: list[dict], best: dict | None, source: str) -> str:
    """The gap table (best rate's validation accuracy in bold) with the train-metric source and best rate."""
    lines = ["# Dropout sweep: generalisation gap at the end of training (mean ± std over seeds)", "",
             f"Gap = train − validation at the final epoch. Train metrics: {TRAIN_SOURCES[source]}.", "",
             "| dropout | config | train acc (%) | val acc (%) | acc gap (pp) | train loss | val loss | loss gap | n |",
             "|---:|:---|---:|---:|---:|---:|---:|---:|:---|"]
    for r in rows:
        cells = [summary.format_stat(k, r[k]) for k in ("train_acc", "val_acc", "acc_gap", "train_loss",
                                                        "val_loss", "loss_gap")]
        if r is best:
            cells[1] = f"**{cells[1]}**"
        n = f"{r['acc_gap']['n']}/{r['n_runs']}"
        lines.append(f"| {r['rate']:g} | {r['config']} | " + " | ".join(cells) + f" | {n} |")
    verdict = ("no configuration has a validation accuracy" if best is None else
               f"best rate: **{best['rate']:g}** (highest mean final validation accuracy, "
               f"{summary.format_stat('val_acc', best['val_acc'])}%)")
    return "\n".join(lines + ["", verdict]) + "\n"


def write_gap(st: studydir.StudyDir, records: list[dict]) -> dict:
    """Write generalisation_gap.md/.json and its figure, print the table; returns the JSON object."""
    source = train_source([r for r in records if r["status"] == "done"])
    rows = gap_rows(records, source)
    best = best_row(rows)
    out = {"gap": "train - validation, final epoch", "train_metrics": source,
           "train_metrics_note": TRAIN_SOURCES[source], "best_rate": None if best is None else best["rate"],
           "best_config": None if best is None else best["config"], "rows": rows}
    st.write_json("generalisation_gap.json", out)
    text = gap_markdown(rows, best, source)
    st.write_text("generalisation_gap.md", text)
    generalisation_gap(rows, st.figures_dir / "generalisation_gap.png",
                       "Dropout sweep: generalisation gap at the end of training (train side: "
                       + ("eval-mode pass)" if source == "final_train" else "running averages)"))
    progress.log("\n" + text)
    return out


def main(cfg: config.Config) -> None:
    runner.run(cfg, "dropout_sweep", "Dropout sweep",
               lambda p: config.grid(cfg, len(p.train_idx), p.dataset.num_classes), analysis=write_gap)


# ----------------------------------------------------------------------------- figures

def _gap_panel(ax: Axes, rows: list[dict], key: str, scale: float, color: tuple) -> None:
    """One gap against the dropout rate: mean ± std across seeds as error bars, each seed a faint dot."""
    kept = [r for r in rows if r[key]["mean"] is not None]
    if not kept:
        charts.no_data(ax, "no finished runs")
        return
    for r in kept:
        seeds = scale * np.asarray(r[key]["values"], dtype=np.float64)
        ax.scatter(np.full(seeds.size, r["rate"]), seeds, s=14, color=color, alpha=0.35, label="seed")
    rates = np.array([r["rate"] for r in kept])
    ax.errorbar(rates, [scale * r[key]["mean"] for r in kept], yerr=[scale * r[key]["std"] for r in kept],
                fmt="-o", color=color, lw=2, ms=5, capsize=4, label="mean ± std across seeds")
    ax.axhline(0.0, color="0.3", lw=1, ls=":")
    ax.set_xticks(np.unique(rates))


@charts.styled
def generalisation_gap(rows: list[dict], path: Path | str, title: str) -> Path:
    """Final train − val accuracy and loss gaps vs dropout rate (rows: rate, acc_gap and loss_gap statistics)."""
    if not rows:
        raise ResultsError("generalisation_gap: no rows")
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2, sharex=True)
    _gap_panel(ax_acc, rows, "acc_gap", 100.0, charts.PALETTE[0])
    _gap_panel(ax_loss, rows, "loss_gap", 1.0, charts.PALETTE[1])
    return charts.finish_pair(fig, title, "dropout rate", ((ax_acc, "Accuracy gap (train − val)", "percentage points"),
                                                           (ax_loss, "Loss gap (train − val)", "cross-entropy difference")), path)


if __name__ == "__main__":
    cli.main(main, {})
