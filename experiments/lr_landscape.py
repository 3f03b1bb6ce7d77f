"""The learning-rate landscape of BaselineNet under the seeds/000 protocol: a log grid of LRs
(default 40 from 1.0 down to 1e-4) × many seeds (25 in the preset), 30 epochs, all 1,000 runs in
one group (the engine splits it into chunks that fit the device memory). Final validation and
test accuracy per LR with a 95% band across seeds, the fraction of seeds that diverged, the best
LR (by validation accuracy) and the divergence boundary.

    python -m experiments.lr_landscape --flagfile=experiments/flags/lr_landscape.flags
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.io.files import ResultsError
from cifar_jax.plots import charts
from cifar_jax.results import run_record, studydir, summary
from cifar_jax.study import cli, config, progress, runner

OPTIONS = table(
    Option("landscape_max", 1.0, "Largest LR of the landscape grid (the grid replaces --lr).", low=0.0, low_open=True),
    Option("landscape_min", 1e-4, "Smallest LR of the landscape grid (below --landscape_max).", low=0.0, low_open=True),
    Option("landscape_points", 40, "Number of LRs in the landscape grid (log-spaced).", kind="int", low=2),
)

TITLE = "LR landscape"


def landscape_lrs(cfg: config.Config) -> tuple[float, ...]:
    """The landscape's log grid, smallest first, each LR rounded to 3 significant digits."""
    lo, hi, n = cfg.own.landscape_min, cfg.own.landscape_max, cfg.own.landscape_points
    if lo >= hi:
        raise config.ConfigError(f"--landscape_min={lo:g} --landscape_max={hi:g}: need landscape_min < landscape_max")
    lrs = tuple(float(f"{x:.3g}") for x in np.geomspace(lo, hi, n))
    if len(set(lrs)) < n:
        raise config.ConfigError(f"--landscape_points={n}: too many points between {lo:g} and {hi:g} "
                                 "for distinct LRs at 3 significant digits")
    return lrs


def landscape_config(cfg: config.Config) -> config.Config:
    """The flags' config with the landscape grid as its only grid axis."""
    cfg.single_group("the landscape varies only the learning rate")
    lrs = landscape_lrs(cfg)
    varying = [name for name, values in cfg.per_run if len(values) > 1]
    if varying:
        raise config.ConfigError(f"--{varying[0]}: the landscape varies only the learning rate; give one value")
    return cfg.replace(lrs=lrs)


# ----------------------------------------------------------------------------- analysis

def landscape_rows(records: list[dict]) -> list[dict]:
    """One row per LR, smallest first: run counts (diverged, failed as `run_record.failed` says) and the
    final validation and test accuracy statistics of the seeds that did not diverge."""
    stats = summary.summarize(records)["configs"]
    rows = []
    for name, recs in run_record.group_by_config(records).items():
        s = stats[name]
        rows.append({"lr": float(recs[0]["config"]["lr"]), "config": name, "n_runs": s["n_runs"],
                     "n_diverged": s["n_diverged"], "n_incomplete": s["n_incomplete"],
                     "n_failed": sum(run_record.failed(r) for r in recs if r["status"] in run_record.FINISHED),
                     "val_acc": s["metrics"]["val_acc"], "test_acc": s["metrics"]["test_acc"]})
    return sorted(rows, key=lambda r: r["lr"])


def _mostly_failed(row: dict) -> bool:
    """At least half of the row's finished seeds failed."""
    finished = row["n_runs"] - row["n_incomplete"]
    return finished > 0 and 2 * row["n_failed"] >= finished


def best_lr(rows: list[dict]) -> float | None:
    """The LR of highest mean final validation accuracy among those where fewer than half of the
    seeds failed (test accuracy is never used to choose); None without any."""
    ok = [r for r in rows if not _mostly_failed(r) and r["val_acc"]["mean"] is not None]
    return max(ok, key=lambda r: r["val_acc"]["mean"])["lr"] if ok else None


def boundary(rows: list[dict]) -> float | None:
    """The divergence boundary: the smallest LR above the best LR at which at least half of the
    seeds diverged or ended at or above their untrained loss (so runs that did not learn at the
    small-LR end do not count); without a best LR, the smallest such LR. None when no LR qualifies."""
    best = best_lr(rows)
    above = [r["lr"] for r in rows if _mostly_failed(r) and (best is None or r["lr"] > best)]
    return min(above) if above else None


def _acc(stat: dict) -> str:
    return "–" if stat["mean"] is None else f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def landscape_table(rows: list[dict], best: float | None) -> str:
    """Markdown table, one row per LR, the best LR's row in bold."""
    lines = ["| lr | seeds | diverged | ended ≥ untrained loss | val acc (%) | test acc (%) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r['lr']:.3g}", str(r["n_runs"]), str(r["n_diverged"]), str(r["n_failed"] - r["n_diverged"]),
                 _acc(r["val_acc"]), _acc(r["test_acc"])]
        if r["n_incomplete"]:
            cells[1] += f" ({r['n_incomplete']} incomplete)"
        if r["lr"] == best:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def landscape_markdown(rows: list[dict], best: float | None, edge: float | None) -> str:
    """landscape.md: the table with the best LR and the boundary below it."""
    return (f"# {TITLE}: final accuracy per learning rate\n\n"
            "Accuracy: mean ± std over the seeds that did not diverge (95% t-intervals in landscape.json). "
            "\"ended ≥ untrained loss\": seeds that did not diverge but whose last-epoch train loss was not "
            f"below the untrained loss.\n\n{landscape_table(rows, best)}\n{summary_line(rows, best, edge)}\n")


def summary_line(rows: list[dict], best: float | None, edge: float | None) -> str:
    """One line naming the best LR and the divergence boundary."""
    by_lr = {r["lr"]: r for r in rows}
    if best is None:
        text = "best LR: none (no LR where fewer than half of the seeds failed has validation accuracy)"
    else:
        b = by_lr[best]
        text = f"best LR (highest mean validation accuracy): **{best:.3g}** (val {_acc(b['val_acc'])}%, " \
               f"test {_acc(b['test_acc'])}%)"
    if edge is None:
        return text + ("; divergence boundary: none in the grid (no LR above the best where at least half of "
                       "the seeds failed)")
    e = by_lr[edge]
    return text + f"; divergence boundary: lr **{edge:.3g}** ({e['n_diverged']}/{e['n_runs']} diverged, " \
                  f"{e['n_failed']}/{e['n_runs']} diverged or ended ≥ untrained loss)"


def write_landscape(st: studydir.StudyDir, records: list[dict], cfg: config.Config) -> None:
    """The landscape figure, table and JSON, and the four-panel curves of the best LR and of the
    boundary only (forty of them, and a forty-line comparison, would say less than the landscape
    figure; `runner.run` writes the summary and test table)."""
    records = [r for r in records if r is not None]
    num_classes = records[0]["config"]["model"]["num_classes"]
    rows = landscape_rows(records)
    best, edge = best_lr(rows), boundary(rows)
    st.write_json("landscape.json", {"rows": rows, "best_lr": best, "boundary": edge})
    st.write_text("landscape.md", landscape_markdown(rows, best, edge))
    lr_landscape(rows, st.figures_dir / "lr_landscape.png",
                 f"{TITLE}: {cfg.model.name}, {len(rows)} LRs × {len(cfg.seeds)} seeds, {cfg.epochs} epochs",
                 best_lr=best, boundary=edge, chance=100.0 / num_classes)
    by_config = run_record.group_by_config(records)
    for lr, what in ((best, "best LR"), (edge, "divergence boundary")):
        name = next((r["config"] for r in rows if r["lr"] == lr), None)
        if name is not None:
            charts.four_panel(by_config[name], st.figures_dir / f"curves_{studydir.run_file_stem(name)}.png",
                              f"{TITLE}: {name} ({what})")
    progress.log(f"\n{TITLE} (mean ± std over the seeds that did not diverge)\n{landscape_table(rows, best)}"
                 f"results and figures: {st.root}")
    progress.log(summary_line(rows, best, edge).replace("**", ""))


def main(cfg: config.Config) -> None:
    cfg = landscape_config(cfg)  # validate before any work
    if cfg.changed("lr"):
        progress.log(f"--lr is ignored: the landscape grid sets the LRs ({len(cfg.lrs)} from {cfg.lrs[0]:g} "
                     f"to {cfg.lrs[-1]:g})")
    runner.run(cfg, "lr_landscape", TITLE, lambda p: config.grid(cfg, len(p.train_idx), p.dataset.num_classes),
               figures=False, extra={"landscape_lrs": list(cfg.lrs)},
               analysis=lambda st, records: write_landscape(st, records, cfg))


# ----------------------------------------------------------------------------- figures

def _band(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t-interval (in %) of one statistic per row, NaN where a row has no finished seed."""
    mean = np.array([np.nan if r[key]["mean"] is None else 100 * r[key]["mean"] for r in rows])
    lo = np.array([np.nan if not r[key].get("ci95") else 100 * r[key]["ci95"][0] for r in rows])
    hi = np.array([np.nan if not r[key].get("ci95") else 100 * r[key]["ci95"][1] for r in rows])
    return mean, lo, hi


@charts.styled
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
        ax_acc.plot(lrs, mean, "-o", color=charts.PALETTE[i], lw=2, ms=3.5, label=f"{name} accuracy (mean, up to {n} seeds)")
        ax_acc.fill_between(lrs, np.clip(lo, 0, 100), np.clip(hi, 0, 100), color=charts.PALETTE[i], alpha=0.2, lw=0,
                            label=f"{name}: 95% t-interval of the mean")
        drawn = True
    if not drawn:
        charts.no_data(ax_acc, "no finished runs")
    if chance:
        ax_acc.axhline(chance, ls=":", color="0.3", lw=1.5, label=f"chance ({chance:.3g}%)")
    if best_lr is not None:
        best = next(r for r in rows if r["lr"] == best_lr)
        if best["val_acc"]["mean"] is not None:
            ax_acc.plot([best_lr], [100 * best["val_acc"]["mean"]], "*", color=charts.PALETTE[2], ms=16, zorder=5,
                        label=f"best LR {best_lr:.3g} (highest mean validation accuracy)")
    ax_acc.set_ylim(0, None)
    ax_acc.set_ylabel("final accuracy (%)")
    ax_acc.set_title("Final accuracy (band: 95% t-interval across the seeds that did not diverge)")
    n_runs = np.array([max(r["n_runs"], 1) for r in rows], dtype=np.float64)
    ax_div.plot(lrs, 100 * np.array([r["n_failed"] for r in rows]) / n_runs, "-s", color=charts.PALETTE[4], lw=1.5, ms=4,
                label="diverged or ended at/above the untrained loss")
    ax_div.plot(lrs, 100 * np.array([r["n_diverged"] for r in rows]) / n_runs, "-o", color=charts.PALETTE[3], lw=2, ms=4,
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
            ax.axvspan(boundary, lrs.max() * 1.2, color=charts.PALETTE[3], alpha=0.06, lw=0)
    ax_div.set_xlim(lrs.min() / 1.2, lrs.max() * 1.2)
    fig.suptitle(title)
    charts.figure_legend(fig, (ax_acc, ax_div), ncol=2)
    return charts.save(fig, path)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
