"""The edge of stability on the seeds' nets: λ_max of the training-loss Hessian along training for
each learning rate, against its stability threshold 2/η (2(1+β)/η with momentum), in SGD (the
seeds' setting) or, with --full_batch, in full-batch gradient descent on a subset (the setting of
Cohen et al. 2021, arXiv 2103.00065).

    python -m experiments.sharpness --flagfile=experiments/flags/sharpness.flags

Any grid of the core flags; --sharpness_every is on here (1 epoch when not given; in full-batch
descent an epoch is one step). A configuration reaches the edge at the first evaluation where
λ_max ≥ EDGE × its threshold; sharpness.md gives per configuration the threshold, λ_max at the
first and last evaluation and its largest, λ_max·η/2 at the end, the epoch the edge was reached
and the runs that diverged; figures/sharpness.png draws λ_max, λ_max over the threshold and the
training loss.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.plots import charts
from cifar_jax.results import run_record, studydir, summary
from cifar_jax.study import cli, config, prepare, progress, runner

OPTIONS = table(Option("full_batch", False, "Full-batch gradient descent (Cohen's setting): every step is the whole "
                       "training split (--split sets its size) and the sharpness is measured on all of it.", kind="bool"))

TITLE = "Sharpness and the edge of stability"
EDGE = 0.9  # λ_max at or above this fraction of 2/η counts as at the edge of stability


def threshold(record: dict) -> np.ndarray:
    """The stability threshold per epoch: 2/η for plain descent, 2(1+β)/η with heavy-ball or
    Nesterov momentum β (η the epoch's learning rate); NaN for optimisers with no such bound."""
    cfg = record["config"]
    beta = {"sgd": 0.0, "momentum": cfg.get("momentum", 0.0), "nesterov": cfg.get("momentum", 0.0)}.get(cfg["optimizer"])
    lr = run_record.curve(record, "lr")
    return 2 * (1 + beta) / lr if beta is not None else np.full_like(lr, np.nan)


def sharpness_series(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, λ_max, threshold) at every evaluation of a run: after each evaluated epoch, or before every
    k-th step of each epoch (--sharpness_unit=step: x in fractional epochs)."""
    cfg, edge = record["config"], threshold(record)
    xs, values, limits = [], [], []
    for e, entry in enumerate(record.get("epochs") or []):
        trace = entry.get("sharpness_trace")
        if trace is not None:
            steps_per_epoch = cfg["total_steps"] // cfg["epochs"]
            points = [(entry["epoch"] - 1 + i * cfg["sharpness_every"] / steps_per_epoch, v) for i, v in enumerate(trace)]
        elif "sharpness" in entry:
            points = [(entry["epoch"], entry["sharpness"])]
        else:
            points = []
        for x, v in points:
            xs.append(x)
            values.append(run_record.number(v))
            limits.append(edge[e])
    return np.array(xs), np.array(values), np.array(limits)


def edge_epoch(record: dict) -> float | None:
    """The first evaluation (in epochs) where λ_max ≥ EDGE × the threshold; None if never."""
    x, values, limits = sharpness_series(record)
    reached = np.nonzero(values >= EDGE * limits)[0]
    return float(x[reached[0]]) if reached.size else None


def _stat(values: list[float | None], fmt: str) -> str:
    """'mean ± std' of the finite values in `fmt`; '–' when there are none."""
    stat = summary.finite_statistics(values)
    return f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}" if stat["n"] else "–"


def sharpness_markdown(by_config: dict[str, list[dict]]) -> str:
    """sharpness.md: one row per configuration (mean ± std over seeds)."""
    lines = [f"# {TITLE}", "",
             f"λ_max: the largest eigenvalue of the Hessian of the training loss on a fixed subset of the training split "
             f"(dropout off, batch norm on the subset's own statistics), by Lanczos (cifar_jax/training/dynamics.py). "
             f"Threshold: 2/η (2(1+β)/η with momentum β) at the last epoch's η. Edge: the first evaluation with "
             f"λ_max ≥ {EDGE:g} × threshold (seeds that reached it / seeds).", "",
             "| configuration | threshold | λ_max first | λ_max max | λ_max last | λ_min last | λ_max·η/2 last | "
             "edge reached at epoch | diverged |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, recs in by_config.items():
        series = [sharpness_series(r) for r in recs]
        first = [v[1][0] if v[1].size else None for v in series]
        largest = [float(np.nanmax(v[1])) if np.isfinite(v[1]).any() else None for v in series]
        last = [v[1][-1] if v[1].size else None for v in series]
        ratio = [v[1][-1] / v[2][-1] if v[1].size else None for v in series]
        edges = [edge_epoch(r) for r in recs]
        reached = [e for e in edges if e is not None]
        limit = series[0][2][-1] if series[0][2].size else float("nan")
        lines.append(f"| {name} | {limit:.4g} | {_stat(first, '.4g')} | {_stat(largest, '.4g')} | {_stat(last, '.4g')} | "
                     f"{_stat([run_record.last(r, 'sharpness_min') for r in recs], '.3g')} | {_stat(ratio, '.3f')} | "
                     f"{_stat(reached, '.2f') if reached else 'never'} ({len(reached)}/{len(recs)}) | "
                     f"{sum(r['status'] == 'diverged' for r in recs)}/{len(recs)} |")
    return "\n".join(lines) + "\n"


def write_report(st: studydir.StudyDir, records: list[dict]) -> None:
    """figures/sharpness.png and sharpness.md from the records."""
    by_config = run_record.group_by_config(records)
    series = {}
    for name, recs in by_config.items():
        parts = [sharpness_series(r) for r in recs]
        width = max(len(p[1]) for p in parts)
        pad = lambda v: np.pad(v.astype(float), (0, width - len(v)), constant_values=np.nan)
        longest = max(parts, key=lambda p: len(p[1]))
        losses = [run_record.curve(r, "train_loss") for r in recs]
        epochs = max(len(c) for c in losses)
        series[name] = {"x": longest[0], "threshold": longest[2], "seeds": np.stack([pad(p[1]) for p in parts]),
                        "loss_x": np.arange(1, epochs + 1),
                        "loss": np.stack([np.pad(c, (0, epochs - len(c)), constant_values=np.nan) for c in losses])}
    sharpness_curves(series, st.figures_dir / "sharpness.png", TITLE)
    text = sharpness_markdown(by_config)
    st.write_text("sharpness.md", text + "\n![λ_max along training](figures/sharpness.png)\n")
    progress.log("\n" + text)


def main(cfg: config.Config) -> None:
    if not cfg.sharpness_every:
        cfg = cfg.replace(sharpness_every=1)

    def runs(prepared: prepare.Prepared) -> list[config.Run]:
        c = cfg
        if cfg.own.full_batch:
            n = len(prepared.train_idx)
            c = cfg.replace(batch_size=n, sharpness_examples=n)
        return config.grid(c, len(prepared.train_idx), prepared.dataset.num_classes)

    runner.run(cfg, "sharpness", TITLE, runs, analysis=write_report, extra={"full_batch": cfg.own.full_batch})


# ----------------------------------------------------------------------------- figures

@charts.styled
def sharpness_curves(series: dict[str, dict[str, np.ndarray]], path: Path | str, title: str) -> Path:
    """λ_max along training against the stability threshold (2/η, 2(1+β)/η with momentum), per
    configuration: `series` maps a label to {"x": epochs (fractions for step-unit points), "seeds":
    [seeds, points] λ_max, "threshold": [points], "loss_x", "loss": [seeds, epochs] train loss}; left
    λ_max (lines: seeds' mean, dots: each seed; dashed: the threshold), middle λ_max over the
    threshold, right the training loss."""
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    ax_sharp, ax_ratio, ax_loss = fig.subplots(1, 3)
    for i, (label, s) in enumerate(series.items()):
        color = charts.PALETTE[i % len(charts.PALETTE)]
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
        charts.no_data(ax_sharp, "no sharpness recorded")
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
    charts.figure_legend(fig, [ax_sharp])
    return charts.save(fig, path)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
