"""seeds/003's depth × width grid of MLPs: every --depths × --widths net (that many hidden layers,
each that wide; one group each) × seeds, the flags' protocol otherwise. Its analysis: the
grid_study tables and figures, a heatmap of validation accuracy (and of the train − validation
gap), the net chosen by validation accuracy, and whether it over- or underfits:

- overfits: its validation loss ended ≥ 5% above its minimum over the epochs, or its final
  training accuracy (eval mode) is ≥ 10 points above its validation accuracy;
- underfits: otherwise, when the gap is < 2 points and its training loss still fell by ≥ 1% in
  the last epoch (more capacity or epochs would still pay);
- neither, otherwise.

    python -m experiments.mlp_grid --flagfile=experiments/flags/seed003_grid.flags
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure
import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.plots import charts
from cifar_jax.results import run_record, studydir, summary
from cifar_jax.study import cli, config, progress, runner
from experiments import grid_study

TITLE = "MLP depth × width (seeds/003)"


def _net(text: str) -> tuple[int, int]:
    """One --nets entry, DEPTHxWIDTH, as (depth, width)."""
    net = tuple(int(x) for x in text.lower().split("x"))
    if len(net) != 2 or min(net) < 1:
        raise ValueError("give DEPTHxWIDTH pairs of integers >= 1, e.g. 6x32")
    return net


OPTIONS = table(
    *grid_study.OPTIONS.values(),  # the shared MLP protocols set --cycles and --title
    Option("depths", (1, 2, 3, 4, 6), "Numbers of hidden layers.", kind="int", many=True, low=1),
    Option("widths", (32, 64, 128, 256, 512), "Widths of every hidden layer.", kind="int", many=True, low=1),
    Option("nets", (), "Further nets beside the grid, each DEPTHxWIDTH (e.g. 6x32,10x16: the source's best and worst); "
           "in the tables, not in the heatmaps.", kind="str", many=True, convert=_net),
)


def verdict(records: list[dict]) -> tuple[str, dict]:
    """Over-, underfit or neither for one configuration's seeds (the rules in the module docstring)."""
    mean = lambda key: float(np.nanmean([run_record.curve(r, key)[-1] for r in records]))
    val_loss = np.nanmean([run_record.curve(r, "val_loss") for r in records], axis=0)
    train_loss = np.nanmean([run_record.curve(r, "train_loss") for r in records], axis=0)
    train_key = "train_eval_acc" if np.isfinite(run_record.curve(records[0], "train_eval_acc")).any() else "train_acc"
    facts = {"gap_points": 100 * (mean(train_key) - mean("val_acc")),
             "val_loss_rise": float(val_loss[-1] / np.nanmin(val_loss) - 1),
             "last_train_loss_drop": float(1 - train_loss[-1] / train_loss[-2]) if len(train_loss) > 1 else 0.0}
    if facts["val_loss_rise"] >= 0.05 or facts["gap_points"] >= 10:
        return "overfits", facts
    if facts["gap_points"] < 2 and facts["last_train_loss_drop"] >= 0.01:
        return "underfits", facts
    return "neither over- nor underfits", facts


def analyse(st: studydir.StudyDir, records: list[dict], depths: tuple[int, ...], widths: tuple[int, ...],
            at_epochs: tuple[int, ...] = ()) -> None:
    """The grid_study analysis, the heatmaps, the net chosen by validation accuracy (of the grid and
    any --nets) and its verdict (grid.md)."""
    grid_study.analyse(st, records, 0, TITLE, at_epochs)
    rows = {tuple(r["options"]["hidden"]): r for r in grid_study.config_rows(records)}
    stat = lambda d, w, key: rows.get((w,) * d, {}).get(key, {}).get("mean")
    val = np.array([[np.nan if stat(d, w, "val_acc") is None else 100 * stat(d, w, "val_acc") for w in widths]
                    for d in depths])
    gap = np.array([[np.nan if None in (stat(d, w, "train_acc"), stat(d, w, "val_acc"))
                     else 100 * (stat(d, w, "train_acc") - stat(d, w, "val_acc")) for w in widths] for d in depths])
    heatmap(val, [str(d) for d in depths], [str(w) for w in widths], st.figures_dir / "grid_val_acc.png",
            f"{TITLE}: final validation accuracy (%)", "hidden layers", "width")
    heatmap(gap, [str(d) for d in depths], [str(w) for w in widths], st.figures_dir / "grid_gap.png",
            f"{TITLE}: train (eval mode) − validation accuracy (points)", "hidden layers", "width")
    scored = [r for r in rows.values() if r["val_acc"]["mean"] is not None]  # the grid and any --nets
    if not scored:
        return
    best = max(scored, key=lambda r: r["val_acc"]["mean"])
    word, facts = verdict(run_record.group_by_config(records)[best["config"]])
    text = (f"# {TITLE}: the net chosen by validation accuracy\n\n"
            f"**{len(best['options']['hidden'])} hidden layer(s) of {best['options']['hidden'][0]}** ({best['config']}): validation "
            f"{summary.format_stat('val_acc', best['val_acc'])}%, test {summary.format_stat('test_acc', best['test_acc'])}%, "
            f"training (eval mode) {summary.format_stat('train_acc', best['train_acc'])}%.\n\n"
            f"Verdict: it **{word}** (train − validation gap {facts['gap_points']:.1f} points; final validation "
            f"loss {100 * facts['val_loss_rise']:.1f}% above its minimum; training loss fell "
            f"{100 * facts['last_train_loss_drop']:.1f}% in the last epoch). Rules: overfits when the validation "
            "loss ended ≥ 5% above its minimum or the gap is ≥ 10 points; underfits when the gap is < 2 points and "
            "the training loss still fell ≥ 1% in the last epoch.\n")
    st.write_text("grid.md", text)
    st.write_json("grid.json", {"depths": depths, "widths": widths, "val_acc": val.tolist(), "gap": gap.tolist(),
                                "best": best["config"], "verdict": word, **facts})
    progress.log("\n" + text)


def main(cfg: config.Config) -> None:
    """Every net of the grid (and --nets), trained, and the grid's analysis."""
    depths, widths = cfg.own.depths, cfg.own.widths
    if not depths or not widths:
        raise config.ConfigError("--depths/--widths: give one or more integers >= 1 each")
    cfg.single_group("the grid sets the architectures (--depths, --widths, --nets)")
    shapes = list(dict.fromkeys([(d, w) for d in depths for w in widths] + list(cfg.own.nets)))
    nets = [dataclasses.replace(cfg.model, hidden=(w,) * d) for d, w in shapes]
    grid_cfg = cfg.vary("model", nets)
    runner.run(grid_cfg, "mlp_grid", TITLE, lambda p: grid_study.grid_runs(grid_cfg, p, 0),
               analysis=lambda st, records: analyse(st, records, depths, widths, cfg.own.at_epochs))


# ----------------------------------------------------------------------------- figures

@charts.styled
def heatmap(values: np.ndarray, rows: Sequence[str], columns: Sequence[str], path: Path | str, title: str,
            row_label: str, column_label: str) -> Path:
    """A grid of numbers (rows × columns) as colours with each value written in its cell; the
    highest cell outlined (NaN cells are left blank)."""
    fig = Figure(figsize=(1.3 * len(columns) + 2.5, 0.9 * len(rows) + 1.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax)
    finite = np.isfinite(values)
    top = np.unravel_index(np.nanargmax(values), values.shape) if finite.any() else None
    spread = np.nanmax(values) - np.nanmin(values) if finite.any() else 0.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            light = spread == 0 or v < np.nanmin(values) + 0.6 * spread
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="white" if light else "black", fontsize=10)
    if top is not None:
        ax.add_patch(matplotlib.patches.Rectangle((top[1] - 0.5, top[0] - 0.5), 1, 1, fill=False, lw=2.5,
                                                  edgecolor="red"))
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(column_label)
    ax.set_ylabel(row_label)
    ax.grid(False)
    ax.set_title(title)
    return charts.save(fig, path)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
