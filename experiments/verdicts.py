"""Verdicts on a source report: each published number beside ours with its difference and whether
it lies within a tolerance stated with its reasons, and each claim of the report's text decided by
a rule over our run records. `experiments.reproduce` opens every report with them.

A rule reads configurations of studies ("stem" or "stem/part", e.g. "lr_sweep/range_test") and
returns a Finding: holds, does not hold, or not run (a configuration it needs has no finished run).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from cifar_jax.results import frames, run_record, summary
from experiments import lr_sweep

HOLDS, FAILS, NOT_RUN = "✓ holds", "✗ does not hold", "– not run"
WITHIN, OUTSIDE = "✓ within", "✗ outside"


@dataclasses.dataclass(frozen=True)
class Finding:
    """A rule's outcome: holds (True/False; None when a configuration it reads was not run) and the
    numbers behind it."""

    holds: bool | None
    evidence: str

    @property
    def verdict(self) -> str:
        return NOT_RUN if self.holds is None else HOLDS if self.holds else FAILS


Rule = Callable[["Evidence"], Finding]


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of a source report's text: its section, the claim as the source makes it (with
    its number), and the rule that decides it on our records."""

    key: str
    section: str
    text: str
    rule: Rule


class Missing(Exception):
    """A configuration a rule reads has no finished run."""


class Evidence:
    """Run records by study ("stem" or "stem/part") and configuration name, with the report's
    copy margin (points added to every tolerance)."""

    def __init__(self, studies: dict[str, list[dict]], margin: float = 0.0):
        self.studies = {name: run_record.group_by_config(recs) for name, recs in studies.items()}
        self.margin = margin

    @classmethod
    def load(cls, root: Path, stems: Iterable[str], suffix: str = "", margin: float = 0.0) -> "Evidence":
        """Every part of the studies `root/<stem><suffix>` that exist, keyed by stem (and part)."""
        found = {}
        for stem in stems:
            path = root / f"{stem}{suffix}"
            if path.is_dir():
                found.update({f"{stem}/{part}" if part else stem: recs
                              for part, recs in frames.study_parts(path).items()})
        return cls(found, margin)

    def runs(self, study: str, config: str) -> list[dict]:
        """The finished or diverged seeds of one configuration (Missing when there are none)."""
        runs = [r for r in self.studies.get(study, {}).get(config, []) if r["status"] in ("done", "diverged")]
        if not runs:
            raise Missing(f"{study}: {config}")
        return runs

    def configs(self, study: str) -> list[str]:
        return list(self.studies.get(study, {}))

    def stat(self, study: str, config: str, metric: str) -> dict:
        """Mean, std and n over the configuration's done seeds of a metric (`metric_of`)."""
        values = [metric_of(r, metric) for r in self.runs(study, config) if r["status"] == "done"]
        return summary.finite_statistics(values)

    def mean(self, study: str, config: str, metric: str) -> float:
        stat = self.stat(study, config, metric)
        if stat["mean"] is None:
            raise Missing(f"{study}: {config} has no {metric}")
        return stat["mean"]


def _wobble(record: dict) -> float:
    """The validation accuracy's spread (std) over the last quarter of the epochs."""
    values = run_record.curve(record, "val_acc")
    return float(np.nanstd(values[-max(2, len(values) // 4):])) if len(values) > 1 else math.nan


def _train_acc(record: dict) -> float:
    return (run_record.final(record, "train") or {}).get("acc", run_record.last(record, "train_acc"))


# The metrics a rule reads, per run: the summary's (test_acc, val_loss, untrained_val_acc, ...) and these.
METRICS: dict[str, Callable[[dict], float]] = {
    "train_acc": _train_acc,  # the eval-mode pass over the training split when recorded, else the last epoch's
    "gap": lambda r: _train_acc(r) - run_record.last(r, "val_acc"),  # train − validation accuracy
    "best_train_acc": lambda r: run_record.best(r, "train_eval_acc", "train_acc"),  # as configs.md's
    "run_seconds": lambda r: run_record.later_mean(r, "run_seconds"),  # training seconds per epoch and run, first epoch left out
    "loss_noise": lambda r: run_record.last(r, "loss_noise"),
    "val_wobble": _wobble,
    "val_cost": lambda r: float(run_record.cost_curve(r, "val")[-1]) if r.get("epochs") else math.nan,  # loss + λ·ΣW²
    "untrained_val_top5": lambda r: (run_record.untrained(r, "val") or {}).get("top5", math.nan),
}


def metric_of(record: dict, metric: str) -> float:
    """One run's value of a metric (NaN where it has none)."""
    if metric in METRICS:
        return METRICS[metric](record)
    value = summary.metric_values(record).get(metric, math.nan)
    return math.nan if value is None else value


def _fmt(metric: str, value: float) -> str:
    if summary.is_percent(metric) or metric == "gap":
        return f"{100 * value:.2f}%"
    return f"{value:.4g}" + (" s" if metric == "run_seconds" else "")


def _decide(rule: Callable[["Evidence"], Finding]) -> Rule:
    """A rule that reads a configuration that was not run gives 'not run' with which one."""
    def decide(ev: Evidence) -> Finding:
        try:
            return rule(ev)
        except Missing as e:
            return Finding(None, f"no runs of {e}")
    return decide


# ----------------------------------------------------------------------------- rules

Ref = tuple[str, str]  # (study, configuration)


def best(study: str, metric: str, expect: str, among: Sequence[str] | None = None, worst: bool = False) -> Rule:
    """`expect` has the best (or with `worst`, the worst) mean of `metric` among `among` (default:
    every configuration of the study); losses count lower as better."""
    def rule(ev: Evidence) -> Finding:
        names = list(among) if among else ev.configs(study)
        means = {n: ev.mean(study, n, metric) for n in names}
        ev.mean(study, expect, metric)
        lower = summary.lower_is_better(metric) != worst
        ranked = sorted(means, key=means.get, reverse=not lower)
        top = ranked[0]
        text = ", ".join(f"{n} {_fmt(metric, means[n])}" for n in ranked)
        return Finding(top == expect, f"{'worst' if worst else 'best'} {top}; {metric}: {text}")
    return _decide(rule)


def greater(a: Ref, b: Ref, metric: str, margin: float = 0.0) -> Rule:
    """The mean of `metric` of a exceeds b's by more than `margin`."""
    def rule(ev: Evidence) -> Finding:
        x, y = ev.mean(*a, metric), ev.mean(*b, metric)
        return Finding(x - y > margin, f"{metric}: {a[1]} {_fmt(metric, x)} against {b[1]} {_fmt(metric, y)}"
                                       f" (Δ {f'{100 * (x - y):+.2f} points' if summary.is_percent(metric) else f'{x - y:+.4g}'})")
    return _decide(rule)


def ratio(a: Ref, b: Ref, metric: str, at_least: float) -> Rule:
    """The mean of `metric` of a is at least `at_least` times b's."""
    def rule(ev: Evidence) -> Finding:
        x, y = ev.mean(*a, metric), ev.mean(*b, metric)
        return Finding(x >= at_least * y, f"{metric}: {a[1]} {_fmt(metric, x)} against {b[1]} {_fmt(metric, y)} "
                                          f"(×{x / y:.2f}; ×{at_least:g} needed)")
    return _decide(rule)


def close(a: Ref, b: Ref, metric: str, within: float) -> Rule:
    """The means of `metric` of a and b differ by at most `within`."""
    def rule(ev: Evidence) -> Finding:
        x, y = ev.mean(*a, metric), ev.mean(*b, metric)
        return Finding(abs(x - y) <= within, f"{metric}: {a[1]} {_fmt(metric, x)} against {b[1]} {_fmt(metric, y)} "
                                             f"(|Δ| ≤ {_fmt(metric, within)} needed)")
    return _decide(rule)


def _setting(record: dict, key: str):
    """A config value by dotted key ("lr", "model.kernels"); lists as tuples."""
    value = record["config"]
    for part in key.split("."):
        value = value[part]
    return tuple(value) if isinstance(value, list) else value


def best_level(study: str, metric: str, key: str, expect: Sequence, worst: bool = False) -> Rule:
    """Averaged over the study's other settings, the best (or worst) value of setting `key` is one
    of `expect`."""
    def rule(ev: Evidence) -> Finding:
        levels: dict = {}
        for config in ev.configs(study):
            levels.setdefault(_setting(ev.runs(study, config)[0], key), []).append(ev.mean(study, config, metric))
        if not levels:
            raise Missing(study)
        means = {level: float(np.mean(v)) for level, v in levels.items()}
        ranked = sorted(means, key=means.get, reverse=summary.lower_is_better(metric) == worst)
        text = ", ".join(f"{level} {_fmt(metric, means[level])}" for level in ranked)
        return Finding(ranked[0] in expect, f"{'worst' if worst else 'best'} {key} = {ranked[0]}; mean {metric}: {text}")
    return _decide(rule)


def near(ref: Ref, metric: str, value: float, n_source: int | None = None, tol: float | None = None) -> Rule:
    """The mean of `metric` lies within a tolerance of the published `value`: `tol` when given,
    else the report's accuracy tolerance (`tolerance`) for a number measured on n_source examples."""
    def rule(ev: Evidence) -> Finding:
        stat = ev.stat(*ref, metric)
        if stat["mean"] is None:
            raise Missing(f"{ref[0]}: {ref[1]} has no {metric}")
        bound = tol if tol is not None else tolerance(100 * value, 100 * stat["std"], n_source, ev.margin) / 100
        return Finding(abs(stat["mean"] - value) <= bound,
                       f"{metric}: {ref[1]} {_fmt(metric, stat['mean'])} against {_fmt(metric, value)} "
                       f"(tolerance ±{_fmt(metric, bound)})")
    return _decide(rule)


def above(ref: Ref, metric: str, value: float, below: bool = False) -> Rule:
    """The mean of `metric` is above `value` (or with `below`, under it)."""
    def rule(ev: Evidence) -> Finding:
        x = ev.mean(*ref, metric)
        return Finding(x < value if below else x > value,
                       f"{metric}: {ref[1]} {_fmt(metric, x)} ({'<' if below else '>'} {_fmt(metric, value)} needed)")
    return _decide(rule)


def fails(refs: Sequence[Ref]) -> Rule:
    """Every seed of every configuration diverged, did not learn, or ended at chance."""
    def rule(ev: Evidence) -> Finding:
        parts, ok = [], True
        for study, config in refs:
            runs = ev.runs(study, config)
            bad = sum(run_record.failed(r) or run_record.at_chance(r) for r in runs)
            ok &= bad == len(runs)
            acc = ev.stat(study, config, "test_acc")["mean"]
            parts.append(f"{config}: {bad}/{len(runs)} seeds diverged or at chance"
                         + (f" (test {_fmt('test_acc', acc)})" if acc is not None else ""))
        return Finding(ok, "; ".join(parts))
    return _decide(rule)


def trend(study: str, configs: Sequence[str], metric: str, rising: bool, min_rho: float = 0.8) -> Rule:
    """`metric` rises (or falls) along `configs` in order: Spearman ρ of position against the means
    at least `min_rho` in that direction."""
    def rule(ev: Evidence) -> Finding:
        means = [ev.mean(study, c, metric) for c in configs]
        rho = float(scipy_stats.spearmanr(np.arange(len(means)), means)[0]) if len(set(means)) > 1 else 0.0
        signed = rho if rising else -rho
        text = ", ".join(f"{c} {_fmt(metric, m)}" for c, m in zip(configs, means))
        return Finding(signed >= min_rho, f"Spearman ρ = {rho:+.2f} ({'≥' if rising else '≤'} "
                                          f"{'+' if rising else '−'}{min_rho} needed); {metric}: {text}")
    return _decide(rule)


def _several(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"the {len(names)} configurations {names[0]} … {names[-1]}"


def spread(study: str, a: Sequence[str], b: Sequence[str], metric: str) -> Rule:
    """The range (max − min) of `metric` over configurations `a` is smaller than over `b`."""
    def rule(ev: Evidence) -> Finding:
        ra, rb = ([ev.mean(study, c, metric) for c in group] for group in (a, b))
        width = lambda xs: max(xs) - min(xs)
        return Finding(width(ra) < width(rb), f"{metric} range {_fmt(metric, width(ra))} over {_several(a)} "
                                              f"against {_fmt(metric, width(rb))} over {_several(b)}")
    return _decide(rule)


U_RISE = 0.05  # a final validation loss this much above its minimum is a U (overfitting), as the ladder's


def u_shape(ref: Ref, present: bool = True, by_fraction: float = 1.0) -> Rule:
    """The mean validation-loss curve is (or with present=False, is not) a U: its minimum comes
    before the last epoch (within the first `by_fraction` of the epochs) and the last epoch ends
    ≥ 5% above it."""
    def rule(ev: Evidence) -> Finding:
        curves = [run_record.curve(r, "val_loss") for r in ev.runs(*ref) if r["status"] == "done"]
        if not curves or not min(map(len, curves)):
            raise Missing(f"{ref[0]}: {ref[1]} has no validation loss")
        mean = np.nanmean([c[:min(map(len, curves))] for c in curves], axis=0)
        low = int(np.nanargmin(mean))
        rise = float(mean[-1] / mean[low] - 1)
        is_u = rise >= U_RISE and low + 1 <= by_fraction * len(mean)
        return Finding(is_u == present, f"{ref[1]}: validation loss lowest at epoch {low + 1} of {len(mean)} "
                                        f"({mean[low]:.3f}), last {mean[-1]:.3f} ({100 * rise:+.1f}%)")
    return _decide(rule)


def range_end(study: str, end: str, value: float) -> Rule:
    """The range test's unstable (or no-learning) boundary brackets the published `value`: it lies
    between our end (`experiments.lr_sweep.range_ends`) and the grid's next LR on the other side
    (5% slack for the grid's rounding)."""
    def rule(ev: Evidence) -> Finding:
        records = [r for c in ev.configs(study) for r in ev.runs(study, c)]
        if not records:
            raise Missing(f"{study}: the range test")
        lrs = sorted({r["config"]["lr"] for r in records})
        found = dict(zip(("unstable", "no_learning"), lr_sweep.range_ends(records)))[end]
        if found is None:
            return Finding(False, f"no {end.replace('_', '-')} end in our grid ({lrs[0]:g} … {lrs[-1]:g})")
        i = lrs.index(found)
        other = (lrs[i - 1] if i else 0.0) if end == "unstable" else (lrs[i + 1] if i + 1 < len(lrs) else math.inf)
        lo, hi = sorted((found, other))
        return Finding(lo / 1.05 <= value <= hi * 1.05,
                       f"our {end.replace('_', '-')} end lr {found:g}; the grid's next LR, which learned: {other:g}")
    return _decide(rule)


def best_param(study: str, metric: str, key: str, low: float, high: float) -> Rule:
    """The configuration with the best mean `metric` has its config value `key` in [low, high]."""
    def rule(ev: Evidence) -> Finding:
        means = {c: ev.mean(study, c, metric) for c in ev.configs(study)}
        if not means:
            raise Missing(study)
        top = max(means, key=means.get)
        value = ev.runs(study, top)[0]["config"][key]
        return Finding(low <= value <= high, f"best {metric} {_fmt(metric, means[top])} at {key} = {value:g}")
    return _decide(rule)


def all_of(*rules: Rule) -> Rule:
    """Every rule holds (not run when any is not run)."""
    def rule(ev: Evidence) -> Finding:
        found = [r(ev) for r in rules]
        holds = None if any(f.holds is None for f in found) else all(f.holds for f in found)
        return Finding(holds, "; ".join(f.evidence for f in found))
    return rule


# ----------------------------------------------------------------------------- tolerance of a published number

def tolerance(published: float, std: float, n_source: int | None, margin: float) -> float:
    """Points within which our mean may lie of a published accuracy (%): the copy margin plus two
    standard deviations of a single run of the source, whose spread is our spread across seeds
    (`std`) and, where the source evaluated on n_source examples, the binomial error of that set."""
    p = published / 100
    sampling = 100 ** 2 * p * (1 - p) / n_source if n_source else 0.0
    return margin + 2 * math.sqrt(std ** 2 + sampling)


def published_rows(ev: Evidence, study: str, published: dict[str, tuple], n_source: Sequence[int]) -> list[dict]:
    """Per published number (configuration × split): ours (mean, std, n), Δ, tolerance and verdict."""
    rows = []
    for config, numbers in published.items():
        for split, ref, n in zip(("train", "val", "test"), numbers, n_source):
            if ref is None:
                continue
            try:
                stat = ev.stat(study, config, f"{split}_acc")
            except Missing:
                stat = {"mean": None}
            row = {"config": config, "split": split, "published": ref, "mean": None, "verdict": NOT_RUN}
            if stat["mean"] is not None:
                mean, std = 100 * stat["mean"], 100 * stat["std"]
                tol = tolerance(ref, std, n, ev.margin)
                row.update(mean=mean, std=std, n=stat["n"], delta=mean - ref, tol=tol,
                           verdict=WITHIN if abs(mean - ref) <= tol else OUTSIDE)
            rows.append(row)
    return rows


def published_markdown(rows: list[dict]) -> str:
    """The published numbers with ours, Δ (ours − published, points), tolerance and verdict."""
    lines = ["| config | split | ours (mean ± std, n) | report | Δ (points) | tolerance | verdict |",
             "|:---|:---|---:|---:|---:|---:|:---|"]
    for r in rows:
        ours = "–" if r["mean"] is None else f"{r['mean']:.2f} ± {r['std']:.2f} ({r['n']})"
        extra = ("–", "–") if r["mean"] is None else (f"{r['delta']:+.2f}", f"±{r['tol']:.2f}")
        lines.append(f"| {r['config']} | {r['split']} | {ours} | {r['published']:.2f} | {extra[0]} | {extra[1]} "
                     f"| {r['verdict']} |")
    return "\n".join(lines) + "\n"


def count(rows: list[dict]) -> dict[str, int]:
    return {v: sum(r["verdict"] == v for r in rows) for v in (WITHIN, OUTSIDE, NOT_RUN)}
