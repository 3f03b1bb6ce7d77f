"""Running a study: data → groups of runs → engine → run records → summary, tables and figures.

An experiment module declares its runs (usually `config.grid`) and its own analysis, and hands
both to `run`, which does the rest. Runs already finished in the study directory are not
recomputed; records are written after every epoch, so an interrupted study keeps its progress and
resumes the unfinished runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import app, flags, logging

from cifar_jax import checkpoint, config, data, engine, files, models, plots, results, run_record, splits, summary, tensorboard, train
from cifar_jax.config import Config, ConfigError, Run
from cifar_jax.options import Option
from cifar_jax.snapshots import Snapshots


def log(message: str) -> None:
    """Progress output (stdout, flushed so it shows up in logs of long runs)."""
    print(message, flush=True)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A dataset loaded, split, standardised and on the device."""

    dataset: data.Dataset
    train_idx: np.ndarray
    val_idx: np.ndarray
    data: train.Data  # on the device

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
    batch = max(dict(v)["batch_size"] for v in cfg.variants)
    if batch > len(train_idx):
        raise ConfigError(f"--batch_size={batch}: larger than the training split ({len(train_idx)} images)")
    mean, std = splits.norm_stats(ds.x_train, train_idx, cfg.normalization, cfg.zca_epsilon)
    on_device = train.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test, train_idx, val_idx, mean, std)
    log(f"data: {ds.name} train {len(train_idx)} / val {len(val_idx)} / test {len(ds.y_test)}, "
        f"images {ds.image_shape}, {ds.num_classes} classes, normalization {cfg.normalization}")
    return Prepared(ds, train_idx, val_idx, on_device)


def study_dir(cfg: Config, default_name: str) -> results.StudyDir:
    """The study directory for these flags (created on its first write)."""
    return results.StudyDir(Path(cfg.results_dir).expanduser() / (cfg.name or default_name))


def named_study(cfg: Config, text: str) -> results.StudyDir:
    """Another study, given by its name inside --results_dir or by its path."""
    path = Path(text).expanduser()
    return results.StudyDir(path if len(path.parts) > 1 else Path(cfg.results_dir).expanduser() / path)


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _mean(x: Any) -> float:
    """Mean of the finite values (NaN, without a warning, when there are none: all runs diverged)."""
    x = np.asarray(x, dtype=np.float64)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else float("nan")


class RecordWriter:
    """Engine callbacks: builds each run's record, writes it every epoch, prints progress."""

    def __init__(self, study: results.StudyDir, runs: list[Run], total_epochs: int, label: str,
                 progress: dict, tensor_names: list[str], snapshots: Snapshots,
                 events: tensorboard.StudyWriter | None = None, on_epoch: Callable | None = None):
        self.study, self.runs, self.label, self.tensor_names = study, runs, label, tensor_names
        self.snapshots, self.events = snapshots, events  # events: --tensorboard's files
        self.on_epoch_state = on_epoch  # a study's own look at the full state after every epoch (`execute`)
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
            if epoch < self.runs[i].epochs:  # the last epoch is written with the final status (on_end), so a
                self.study.write_record(self.records[i])  # record never holds every epoch yet lacks its end
            if self.events is not None:  # the record's own numbers, so TensorBoard shows exactly them
                self.events.add_epoch(self.runs[i].run_id, self.records[i]["epochs"][-1], self.tensor_names)
        self.snapshots.prune(self._key(runs), epoch)
        self.progress["done"] += 1
        self.progress["seconds"] += seconds
        left = (self.total - self.progress["done"]) * self.progress["seconds"] / self.progress["done"]
        first = self.runs[runs[0]].run_id if len(runs) == 1 else f"{len(runs)} runs"
        n_div = int((~metrics.alive).sum())
        val = metrics.val or run_record.Metrics(np.nan, np.nan, np.nan)
        log(f"{self.label} [{first}] epoch {epoch}/{self.runs[runs[0]].epochs}  "
            f"train loss {_mean(metrics.train.loss):.3f} acc {summary.percent(_mean(metrics.train.acc), 1)}%  "
            f"val loss {_mean(val.loss):.3f} acc {summary.percent(_mean(val.acc), 1)}%  "
            f"{seconds:.1f} s/epoch  ETA {_fmt_time(left)}" + (f"  ({n_div} diverged)" if n_div else ""))

    def on_progress(self, runs: np.ndarray, epoch: int, done: int, seconds: float, *, steps: int) -> None:
        first = self.runs[runs[0]].run_id if len(runs) == 1 else f"{len(runs)} runs"
        images = done * self.runs[runs[0]].spec.batch_size * len(runs)
        log(f"{self.label} [{first}] epoch {epoch}/{self.runs[runs[0]].epochs}: step {done}/{steps}, "
            f"{images / seconds:,.0f} images/s, epoch ETA {_fmt_time(seconds * (steps - done) / done)}")

    def on_end(self, runs: np.ndarray, final: run_record.Final) -> None:
        for j, i in enumerate(runs):
            run_record.finish(self.records[i], final, j, self.tensor_names)
            self.study.write_record(self.records[i])
        self.snapshots.remove(self._key(runs))
        if self.events is not None:
            self.events.close([self.runs[i].run_id for i in runs])

    def _key(self, runs: np.ndarray) -> str:
        return self.snapshots.key([(self.runs[i].run_id, self.runs[i].config) for i in runs])

    def resume(self, runs: np.ndarray, template: Any) -> tuple[int, Any] | None:
        """The newest snapshot of these runs that every run's record has reached."""
        records = [self.study.record(self.runs[i].run_id) for i in runs]
        recorded = min(run_record.last_epoch(r) for r in records)
        return self.snapshots.load(self._key(runs), template, recorded) if recorded else None

    def on_resume(self, runs: np.ndarray, epochs_done: int) -> None:
        for i in runs:
            self.records[i] = run_record.truncate(self.study.record(self.runs[i].run_id), epochs_done)
        self.total -= epochs_done
        log(f"{self.label} resuming {len(runs)} run(s) after epoch {epochs_done} from their snapshot")

    def on_state(self, runs: np.ndarray, epoch: int, state: Callable[[], Any]) -> None:
        if epoch < self.runs[runs[0]].epochs and self.snapshots.due(epoch):
            self.snapshots.save(self._key(runs), epoch, state())
        if self.on_epoch_state:
            self.on_epoch_state([self.runs[i] for i in runs], epoch, state)


def is_lead() -> bool:
    """Whether this process writes the study-level files (process 0 of a multi-host study)."""
    return jax.process_index() == 0


def remove_leftovers(root: Path) -> None:
    """Remove the temp files and folders that interrupted writes left in a study (by its owner,
    the lead process, while it holds the study's lock)."""
    removed = files.remove_leftovers(root) if is_lead() else []
    if removed:
        log(f"{root}: removed {len(removed)} temporary file(s) left by an interrupted run")


def write_preamble(study: results.StudyDir, cfg: Config, runs: list[Run], prepared: Prepared,
                   extra: dict | None = None) -> None:
    """Flags, resolved config, environment and the class-distribution figure of the splits."""
    if not is_lead():
        return
    given = sorted(cfg.given)
    study.write_text("flags.txt", "".join(f"{line}\n" for _, line, _ in given))
    study.write_text("protocol.flags", "".join(f"{line}\n" for _, line, changed in given if changed))
    flat = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("own", "given")}
    study.write_json("config.json", {"flags": {**flat, **dataclasses.asdict(cfg.own)}, **(extra or {}),
                                     "runs": [{"run_id": r.run_id, **r.config} for r in runs]})
    study.write_json("env.json", results.environment())
    plots.class_distribution(prepared.labels_by_split, prepared.dataset.classes,
                             study.figures_dir / "class_distribution.png")


def execute(study: results.StudyDir, runs: list[Run], prepared: Prepared, cfg: Config, *,
            initial_for: Callable[[Run], dict] | None = None,
            on_state: Callable[[Run, tuple], None] | None = None, first_epoch: int = 0,
            on_epoch: Callable[[list[Run], int, Callable[[], Any]], None] | None = None) -> None:
    """Train every run of `runs` that the study has not finished, group by group. In a
    multi-host study each process trains its own share of every group's runs, then waits until
    all runs are finished (so process 0 can write the summary, and a study in parts can plan its
    next part from every record). `initial_for(run)`
    gives layers that replace the run's fresh initialisation, or with "opt_state" and "step" a
    whole state that the runs continue from after `first_epoch` epochs (`engine.train_group`);
    `on_state(run, (params, batch_stats))` receives each run's final variables (e.g. to save a
    checkpoint); `on_epoch(runs, epoch, state)` is called after every epoch of a group, `state()`
    giving those runs' full TrainState on the host (run axis first), e.g. to keep it at chosen epochs."""
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
    _train_groups(study, runs, groups, prepared, cfg, initial_for, on_state, first_epoch, on_epoch)
    if jax.process_count() > 1:  # every process sees every record before it goes on (e.g. to a next part)
        _wait_for_runs(study, wanted)


def train_again(st: results.StudyDir, run_id: str, why: str) -> None:
    """Forget a finished run's record, saying why, so that the study trains it again."""
    log(f"{run_id}: finished but {why}: training it again")
    (st.runs_dir / f"{results.run_file_stem(run_id)}.json").unlink(missing_ok=True)


def final_checkpoint(st: results.StudyDir, run_id: str) -> Path:
    """Where --save_final keeps a run's final variables: <study>/checkpoints/<run>."""
    return st.root / "checkpoints" / results.run_file_stem(run_id)


def provenance(st: results.StudyDir, run: Run) -> dict:
    """What a run's checkpoint holds and a restore expects: its study, run id and configuration."""
    return {"study": st.root, "run_id": run.run_id, "config": run.config}


def save_checkpoint(path: Path, st: results.StudyDir, run: Run, variables: tuple,
                    provenance_of: results.StudyDir | None = None) -> None:
    """A finished run's variables with its provenance (of study `provenance_of`, default `st`)
    and its final metrics from its record in `st`."""
    rec = st.record(run.run_id)
    checkpoint.save(path, *variables, overwrite=True, **provenance(provenance_of or st, run),
                    metrics={"test": run_record.final(rec, "test"), "last_epoch": rec["epochs"][-1],
                             "status": rec["status"]})


def _saving_final(st: results.StudyDir, planned: list[Run], on_state: Callable | None) -> Callable:
    """--save_final: train again the finished runs without a checkpoint; the hook that saves
    each run's final variables (after `on_state`, the study's own hook)."""
    files.remove_leftovers(st.root / "checkpoints")
    todo = set(st.pending([(r.run_id, r.config) for r in planned]))
    for run in planned:
        if run.run_id not in todo and not final_checkpoint(st, run.run_id).exists():
            train_again(st, run.run_id, f"its checkpoint {final_checkpoint(st, run.run_id)} is missing (--save_final)")

    def hook(run: Run, variables: tuple) -> None:
        if on_state:
            on_state(run, variables)
        save_checkpoint(final_checkpoint(st, run.run_id), st, run, variables)
    return hook


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
                  initial_for: Callable | None, on_state: Callable | None, first_epoch: int = 0,
                  on_epoch: Callable | None = None) -> None:
    """Train the given groups (run indices per (spec, epochs)) with progress output."""
    total = sum((r.epochs - first_epoch) * _chunks(r.spec, len(ids), cfg.layout) for (_, _), ids in groups.items()
                for r in [runs[ids[0]]])
    progress = {"done": 0, "seconds": 0.0}
    for g, ((spec, epochs), ids) in enumerate(groups.items()):
        group_runs = [runs[i] for i in ids]
        layout = engine.auto_layout(spec.model) if cfg.layout == "auto" else cfg.layout
        label = f"[{study.root.name} group {g + 1}/{len(groups)}]"
        shown = ", ".join(r.run_id for r in group_runs) if len(ids) <= 6 else f"{group_runs[0].run_id} … {group_runs[-1].run_id}"
        log(f"{label} {len(ids)} runs, model {spec.model.name}, batch {spec.batch_size}, "
            f"{epochs} epochs, layout {layout}: {shown}")
        log(models.format_layer_table(models.layer_table(spec.model, prepared.dataset.image_shape)))
        hp = train.stack_hparams([r.hp for r in group_runs])
        t0 = time.perf_counter()
        tensors = train.param_names(train.param_shapes(spec, prepared.dataset.image_shape))
        recorder = RecordWriter(study, group_runs, total, label, progress, tensors,
                                Snapshots(study.root / "resume", cfg.snapshot_every),
                                tensorboard.StudyWriter(study.root / tensorboard.FOLDER) if cfg.tensorboard else None,
                                on_epoch)
        initial = _stack_initial([initial_for(r) for r in group_runs]) if initial_for else None
        states = engine.train_group(spec, hp, prepared.data, epochs, recorder, layout=layout,
                                    memory_limit=int(cfg.memory_limit_gb * 2**30) or None, initial=initial,
                                    first_epoch=first_epoch)
        if on_state:
            for i, r in enumerate(group_runs):
                on_state(r, jax.tree_util.tree_map(lambda x: x[i], (states.params, states.batch_stats)))
        log(f"{label} finished in {_fmt_time(time.perf_counter() - t0)}")


def _chunks(spec: train.GroupSpec, n: int, layout: str) -> int:
    layout = engine.auto_layout(spec.model) if layout == "auto" else layout
    return 1 if layout.startswith("vmap") else -(-n // len(jax.local_devices()))


def _checked_record(study: results.StudyDir, run: Run) -> dict | None:
    """The run's record, if it was trained with this run's configuration (ResultsError if not:
    another invocation's numbers are never summarised as this one's)."""
    rec = study.record(run.run_id)
    key = None if rec is None else results.first_difference(rec["config"], results.plain(run.config))
    if key is not None:
        raise results.ResultsError(f"{study.root}: the record of {run.run_id!r} holds another configuration "
                                   f"({key!r} differs); pass a new --name or --results_dir")
    return rec


def finish(study: results.StudyDir, runs: list[Run], title: str, figures: bool = True) -> dict | None:
    """Summary, test table and (with `figures`) the standard figures of `runs`, from their records
    only; written once, by the lead process."""
    if not is_lead():
        log(f"process {jax.process_index()}: my runs are finished; process 0 writes the summary")
        return None
    records = [r for r in (_checked_record(study, run) for run in runs) if r is not None]
    stats = write_summary(study, records, title, figures=figures)
    if figures:
        fig = study.figures_dir
        for name, recs in run_record.group_by_config(records).items():
            plots.four_panel(recs, fig / f"curves_{results.run_file_stem(name)}.png", f"{title}: {name}")
        plots.lr_curves(records, fig / "lr_curves.png")
    log(f"results and figures: {study.root}")
    return stats


def write_summary(st: results.StudyDir, records: list[dict], title: str, *, figures: bool = True,
                  table_file: str = "test_table.md", figure_prefix: str = "", note: str = "") -> dict:
    """summary.json, the test table (`table_file`, `note` below it) and with `figures` the
    configurations' mean validation curves and the table as figures (figures/<figure_prefix>
    val_comparison.png and test_table.png)."""
    stats = summary.summarize(records)
    st.write_json("summary.json", stats)
    table = summary.test_table_markdown(stats)
    st.write_text(table_file, f"# {title}: test set (mean ± std over seeds)\n\n{table}\n{note}")
    if figures:
        plots.val_comparison(run_record.group_by_config(records), st.figures_dir / f"{figure_prefix}val_comparison.png",
                             f"{title}: mean validation (smoothed)")
        plots.test_table(stats, st.figures_dir / f"{figure_prefix}test_table.png", f"{title}: test set")
    log(f"\n{title}: test set (mean ± std over seeds)\n{table}{note}")
    return stats


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What `run` leaves: the study (part) directory, its planned runs, their records (None for a
    run another process has not finished) and the data they were trained on."""

    study: results.StudyDir
    runs: list[Run]
    records: list[dict | None]
    prepared: Prepared

    @property
    def finished(self) -> list[dict]:
        """The records there are."""
        return [r for r in self.records if r is not None]


def run(cfg: Config, name: str, title: str, runs: Callable[[Prepared], list[Run]], *,
        analysis: Callable[[results.StudyDir, list[dict]], None] | None = None,
        before: Callable[[results.StudyDir, Prepared, list[Run]], None] | None = None,
        extra: dict | None = None, figures: bool = True, part: str | None = None,
        initial_for: Callable[[Run], dict] | None = None,
        on_state: Callable[[Run, tuple], None] | None = None,
        prepared: Prepared | None = None) -> Outcome:
    """A declared study, start to end: prepare the data (or take `prepared`, made by
    `prepare(cfg)` from these flags, e.g. by a notebook that built the runs from it), build
    `runs(prepared)`, check finished records against them (a changed configuration fails before
    anything is written), write the preamble (`extra` joins config.json), call `before(study,
    prepared, runs)` (e.g. a figure or a sub-study), train every unfinished run (`initial_for`,
    `on_state`: see `execute`), and on the lead process write the summary, test table and the
    standard figures (per-configuration curves, their comparison, the test table and LR curves;
    only with `figures`) and call `analysis(study, records)`; other processes of a multi-host study
    return once their own runs are done. The study directory is `--name` (default `name`), or its
    subfolder `part` for a study in parts (e.g. pretraining and retraining). Returns the `Outcome`."""
    st = study_dir(cfg, name)
    st = results.StudyDir(st.root / part) if part else st
    check_writable(st.root, "--results_dir/--name")
    with st.lock() if is_lead() else contextlib.nullcontext():
        remove_leftovers(st.root)
        prepared = prepared or prepare(cfg)
        planned = runs(prepared)
        st.pending([(r.run_id, r.config) for r in planned])
        write_preamble(st, cfg, planned, prepared, extra)
        if before:
            before(st, prepared, planned)
        if cfg.save_final:
            on_state = _saving_final(st, planned, on_state)
        execute(st, planned, prepared, cfg, initial_for=initial_for, on_state=on_state)
        if finish(st, planned, title, figures=figures) is not None and analysis:
            analysis(st, [st.record(r.run_id) for r in planned])
    return Outcome(st, planned, [st.record(r.run_id) for r in planned], prepared)


def show_project_flags(fl: flags.FlagValues = flags.FLAGS, main_module: str | None = None) -> None:
    """Make every project flag (defined in cifar_jax.* or experiments.*: the core flags of
    cifar_jax.config and those of shared experiment modules) a key flag of the main module
    (absl names it by its path, sys.argv[0]), so --help lists them beside the experiment's own.
    --helpfull (`full_help`) lists every flag under the module that defines it."""
    main_module = main_module or sys.argv[0]
    for module, defined in fl.flags_by_module_dict().items():
        if _is_project(module) and module != main_module:
            for flag in defined:
                fl.register_key_flag_for_module(main_module, flag)


def _is_project(module: str) -> bool:
    return module.startswith(("cifar_jax.", "experiments."))


def full_help(fl: flags.FlagValues = flags.FLAGS) -> str:
    """--helpfull: absl's listing of every flag by the module that defines it, regrouped so that the
    project's modules (the experiment, cifar_jax.*, experiments.*) come apart from absl's own."""
    blocks: list[list[str]] = []
    for line in fl.get_help().splitlines():
        if line and not line[0].isspace() and line.endswith(":"):  # a module's heading
            blocks.append([])
        if blocks:
            blocks[-1].append(line)
    main_module = sys.argv[0]
    project = [b for b in blocks if b[0][:-1] == main_module or _is_project(b[0][:-1])]
    other = [b for b in blocks if b not in project]
    parts = ["Project flags (the experiment's own, then the core and shared ones):\n"]
    parts += ["\n".join(b).rstrip() + "\n" for b in project]
    parts += ["Library flags (absl's own: flag files, logging, debugging):\n"] if other else []
    parts += ["\n".join(b).rstrip() + "\n" for b in other]
    return "\n".join(parts)


def main(experiment: Callable[[Config], Any], own: dict[str, Option] | None = None) -> None:
    """The entry point of an experiment (`own`: its options table): define the core flags and its
    own on absl's FLAGS, validate, run; bad input → one line, exit 2; Ctrl-C → one line, exit
    130, and SIGTERM → one line, exit 143 (see `run_checked`)."""
    config.define_flags(flags.FLAGS, own)
    show_project_flags()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    app.run(lambda argv: run_checked(argv, experiment, flags.FLAGS, own), flags_parser=parse_flags)


def run_args(experiment: ModuleType, args: Sequence[str]) -> None:
    """An experiment module (its `main` and `OPTIONS`) run in this process from command-line flags
    (flagfiles included), on flags of its own: what its entry point does, without absl's app,
    global flags or signal handlers, so that a notebook, a script or a test can run several.
    Bad input → one line on stderr, SystemExit(2)."""
    own = getattr(experiment, "OPTIONS", None)
    fv = flags.FlagValues()
    config.define_flags(fv, own)
    run_checked(parse_flags(["experiment", *args], fv), experiment.main, fv, own)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every cleanup on the way out runs."""


_SIGNALLED: list[int] = []  # the stop signals received: a JAX host callback (progress inside a
#                            compiled epoch) turns the exception raised below into a JaxRuntimeError


def _stop(signum: int, frame: Any) -> None:
    _SIGNALLED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def parse_flags(argv: list[str], fl: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flag parsing, with a malformed or unknown flag as one line, exit 2 (absl's own: two
    lines, exit 1); --helpfull prints `full_help` (exit 0)."""
    if any(arg in ("--helpfull", "-helpfull") for arg in argv[1:]):
        print(full_help(fl))
        sys.exit(0)
    try:
        return fl(argv)
    except flags.Error as err:
        _fail(str(err))


def check_writable(folder: Path | str, flag: str) -> None:
    """Refuse an output folder that cannot be written (a file, under a file, read-only), naming
    `flag`, before anything is loaded or written."""
    problem = files.unwritable(folder)
    if problem:
        raise ConfigError(f"{flag}={folder}: {problem}")


def checked_config(argv: list[str], fl: Any, own: dict[str, Option] | None = None) -> Config:
    """The validated flags `fl` (the core options and the experiment's `own`), with every check
    that needs no data: values, output folder, dataset name; one-line ConfigError/DataError."""
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {' '.join(argv[1:])!r} (flags need the --name=value form)")
    cfg = config.from_flags(fl, own)
    check_writable(cfg.results_dir, "--results_dir")
    if cfg.name:
        check_writable(Path(cfg.results_dir).expanduser() / cfg.name, "--name")
    data.check_name(cfg.dataset, cfg.data_dir)
    return cfg


def run_checked(argv: list[str], experiment: Callable[[Config], Any], fl: Any,
                own: dict[str, Option] | None = None) -> None:
    """Validate the flags (`checked_config`), set up JAX and run `experiment(cfg)`. Bad input or
    a full disk → one line, exit 2; Ctrl-C or SIGTERM → one line saying what is kept and how to
    resume, exit 130 or 143, instead of a traceback."""
    logging.set_verbosity(logging.WARNING)  # keep backend-probing chatter out of the progress output
    cfg = None
    try:
        cfg = checked_config(argv, fl, own)
        if cfg.compile_cache and not jax.config.jax_compilation_cache_dir:  # else set already: by
            # $JAX_COMPILATION_CACHE_DIR or by an earlier study of this process (the cache is process-wide)
            jax.config.update("jax_compilation_cache_dir", str(Path(cfg.compile_cache).expanduser()))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        address, count, index = cfg.distributed
        if count > 1:
            jax.distributed.initialize(address, count, index)
            log(f"process {index} of {count} (coordinator {address}), local devices {jax.local_devices()}")
        experiment(cfg)
    except (ConfigError, data.DataError, results.ResultsError) as err:
        _fail(str(err))
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        _fail(f"{err.filename or 'writing'}: {err.strerror}; fix that and run the same command again to resume")
    except KeyboardInterrupt as err:
        _interrupted(isinstance(err, Terminated), cfg)
    except jax.errors.JaxRuntimeError:
        if not _SIGNALLED:
            raise
        _interrupted(_SIGNALLED[0] == signal.SIGTERM, cfg)


def _interrupted(terminated: bool, cfg: Config | None) -> None:
    """One line for Ctrl-C (exit 130) or SIGTERM (exit 143): what is kept and how to resume."""
    what = "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)"
    kept = (f"every finished epoch is saved under {cfg.results_dir}; run the same command again to resume"
            if cfg else "nothing was written")
    print(f"{what}: {kept}", file=sys.stderr, flush=True)
    sys.exit(143 if terminated else 130)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
