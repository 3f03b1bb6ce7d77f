"""Running a study: data → groups of runs → engine → run records → summary, tables and figures.

An experiment module declares its runs (usually `config.grid`) and its own analysis, and hands
both to `run`, which does the rest. Runs already finished in the study directory are not
recomputed; records are written after every epoch, so an interrupted study keeps its progress and
resumes the unfinished runs.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from absl import app, flags, logging

from cifar_jax import config, data, engine, models, plots, results, run_record, splits, train
from cifar_jax.config import Config, ConfigError, Run


def log(message: str) -> None:
    """Progress output (stdout, flushed so it shows up in logs of long runs)."""
    print(message, flush=True)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A dataset loaded, split, standardised and on the device."""

    dataset: data.Dataset
    train_idx: np.ndarray
    val_idx: np.ndarray
    device: train.Data

    @property
    def labels_by_split(self) -> dict[str, np.ndarray]:
        y = self.dataset.y_train
        return {"train": y[self.train_idx], "val": y[self.val_idx], "test": self.dataset.y_test}


def prepare(cfg: Config) -> Prepared:
    """Load the dataset and its split, check the batch size fits, and put it on the device."""
    ds = data.load(cfg.dataset, cfg.data_dir, download=cfg.download)
    ds = data.select_classes(ds, cfg.classes) if cfg.classes else ds
    ds = data.test_subset(ds, cfg.test_size, cfg.split_seed) if cfg.test_size else ds
    n_train, n_val, swap = cfg.split
    try:
        train_idx, val_idx = splits.make_split(len(ds.y_train), n_train, n_val, seed=cfg.split_seed, swap=swap)
    except ValueError as err:
        raise ConfigError(f"--split={n_train}/{n_val}: {err}") from None
    batch = max(dict(v).get("batch_size", cfg.batch_size) for v in cfg.variants)
    if batch > len(train_idx):
        raise ConfigError(f"--batch_size={batch}: larger than the training split ({len(train_idx)} images)")
    mean, std = splits.norm_stats(ds.x_train, train_idx, cfg.normalization, cfg.zca_epsilon)
    device = train.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test, train_idx, val_idx, mean, std)
    log(f"data: {ds.name} train {len(train_idx)} / val {len(val_idx)} / test {len(ds.y_test)}, "
        f"images {ds.image_shape}, {ds.num_classes} classes, normalization {cfg.normalization}")
    return Prepared(ds, train_idx, val_idx, device)


def study_dir(cfg: Config, default_name: str) -> results.StudyDir:
    """The study directory for these flags (created on its first write)."""
    return results.StudyDir(Path(cfg.results_dir).expanduser() / (cfg.name or default_name))


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _mean(x: Any) -> float:
    """Mean of the finite values (NaN, without a warning, when there are none: all runs diverged)."""
    x = np.asarray(x, dtype=np.float64)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else float("nan")


def _pct(x: Any) -> str:
    return f"{100 * _mean(x):.1f}%" if np.isfinite(_mean(x)) else "nan"


class RecordWriter:
    """Engine callbacks: builds each run's record, writes it every epoch, prints progress."""

    def __init__(self, study: results.StudyDir, runs: list[Run], total_epochs: int, label: str,
                 progress: dict, tensor_names: list[str]):
        self.study, self.runs, self.label, self.tensor_names = study, runs, label, tensor_names
        self.records: dict[int, dict] = {}
        self.total, self.progress = total_epochs, progress  # progress is shared across groups

    def on_compiled(self, seconds: float) -> None:
        if seconds > 0.5:
            log(f"{self.label}: compiled in {seconds:.1f} s")

    def on_log(self, message: str) -> None:
        log(f"{self.label}: {message}")

    def on_start(self, runs: np.ndarray, untrained: dict[str, run_record.Metrics]) -> None:
        for j, i in enumerate(runs):
            run = self.runs[i]
            self.records[i] = run_record.new(run.run_id, run.config_name, run.seed, run.config, untrained, j)

    def on_epoch(self, runs: np.ndarray, epoch: int, metrics: run_record.Epoch, seconds: float) -> None:
        for j, i in enumerate(runs):
            run_record.add_epoch(self.records[i], epoch, metrics, j, seconds)
            self.study.write_record(self.records[i])
        self.progress["done"] += 1
        self.progress["seconds"] += seconds
        left = (self.total - self.progress["done"]) * self.progress["seconds"] / self.progress["done"]
        first = self.runs[runs[0]].run_id if len(runs) == 1 else f"{len(runs)} runs"
        n_div = int((~metrics.alive).sum())
        val = metrics.val or run_record.Metrics(np.nan, np.nan, np.nan)
        log(f"{self.label} [{first}] epoch {epoch}/{self.runs[runs[0]].epochs}  "
            f"train loss {_mean(metrics.train.loss):.3f} acc {_pct(metrics.train.acc)}  "
            f"val loss {_mean(val.loss):.3f} acc {_pct(val.acc)}  "
            f"{seconds:.1f} s/epoch  ETA {_fmt_time(left)}" + (f"  ({n_div} diverged)" if n_div else ""))

    def on_end(self, runs: np.ndarray, final: run_record.Final) -> None:
        for j, i in enumerate(runs):
            run_record.finish(self.records[i], final, j, self.tensor_names)
            self.study.write_record(self.records[i])


def is_lead() -> bool:
    """Whether this process writes the study-level files (process 0 of a multi-host study)."""
    return jax.process_index() == 0


def write_preamble(study: results.StudyDir, cfg: Config, runs: list[Run], prepared: Prepared,
                   extra: dict | None = None) -> None:
    """Flags, resolved config, environment and the class-distribution figure of the splits."""
    if not is_lead():
        return
    # absl files the flags of a `python -m experiments.x` script under its path (sys.argv[0])
    ours = [f for module, fl in flags.FLAGS.flags_by_module_dict().items()
            if module.startswith(("cifar_jax", "experiments", "__main__")) or module == sys.argv[0] for f in fl]
    study.write_text("flags.txt", "".join(f"{f.serialize()}\n" for f in ours if f.serialize()))
    study.write_text("protocol.flags", "".join(f"{f.serialize()}\n" for f in ours
                                               if f.serialize() and f.value != f.default))
    study.write_json("config.json", {"flags": dataclasses.asdict(cfg), **(extra or {}),
                                     "runs": [{"run_id": r.run_id, **r.config} for r in runs]})
    study.write_json("env.json", results.environment())
    plots.class_distribution(prepared.labels_by_split, prepared.dataset.classes,
                             study.figures_dir / "class_distribution.png")


def execute(study: results.StudyDir, runs: list[Run], prepared: Prepared, cfg: Config, *,
            initial_for: Callable[[Run], dict] | None = None,
            on_state: Callable[[Run, tuple], None] | None = None) -> None:
    """Train every run of `runs` that the study has not finished, group by group. In a
    multi-host study each process trains its own share of every group's runs, then waits until
    all runs are finished (so process 0 can write the summary, and a study in parts can plan its
    next part from every record). `initial_for(run)`
    gives layers that replace the run's fresh initialisation; `on_state(run, (params,
    batch_stats))` receives each run's final variables (e.g. to save a checkpoint)."""
    wanted = [(r.run_id, r.config) for r in runs]
    todo = set(study.pending(wanted))
    if len(todo) < len(runs):
        log(f"{study.root}: {len(runs) - len(todo)} of {len(runs)} runs already finished, skipped")
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(runs):
        if r.run_id in todo:
            groups.setdefault((r.spec, r.epochs), []).append(i)
    groups = {k: list(np.array_split(ids, jax.process_count())[jax.process_index()]) for k, ids in groups.items()}
    groups = {k: ids for k, ids in groups.items() if ids}
    _train_groups(study, runs, groups, prepared, cfg, initial_for, on_state)
    if jax.process_count() > 1:  # every process sees every record before it goes on (e.g. to a next part)
        _wait_for_runs(study, wanted)


def _wait_for_runs(study: results.StudyDir, wanted: list[tuple[str, dict]], timeout_s: float = 7 * 24 * 3600) -> None:
    """Block until every run has a finished record (written by the other processes)."""
    t0, left = time.monotonic(), study.pending(wanted)
    if left:
        log(f"waiting for {len(left)} runs of the other processes")
    while left:
        if time.monotonic() - t0 > timeout_s:
            raise results.ResultsError(f"gave up waiting for {len(left)} runs, e.g. {left[0]!r}")
        time.sleep(2.0)
        left = study.pending(wanted)


def _stack_initial(trees: list[dict]) -> dict:
    """Per-run initial layers → one pytree with a leading run axis."""
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


def _train_groups(study: results.StudyDir, runs: list[Run], groups: dict, prepared: Prepared, cfg: Config,
                  initial_for: Callable | None, on_state: Callable | None) -> None:
    """Train the given groups (run indices per (spec, epochs)) with progress output."""
    total = sum(r.epochs * _chunks(r.spec, len(ids), cfg.layout) for (_, _), ids in groups.items()
                for r in [runs[ids[0]]])
    progress = {"done": 0, "seconds": 0.0}
    for g, ((spec, epochs), ids) in enumerate(groups.items()):
        group_runs = [runs[i] for i in ids]
        layout = engine.auto_layout(spec.model) if cfg.layout == "auto" else cfg.layout
        label = f"[{study.root.name} group {g + 1}/{len(groups)}]"
        names = ", ".join(r.run_id for r in group_runs) if len(ids) <= 6 else f"{group_runs[0].run_id} … {group_runs[-1].run_id}"
        log(f"{label} {len(ids)} runs, model {spec.model.name}, batch {spec.batch_size}, "
            f"{epochs} epochs, layout {layout}: {names}")
        log(models.format_layer_table(models.layer_table(spec.model, prepared.dataset.image_shape)))
        hp = train.stack_hparams([r.hp for r in group_runs])
        t0 = time.perf_counter()
        names = train.param_names(train.param_shapes(spec, prepared.dataset.image_shape))
        recorder = RecordWriter(study, group_runs, total, label, progress, names)
        initial = _stack_initial([initial_for(r) for r in group_runs]) if initial_for else None
        states = engine.train_group(spec, hp, prepared.device, epochs, recorder, layout=layout,
                                    memory_limit=int(cfg.memory_limit_gb * 2**30) or None, initial=initial)
        if on_state:
            for i, r in enumerate(group_runs):
                on_state(r, jax.tree_util.tree_map(lambda x: x[i], (states.params, states.batch_stats)))
        log(f"{label} finished in {_fmt_time(time.perf_counter() - t0)}")


def _chunks(spec: train.GroupSpec, n: int, layout: str) -> int:
    layout = engine.auto_layout(spec.model) if layout == "auto" else layout
    return 1 if layout.startswith("vmap") else -(-n // len(jax.local_devices()))


def finish(study: results.StudyDir, runs: list[Run], title: str, figures: bool = True) -> dict | None:
    """Summary, test table and (with `figures`) the standard figures of `runs`, from their records
    only; written once, by the lead process."""
    if not is_lead():
        log(f"process {jax.process_index()}: my runs are finished; process 0 writes the summary")
        return None
    records = [study.record(r.run_id) for r in runs]
    records = [r for r in records if r is not None]
    summary = results.summarize(records)
    study.write_json("summary.json", summary)
    table = results.test_table_markdown(summary)
    study.write_text("test_table.md", f"# {title}: test set (mean ± std over seeds)\n\n{table}\n")
    if figures:
        fig, by_config = study.figures_dir, run_record.group_by_config(records)
        for name, recs in by_config.items():
            plots.four_panel(recs, fig / f"curves_{results.run_file_stem(name)}.png", f"{title}: {name}")
        plots.val_comparison(by_config, fig / "val_comparison.png", f"{title}: mean validation (smoothed)")
        plots.test_table(summary, fig / "test_table.png", f"{title}: test set")
        plots.lr_curves(records, fig / "lr_curves.png")
    log(f"\n{title}: test set (mean ± std over seeds)\n{table}\nresults and figures: {study.root}")
    return summary


def run(cfg: Config, name: str, title: str, runs: Callable[[Prepared], list[Run]], *,
        report: Callable[[results.StudyDir, list[dict]], None] | None = None,
        before: Callable[[results.StudyDir, Prepared], None] | None = None,
        extra: dict | None = None, figures: bool = True, part: str | None = None,
        initial_for: Callable[[Run], dict] | None = None,
        on_state: Callable[[Run, tuple], None] | None = None) -> results.StudyDir:
    """A declared study, start to end: prepare the data, build `runs(prepared)`, check finished
    records against them (a changed configuration fails before anything is written), write the
    preamble (`extra` joins config.json), call `before(study, prepared)` (e.g. a figure or a
    sub-study), train every unfinished run (`initial_for`, `on_state`: see `execute`), and on the
    lead process write the summary, test table and the standard figures (per-configuration curves,
    their comparison, the test table and LR curves; only with `figures`) and call
    `report(study, records)`; other processes of a multi-host study return once
    their own runs are done. The study directory is `--name` (default `name`), or its subfolder
    `part` for a study in parts (e.g. pretraining and retraining)."""
    prepared = prepare(cfg)
    planned = runs(prepared)
    st = study_dir(cfg, name)
    st = results.StudyDir(st.root / part) if part else st
    st.pending([(r.run_id, r.config) for r in planned])
    write_preamble(st, cfg, planned, prepared, extra)
    if before:
        before(st, prepared)
    execute(st, planned, prepared, cfg, initial_for=initial_for, on_state=on_state)
    if finish(st, planned, title, figures=figures) is not None and report:
        report(st, [st.record(r.run_id) for r in planned])
    return st


def main(experiment: Callable[[Config], Any]) -> None:
    """absl entry point: define the core flags, validate, run; bad input → one line, exit 2."""
    config.define_flags()

    def run(argv: list[str]) -> None:
        logging.set_verbosity(logging.WARNING)  # keep backend-probing chatter out of the progress output
        if len(argv) > 1:
            _fail(f"unexpected arguments {' '.join(argv[1:])!r} (flags need the --name=value form)")
        try:
            cfg = config.from_flags()
            if cfg.compile_cache:
                jax.config.update("jax_compilation_cache_dir", str(Path(cfg.compile_cache).expanduser()))
                jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
            address, count, index = cfg.distributed
            if count > 1:
                jax.distributed.initialize(address, count, index)
                log(f"process {index} of {count} (coordinator {address}), local devices {jax.local_devices()}")
            experiment(cfg)
        except (ConfigError, data.DataError, results.ResultsError) as err:
            _fail(str(err))

    app.run(run)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
