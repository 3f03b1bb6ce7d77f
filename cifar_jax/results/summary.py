"""Statistics across seeds: each configuration's metrics as mean, std and 95% interval
(`summarize`, written as summary.json), and their tables (Markdown, and the rows the table figure
draws)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from cifar_jax.results import run_record

SUMMARY_METRICS = (
    "test_loss", "test_acc", "test_top5",
    "train_loss", "train_acc", "val_loss", "val_acc",
    "untrained_val_acc", "untrained_val_loss",
)
TEST_METRICS = ("test_loss", "test_acc", "test_top5")


def metric_values(record: dict) -> dict[str, float | None]:
    """The summary metrics of one run (None where the record has no finite value): test from the
    final eval-mode pass, train and val from the last epoch, untrained val from before training."""
    test = run_record.final(record, "test") or {}
    untrained_val = run_record.untrained(record, "val") or {}
    raw = {
        "test_loss": test.get("loss"), "test_acc": test.get("acc"), "test_top5": test.get("top5"),
        **{key: run_record.last(record, key) for key in ("train_loss", "train_acc", "val_loss", "val_acc")},
        "untrained_val_acc": untrained_val.get("acc"), "untrained_val_loss": untrained_val.get("loss"),
    }
    return {name: run_record.finite_or_none(value) for name, value in raw.items()}


def statistics(values: Sequence[float]) -> dict:
    """Mean, sample std (ddof=1) and Student-t 95% interval of the mean; None fields when empty."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0, "values": []}
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    from scipy import stats  # here, not at the top: importing scipy.stats costs every process 0.4 s

    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n, "values": arr.tolist()}


def finite_statistics(values: Iterable[float | None]) -> dict:
    """`statistics` of the values that are numbers and finite (a diverged run's NaN or null left out)."""
    return statistics([float(v) for v in values if v is not None and math.isfinite(v)])


def _config_summary(group: list[dict]) -> dict:
    """Run counts and metric statistics (done runs only) of one configuration."""
    done = [metric_values(r) for r in group if r["status"] == "done"]
    metrics = {m: statistics([v[m] for v in done if v[m] is not None]) for m in SUMMARY_METRICS}
    return {
        "n_runs": len(group),
        "n_done": len(done),
        "n_diverged": sum(r["status"] == "diverged" for r in group),
        "diverged_epochs": sorted(r["diverged_epoch"] for r in group
                                  if r["status"] == "diverged" and isinstance(r.get("diverged_epoch"), int)),
        "n_pruned": sum(r["status"] == "pruned" for r in group),
        "pruned_epochs": run_record.pruned_epochs(group),
        "n_incomplete": sum(r["status"] == "incomplete" for r in group),
        "metrics": metrics,
    }


def summarize(records: list[dict]) -> dict:
    """Per-configuration statistics across seeds, configs in order of first appearance."""
    for rec in records:
        run_record.check(rec, f"run {rec.get('run_id')!r}" if isinstance(rec, dict) else "summarize")
    return {"configs": {name: _config_summary(group) for name, group in run_record.group_by_config(records).items()}}


def is_percent(metric: str) -> bool:
    """Whether a metric is an accuracy (fraction shown as %)."""
    return "acc" in metric or "top5" in metric


def lower_is_better(metric: str) -> bool:
    """Losses are minimised, accuracies maximised."""
    return "loss" in metric


def metric_label(metric: str) -> str:
    """Human-readable column label, e.g. 'test_acc' → 'test acc (%)'."""
    label = metric.replace("top5", "top-5").replace("_", " ")
    return f"{label} (%)" if is_percent(metric) else label


def _display_mean(metric: str, stat: dict) -> float | None:
    """The mean rounded as it is displayed (so equal-looking values tie for best)."""
    if stat["mean"] is None:
        return None
    return round(stat["mean"] * 100, 2) if is_percent(metric) else round(stat["mean"], 3)


def percent(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage without the sign ("–" for none or NaN)."""
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def format_stat(metric: str, stat: dict) -> str:
    """'mean ± std' with accuracies in % (2 decimals) and losses with 3 decimals; '–' when empty."""
    if stat["mean"] is None:
        return "–"
    if is_percent(metric):
        return f"{stat['mean'] * 100:.2f} ± {stat['std'] * 100:.2f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def best_configs(summary: dict, metric: str) -> set[str]:
    """Configs with the best displayed mean for a metric (ties all count)."""
    means = {name: _display_mean(metric, cfg["metrics"][metric]) for name, cfg in summary["configs"].items()}
    present = {name: m for name, m in means.items() if m is not None}
    if not present:
        return set()
    best = (min if lower_is_better(metric) else max)(present.values())
    return {name for name, m in present.items() if m == best}


def at_epochs(epochs: Sequence[int]) -> str:
    """' at epoch 3', ' at epochs 1, 2' ('' for none)."""
    return f" at epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}" if epochs else ""


def runs_cell(config_summary: dict) -> str:
    """'done/total' plus diverged (with the epochs they diverged at), pruned (with the rungs they
    stopped at) and incomplete counts when any."""
    text = f"{config_summary['n_done']}/{config_summary['n_runs']}"
    for key, word in (("n_diverged", f"diverged{at_epochs(config_summary.get('diverged_epochs') or [])}"),
                      ("n_pruned", f"pruned{at_epochs(config_summary.get('pruned_epochs') or [])}"),
                      ("n_incomplete", "incomplete")):
        if config_summary.get(key):
            text += f", {config_summary[key]} {word}"
    return text


def table_rows(summary: dict, metrics: Sequence[str] = TEST_METRICS
               ) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Header, cell texts and best-cell flags shared by the Markdown and figure tables."""
    header = ["config", *(metric_label(m) for m in metrics), "n"]
    best = {m: best_configs(summary, m) for m in metrics}
    rows, flags = [], []
    for name, cfg in summary["configs"].items():
        rows.append([name, *(format_stat(m, cfg["metrics"][m]) for m in metrics), runs_cell(cfg)])
        flags.append([False, *(name in best[m] for m in metrics), False])
    return header, rows, flags


def test_table_markdown(summary: dict, metrics: Sequence[str] = TEST_METRICS) -> str:
    """Markdown table of mean ± std per config with the best value per metric in bold."""
    header, rows, flags = table_rows(summary, metrics)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---", *["---:"] * len(metrics), ":---"]) + "|"]
    for row, bold in zip(rows, flags):
        cells = [c.replace("|", "\\|") for c in row]
        cells = [f"**{c}**" if b else c for c, b in zip(cells, bold)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
