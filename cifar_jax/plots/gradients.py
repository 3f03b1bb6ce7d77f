"""Figures and tables of the gradient statistics in run records (seeds/000 §3, seeds/003); never trains.

A record trained with `--grad_stats` holds, per parameter tensor ("layer/param"), the mean and std
of |g| and the mean ‖g‖ over the first and the last `--grad_window` training steps (5 by default),
and ‖g‖ per epoch (`records`).
Tensors are shown in depth order (conv1 … fcN; weight, bias, then the layer's norm scale and shift).
Each figure function writes one 150 dpi PNG (matplotlib `Figure`, Agg canvas) and returns its path.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
import re
from typing import Iterable, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from cifar_jax.io.files import ResultsError
from cifar_jax.nn import models
from cifar_jax.plots import charts
from cifar_jax.results import run_record

# Okabe–Ito: distinguishable under the common colour-vision deficiencies (yellow last: weak on white).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
WINDOWS = ("first", "last")
NORM_LAYERS = {n.prefix: n.label for n in models.NORMS.values() if n.prefix}
PARAM_NAMES = {"kernel": "weight", "bias": "bias"}
NORM_PARAM_NAMES = {"scale": "γ (scale)", "bias": "β (shift)"}
NORM_SHADE = "0.92"
ERRORBAR_NOTE = ("error bars: ±1 std of |g| over the tensor's elements and the {k} steps;\n"
                 "a whisker reaching the axis: mean − std ≤ 0")


# ----------------------------------------------------------------------------- tensors

def is_norm(name: str) -> bool:
    """Whether a tensor belongs to a normalisation layer (BN/LN scale or shift)."""
    return name.startswith(tuple(NORM_LAYERS))


def is_weight(name: str) -> bool:
    """Whether a tensor is a conv/dense weight (kernel), the tensors of the per-epoch norm figure."""
    return name.endswith("/kernel")


def depth_key(name: str) -> tuple:
    """Sort key: conv layers, then dense, by number; weight, bias, then the norm layer's scale and shift."""
    layer, param = name.rsplit("/", 1)
    norm = is_norm(name)
    base = layer[3:] if norm else layer
    match = re.fullmatch(r"([a-z]+)(\d+)", base)
    kind, number = (match.group(1), int(match.group(2))) if match else (base, 0)
    return ({"conv": 0, "fc": 1}.get(kind, 2), number, norm, {"kernel": 0, "scale": 0, "bias": 1}.get(param, 2), name)


def ordered(names: Iterable[str]) -> list[str]:
    """Tensor names in depth order, each once."""
    return sorted(set(names), key=depth_key)


def shared_tensors(names: Iterable[str], reference: Iterable[str]) -> list[str]:
    """The tensors of `names` that `reference` has too (by name), in depth order: e.g. a BN net's
    conv/dense kernels and last bias, comparable with a net without BN."""
    reference = set(reference)
    return [n for n in ordered(names) if n in reference]


def tensor_label(name: str) -> str:
    """Two-line axis label: the layer, then the parameter ("conv1\\nweight", "BN conv1\\nβ (shift)")."""
    layer, param = name.rsplit("/", 1)
    if is_norm(name):
        return f"{NORM_LAYERS[layer[:3]]} {layer[3:]}\n{NORM_PARAM_NAMES.get(param, param)}"
    return f"{layer}\n{PARAM_NAMES.get(param, param)}"


@dataclasses.dataclass(frozen=True)
class Gradients:
    """One run's gradient statistics by tensor name: per window (mean |g|, std |g|) and ‖g‖ per epoch."""

    mean: dict[str, dict[str, float]]   # window ("first", "last") → tensor → mean |g|
    std: dict[str, dict[str, float]]    # window → tensor → std |g|
    norms: dict[str, np.ndarray]        # tensor → ‖g‖ per epoch (mean over the epoch's steps)
    window: int                         # steps in each window

    def label(self, window: str) -> str:
        """E.g. "first 5 steps"."""
        return f"{window} {self.window} steps"

    @property
    def tensors(self) -> list[str]:
        """The run's tensor names in depth order."""
        return ordered(self.norms)


def gradients(record: dict) -> Gradients:
    """The gradient statistics of a run record (ResultsError when it was trained without them)."""
    stats = record.get("grad_stats")
    if not stats:
        raise ResultsError(f"run {record.get('run_id')!r} has no grad_stats (train with --grad_stats)")
    names = stats["tensors"]
    per_epoch = np.array([e["grad_norm"] for e in record.get("epochs") or []], dtype=np.float64).reshape(-1, len(names))
    return Gradients(mean={w: _window(stats, w, "mean_abs") for w in WINDOWS},
                     std={w: _window(stats, w, "std_abs") for w in WINDOWS},
                     norms={n: per_epoch[:, i] for i, n in enumerate(names)}, window=int(stats["window"]))


def _window(stats: dict, window: str, column: str) -> dict[str, float]:
    """One statistic ("mean_abs", "std_abs") of one window ("first", "last") by tensor name."""
    col = stats["columns"].index(column)
    return {n: run_record.number(row[col]) for n, row in zip(stats["tensors"], stats[window])}


# ----------------------------------------------------------------------------- figure helpers

def _log_limits(means: np.ndarray, stds: np.ndarray) -> tuple[float, float]:
    """Log-axis y limits around bars `means` with whiskers ± `stds` (NaN and values <= 0 ignored)."""
    lows = np.concatenate([means.ravel(), (means - stds).ravel()])
    lows = lows[np.isfinite(lows) & (lows > 0)]
    highs = (means + np.nan_to_num(stds)).ravel()
    highs = highs[np.isfinite(highs)]
    if not lows.size:
        return 1e-8, 1.0
    return float(lows.min()) / 3, float(highs.max()) * 3


def _bars(ax: Axes, x: np.ndarray, means: np.ndarray, stds: np.ndarray, floor: float, style: dict) -> None:
    """Bars on a log axis with ±std whiskers, the lower whisker cut at `floor` (the axis bottom)."""
    means = np.where(means > 0, means, np.nan)  # nothing to draw on a log axis
    ax.bar(x, means, **style)
    lower = np.clip(np.minimum(stds, means - floor), 0, None)
    ax.errorbar(x, means, yerr=np.array([lower, stds]), fmt="none", ecolor="0.15", elinewidth=1.0, capsize=2.5)


def _shade_norm(ax: Axes, tensors: Sequence[str]) -> None:
    """Grey band behind normalisation-layer tensors, with a legend entry."""
    spans = [i for i, t in enumerate(tensors) if is_norm(t)]
    for j, i in enumerate(spans):
        ax.axvspan(i - 0.5, i + 0.5, color=NORM_SHADE, lw=0, zorder=0, label="normalisation-layer tensor" if j == 0 else None)


def _tensor_axis(ax: Axes, tensors: Sequence[str]) -> None:
    """Tensor labels on the x axis, in depth order."""
    ax.set_xticks(np.arange(len(tensors)), [tensor_label(t) for t in tensors], fontsize=8.5)
    ax.set_xlim(-0.6, len(tensors) - 0.4)
    ax.grid(axis="x", visible=False)


def _select(values: dict[str, float], tensors: Sequence[str]) -> np.ndarray:
    """Values of `tensors` (NaN where absent)."""
    return np.array([values.get(t, np.nan) for t in tensors], dtype=np.float64)


def _tensors(gradient: Gradients, tensors: Sequence[str] | None) -> list[str]:
    """The requested tensors in depth order (all of the run's by default); unknown names are an error."""
    if tensors is None:
        return gradient.tensors
    unknown = sorted(set(tensors) - set(gradient.tensors))
    if unknown:
        raise ResultsError(f"tensors {unknown} are not in the run's gradient statistics")
    return ordered(tensors)


# ----------------------------------------------------------------------------- figures

@charts.styled
def layer_gradients(record: dict, path: Path | str, title: str, tensors: Sequence[str] | None = None) -> Path:
    """Mean |g| ± std per parameter tensor of one run, the first vs the last steps side by side (log y)."""
    grads = gradients(record)
    names = _tensors(grads, tensors)
    means = np.array([_select(grads.mean[w], names) for w in WINDOWS])
    stds = np.array([_select(grads.std[w], names) for w in WINDOWS])
    floor, top = _log_limits(means, stds)
    fig = Figure(figsize=(max(8.0, 0.75 * len(names) + 2.5), 5.5), layout="constrained")
    ax = fig.subplots()
    ax.set_yscale("log")
    _shade_norm(ax, names)
    x, width = np.arange(len(names)), 0.38
    for k, window in enumerate(WINDOWS):
        _bars(ax, x + (k - 0.5) * width, means[k], stds[k], floor,
              dict(width=width, color=OKABE_ITO[k], label=grads.label(window), zorder=2))
    ax.set_ylim(floor, top)
    _tensor_axis(ax, names)
    ax.set_ylabel("mean |∂L/∂θ| per element")
    ax.set_xlabel("parameter tensor (input → output)")
    ax.legend(frameon=False, loc="upper left", ncol=3)
    ax.set_title(f"{title}\n{ERRORBAR_NOTE.format(k=grads.window)}", fontsize=10)
    return charts.save(fig, path)


@charts.styled
def gradient_comparison(records: dict[str, dict], path: Path | str, title: str,
                        tensors: Sequence[str] | None = None) -> Path:
    """One panel per metric (mean |g| and std |g|, first and last steps), bars per tensor, one colour
    per model (label → record); by default the conv/dense tensors of any model (no norm tensors)."""
    if not records:
        raise ResultsError("gradient_comparison: no records")
    grads = {label: gradients(rec) for label, rec in records.items()}
    names = ordered(tensors if tensors is not None else
                    (t for g in grads.values() for t in g.tensors if not is_norm(t)))
    values = {(stat, w): np.array([_select(getattr(g, stat)[w], names) for g in grads.values()])
              for stat in ("mean", "std") for w in WINDOWS}
    stacked = np.concatenate(list(values.values()))
    floor, top = _log_limits(stacked, np.zeros_like(stacked))
    fig = Figure(figsize=(max(10.0, 1.1 * len(names) + 3), 8.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    width = 0.8 / len(grads)
    for r, stat in enumerate(("mean", "std")):
        for c, window in enumerate(WINDOWS):
            ax = axes[r, c]
            ax.set_yscale("log")
            for i, label in enumerate(grads):
                x = np.arange(len(names)) + (i - (len(grads) - 1) / 2) * width
                ax.bar(x, values[stat, window][i], width=width, color=OKABE_ITO[i % len(OKABE_ITO)],
                       label=label, zorder=2)
            ax.set_title(f"{stat} |g|, {next(iter(grads.values())).label(window)}")
            _tensor_axis(ax, names)
        axes[r, 0].set_ylabel(f"{stat} of |∂L/∂θ| per element")
    axes[0, 0].set_ylim(floor, top)
    fig.suptitle(f"{title}\nno bar: the model has no such tensor (a layer feeding batch norm has no bias)", fontsize=12)
    charts.figure_legend(fig, axes.flat, ncol=6)
    return charts.save(fig, path)


@charts.styled
def gradient_norms(records: dict[str, dict], path: Path | str, title: str) -> Path:
    """‖g‖ of every weight tensor per epoch (mean over the epoch's steps), one panel per model
    (label → record), log y: vanishing or exploding gradients show as falling or rising lines."""
    if not records:
        raise ResultsError("gradient_norms: no records")
    grads = {label: gradients(rec) for label, rec in records.items()}
    weights = ordered(t for g in grads.values() for t in g.tensors if is_weight(t))
    fig = Figure(figsize=(4.6 * len(grads) + 1, 4.8), layout="constrained")
    axes = fig.subplots(1, len(grads), sharey=True, squeeze=False)[0]
    for ax, (label, g) in zip(axes, grads.items()):
        ax.set_yscale("log")
        for i, name in enumerate(weights):
            values = g.norms.get(name)
            if values is None or not np.isfinite(values).any():
                continue
            epochs = np.arange(1, len(values) + 1)
            ax.plot(epochs, values, color=OKABE_ITO[i % len(OKABE_ITO)], marker=charts.MARKERS[i % len(charts.MARKERS)],
                    markevery=max(1, len(values) // 10), ms=4, lw=1.8, label=name.split("/")[0] + " weight")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("‖∂L/∂W‖₂ (mean over the epoch's steps)")
    return charts.save(fig, path, title=title, legend=axes, ncol=6)


# ----------------------------------------------------------------------------- table

def stats_markdown(records: dict[str, dict], title: str) -> str:
    """A Markdown table per model (label → record): tensor, mean and std of |g| over the first and last steps."""
    lines = [f"# {title}", "",
             "Mean and std of |∂L/∂θ| over every element of the tensor and the training steps of each window.", ""]
    for label, rec in records.items():
        g = gradients(rec)
        k = g.window
        lines += [f"## {label} (run {rec['run_id']}, status {rec['status']})", "",
                  f"| tensor | mean \\|g\\| first {k} | std first {k} | mean \\|g\\| last {k} | std last {k} |",
                  "|:---|---:|---:|---:|---:|"]
        for t in g.tensors:
            cells = [g.mean["first"][t], g.std["first"][t], g.mean["last"][t], g.std["last"][t]]
            lines.append(f"| {t} | " + " | ".join(f"{v:.3e}" for v in cells) + " |")
        lines.append("")
    return "\n".join(lines)
