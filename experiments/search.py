"""A hyperparameter search where Optuna proposes and the lab trains a whole round at once: each of
--rounds asks --trials trials of Optuna's sampler (--sampler, TPE by default), trains them as one
study part (trials of the same shape share a group's run axis; with --prune=halving the round's
trials are halved at its rungs, their rung values reported to Optuna as intermediate values and
the pruned ones told as pruned), then tells each trial its value: the mean over seeds of
--search_metric after the last epoch. The space is --space, one entry per option, e.g.

    python -m experiments.search --model=mlp --epochs=10 --seeds=2 --rounds=4 --trials=8 \\
        --space="lr=1e-4:0.5:log;l2=1e-6:1e-2:log;hidden=64|128|256,256"

An entry is NAME=LOW:HIGH (uniform), NAME=LOW:HIGH:log (log-uniform; integers for integer
options) or NAME=A|B|C (a choice; any grid option: widths, kernels, norms, optimisers, ...).
Optuna's study is an SQLite file in the study directory (optuna.db, study name "search"), so an
interrupted search resumes (its unfinished round trains on from its records, nothing finished is
trained again) and Optuna's own plots and optuna-dashboard read it. Needs the [search] extra.

Writes search.md and search.json (every trial: its values, state, value and mean test accuracy; the
best; run-epochs and seconds of training) and figures/search.png (value per trial, best so far), and
a part round-NNN per round.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.plots import charts
from cifar_jax.results import run_record, summary
from cifar_jax.study import cli, config, halving, prepare, progress, runner
from experiments import grid_study

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler",
            "gp": "GPSampler", "nsgaii": "NSGAIISampler", "bruteforce": "BruteForceSampler"}
OPTIONS = table(
    *grid_study.OPTIONS.values(),  # a trial trains as a grid_study run: the seeds' protocols (--cycles) apply
    Option("space", "", "The search space: entries separated by ';', each NAME=LOW:HIGH, NAME=LOW:HIGH:log or "
           "NAME=A|B|C, NAME a grid option (a per-run, model or group one, or lr).", kind="str"),
    Option("rounds", 4, "Rounds of the search: each asks --trials trials and trains them as one part.", kind="int",
           low=1),
    Option("trials", 8, "Trials per round, trained together.", kind="int", low=1),
    Option("sampler", "tpe", "Optuna's sampler (TPESampler, RandomSampler, ...).", kind="choice",
           choices=tuple(SAMPLERS)),
    Option("sampler_seed", 0, "Seed of the sampler (a resumed search's later proposals may differ from an "
           "uninterrupted one's: the sampler's state is not stored).", kind="int", low=0),
    Option("search_metric", "val_acc", "Each trial's value: the mean over seeds after the last epoch (accuracies "
           "maximised, losses minimised).", kind="choice", choices=halving.METRICS),
)
TITLE = "Search"


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One entry of --space: an option and what Optuna may draw for it."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[str, ...] = ()

    def distribution(self, option: Option) -> Any:
        from optuna import distributions

        if self.choices:
            return distributions.CategoricalDistribution(self.choices)
        if option.kind == "int":
            return distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return distributions.FloatDistribution(self.low, self.high, log=self.log)


def parse_space(text: str, known: dict[str, Option]) -> list[Dimension]:
    """--space into its dimensions (ConfigError, one line, on a bad entry)."""
    dims = []
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        name, sep, spec = entry.partition("=")
        o = known.get(name)
        if not sep or o is None or not (o.axis or name == "lr"):
            raise config.ConfigError(f"--space: {entry!r} is not NAME=... for a grid option (lr, or a per-run, model "
                                     "or group option)")
        if "|" in spec or o.kind not in ("float", "int") and name != "lr":
            dims.append(Dimension(name, choices=tuple(c.strip() for c in spec.split("|"))))
            continue
        parts = spec.split(":")
        try:
            low, high = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise config.ConfigError(f"--space: {entry!r}: give LOW:HIGH[:log] or A|B|C") from None
        if len(parts) > 3 or len(parts) == 3 and parts[2] != "log" or not low < high or (len(parts) == 3 and low <= 0):
            raise config.ConfigError(f"--space: {entry!r}: need LOW < HIGH (both > 0 with :log) and at most ':log'")
        dims.append(Dimension(name, low, high, log=len(parts) == 3))
    if not dims:
        raise config.ConfigError("--space is empty: give one or more NAME=LOW:HIGH[:log] or NAME=A|B|C entries")
    if len({d.name for d in dims}) < len(dims):
        raise config.ConfigError("--space names an option twice")
    return dims


def trial_config(cfg: config.Config, params: dict[str, Any]) -> config.Config:
    """The search's flags with a trial's values in place of the searched options' (checked like
    flags: a value the option does not allow is a ConfigError)."""
    kept = [line for name, line, _ in cfg.given if name not in params]
    return config.parse(*kept, *(f"--{k}={v!r}" if isinstance(v, float) else f"--{k}={v}" for k, v in params.items()),
                        own=OPTIONS)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise config.ConfigError("experiments.search needs Optuna: pip install optuna (or the [search] extra: "
                                 "pip install -e '.[search]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def trial_name(number: int) -> str:
    """A trial's configuration name in its round's records."""
    return f"trial={number:03d}"


def _train_round(cfg: config.Config, index: int, trials: list[tuple[int, dict]], prepared: Any) -> dict[int, list[dict]]:
    """The round's trials (number, values) as one study part, round-NNN; each trial's records.
    (`prepared`: the data, made once: a searched option never changes it.)"""
    def runs(prepared: Any) -> list:
        return [dataclasses.replace(run, config_name=trial_name(number)) for number, params in trials
                for run in grid_study.grid_runs(trial_config(cfg, params), prepared, cfg.own.cycles)]
    done = runner.run(cfg, "search", f"{TITLE}: round {index + 1}", runs, part=f"round-{index:03d}", figures=False,
                      prepared=prepared)
    by_trial: dict[int, list[dict]] = {number: [] for number, _ in trials}
    for rec in done.finished:
        by_trial[int(rec["config_name"].split("=")[1])].append(rec)
    return by_trial


def _tell(optuna: Any, study: Any, trial: Any, records: list[dict], cfg: config.Config) -> None:
    """Report the trial's rung values (with --prune=halving) and tell it its value or state."""
    metric = cfg.own.search_metric
    for rung in cfg.prune_rungs:
        if all(run_record.last_epoch(r) >= rung for r in records):
            value = halving.score(records, rung, metric)
            if math.isfinite(value):
                trial.report(value, rung)
    state = optuna.trial.TrialState
    if any(r["status"] == "pruned" for r in records):
        study.tell(trial, state=state.PRUNED)
        return
    value = halving.final_score(records, metric)
    study.tell(trial, value) if math.isfinite(value) else study.tell(trial, state=state.FAIL)


def markdown(rows: list[dict], best: dict | None, metric: str, spent: int, full: int, seconds: float) -> str:
    """Every trial (its values, state, value and mean test accuracy) with the best in bold, and the
    compute spent."""
    names = list(dict.fromkeys(k for r in rows for k in r["params"]))
    out = [f"# {TITLE}: {len(rows)} trials, value = mean {metric} over seeds after the last epoch", ""]
    if best:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        out += [f"Best: trial {best['trial']} ({shown}): {metric} {best['value']:.4f}, test accuracy "
                f"{summary.percent(best['test_acc'])}%", ""]
    out += [f"Compute: {spent} run-epochs of the {full} that training every trial to its end would take; "
            f"{seconds:.1f} s of training.", "",
            "| trial | " + " | ".join(names) + " | state | value | test acc (%) |",
            "|---:|" + "---:|" * len(names) + ":---|---:|---:|"]
    for r in rows:
        cells = [str(r["trial"]), *(f"{r['params'][k]:.4g}" if isinstance(r["params"].get(k), float)
                                    else str(r["params"].get(k, "–")) for k in names),
                 r["state"], "–" if r["value"] is None else f"{r['value']:.4f}", summary.percent(r["test_acc"])]
        if best and r["trial"] == best["trial"]:
            cells = [f"**{c}**" for c in cells]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


@charts.styled
def progress_figure(rows: list[dict], metric: str, path: Path, title: str) -> Path:
    """Each finished trial's value, each pruned one's at its last rung, and the best so far."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    numbers = np.array([r["trial"] for r in rows])
    minimise, scale = summary.lower_is_better(metric), 100.0 if summary.is_percent(metric) else 1.0
    value = lambda state: np.array([r["value"] if r["state"] == state and r["value"] is not None else np.nan
                                    for r in rows], float)
    done, pruned = value("complete"), value("pruned")
    ax.plot(numbers, scale * done, "o", color=charts.PALETTE[0], ms=5, label="trial")
    if np.isfinite(pruned).any():
        ax.plot(numbers, scale * pruned, "x", color=charts.PALETTE[4], ms=6, label="pruned (its value at its last rung)")
    best = (np.fmin if minimise else np.fmax).accumulate(np.where(np.isfinite(done), done, np.inf if minimise else -np.inf))
    ax.step(numbers, scale * np.where(np.isfinite(best), best, np.nan), where="post", color=charts.PALETTE[3], lw=2,
            label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(summary.metric_label(metric))
    return charts.save(fig, path, title=title, legend=[ax])


def main(cfg: config.Config) -> None:
    """Rounds of ask → train the round → tell, resumable from Optuna's storage and the records."""
    optuna = _optuna()
    own, known = cfg.own, {**config.CORE, **OPTIONS}
    if cfg.distributed[1] > 1:
        raise config.ConfigError("experiments.search runs in one process (--num_processes=1)")
    dims = parse_space(own.space, known)
    for d in dims:  # both ends (or every choice) must be values the option allows
        for value in d.choices or (d.low, d.high):
            trial_config(cfg, {d.name: value})
    st = prepare.study_dir(cfg, "search")
    st.root.mkdir(parents=True, exist_ok=True)
    metric, running = own.search_metric, optuna.trial.TrialState.RUNNING
    study = optuna.create_study(storage=f"sqlite:///{st.root / 'optuna.db'}", study_name="search",
                                sampler=getattr(optuna.samplers, SAMPLERS[own.sampler])(seed=own.sampler_seed),
                                direction="minimize" if "loss" in metric else "maximize", load_if_exists=True)
    space = {d.name: d.distribution(known[d.name]) for d in dims}
    records: list[dict] = []
    test: dict[int, float | None] = {}  # each trial's mean test accuracy over its seeds (halving.test_accuracy)
    prepared = prepare.data(cfg)
    with st.lock():
        for index in range(own.rounds):
            asked = study.trials[index * own.trials:(index + 1) * own.trials]  # before an interruption
            new = [study.ask(space) for _ in range(own.trials - len(asked))]
            untold = [optuna.Trial(study, t._trial_id) for t in asked if t.state == running] + new
            if untold:
                progress.log(f"search round {index + 1}/{own.rounds}: trials {', '.join(str(t.number) for t in untold)}")
            by_trial = _train_round(cfg, index, [(t.number, t.params) for t in [*asked, *new]], prepared)
            records += [r for recs in by_trial.values() for r in recs]
            test.update((n, halving.test_accuracy(recs)) for n, recs in by_trial.items())
            for t in untold:
                _tell(optuna, study, t, by_trial[t.number], cfg)
    rows = [{"trial": t.number, "params": t.params, "state": t.state.name.lower(), "value": t.value,
             "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
             "test_acc": test.get(t.number)} for t in study.trials]
    finished = [r for r in rows if r["state"] == "complete"]
    best = (min if "loss" in metric else max)(finished, key=lambda r: r["value"]) if finished else None
    spent, full, seconds = halving.compute(records)
    text = markdown(rows, best, metric, spent, full, seconds)
    st.write_text("search.md", text)
    st.write_json("search.json", {"metric": metric, "best": best, "trials": rows, "run_epochs": spent,
                                  "run_epochs_without_pruning": full, "training_seconds": seconds})
    progress_figure(rows, metric, st.figures_dir / "search.png", f"{TITLE}: {metric.replace('_', ' ')} per trial")
    progress.log("\n" + text + f"\nresults: {st.root}")


if __name__ == "__main__":
    cli.main(main, OPTIONS)
