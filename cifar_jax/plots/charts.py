"""Figures more than one study draws (a figure only one study draws lives with that study) and the
shared style: each function writes one 150 dpi PNG from stored results and returns its path.

Figures are built with matplotlib's object API (`Figure`), which renders PNGs with the Agg canvas and
never touches pyplot's global backend or opens a window.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Callable, Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
import matplotlib.patches
from matplotlib.ticker import MaxNLocator
import numpy as np

from cifar_jax.io import files
from cifar_jax.io.files import ResultsError
from cifar_jax.results import run_record, summary

DPI = 150
STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
    "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
}
PALETTE = matplotlib.colormaps["tab10"].colors
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
BEST_CELL = "#c6dbef"  # light blue: visible to all common colour-vision types
HEADER_CELL = "#e6e6e6"
PANELS = (("train_loss", "Train loss"), ("val_loss", "Validation loss"),
          ("train_acc", "Train accuracy"), ("val_acc", "Validation accuracy"))


# ----------------------------------------------------------------------------- shared helpers

def mean_std(curves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware mean and sample std (ddof=1; 0 for one value) per epoch across curves of any lengths."""
    length = max((len(c) for c in curves), default=0)
    stack = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        stack[i, :len(c)] = c
    valid = np.isfinite(stack)
    count = valid.sum(axis=0)
    filled = np.where(valid, stack, 0.0)
    mean = np.where(count > 0, filled.sum(axis=0) / np.maximum(count, 1), np.nan)
    squares = np.where(valid, (stack - mean) ** 2, 0.0).sum(axis=0)
    std = np.where(count > 1, np.sqrt(squares / np.maximum(count - 1, 1)), 0.0)
    return mean, np.where(count > 0, std, np.nan)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred NaN-aware moving average whose window shrinks at the edges; window <= 1 returns a copy."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values.copy()
    valid = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(values.size)
    lo = np.maximum(idx - (window - 1) // 2, 0)
    hi = np.minimum(idx + window // 2 + 1, values.size)
    n = counts[hi] - counts[lo]
    smoothed = (sums[hi] - sums[lo]) / np.maximum(n, 1)
    return np.where(valid & (n > 0), smoothed, np.nan)


def _scale(key: str) -> float:
    """100 for accuracies (plotted in %), 1 otherwise."""
    return 100.0 if summary.is_percent(key) else 1.0


def _ylabel(key: str) -> str:
    """Axis label with units for a per-epoch metric."""
    return "accuracy (%)" if summary.is_percent(key) else "cross-entropy loss"


def diverged_at(record: dict) -> int | None:
    """The epoch at which a run diverged, None when it did not."""
    epoch = record.get("diverged_epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def diverged_note(epochs: Sequence[int], n: int) -> str:
    """Which of n seeds diverged when, e.g. 'all 3 seeds diverged at epochs 1, 1, 2'."""
    at = f"epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, sorted(epochs)))}"
    if n == 1:
        return f"diverged at {at}"
    return f"{'all' if len(epochs) == n else f'{len(epochs)} of'} {n} seeds diverged at {at}"


def pruned_note(records: Sequence[dict]) -> str:
    """'pruned at epoch r' for runs successive halving stopped ('' when none was)."""
    epochs = run_record.pruned_epochs(records)
    return f"pruned{summary.at_epochs(epochs)}" if epochs else ""


def until_divergence(record: dict, values: np.ndarray) -> np.ndarray:
    """Blank the epochs after a run diverged (its later numbers are meaningless)."""
    epoch = diverged_at(record)
    if epoch is not None:
        values = values.copy()
        values[epoch:] = np.nan
    return values


def plotted(record: dict, key: str) -> np.ndarray:
    """Curve as drawn: scaled to display units and cut at divergence."""
    return until_divergence(record, run_record.curve(record, key) * _scale(key))


def epochs_axis(values: np.ndarray) -> np.ndarray:
    """Epoch numbers 1..n for an n-epoch curve."""
    return np.arange(1, len(values) + 1)


def line_style(i: int) -> dict:
    """Colour-blind-friendly colour (tab10), with a new line style every ten series."""
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]}


def no_data(ax: Axes, text: str) -> None:
    """Mark an empty panel instead of leaving it blank."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_yticks([])


def figure_legend(fig: Figure, axes: Sequence[Axes], ncol: int = 5) -> None:
    """One legend below the panels with each label once, in at most `ncol` columns and no more than
    the figure's width holds for its longest label (about 0.6 em a character, 6 em for the handle)."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        em = STYLE["legend.fontsize"] / 72  # inches
        fits = int(fig.get_figwidth() // ((0.6 * max(map(len, handles)) + 6) * em))
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncol=max(1, min(ncol, len(handles), fits)), frameon=False)


def save(fig: Figure, path: Path | str, crop: bool = False, *, title: str | None = None,
         legend: Sequence[Axes] = (), ncol: int = 5) -> Path:
    """Give the figure its `title` and one legend of the `legend` panels (`figure_legend`), then
    `write` it."""
    if title is not None:
        fig.suptitle(title)
    if len(legend):
        figure_legend(fig, legend, ncol)
    return write(fig, path, crop)


def write(fig: Figure, path: Path | str, crop: bool = False) -> Path:
    """Render to PNG in memory (cropped to content when the figure has no layout engine), write atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight" if crop else None)
    return files.atomic_write_bytes(path, buffer.getvalue())


def styled(fn: Callable[..., Path]) -> Callable[..., Path]:
    """Run a plot function under the module's publication style."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> Path:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


# ----------------------------------------------------------------------------- per-configuration curves

def _seed_panel(ax: Axes, records: list[dict], key: str) -> None:
    """Each seed thin, the mean of the non-diverged seeds bold; a diverged seed dashed up to its
    divergence, the epoch marked by a dotted line (also where it diverged before any number)."""
    kept, diverged, drawn = [], [], False
    for i, rec in enumerate(records):
        values, epoch, color = plotted(rec, key), diverged_at(rec), PALETTE[i % len(PALETTE)]
        if epoch is not None:
            diverged.append(epoch)
            ax.axvline(epoch, color=color, ls=":", lw=1.2, label=f"seed {rec.get('seed')} diverged at epoch {epoch}")
        if not np.isfinite(values).any():
            continue
        drawn = True
        pruned = pruned_note([rec])
        ax.plot(epochs_axis(values), values, color=color, lw=1.0, alpha=0.55, ls="-" if epoch is None else "--",
                label=None if epoch else f"seed {rec.get('seed')}" + (f" ({pruned})" if pruned else ""))
        if epoch is None:
            kept.append(values)
    if kept:
        mean, _ = mean_std(kept)
        ax.plot(epochs_axis(mean), mean, color="black", lw=2.4, label=f"mean of {len(kept)} seeds")
        if diverged and not summary.is_percent(key):  # keep exploding losses from flattening the rest
            ax.set_ylim(0, 1.15 * float(np.nanmax(np.concatenate(kept))))
    elif diverged and not drawn:
        no_data(ax, diverged_note(diverged, len(records)))
    elif not diverged:
        no_data(ax, "no data (no validation split?)" if key.startswith("val") else "no data")


@styled
def four_panel(records: list[dict], path: Path | str, title: str) -> Path:
    """Train/val loss and accuracy vs epoch for the seeds of ONE configuration."""
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (key, name) in zip(axes.flat, PANELS):
        _seed_panel(ax, records, key)
        ax.set_title(name)
        ax.set_ylabel(_ylabel(key))
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    figure_legend(fig, axes.flat, ncol=4)
    return save(fig, path)


FINAL_PANELS = (("train_acc", "training (final)", "accuracy (%)"), ("val_acc", "validation (final)", "accuracy (%)"),
                ("test_acc", "test", "accuracy (%)"))
BEST_PANELS = (("best_train_acc", "best training accuracy", "accuracy (%)"),
               ("best_val_acc", "best validation accuracy", "accuracy (%)"),
               ("final_train_loss", "final training loss", "cross-entropy loss"))
BATCH_PANELS = (("test_acc", "test accuracy", "accuracy (%)"),
                ("run_seconds", "training time per epoch and run", "seconds"),
                ("loss_noise", "noise of the per-step loss (last epoch)", "RMS step-to-step change / √2"))


@styled
def accuracy_against(rows: list[dict], option: str, path: Path | str, title: str,
                     panels: Sequence[tuple[str, str, str]] = FINAL_PANELS) -> Path:
    """Statistics of each configuration (mean ± std over seeds, each seed a faint dot; `panels`:
    row key, title and y label; accuracies in %) against the per-run option that varies (`row["values"][option]`), one line
    per configuration without it (e.g. with and without BN); a log x axis when the values span a
    decade or more, a log y axis for a non-accuracy panel spanning two."""
    lines: dict[str, list[dict]] = {}
    for r in rows:
        label = ",".join(p for p in r["config"].split(",") if not p.startswith(f"{option}=")) or "all"
        lines.setdefault(label, []).append(r)
    xs = [r["values"][option] for r in rows]
    fig = Figure(figsize=(4.4 * len(panels), 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (key, name, ylabel) in zip(axes, panels):
        scale = 100.0 if summary.is_percent(key) else 1.0
        drawn = []
        for i, (label, group) in enumerate(lines.items()):
            group = sorted(group, key=lambda r: r["values"][option])
            stats = [r[key] for r in group]
            x = np.array([r["values"][option] for r in group], float)
            mean = np.array([np.nan if s["mean"] is None else scale * s["mean"] for s in stats])
            std = np.array([0.0 if s["std"] is None else scale * s["std"] for s in stats])
            ax.errorbar(x, mean, yerr=std, marker=MARKERS[i % len(MARKERS)], capsize=3, lw=1.8, label=label,
                        **line_style(i))
            seeds = [(xv, scale * v) for xv, st in zip(x, stats) for v in st.get("values", [])]
            if seeds:  # every seed as a faint dot: a bimodal outcome shows as two clusters, not one wide bar
                ax.scatter(*zip(*seeds), s=20, alpha=0.5, color=line_style(i)["color"], zorder=3, linewidths=0)
            drawn.append(mean)
        if min(xs) > 0 and max(xs) >= 10 * min(xs):
            ax.set_xscale("log")
        values = np.concatenate(drawn) if drawn else np.array([])
        values = values[np.isfinite(values)]
        if scale == 1.0 and values.size and values.min() > 0 and values.max() >= 100 * values.min():
            ax.set_yscale("log")  # e.g. losses that explode at large weight scales, times over batch sizes
        ax.set_title(name)
        ax.set_xlabel(option)
        ax.set_ylabel(ylabel)
    return save(fig, path, title=title, legend=axes, ncol=4)


def _comparison_panel(ax: Axes, records_by_config: dict[str, list[dict]], key: str, smooth: int) -> None:
    """Smoothed mean ± std across non-diverged seeds, one line per configuration; the legend says
    which seeds diverged when, also for a configuration whose seeds all diverged (no line)."""
    drawn = False
    for i, (name, records) in enumerate(records_by_config.items()):
        style, diverged = line_style(i), diverged_epochs(records)
        curves = [plotted(r, key) for r in records if diverged_at(r) is None]
        curves = [c for c in curves if np.isfinite(c).any()]
        note = ", ".join(filter(None, (diverged_note(diverged, len(records)) if diverged else "", pruned_note(records))))
        if not curves:
            if diverged:
                ax.plot([], [], lw=2, label=f"{name} ({note})", **style)
            continue
        mean, std = (moving_average(a, smooth) for a in mean_std(curves))
        x = epochs_axis(mean)
        ax.plot(x, mean, lw=2, marker="o" if len(x) == 1 else None,  # a run pruned after one epoch is a point
                label=f"{name} (n={len(curves)}{', ' + note if note else ''})", **style)
        ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.18, lw=0)
        drawn = True
    if not drawn:
        everything_diverged = all(diverged_epochs(recs) for recs in records_by_config.values())
        no_data(ax, "every configuration diverged" if records_by_config and everything_diverged
                else "no validation data")


def diverged_epochs(records: list[dict]) -> list[int]:
    """The epochs at which the diverged runs of `records` diverged."""
    return [epoch for epoch in map(diverged_at, records) if epoch is not None]


def _comparison_window(records_by_config: dict[str, list[dict]], smooth: int) -> int:
    """The moving-average window for comparison curves: at most `smooth`, and at most a fifth of
    the longest run, so short runs are not flattened."""
    length = max((len(r.get("epochs") or []) for recs in records_by_config.values() for r in recs), default=0)
    return max(1, min(smooth, length // 5))


@styled
def val_comparison(records_by_config: dict[str, list[dict]], path: Path | str, title: str,
                   smooth: int = 5) -> Path:
    """Mean validation accuracy and loss per configuration, moving-average smoothed (a window of
    up to `smooth` epochs, see `_comparison_window`), ±1 std band."""
    smooth = _comparison_window(records_by_config, smooth)
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, name in ((axes[0], "val_acc", "Validation accuracy"), (axes[1], "val_loss", "Validation loss")):
        _comparison_panel(ax, records_by_config, key, smooth)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_ylabel(key))
    note = f" (centred {smooth}-epoch moving average, band ±1 std across seeds)" if smooth > 1 else \
        " (band ±1 std across seeds)"
    return save(fig, path, title=title + note, legend=axes)


# ----------------------------------------------------------------------------- tables and data

@styled
def test_table(stats: dict, path: Path | str, title: str, metrics: Sequence[str] = summary.TEST_METRICS) -> Path:
    """The mean ± std test table of `stats` (`summary.summarize`) as a figure, best value per metric
    bold on a coloured cell."""
    header, rows, flags = summary.table_rows(stats, metrics)
    if not rows:
        raise ResultsError("test_table: the summary has no configurations")
    fig = Figure(figsize=(2.2 + 1.9 * len(metrics), 0.6 + 0.3 * (len(rows) + 1)))
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1.0, 1.5)
    table.auto_set_column_width(list(range(len(header))))
    for col in range(len(header)):
        table[0, col].set_facecolor(HEADER_CELL)
        table[0, col].get_text().set_fontweight("bold")
    for r, row_flags in enumerate(flags, start=1):
        for col, best in enumerate(row_flags):
            if best:
                table[r, col].set_facecolor(BEST_CELL)
                table[r, col].get_text().set_fontweight("bold")
    ax.set_title(f"{title}\nmean ± std across seeds; best per metric highlighted", pad=12)
    return save(fig, path, crop=True)


@styled
def class_distribution(labels_by_split: dict[str, np.ndarray], classes: tuple[str, ...], path: Path | str,
                       title: str = "Images per class") -> Path:
    """Count of images per class, one bar-chart panel per split (train/val/test)."""
    n_classes = len(classes)
    fig = Figure(figsize=(min(max(7.0, 0.6 * n_classes), 22.0), 2.9 * len(labels_by_split) + 0.6),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(labels_by_split), 1, squeeze=False)[:, 0])
    for i, (ax, (split, labels)) in enumerate(zip(axes, labels_by_split.items())):
        labels = np.asarray(labels).ravel()
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise ResultsError(f"class_distribution: {split} labels must lie in [0, {n_classes})")
        counts = np.bincount(labels.astype(np.int64), minlength=n_classes)
        bars = ax.bar(np.arange(n_classes), counts, color=PALETTE[i % len(PALETTE)])
        few = n_classes <= 20
        if few:  # counts on the bars; with many classes the y-axis alone stays readable
            ax.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=8, padding=2)
        ax.set_xticks(np.arange(n_classes), classes, rotation=30 if few else 90, rotation_mode="anchor",
                      ha="right", va="top" if few else "center", fontsize=10 if few else 6)
        ax.set_ylabel("images")
        ax.set_title(f"{split} ({labels.size:,} images)")
        ax.margins(y=0.15)
        ax.grid(axis="x", visible=False)
    return save(fig, path, title=title)


# ----------------------------------------------------------------------------- learning rate


def finish_pair(fig: Figure, title: str, xlabel: str, panels: tuple, path: Path | str) -> Path:
    """Label a two-panel figure ((axes, title, y unit) per panel), add the legend and save it."""
    for ax, name, unit in panels:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(unit)
        ax.set_title(name)
    fig.suptitle(title)
    figure_legend(fig, [p[0] for p in panels])
    return save(fig, path)


@styled
def lr_curves(records: list[dict], path: Path | str, title: str = "Learning rate per epoch") -> Path:
    """The learning rate each configuration actually used per epoch (from its first seed with data)."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    drawn = []
    for name, group in run_record.group_by_config(records).items():
        values = next((c for c in (run_record.curve(r, "lr") for r in group) if np.isfinite(c).any()), None)
        if values is not None:
            ax.plot(epochs_axis(values), values, lw=2, label=name, **line_style(len(drawn)))
            drawn.append(values)
    if drawn:
        positive = np.concatenate(drawn)
        positive = positive[positive > 0]
        if positive.size and positive.max() / positive.min() > 100:
            ax.set_yscale("log")
        ax.legend(frameon=False, ncol=1 + len(drawn) // 8)
    else:
        no_data(ax, "no learning-rate data")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    return save(fig, path)
