"""Successive halving on the run axis (--prune=halving): at each rung (an epoch) the configurations
still training are ranked by the mean over their seeds of a metric at that epoch, the best `keep`
fraction train on and the others stop there with status "pruned" (every seed of a configuration
goes the same way). Decisions are a function of the records alone, so a rerun of an interrupted
study makes the same ones."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from cifar_jax.results import run_record, summary

METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


def default_rungs(epochs: int, keep: float) -> tuple[int, ...]:
    """The geometric rungs of a study of `epochs` epochs: epochs·keep^k rounded, for k = 1, 2, ...
    while at least 1 (9 epochs at keep 1/3: 1 and 3)."""
    rungs, k = set(), 1
    while epochs * keep ** k >= 1:
        rungs.add(max(1, round(epochs * keep ** k)))
        k += 1
    return tuple(sorted(r for r in rungs if r < epochs))


def kept_count(n: int, keep: float) -> int:
    """How many of n configurations a rung keeps: the `keep` fraction rounded up, at least one
    (27 at 1/3: 9; 9: 3)."""
    return max(1, math.ceil(n * keep - 1e-9))


def score(records: Sequence[dict], rung: int, metric: str) -> float:
    """A configuration's mean over its seeds of `metric` after epoch `rung` (NaN when any seed has no
    finite value there: a diverged seed ranks its configuration last)."""
    values = []
    for rec in records:
        entry = next((e for e in rec["epochs"] if e["epoch"] == rung), None)
        if entry is None:
            raise ValueError(f"run {rec['run_id']!r} has no record of epoch {rung} to rank it at")
        values.append(entry.get(metric))
    arr = np.array([v if isinstance(v, (int, float)) else np.nan for v in values], dtype=np.float64)
    return float(arr.mean()) if np.isfinite(arr).all() else math.nan


def final_score(records: Sequence[dict], metric: str) -> float:
    """A configuration's mean over its seeds of `metric` after its last epoch (NaN unless every seed
    is done)."""
    if not records or any(r["status"] != "done" for r in records):
        return math.nan
    return score(records, records[0]["epochs"][-1]["epoch"], metric)


def test_accuracy(records: Sequence[dict]) -> float | None:
    """The mean over a configuration's seeds of their final test accuracy (None when one has none)."""
    return run_record.finite_or_none(np.mean([(r.get("test") or {}).get("acc", np.nan) for r in records]))


def rank(scores: dict[str, float], metric: str) -> list[str]:
    """Configurations best first (accuracies high, losses low; NaN last; ties in the given order)."""
    sign = 1.0 if "loss" in metric else -1.0
    return sorted(scores, key=lambda name: (math.isnan(scores[name]), sign * np.nan_to_num(scores[name])))


def decide(records_by_config: dict[str, list[dict]], rung: int, keep: float, metric: str) -> list[str]:
    """The configurations a rung keeps, best first."""
    scores = {name: score(recs, rung, metric) for name, recs in records_by_config.items()}
    return rank(scores, metric)[:kept_count(len(scores), keep)]


def run_epochs(records: Sequence[dict]) -> int:
    """The epochs the records' runs trained (a pruned run's up to its rung): the compute spent."""
    return sum(len(r.get("epochs") or []) for r in records)


def compute(records: Sequence[dict]) -> tuple[int, int, float]:
    """(run-epochs trained, run-epochs of every run to its end, seconds of training) of the records."""
    return (run_epochs(records), sum(r["config"]["epochs"] for r in records),
            sum(e.get("run_seconds", 0.0) for r in records for e in r["epochs"]))


def markdown(records: Sequence[dict], metric: str, title: str) -> str:
    """What halving did in a study: each configuration's end (the rung it stopped at, or its final
    mean `metric` and test accuracy), the one it chose (best final mean `metric` among those that
    finished) and the compute: run-epochs and seconds of training against the full grid's."""
    by_config: dict[str, list[dict]] = {}
    for rec in records:
        by_config.setdefault(rec["config_name"], []).append(rec)
    final = {name: final_score(recs, metric) for name, recs in by_config.items()
             if all(r["status"] == "done" for r in recs)}
    chosen = rank(final, metric)[0] if final else None
    spent, full, seconds = compute(records)
    out = [f"# {title}: successive halving", ""]
    if chosen:
        out += [f"Chosen: **{chosen}** (mean final {metric} {final[chosen]:.4f}, test accuracy "
                f"{summary.percent(test_accuracy(by_config[chosen]))}%)", ""]
    out += [f"Compute: {spent} run-epochs of the full grid's {full} ({spent / full:.0%}), {seconds:.1f} s of training", "",
            f"| configuration | runs | stopped | final {metric} | test acc (%) |", "|:---|---:|:---|---:|---:|"]
    for name, recs in by_config.items():
        pruned = run_record.pruned_epochs(recs)
        stopped = f"pruned{summary.at_epochs(pruned)}" if pruned else recs[0]["status"]
        cells = [f"{final[name]:.4f}", summary.percent(test_accuracy(recs))] if name in final else ["–", "–"]
        if name == chosen:
            name, cells = f"**{name}**", [f"**{c}**" for c in cells]
        out.append(f"| {name} | {len(recs)} | {stopped} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
