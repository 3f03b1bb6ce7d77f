"""Linear mode connectivity: how soon in training a network becomes stable to the noise of SGD's
data order (the instability analysis of Frankle et al. 2020, arXiv 1912.05671).

A parent run per --seeds is trained to the end, its whole state (parameters, BN statistics, optimiser state, step) kept after each epoch k of
--spawn_epochs (k = 0: its initialisation); from each state --children children are trained to
--epochs that differ only in their data order (their own order seeds; same weights, same dropout
stream), the children of one k as one group continuing the parent's schedule. Between every two
children of the same parent and k the error along the linear path (1 − t)·θ1 + t·θ2 is evaluated
at --interp_points coefficients as the run axis of one vmapped evaluation (cifar_jax.training.surfaces), on
the test set and on a seeded subset of the training split; batch norm in eval mode, its running
statistics interpolated with the parameters. The barrier is max_t E(t) − ½(E(θ1) + E(θ2)).

Parts: parent/ (the parents' records; their states at the spawn epochs in parent/spawn/, a
finished parent missing one is trained again) and children/ (records and each child's final
variables as a checkpoint, children/checkpoints/). Outputs: connectivity.md (per k: barrier mean
± std over the pairs of every parent), connectivity.json (every path), figures/connectivity.png
(test error along the path per k, and the barrier against k: their instability figure) and
figures/connectivity_train.png.

    python -m experiments.connectivity --flagfile=experiments/flags/connectivity.flags
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure
import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.io import checkpoint, files
from cifar_jax.plots import charts
from cifar_jax.results import run_record, studydir, summary
from cifar_jax.study import cli, config, prepare, progress, runner
from cifar_jax.training import step, surfaces

TITLE = "Linear mode connectivity"
SPAWNED = ("params", "batch_stats", "opt_state", "step")  # what a child takes from its parent's state
ORDER_SEED_BASE = 1000  # default order seed of child c: ORDER_SEED_BASE + c

OPTIONS = table(
    Option("spawn_epochs", (0, 1, 2, 5), "Epochs k after which children are spawned from the parent's state (0: its "
           "initialisation); each in [0, --epochs).", kind="int", many=True, low=0, distinct=True),
    Option("children", 2, "Children per parent and spawn epoch (every pair of them is a path).", kind="int", low=2),
    Option("child_order_seeds", (), "The children's order seeds (data order, augmentation, noise), one per child; "
           f"default {ORDER_SEED_BASE} + child index. Equal seeds give equal children (a check: barrier 0).",
           kind="int", many=True, low=0),
    Option("interp_points", 11, "Coefficients t in [0, 1] on each path between two children.", kind="int", low=2),
    Option("interp_examples", 1000, "Training images (a seeded subset) evaluated along each path, beside the whole "
           "test set.", kind="int", low=1),
    Option("interp_chunk", 0, "Path points evaluated together in one vmapped pass (memory grows with it); 0: by "
           "backend (surfaces.auto_chunk: 1 on CPU, where vmapped convolutions are slower, 32 elsewhere).", kind="int",
           low=0),
)


# ----------------------------------------------------------------------------- flags and runs

def spawn_epochs(cfg: config.Config) -> tuple[int, ...]:
    """--spawn_epochs, checked: in [0, --epochs), ascending."""
    ks = tuple(sorted(cfg.own.spawn_epochs))
    if not ks or ks[-1] >= cfg.epochs:
        raise config.ConfigError(f"--spawn_epochs={','.join(map(str, ks))}: give distinct epochs in "
                                 f"[0, --epochs={cfg.epochs})")
    return ks


def order_seeds(cfg: config.Config) -> tuple[int, ...]:
    """The children's order seeds (--child_order_seeds, else ORDER_SEED_BASE + index)."""
    seeds, n = cfg.own.child_order_seeds, cfg.own.children
    if not seeds:
        return tuple(ORDER_SEED_BASE + c for c in range(n))
    if len(seeds) != n:
        raise config.ConfigError(f"--child_order_seeds={','.join(map(str, seeds))}: give {n} seeds >= 0, one per child")
    return seeds


def check_flags(cfg: config.Config) -> None:
    """What the options table cannot say, before any work (one-line ConfigError)."""
    cfg.single_group("connectivity trains one architecture")
    spawn_epochs(cfg)
    order_seeds(cfg)


def child(parent: config.Run, k: int, c: int, order_seed: int) -> config.Run:
    """Child c of `parent` spawned after epoch k: the parent's run but for its order seed."""
    prefix = "" if parent.config_name == "default" else f"{parent.config_name},"
    return dataclasses.replace(parent, config_name=f"{prefix}k={k},child={c}", hp={**parent.hp, "order_seed": order_seed},
                               inputs={**parent.inputs, "parent": parent.run_id, "spawn_epoch": k})


# ----------------------------------------------------------------------------- spawn states

def initial_state(run: config.Run, shape: tuple[int, ...]) -> dict:
    """The run's state at initialisation, as a spawn state (what `step.init_run` draws)."""
    state = step.init_run(run.spec, {k: v[0] for k, v in step.stack_hparams([run.hp]).items()}, shape)
    return {k: jax.device_get(getattr(state, k)) for k in SPAWNED}


def spawn_path(pst: studydir.StudyDir, run_id: str, k: int) -> Path:
    return pst.root / "spawn" / f"{studydir.run_file_stem(run_id)}-k{k}.npz"


def save_spawn(path: Path, state: dict) -> None:
    """One run's spawn state, as the leaves of SPAWNED in order (atomic)."""
    with files.atomic_file(path) as f:
        np.savez(f, *[np.asarray(x) for x in jax.tree_util.tree_leaves(state)])


def load_spawn(path: Path, template: dict) -> dict:
    """A spawn state shaped like `template` (the run's initial state)."""
    wanted, treedef = jax.tree_util.tree_flatten(template)
    with np.load(path) as z:
        leaves = [z[f"arr_{i}"] for i in range(len(wanted))]
    bad = next((i for i, (x, w) in enumerate(zip(leaves, wanted)) if x.shape != np.shape(w)), None)
    if bad is not None:
        raise files.ResultsError(f"{path}: the spawn state of another model (leaf {bad} has shape "
                                 f"{leaves[bad].shape}, {np.shape(wanted[bad])} expected); pass a new --name")
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ----------------------------------------------------------------------------- training

def train_part(st: studydir.StudyDir, cfg: config.Config, runs: list[config.Run], prepared: prepare.Prepared,
               title: str, before: Callable[[], None], calls: list[tuple[list[config.Run], dict]]) -> None:
    """One part of the study, as `runner.run` does it, but with several `runner.execute` calls
    (runs, keyword arguments): the children of each spawn epoch continue from another epoch."""
    prepare.check_writable(st.root, "--results_dir/--name")
    with st.lock() if runner.is_lead() else contextlib.nullcontext():
        runner.remove_study_leftovers(st.root)
        st.pending([(r.run_id, r.config) for r in runs])
        runner.write_preamble(st, cfg, runs, prepared)
        before()
        for group, kwargs in calls:
            runner.execute(st, group, prepared, cfg, **kwargs)
        runner.finish(st, runs, title, figures=False)


def train_parents(cfg: config.Config, pst: studydir.StudyDir, parents: list[config.Run], ks: tuple[int, ...],
                  prepared: prepare.Prepared) -> None:
    """The parents to the end, their states after the spawn epochs k > 0 kept in parent/spawn/."""
    kept = [k for k in ks if k > 0]

    def missing() -> None:
        for run in parents:
            rec = pst.record(run.run_id)
            gone = [k for k in kept if not spawn_path(pst, run.run_id, k).exists()]
            if rec and rec["status"] in run_record.FINISHED and gone:
                runner.train_again(pst, run.run_id, f"its state after epoch {gone[0]} is missing")

    def keep(runs: list[config.Run], epoch: int, state: Callable[[], Any]) -> None:
        if epoch in kept:
            full = state()
            for j, run in enumerate(runs):
                save_spawn(spawn_path(pst, run.run_id, epoch), {k: jax.tree_util.tree_map(lambda x: x[j], getattr(full, k))
                                                                for k in SPAWNED})

    train_part(pst, cfg, parents, prepared, f"{TITLE}: parents", missing, [(parents, {"on_epoch": keep})])


def train_children(cfg: config.Config, pst: studydir.StudyDir, cst: studydir.StudyDir, parents: list[config.Run],
                   ks: tuple[int, ...], prepared: prepare.Prepared) -> dict[tuple[str, int], list[config.Run]]:
    """Every parent's children for every k (one group per k), each child's final variables saved as a checkpoint."""
    shape = tuple(prepared.dataset.image_shape)
    seeds = order_seeds(cfg)
    families = {(p.run_id, k): [child(p, k, c, s) for c, s in enumerate(seeds)] for k in ks for p in parents}
    runs = [r for fam in families.values() for r in fam]
    by_id = {p.run_id: p for p in parents}

    def spawned(run: config.Run) -> dict:
        parent, k = by_id[run.inputs["parent"]], run.inputs["spawn_epoch"]
        template = initial_state(parent, shape)
        return template if k == 0 else load_spawn(spawn_path(pst, parent.run_id, k), template)

    def missing() -> None:
        for run in runs:
            rec = cst.record(run.run_id)
            if rec and rec["status"] in run_record.FINISHED and not runner.final_checkpoint(cst, run.run_id).exists():
                runner.train_again(cst, run.run_id, f"its checkpoint {runner.final_checkpoint(cst, run.run_id)} is missing")

    def save(run: config.Run, variables: tuple) -> None:
        runner.save_checkpoint(runner.final_checkpoint(cst, run.run_id), cst, run, variables)

    calls = [([r for (_, k2), fam in families.items() if k2 == k for r in fam],
              {"initial_for": spawned, "first_epoch": k, "on_state": save}) for k in ks]
    train_part(cst, cfg, runs, prepared, f"{TITLE}: children", missing, calls)
    return families


# ----------------------------------------------------------------------------- the paths

def final_variables(cst: studydir.StudyDir, run: config.Run, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """A child's final (params, batch_stats) from its checkpoint (strict, provenance checked)."""
    return checkpoint.restore(runner.final_checkpoint(cst, run.run_id), step.param_shapes(run.spec, shape),
                              step.batch_stats_shapes(run.spec, shape), expected=runner.provenance(cst, run))


def paths(cfg: config.Config, cst: studydir.StudyDir, families: dict[tuple[str, int], list[config.Run]],
          prepared: prepare.Prepared) -> tuple[np.ndarray, list[dict]]:
    """Every pair of children of the same parent and k: the [loss, top-1, top-5] along its path on
    the test set and the training subset, all paths' points in one vmapped evaluation per split."""
    shape, data = tuple(prepared.dataset.image_shape), prepared.data
    ts = np.linspace(0.0, 1.0, cfg.own.interp_points)
    pairs, points = [], []
    for (parent, k), fam in families.items():
        variables = [final_variables(cst, r, shape) for r in fam]
        for i, j in itertools.combinations(range(len(fam)), 2):
            pairs.append({"parent": parent, "k": k, "children": [fam[i].run_id, fam[j].run_id]})
            points.append(surfaces.line(variables[i], variables[j], ts))
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *points)
    n = min(cfg.own.interp_examples, len(prepared.train_idx))
    subset = np.sort(np.random.default_rng(cfg.split_seed).choice(prepared.train_idx, n, replace=False))
    splits = {"test": (data.x_test, data.y_test, jnp.arange(data.y_test.shape[0], dtype=jnp.int32)),
              "train": (data.x, data.y, jnp.asarray(subset, jnp.int32))}
    spec = next(iter(families.values()))[0].spec
    for split, (x, y, idx) in splits.items():
        chunk = cfg.own.interp_chunk or surfaces.auto_chunk(jax.devices()[0].platform)
        values = surfaces.evaluate_points(spec, *stacked, x, y, idx, data.mean, data.std, chunk)
        for p, v in zip(pairs, values.reshape(len(pairs), len(ts), 3)):
            p[split] = {"loss": v[:, 0].tolist(), "acc": v[:, 1].tolist(), "top5": v[:, 2].tolist(),
                        "error_barrier": surfaces.barrier(1 - v[:, 1]), "loss_barrier": surfaces.barrier(v[:, 0])}
    return ts, pairs


def end_point_check(pairs: list[dict], cst: studydir.StudyDir) -> float:
    """The largest |difference| between a path's end points on the test set and the two children's
    own final test metrics in their records (0 up to float rounding)."""
    worst = 0.0
    for p in pairs:
        for end, run_id in zip((0, -1), p["children"]):
            own = run_record.final(cst.record(run_id), "test") or {}
            worst = max([worst, *(abs(p["test"][m][end] - own.get(m, np.nan)) for m in run_record.METRICS)])
    return worst


def _stat(values: list[float]) -> str:
    s = summary.finite_statistics(100 * np.asarray(values))
    return "–" if s["mean"] is None else f"{s['mean']:.2f} ± {s['std']:.2f}"


def markdown(pairs: list[dict], ks: tuple[int, ...], header: str, check: float) -> str:
    """connectivity.md: per spawn epoch, the barriers and end-point errors over every pair."""
    lines = [f"# {TITLE}: error barrier between children against the spawn epoch k", "", header, "",
             "Barrier: max over t of the error at (1 − t)·θ1 + t·θ2 minus the mean of the two children's errors "
             "(percentage points; mean ± std over every pair of children of every parent; never below half the two "
             "children's difference, as the max includes the ends). Batch norm in eval mode, "
             "the running statistics interpolated with the parameters.", "",
             "| k | pairs | test error barrier | train error barrier | test loss barrier (×100) | children's test error (%) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for k in ks:
        group = [p for p in pairs if p["k"] == k]
        ends = [1 - p["test"]["acc"][e] for p in group for e in (0, -1)]
        lines.append(f"| {k} | {len(group)} | {_stat([p['test']['error_barrier'] for p in group])} | "
                     f"{_stat([p['train']['error_barrier'] for p in group])} | "
                     f"{_stat([p['test']['loss_barrier'] for p in group])} | {_stat(ends)} |")
    lines += ["", f"End points against the children's own records (test loss, top-1, top-5): largest |difference| "
                  f"{check:.2g}."]
    return "\n".join(lines) + "\n"


def analyse(cfg: config.Config, root: studydir.StudyDir, cst: studydir.StudyDir, families: dict, ks: tuple[int, ...],
            prepared: prepare.Prepared) -> None:
    """The paths, connectivity.md/json and the two figures."""
    with root.lock() if runner.is_lead() else contextlib.nullcontext():
        ts, pairs = paths(cfg, cst, families, prepared)
        check = end_point_check(pairs, cst)
        header = (f"{len({p['parent'] for p in pairs})} parent(s) × {cfg.own.children} children per spawn epoch; model "
                  f"{cfg.model.name}, {cfg.optimizer} lr {cfg.lrs[0]:g}, batch {cfg.batch_size}, {cfg.epochs} epochs; "
                  f"{len(ts)} points per path, test set and {min(cfg.own.interp_examples, len(prepared.train_idx)):,} "
                  "training images.")
        root.write_json("connectivity.json", {"ts": ts.tolist(), "spawn_epochs": list(ks), "end_point_check": check,
                                              "pairs": pairs})
        root.write_text("connectivity.md", markdown(pairs, ks, header, check))
        for split, name in (("test", "connectivity.png"), ("train", "connectivity_train.png")):
            errors = {k: np.array([1 - np.asarray(p[split]["acc"]) for p in pairs if p["k"] == k]) for k in ks}
            barriers = {k: [p[split]["error_barrier"] for p in pairs if p["k"] == k] for k in ks}
            connectivity(ts, errors, barriers, root.figures_dir / name,
                         f"{TITLE} ({split} {'set' if split == 'test' else 'subset'}): {cfg.model.name}, "
                         f"{cfg.epochs} epochs")
        progress.log("\n" + markdown(pairs, ks, header, check))


def main(cfg: config.Config) -> None:
    check_flags(cfg)
    ks = spawn_epochs(cfg)
    root = prepare.study_dir(cfg, "connectivity")
    pst, cst = studydir.StudyDir(root.root / "parent"), studydir.StudyDir(root.root / "children")
    prepare.check_writable(root.root, "--results_dir/--name")
    prepared = prepare.data(cfg)
    parents = config.grid(cfg, len(prepared.train_idx), prepared.dataset.num_classes)
    train_parents(cfg, pst, parents, ks, prepared)
    families = train_children(cfg, pst, cst, parents, ks, prepared)
    analyse(cfg, root, cst, families, ks, prepared)


# ----------------------------------------------------------------------------- figures

@charts.styled
def connectivity(ts: np.ndarray, errors_by_k: dict[int, np.ndarray], barriers_by_k: dict[int, np.ndarray],
                 path: Path | str, title: str) -> Path:
    """Frankle et al.'s instability figures: test error along the linear path between two children
    for each spawn epoch k (mean over pairs, band ± std; errors_by_k[k]: [pairs, points]), and the
    error barrier against k (mean ± std over pairs, each pair a faint dot)."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_path, ax_k = fig.subplots(1, 2)
    for i, (k, errors) in enumerate(errors_by_k.items()):
        mean, std = 100 * np.nanmean(errors, 0), 100 * np.nanstd(errors, 0)
        ax_path.plot(ts, mean, color=charts.PALETTE[i % len(charts.PALETTE)], lw=2, label=f"k = {k}")
        ax_path.fill_between(ts, mean - std, mean + std, color=charts.PALETTE[i % len(charts.PALETTE)], alpha=0.15, lw=0)
    ks = np.array(list(barriers_by_k), dtype=np.float64)
    for k, values in barriers_by_k.items():
        ax_k.scatter(np.full(len(values), k), 100 * np.asarray(values), s=14, color=charts.PALETTE[0], alpha=0.35)
    ax_k.errorbar(ks, [100 * np.nanmean(v) for v in barriers_by_k.values()],
                  yerr=[100 * np.nanstd(v) for v in barriers_by_k.values()], fmt="-o", color=charts.PALETTE[0], lw=2,
                  capsize=4)
    ax_k.axhline(0.0, color="0.3", lw=1, ls=":")
    if len(ks) and ks.min() >= 0 and ks.max() > 0:
        ax_k.set_xscale("symlog", linthresh=1)
    ax_k.set_xticks(ks, [f"{k:g}" for k in ks])
    ax_path.legend(frameon=False, title="spawn epoch")
    for ax, name, xlabel, unit in ((ax_path, "Test error along the path between two children", "t", "test error (%)"),
                                   (ax_k, "Error barrier against the spawn epoch k", "k (epochs)",
                                    "barrier (percentage points)")):
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(unit)
    return charts.save(fig, path, title=title)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
