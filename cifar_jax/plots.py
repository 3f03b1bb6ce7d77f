"""Study figures from stored results (never trains); each function writes one 150 dpi PNG and returns its path.

Figures are built with matplotlib's object API (`Figure`), which renders PNGs with the Agg canvas and
never touches pyplot's global backend or opens a window.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Callable, Sequence

import matplotlib
import matplotlib.patches
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifar_jax import files, run_record, summary
from cifar_jax.run_record import ResultsError

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


def _diverged_at(record: dict) -> int | None:
    """The epoch at which a run diverged, None when it did not."""
    epoch = record.get("diverged_epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _diverged_note(epochs: Sequence[int], n: int) -> str:
    """Which of n seeds diverged when, e.g. 'all 3 seeds diverged at epochs 1, 1, 2'."""
    at = f"epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, sorted(epochs)))}"
    if n == 1:
        return f"diverged at {at}"
    return f"{'all' if len(epochs) == n else f'{len(epochs)} of'} {n} seeds diverged at {at}"


def _until_divergence(record: dict, values: np.ndarray) -> np.ndarray:
    """Blank the epochs after a run diverged (its later numbers are meaningless)."""
    epoch = _diverged_at(record)
    if epoch is not None:
        values = values.copy()
        values[epoch:] = np.nan
    return values


def _plotted(record: dict, key: str) -> np.ndarray:
    """Curve as drawn: scaled to display units and cut at divergence."""
    return _until_divergence(record, run_record.curve(record, key) * _scale(key))


def _epochs(values: np.ndarray) -> np.ndarray:
    """Epoch numbers 1..n for an n-epoch curve."""
    return np.arange(1, len(values) + 1)


def _style(i: int) -> dict:
    """Colour-blind-friendly colour (tab10), with a new line style every ten series."""
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]}


def _no_data(ax: Axes, text: str) -> None:
    """Mark an empty panel instead of leaving it blank."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_yticks([])


def figure_legend(fig: Figure, axes: Sequence[Axes], ncol: int = 5) -> None:
    """One legend below the panels with each label once."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncol=min(ncol, len(handles)), frameon=False)


def save(fig: Figure, path: Path | str, crop: bool = False) -> Path:
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


def _final(record: dict, key: str) -> float:
    """Last-epoch value of `key` (NaN when absent)."""
    values = run_record.curve(record, key)
    return float(values[-1]) if values.size else np.nan


# ----------------------------------------------------------------------------- per-configuration curves

def _seed_panel(ax: Axes, records: list[dict], key: str) -> None:
    """Each seed thin, the mean of the non-diverged seeds bold; a diverged seed dashed up to its
    divergence, the epoch marked by a dotted line (also where it diverged before any number)."""
    kept, diverged, drawn = [], [], False
    for i, rec in enumerate(records):
        values, epoch, color = _plotted(rec, key), _diverged_at(rec), PALETTE[i % len(PALETTE)]
        if epoch is not None:
            diverged.append(epoch)
            ax.axvline(epoch, color=color, ls=":", lw=1.2, label=f"seed {rec.get('seed')} diverged at epoch {epoch}")
        if not np.isfinite(values).any():
            continue
        drawn = True
        ax.plot(_epochs(values), values, color=color, lw=1.0, alpha=0.55, ls="-" if epoch is None else "--",
                label=None if epoch else f"seed {rec.get('seed')}")
        if epoch is None:
            kept.append(values)
    if kept:
        mean, _ = mean_std(kept)
        ax.plot(_epochs(mean), mean, color="black", lw=2.4, label=f"mean of {len(kept)} seeds")
        if diverged and not summary.is_percent(key):  # keep exploding losses from flattening the rest
            ax.set_ylim(0, 1.15 * float(np.nanmax(np.concatenate(kept))))
    elif diverged and not drawn:
        _no_data(ax, _diverged_note(diverged, len(records)))
    elif not diverged:
        _no_data(ax, "no data (no validation split?)" if key.startswith("val") else "no data")


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


@styled
def cost_loss_accuracy(records: list[dict], path: Path | str, title: str) -> Path:
    """seeds/002's figure for the seeds of ONE configuration: cost (loss + λ·ΣW²), loss and
    accuracy per epoch, training (eval mode where recorded, else running averages) and
    validation; each seed thin, the mean of the non-diverged seeds bold."""
    train = "train_eval" if any(np.isfinite(run_record.curve(r, "train_eval_loss")).any() for r in records) else "train"
    panels = (("cost", "cost (loss + λ·ΣW²)"), ("loss", "cross-entropy loss"), ("acc", "accuracy (%)"))
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    for ax, (metric, label) in zip(axes, panels):
        for k, (prefix, name) in enumerate(((train, "training"), ("val", "validation"))):
            kept = []
            for rec in records:
                values = run_record.cost_curve(rec, prefix) if metric == "cost" else _plotted(rec, f"{prefix}_{metric}")
                values = _until_divergence(rec, values)
                if np.isfinite(values).any():
                    ax.plot(_epochs(values), values, color=PALETTE[k], lw=0.8, alpha=0.35)
                    if rec.get("status") != "diverged":
                        kept.append(values)
            if kept:
                mean, _ = mean_std(kept)
                ax.plot(_epochs(mean), mean, color=PALETTE[k], lw=2.4, label=f"{name} (mean of {len(kept)})")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title + ("" if train == "train_eval" else " (training: running averages, train mode)"))
    figure_legend(fig, axes, ncol=2)
    return save(fig, path)


@styled
def training_comparison(records_by_config: dict[str, list[dict]], path: Path | str, title: str,
                        smooth: int = 1) -> Path:
    """The optimiser-comparison figure: training loss per iteration (the --loss_every trace,
    else per epoch), training accuracy (eval mode where recorded) and validation accuracy per
    epoch; one line per configuration, the mean over its non-diverged seeds."""
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    traced = any(run_record.loss_trace(r).size for recs in records_by_config.values() for r in recs)
    train = "train_eval_acc" if any(np.isfinite(run_record.curve(r, "train_eval_acc")).any()
                                    for recs in records_by_config.values() for r in recs) else "train_acc"
    for i, (name, records) in enumerate(records_by_config.items()):
        kept = [r for r in records if _diverged_at(r) is None]
        style, diverged = _style(i), _diverged_epochs(records)
        label = f"{name} ({_diverged_note(diverged, len(records))})" if diverged else name
        if not kept:  # no line, but the legend says when its seeds diverged
            axes[0].plot([], [], lw=2, label=label, **style)
            continue
        if traced:
            every = kept[0]["config"].get("loss_every") or 1
            mean, _ = mean_std([run_record.loss_trace(r) for r in kept])
            mean = moving_average(mean, smooth)
            axes[0].plot(every * np.arange(1, len(mean) + 1), mean, lw=1.2, label=label, **style)
        else:
            mean, _ = mean_std([run_record.curve(r, "train_loss") for r in kept])
            axes[0].plot(_epochs(mean), mean, lw=2, label=label, **style)
        for ax, key in ((axes[1], train), (axes[2], "val_acc")):
            mean, _ = mean_std([100 * run_record.curve(r, key) for r in kept])
            ax.plot(_epochs(mean), mean, lw=2, marker="o", ms=3, label=label, **style)
    axes[0].set_xlabel("iteration" if traced else "epoch")
    axes[0].set_ylabel("training loss")
    axes[0].set_title("training loss" + (f" per iteration (moving average of {smooth})" if traced and smooth > 1
                                         else " per iteration" if traced else " per epoch (running average)"))
    for ax, what in ((axes[1], "training accuracy" + (" (eval mode)" if train == "train_eval_acc" else "")),
                     (axes[2], "validation accuracy")):
        ax.set_title(what)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    figure_legend(fig, axes, ncol=4)
    return save(fig, path)


@styled
def stage_comparison(records_by_config: dict[str, list[dict]], path: Path | str, title: str) -> Path:
    """Two or more configurations (e.g. a ladder stage and the stage it builds on) side by side:
    loss, top-1 and top-5 accuracy per epoch, training (running average, dashed) and validation
    (solid), the mean over each configuration's non-diverged seeds with a ±1 std band."""
    fig = Figure(figsize=(14, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for i, (name, records) in enumerate(records_by_config.items()):
        kept = [r for r in records if r.get("status") != "diverged"]
        color = PALETTE[i % len(PALETTE)]
        for ax, metric in zip(axes, ("loss", "acc", "top5")):
            scale = 1.0 if metric == "loss" else 100.0
            for split, ls in (("train", "--"), ("val", "-")):
                mean, std = mean_std([scale * run_record.curve(r, f"{split}_{metric}") for r in kept])
                if np.isfinite(mean).any():
                    ax.plot(_epochs(mean), mean, color=color, ls=ls, lw=1.8, label=f"{name} ({split})")
                    ax.fill_between(_epochs(mean), mean - std, mean + std, color=color, alpha=0.12, lw=0)
    for ax, what in zip(axes, ("cross-entropy loss", "top-1 accuracy (%)", "top-5 accuracy (%)")):
        ax.set_title(what)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    figure_legend(fig, axes, ncol=4)
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
                        **_style(i))
            seeds = [(xv, scale * v) for xv, st in zip(x, stats) for v in st.get("values", [])]
            if seeds:  # every seed as a faint dot: a bimodal outcome shows as two clusters, not one wide bar
                ax.scatter(*zip(*seeds), s=20, alpha=0.5, color=_style(i)["color"], zorder=3, linewidths=0)
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
    fig.suptitle(title)
    figure_legend(fig, axes, ncol=4)
    return save(fig, path)


@styled
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
    return save(fig, path)


def _comparison_panel(ax: Axes, records_by_config: dict[str, list[dict]], key: str, smooth: int) -> None:
    """Smoothed mean ± std across non-diverged seeds, one line per configuration; the legend says
    which seeds diverged when, also for a configuration whose seeds all diverged (no line)."""
    drawn = False
    for i, (name, records) in enumerate(records_by_config.items()):
        style, diverged = _style(i), _diverged_epochs(records)
        curves = [_plotted(r, key) for r in records if _diverged_at(r) is None]
        curves = [c for c in curves if np.isfinite(c).any()]
        note = _diverged_note(diverged, len(records)) if diverged else ""
        if not curves:
            if diverged:
                ax.plot([], [], lw=2, label=f"{name} ({note})", **style)
            continue
        mean, std = (moving_average(a, smooth) for a in mean_std(curves))
        x = _epochs(mean)
        ax.plot(x, mean, lw=2, label=f"{name} (n={len(curves)}{', ' + note if note else ''})", **style)
        ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.18, lw=0)
        drawn = True
    if not drawn:
        everything_diverged = all(_diverged_epochs(recs) for recs in records_by_config.values())
        _no_data(ax, "every configuration diverged" if records_by_config and everything_diverged
                 else "no validation data")


def _diverged_epochs(records: list[dict]) -> list[int]:
    """The epochs at which the diverged runs of `records` diverged."""
    return [epoch for epoch in map(_diverged_at, records) if epoch is not None]


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
    fig.suptitle(title + note)
    figure_legend(fig, axes)
    return save(fig, path)


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
def schedule_shapes(curves: dict[str, np.ndarray], path: Path | str, title: str, xlabel: str = "epoch") -> Path:
    """Learning rate vs epoch (x = 1..len) for several schedule shapes, one line each."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=np.float64)
        ax.plot(_epochs(values), values, lw=2, label=name, **_style(i))
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("learning rate")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(frameon=False)
    return save(fig, path)


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
    fig.suptitle(title)
    return save(fig, path)


# ----------------------------------------------------------------------------- learning rate

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
        ax.plot(bad, [diverged_at] * len(bad), "X", color=PALETTE[3], ms=9, clip_on=False,
                transform=ax.get_xaxis_transform(), label="diverged")
    if not ok and not bad:
        _no_data(ax, "no validation data")


@styled
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
    _range_panel(ax_loss, losses, 0.96, PALETTE[0])
    _range_panel(ax_acc, accs, 0.04, PALETTE[1])
    ax_acc.axhline(chance, ls=":", color="0.3", lw=1.5, label=f"chance ({chance:.3g}%)")
    ax_acc.set_ylim(bottom=0)  # separates the chance line from the diverged markers
    ax_loss.set_xscale("log")
    return _finish_pair(fig, title, "learning rate", ((ax_loss, "Final train loss", "cross-entropy loss"),
                                                       (ax_acc, "Final validation accuracy", "accuracy (%)")), path)


def _finish_pair(fig: Figure, title: str, xlabel: str, panels: tuple, path: Path | str) -> Path:
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
            ax.plot(_epochs(values), values, lw=2, label=name, **_style(len(drawn)))
            drawn.append(values)
    if drawn:
        positive = np.concatenate(drawn)
        positive = positive[positive > 0]
        if positive.size and positive.max() / positive.min() > 100:
            ax.set_yscale("log")
        ax.legend(frameon=False, ncol=1 + len(drawn) // 8)
    else:
        _no_data(ax, "no learning-rate data")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    return save(fig, path)


# ----------------------------------------------------------------------------- dropout

def _gap_panel(ax: Axes, rows: list[dict], key: str, scale: float, color: tuple) -> None:
    """One gap against the dropout rate: mean ± std across seeds as error bars, each seed a faint dot."""
    kept = [r for r in rows if r[key]["mean"] is not None]
    if not kept:
        _no_data(ax, "no finished runs")
        return
    for r in kept:
        seeds = scale * np.asarray(r[key]["values"], dtype=np.float64)
        ax.scatter(np.full(seeds.size, r["rate"]), seeds, s=14, color=color, alpha=0.35, label="seed")
    rates = np.array([r["rate"] for r in kept])
    ax.errorbar(rates, [scale * r[key]["mean"] for r in kept], yerr=[scale * r[key]["std"] for r in kept],
                fmt="-o", color=color, lw=2, ms=5, capsize=4, label="mean ± std across seeds")
    ax.axhline(0.0, color="0.3", lw=1, ls=":")
    ax.set_xticks(np.unique(rates))


@styled
def generalisation_gap(rows: list[dict], path: Path | str, title: str) -> Path:
    """Final train − val accuracy and loss gaps vs dropout rate (rows: rate, acc_gap and loss_gap statistics)."""
    if not rows:
        raise ResultsError("generalisation_gap: no rows")
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2, sharex=True)
    _gap_panel(ax_acc, rows, "acc_gap", 100.0, PALETTE[0])
    _gap_panel(ax_loss, rows, "loss_gap", 1.0, PALETTE[1])
    return _finish_pair(fig, title, "dropout rate", ((ax_acc, "Accuracy gap (train − val)", "percentage points"),
                                                      (ax_loss, "Loss gap (train − val)", "cross-entropy difference")), path)


# ----------------------------------------------------------------------------- learning-rate landscape

def _band(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t-interval (in %) of one statistic per row, NaN where a row has no finished seed."""
    mean = np.array([np.nan if r[key]["mean"] is None else 100 * r[key]["mean"] for r in rows])
    lo = np.array([np.nan if not r[key].get("ci95") else 100 * r[key]["ci95"][0] for r in rows])
    hi = np.array([np.nan if not r[key].get("ci95") else 100 * r[key]["ci95"][1] for r in rows])
    return mean, lo, hi


@styled
def lr_landscape(rows: list[dict], path: Path | str, title: str, best_lr: float | None = None,
                 boundary: float | None = None, chance: float | None = None) -> Path:
    """Final validation and test accuracy against learning rate (log axis), mean across the seeds
    that did not diverge with its 95% t-interval as a band, and below it the fraction of seeds per
    LR that diverged (and that diverged or ended at or above the untrained loss); the best LR
    starred and the divergence boundary a dashed line. `rows`, one per LR: lr, n_runs, n_diverged,
    n_failed, and val_acc / test_acc statistics as `summary.statistics` gives them."""
    if not rows:
        raise ResultsError("lr_landscape: no rows")
    rows = sorted(rows, key=lambda r: r["lr"])
    lrs = np.array([r["lr"] for r in rows], dtype=np.float64)
    if not (lrs > 0).all():
        raise ResultsError("lr_landscape: learning rates must be positive for a log axis")
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    ax_acc, ax_div = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    drawn = False
    for i, (key, name) in enumerate((("val_acc", "validation"), ("test_acc", "test"))):
        mean, lo, hi = _band(rows, key)
        if not np.isfinite(mean).any():
            continue
        n = max((r[key]["n"] for r in rows), default=0)
        ax_acc.plot(lrs, mean, "-o", color=PALETTE[i], lw=2, ms=3.5, label=f"{name} accuracy (mean, up to {n} seeds)")
        ax_acc.fill_between(lrs, np.clip(lo, 0, 100), np.clip(hi, 0, 100), color=PALETTE[i], alpha=0.2, lw=0,
                            label=f"{name}: 95% t-interval of the mean")
        drawn = True
    if not drawn:
        _no_data(ax_acc, "no finished runs")
    if chance:
        ax_acc.axhline(chance, ls=":", color="0.3", lw=1.5, label=f"chance ({chance:.3g}%)")
    if best_lr is not None:
        best = next(r for r in rows if r["lr"] == best_lr)
        if best["val_acc"]["mean"] is not None:
            ax_acc.plot([best_lr], [100 * best["val_acc"]["mean"]], "*", color=PALETTE[2], ms=16, zorder=5,
                        label=f"best LR {best_lr:.3g} (highest mean validation accuracy)")
    ax_acc.set_ylim(0, None)
    ax_acc.set_ylabel("final accuracy (%)")
    ax_acc.set_title("Final accuracy (band: 95% t-interval across the seeds that did not diverge)")
    n_runs = np.array([max(r["n_runs"], 1) for r in rows], dtype=np.float64)
    ax_div.plot(lrs, 100 * np.array([r["n_failed"] for r in rows]) / n_runs, "-s", color=PALETTE[4], lw=1.5, ms=4,
                label="diverged or ended at/above the untrained loss")
    ax_div.plot(lrs, 100 * np.array([r["n_diverged"] for r in rows]) / n_runs, "-o", color=PALETTE[3], lw=2, ms=4,
                label="diverged (loss or parameters NaN/inf)")
    ax_div.axhline(50, ls=":", color="0.3", lw=1)
    ax_div.set_ylim(-5, 105)
    ax_div.set_yticks([0, 50, 100])
    ax_div.set_ylabel("seeds (%)")
    ax_div.set_title("Fraction of seeds that failed")
    ax_div.set_xlabel("learning rate (log scale)")
    ax_div.set_xscale("log")
    if boundary is not None:
        for ax in (ax_acc, ax_div):
            ax.axvline(boundary, ls="--", color="0.15", lw=1.5,
                       label=f"divergence boundary: lr {boundary:.3g} (≥ half the seeds failed)")
            ax.axvspan(boundary, lrs.max() * 1.2, color=PALETTE[3], alpha=0.06, lw=0)
    ax_div.set_xlim(lrs.min() / 1.2, lrs.max() * 1.2)
    fig.suptitle(title)
    figure_legend(fig, (ax_acc, ax_div), ncol=2)
    return save(fig, path)


@styled
def image_examples(images: np.ndarray, captions: Sequence[str], path: Path | str, title: str,
                   note: str = "no images") -> Path:
    """Images (uint8 [n, H, W, C]) in one row, each titled by its caption (e.g. its true label and
    two models' predictions); with no image, a panel saying `note`."""
    images = np.asarray(images)
    fig = Figure(figsize=(2.5 * max(len(images), 2), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(images), 1)))
    for ax, image, caption in zip(axes, images, captions):
        gray = image.shape[-1] == 1
        ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, interpolation="nearest")
        ax.set_title(caption, fontsize=10)
    for ax in axes:
        ax.axis("off")
    if not len(images):
        axes[0].text(0.5, 0.5, note, transform=axes[0].transAxes, ha="center", va="center", color="0.4")
    fig.suptitle(title)
    return save(fig, path)


# ----------------------------------------------------------------------------- loss surfaces and mode connectivity

@styled
def surface_paths(paths: dict[str, dict[str, np.ndarray]], ts: np.ndarray, path: Path | str, title: str) -> Path:
    """Loss and top-1 accuracy along 1-D linear paths: `paths` maps a label to {split: [points, 3]}
    (loss, top-1, top-5) at the coefficients `ts`; training subset solid, test dashed."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2, sharex=True)
    for i, (label, by_split) in enumerate(paths.items()):
        for split, ls in (("train", "-"), ("test", "--")):
            values = by_split[split]
            ax_loss.plot(ts, values[:, 0], ls, color=PALETTE[i], lw=2, label=f"{label}, {split}")
            ax_acc.plot(ts, 100 * values[:, 1], ls, color=PALETTE[i], lw=2, label=f"{label}, {split}")
    return _finish_pair(fig, title, "t (0: start, 1: end)", ((ax_loss, "Loss", "cross-entropy loss"),
                                                             (ax_acc, "Top-1 accuracy", "accuracy (%)")), path)


@styled
def surface_contours(coords: np.ndarray, grids: dict[str, np.ndarray], path: Path | str, title: str) -> Path:
    """Contour panels of 2-D grids over (α, β) ∈ coords² (grids[name][i, j] at α = coords[i],
    β = coords[j]), the centre (the run itself) marked."""
    fig = Figure(figsize=(5.2 * len(grids), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(grids)))
    for ax, (name, grid) in zip(axes, grids.items()):
        finite = np.where(np.isfinite(grid), grid, np.nan)
        filled = ax.contourf(coords, coords, finite.T, levels=20, cmap="viridis")
        ax.contour(coords, coords, finite.T, levels=10, colors="white", linewidths=0.5, alpha=0.6)
        fig.colorbar(filled, ax=ax)
        ax.plot([0], [0], "*", color="red", ms=12, label="the run")
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.set_title(name)
        ax.grid(False)
    fig.suptitle(title)
    return save(fig, path)


@styled
def connectivity(ts: np.ndarray, errors_by_k: dict[int, np.ndarray], barriers_by_k: dict[int, np.ndarray],
                 path: Path | str, title: str) -> Path:
    """Frankle et al.'s instability figures: test error along the linear path between two children
    for each spawn epoch k (mean over pairs, band ± std; errors_by_k[k]: [pairs, points]), and the
    error barrier against k (mean ± std over pairs, each pair a faint dot)."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_path, ax_k = fig.subplots(1, 2)
    for i, (k, errors) in enumerate(errors_by_k.items()):
        mean, std = 100 * np.nanmean(errors, 0), 100 * np.nanstd(errors, 0)
        ax_path.plot(ts, mean, color=PALETTE[i % len(PALETTE)], lw=2, label=f"k = {k}")
        ax_path.fill_between(ts, mean - std, mean + std, color=PALETTE[i % len(PALETTE)], alpha=0.15, lw=0)
    ks = np.array(list(barriers_by_k), dtype=np.float64)
    for k, values in barriers_by_k.items():
        ax_k.scatter(np.full(len(values), k), 100 * np.asarray(values), s=14, color=PALETTE[0], alpha=0.35)
    ax_k.errorbar(ks, [100 * np.nanmean(v) for v in barriers_by_k.values()],
                  yerr=[100 * np.nanstd(v) for v in barriers_by_k.values()], fmt="-o", color=PALETTE[0], lw=2,
                  capsize=4)
    ax_k.axhline(0.0, color="0.3", lw=1, ls=":")
    if len(ks) and ks.min() >= 0 and ks.max() > 0:
        ax_k.set_xscale("symlog", linthresh=1)
    ax_k.set_xticks(ks, [f"{k:g}" for k in ks])
    ax_path.legend(frameon=False, title="spawn epoch")
    for ax, name, xlabel, unit in ((ax_path, "Test error along the path between two children", "t", "test error (%)"),
                                   (ax_k, "Error barrier against the spawn epoch k", "k (epochs)",
                                    "barrier (percentage points)")):
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(unit)
    fig.suptitle(title)
    return save(fig, path)


# ----------------------------------------------------------------------------- sharpness

@styled
def sharpness_curves(series: dict[str, dict[str, np.ndarray]], path: Path | str, title: str) -> Path:
    """λ_max along training against the stability threshold (2/η, 2(1+β)/η with momentum), per
    configuration: `series` maps a label to {"x": epochs (fractions for step-unit points), "seeds":
    [seeds, points] λ_max, "threshold": [points], "loss_x", "loss": [seeds, epochs] train loss}; left
    λ_max (lines: seeds' mean, dots: each seed; dashed: the threshold), middle λ_max over the
    threshold, right the training loss."""
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    ax_sharp, ax_ratio, ax_loss = fig.subplots(1, 3)
    for i, (label, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        with np.errstate(all="ignore"):
            mean = np.nanmean(s["seeds"], 0) if np.isfinite(s["seeds"]).any() else s["seeds"][0]
        ax_sharp.plot(s["x"], mean, color=color, lw=2, label=label)
        for seed in s["seeds"]:
            ax_sharp.plot(s["x"], seed, ".", color=color, ms=3, alpha=0.5)
        ax_sharp.plot(s["x"], s["threshold"], "--", color=color, lw=1.2)
        ax_ratio.plot(s["x"], mean / s["threshold"], color=color, lw=2, label=label)
        with np.errstate(all="ignore"):
            ax_loss.plot(s["loss_x"], np.nanmean(s["loss"], 0), color=color, lw=2, label=label)
    ax_ratio.axhline(1.0, color="0.3", ls="--", lw=1.2)
    if not series:
        _no_data(ax_sharp, "no sharpness recorded")
    positive = [v for s in series.values() for v in np.ravel(s["seeds"]) if np.isfinite(v) and v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax_sharp.set_yscale("log")
    for ax, name, unit in ((ax_sharp, "λ_max (dashed: its threshold)", "λ_max of the loss Hessian"),
                           (ax_ratio, "λ_max / threshold (1: the edge of stability)", "ratio"),
                           (ax_loss, "Training loss", "cross-entropy loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.set_title(name)
    fig.suptitle(title)
    figure_legend(fig, [ax_sharp])
    return save(fig, path)
