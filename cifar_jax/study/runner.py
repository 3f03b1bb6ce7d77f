"""Running a study: data → groups of runs → engine → run records → summary, tables and figures.

An experiment module declares its runs (usually `config.grid`) and its own analysis, and hands
both to `run`, which does the rest and returns an `Outcome`. Runs already finished in the study
directory are not recomputed; records are written after every epoch, so an interrupted study keeps
its progress and resumes the unfinished runs. Under several processes (multi-host) the lead
process writes and the others wait for its records."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
import time
from typing import Any, Callable

import jax
import numpy as np

from cifar_jax.io import checkpoint, environment, files
from cifar_jax.io.snapshots import Snapshots
from cifar_jax.nn import models
from cifar_jax.plots import charts
from cifar_jax.results import run_record, studydir, summary, tensorboard
from cifar_jax.study import halving, hosts, prepare, progress, records
from cifar_jax.study.config import Config, ConfigError, Run
from cifar_jax.training import engine, step


def is_lead() -> bool:
    """Whether this process writes the study-level files (process 0 of a multi-host study)."""
    return jax.process_index() == 0


def remove_study_leftovers(root: Path) -> None:
    """Remove the temp files and folders that interrupted writes left in a study (by its owner,
    the lead process, while it holds the study's lock)."""
    removed = files.remove_leftovers(root) if is_lead() else []
    if removed:
        progress.log(f"{root}: removed {len(removed)} temporary file(s) left by an interrupted run")


def write_preamble(study: studydir.StudyDir, cfg: Config, runs: list[Run], prepared: prepare.Prepared,
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
    study.write_json("env.json", environment.environment())
    charts.class_distribution(prepared.labels_by_split, prepared.dataset.classes,
                              study.figures_dir / "class_distribution.png")


def execute(study: studydir.StudyDir, runs: list[Run], prepared: prepare.Prepared, cfg: Config, *,
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
    giving those runs' full TrainState on the host (run axis first), e.g. to keep it at chosen epochs.
    With --prune=halving every run trains up to a rung, then the configurations a rung keeps
    (`halving`) go on to the next: the others' records end there, "pruned"."""
    wanted = [(r.run_id, r.config) for r in runs]
    todo = set(study.pending(wanted))  # at the start, so every process splits the same runs
    if len(todo) < len(runs):
        progress.log(f"{study.root}: {len(runs) - len(todo)} of {len(runs)} runs already finished, skipped")
    rungs = [r for r in cfg.prune_rungs if r > first_epoch]
    if runs and rungs and rungs[-1] >= min(r.epochs for r in runs):  # e.g. epochs set by grid_study's --cycles
        raise ConfigError(f"--prune_rungs={','.join(map(str, cfg.prune_rungs))}: every rung must be below the runs' "
                          f"epochs ({min(r.epochs for r in runs)} here)")
    contenders = list(runs)
    for until in [*rungs, None]:
        alive = {r.run_id for r in contenders}
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(runs):
            if r.run_id in todo and r.run_id in alive:
                groups.setdefault((r.spec, r.epochs), []).append(i)
        mine = {k: [i for i in np.array_split(ids, jax.process_count())[jax.process_index()]
                    if _behind(study, runs[i], until)] for k, ids in groups.items()}
        _train_groups(study, runs, {k: ids for k, ids in mine.items() if ids}, prepared, cfg, initial_for, on_state,
                      first_epoch, on_epoch, until)
        if jax.process_count() > 1:  # every process sees every record before it goes on (to a rung, a next part)
            _wait_for_runs(study, contenders, until)
        if until is not None:
            contenders = _rung(study, contenders, until, cfg)


def _behind(study: studydir.StudyDir, run: Run, until: int | None) -> bool:
    """Whether a run still has epochs to train before `until` (None: its end)."""
    rec = study.record(run.run_id)
    if rec is not None and rec["status"] in run_record.FINISHED:
        return False
    return until is None or run_record.last_epoch(rec) < until


def _rung(study: studydir.StudyDir, contenders: list[Run], rung: int, cfg: Config) -> list[Run]:
    """Rank the contenders' configurations after epoch `rung` (--prune_metric, mean over seeds) and
    stop the ones not kept (--prune_keep): their records end there as "pruned" (written by the lead
    process) and their snapshots go. Returns the runs of the configurations kept."""
    records = {r.run_id: study.record(r.run_id) for r in contenders}
    by_config: dict[str, list[dict]] = {}
    for r in contenders:
        by_config.setdefault(r.config_name, []).append(records[r.run_id])
    _refuse_other_decisions(study, [r for r in contenders if records[r.run_id].get("pruned_epoch", rung) < rung], records)
    kept = halving.decide(by_config, rung, cfg.prune_keep, cfg.prune_metric)
    _refuse_other_decisions(study, [r for r in contenders if r.config_name in kept
                                    and records[r.run_id].get("pruned_epoch") == rung], records)
    losers = [r for r in contenders if r.config_name not in kept]
    if is_lead():
        snapshots = Snapshots(study.root / "resume")
        for r in losers:
            if records[r.run_id]["status"] == "incomplete" or records[r.run_id].get("pruned_epoch", rung) > rung:
                study.write_record(run_record.prune(records[r.run_id], rung))
            snapshots.remove(snapshots.key([(r.run_id, r.config)]))
    shown = ", ".join(kept[:6]) + (f", … ({len(kept) - 6} more)" if len(kept) > 6 else "")
    progress.log(f"{study.root.name}: rung at epoch {rung}: {len(kept)} of {len(by_config)} configurations go on "
                 f"(by mean {cfg.prune_metric}, best first): {shown}; {len(losers)} runs pruned")
    return [r for r in contenders if r.config_name in kept]


def _refuse_other_decisions(study: studydir.StudyDir, runs: list[Run], records: dict[str, dict]) -> None:
    """ResultsError naming the first of `runs`, pruned where these --prune_* options would not have
    pruned it (its study was halved under others)."""
    if runs:
        raise files.ResultsError(f"{study.root}: {runs[0].run_id!r} was pruned at epoch "
                                 f"{records[runs[0].run_id]['pruned_epoch']} under other --prune_* options; pass a new "
                                 "--name or --results_dir")


def train_again(st: studydir.StudyDir, run_id: str, why: str) -> None:
    """Forget a finished run's record, saying why, so that the study trains it again."""
    progress.log(f"{run_id}: finished but {why}: training it again")
    (st.runs_dir / f"{studydir.run_file_stem(run_id)}.json").unlink(missing_ok=True)


def final_checkpoint(st: studydir.StudyDir, run_id: str) -> Path:
    """Where --save_final keeps a run's final variables: <study>/checkpoints/<run>."""
    return st.root / "checkpoints" / studydir.run_file_stem(run_id)


def provenance(st: studydir.StudyDir, run: Run) -> dict:
    """What a run's checkpoint holds and a restore expects: its study, run id and configuration."""
    return {"study": st.root, "run_id": run.run_id, "config": run.config}


def save_checkpoint(path: Path, st: studydir.StudyDir, run: Run, variables: tuple,
                    provenance_of: studydir.StudyDir | None = None) -> None:
    """A finished run's variables with its provenance (of study `provenance_of`, default `st`)
    and its final metrics from its record in `st`."""
    rec = st.record(run.run_id)
    checkpoint.save(path, *variables, overwrite=True, **provenance(provenance_of or st, run),
                    metrics={"test": run_record.final(rec, "test"), "last_epoch": rec["epochs"][-1],
                             "status": rec["status"]})


def _saving_final(st: studydir.StudyDir, planned: list[Run], on_state: Callable | None) -> Callable:
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


def _wait_for_runs(study: studydir.StudyDir, runs: list[Run], until: int | None = None,
                   timeout_s: float = 7 * 24 * 3600) -> None:
    """Block until every run has a finished record (written by the other processes), or one that
    reached epoch `until`; HostLost when one of them stops giving signs of life (`hosts`)."""
    t0, left = time.monotonic(), [r.run_id for r in runs if _behind(study, r, until)]
    if left:
        progress.log(f"waiting for {len(left)} runs of the other processes")
    while left:
        if time.monotonic() - t0 > timeout_s:
            raise files.ResultsError(f"gave up waiting for {len(left)} runs, e.g. {left[0]!r}")
        hosts.check()
        time.sleep(2.0)
        left = [r.run_id for r in runs if _behind(study, r, until)]


def _stack_initial(trees: list[dict]) -> dict:
    """Per-run initial layers → one pytree with a leading run axis."""
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


def _train_groups(study: studydir.StudyDir, runs: list[Run], groups: dict, prepared: prepare.Prepared, cfg: Config,
                  initial_for: Callable | None, on_state: Callable | None, first_epoch: int = 0,
                  on_epoch: Callable | None = None, until: int | None = None) -> None:
    """Train the given groups (run indices per (spec, epochs)) with progress output, to their end
    or up to epoch `until` (a rung)."""
    total = sum(((until or r.epochs) - first_epoch) * _chunks(r.spec, len(ids), cfg.layout)
                for (_, _), ids in groups.items() for r in [runs[ids[0]]])
    tally = {"done": 0, "seconds": 0.0}
    for g, ((spec, epochs), ids) in enumerate(groups.items()):
        group_runs = [runs[i] for i in ids]
        layout = engine.auto_layout(spec.model) if cfg.layout == "auto" else cfg.layout
        label = f"[{study.root.name} group {g + 1}/{len(groups)}]"
        shown = ", ".join(r.run_id for r in group_runs) if len(ids) <= 6 else f"{group_runs[0].run_id} … {group_runs[-1].run_id}"
        progress.log(f"{label} {len(ids)} runs, model {spec.model.name}, batch {spec.batch_size}, "
                     f"{epochs} epochs, layout {layout}: {shown}")
        progress.log(models.format_layer_table(models.layer_table(spec.model, prepared.dataset.image_shape)))
        hp = step.stack_hparams([r.hp for r in group_runs])
        t0 = time.perf_counter()
        tensors = step.param_names(step.param_shapes(spec, prepared.dataset.image_shape))
        recorder = records.RecordWriter(study, group_runs, total, label, tally, tensors,
                                        Snapshots(study.root / "resume", cfg.snapshot_every),
                                        tensorboard.StudyWriter(study.root / tensorboard.FOLDER) if cfg.tensorboard else None,
                                        on_epoch, until)
        initial = _stack_initial([initial_for(r) for r in group_runs]) if initial_for else None
        states = engine.train_group(spec, hp, prepared.data, epochs, recorder, layout=layout,
                                    memory_limit=int(cfg.memory_limit_gb * 2**30) or None, initial=initial,
                                    first_epoch=first_epoch, until=until)
        if on_state and until is None:
            for i, r in enumerate(group_runs):
                on_state(r, jax.tree_util.tree_map(lambda x: x[i], (states.params, states.batch_stats)))
        progress.log(f"{label} {'finished' if until is None else f'at rung epoch {until}'} in "
                     f"{progress.duration(time.perf_counter() - t0)}")


def _chunks(spec: step.GroupSpec, n: int, layout: str) -> int:
    layout = engine.auto_layout(spec.model) if layout == "auto" else layout
    if layout.startswith("par"):
        return n  # a run per thread, on one device
    return 1 if layout.startswith("vmap") else -(-n // len(jax.local_devices()))


def _checked_record(study: studydir.StudyDir, run: Run) -> dict | None:
    """The run's record, if it was trained with this run's configuration (ResultsError if not:
    another invocation's numbers are never summarised as this one's)."""
    rec = study.record(run.run_id)
    key = None if rec is None else files.first_difference(rec["config"], files.plain(run.config))
    if key is not None:
        raise files.ResultsError(f"{study.root}: the record of {run.run_id!r} holds another configuration "
                                 f"({key!r} differs); pass a new --name or --results_dir")
    return rec


def finish(study: studydir.StudyDir, runs: list[Run], title: str, figures: bool = True) -> dict | None:
    """Summary, test table and (with `figures`) the standard figures of `runs`, from their records
    only; written once, by the lead process."""
    if not is_lead():
        progress.log(f"process {jax.process_index()}: my runs are finished; process 0 writes the summary")
        return None
    records = [r for r in (_checked_record(study, run) for run in runs) if r is not None]
    stats = write_summary(study, records, title, figures=figures)
    if figures:
        fig = study.figures_dir
        for name, recs in run_record.group_by_config(records).items():
            charts.four_panel(recs, fig / f"curves_{studydir.run_file_stem(name)}.png", f"{title}: {name}")
        charts.lr_curves(records, fig / "lr_curves.png")
    progress.log(f"results and figures: {study.root}")
    return stats


def write_summary(st: studydir.StudyDir, records: list[dict], title: str, *, figures: bool = True,
                  table_file: str = "test_table.md", figure_prefix: str = "", note: str = "") -> dict:
    """summary.json, the test table (`table_file`, `note` below it) and with `figures` the
    configurations' mean validation curves and the table as figures (figures/<figure_prefix>
    val_comparison.png and test_table.png)."""
    stats = summary.summarize(records)
    st.write_json("summary.json", stats)
    table = summary.test_table_markdown(stats)
    st.write_text(table_file, f"# {title}: test set (mean ± std over seeds)\n\n{table}\n{note}")
    if figures:
        charts.val_comparison(run_record.group_by_config(records), st.figures_dir / f"{figure_prefix}val_comparison.png",
                              f"{title}: mean validation (smoothed)")
        charts.test_table(stats, st.figures_dir / f"{figure_prefix}test_table.png", f"{title}: test set")
    progress.log(f"\n{title}: test set (mean ± std over seeds)\n{table}{note}")
    return stats


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What `run` leaves: the study (part) directory, its planned runs, their records (None for a
    run another process has not finished) and the data they were trained on."""

    study: studydir.StudyDir
    runs: list[Run]
    records: list[dict | None]
    prepared: prepare.Prepared

    @property
    def finished(self) -> list[dict]:
        """The records there are."""
        return [r for r in self.records if r is not None]


def run(cfg: Config, name: str, title: str, runs: Callable[[prepare.Prepared], list[Run]], *,
        analysis: Callable[[studydir.StudyDir, list[dict]], None] | None = None,
        before: Callable[[studydir.StudyDir, prepare.Prepared, list[Run]], None] | None = None,
        extra: dict | None = None, figures: bool = True, part: str | None = None,
        initial_for: Callable[[Run], dict] | None = None,
        on_state: Callable[[Run, tuple], None] | None = None,
        prepared: prepare.Prepared | None = None) -> Outcome:
    """A declared study, start to end: prepare the data (or take `prepared`, made by
    `prepare.data(cfg)` from these flags, e.g. by a notebook that built the runs from it), build
    `runs(prepared)`, check finished records against them (a changed configuration fails before
    anything is written), write the preamble (`extra` joins config.json), call `before(study,
    prepared, runs)` (e.g. a figure or a sub-study), train every unfinished run (`initial_for`,
    `on_state`: see `execute`), and on the lead process write the summary, test table and the
    standard figures (per-configuration curves, their comparison, the test table and LR curves;
    only with `figures`) and call `analysis(study, records)`; other processes of a multi-host study
    return once their own runs are done. The study directory is `--name` (default `name`), or its
    subfolder `part` for a study in parts (e.g. pretraining and retraining). Returns the `Outcome`."""
    st = prepare.study_dir(cfg, name)
    st = studydir.StudyDir(st.root / part) if part else st
    prepare.check_writable(st.root, "--results_dir/--name")
    with st.lock() if is_lead() else contextlib.nullcontext():
        remove_study_leftovers(st.root)
        prepared = prepared or prepare.data(cfg)
        planned = runs(prepared)
        st.pending([(r.run_id, r.config) for r in planned])
        write_preamble(st, cfg, planned, prepared, extra)
        if before:
            before(st, prepared, planned)
        if cfg.save_final:
            on_state = _saving_final(st, planned, on_state)
        execute(st, planned, prepared, cfg, initial_for=initial_for, on_state=on_state)
        if is_lead() and not st.pending([(r.run_id, r.config) for r in planned]):
            Snapshots(st.root / "resume").clear()  # every run finished: a snapshot left is stale
        if finish(st, planned, title, figures=figures) is not None:
            if cfg.prune == "halving":
                st.write_text("halving.md", halving.markdown([st.record(r.run_id) for r in planned], cfg.prune_metric, title))
            if analysis:
                analysis(st, [st.record(r.run_id) for r in planned])
    return Outcome(st, planned, [st.record(r.run_id) for r in planned], prepared)
