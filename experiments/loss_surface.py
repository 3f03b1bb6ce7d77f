"""Loss surfaces around a finished run's final weights: 1-D linear paths (from its initial weights
to its final ones, and to another run's) and a 2-D plane of two filter-normalised random
directions, every point one lane of a vmapped evaluation. The directions are Li et al. 2018's
(arXiv 1712.09913; cifar_jax.training.surfaces).

The runs come from a study run with --save_final (its final variables as orbax checkpoints with
their provenance, restored strictly and checked to be that run's): --source_study names one; without
it this study first trains its own source runs from the core flags (part source/, --save_final
forced), so one command gives a surface. Each point is evaluated in eval mode on a seeded subset
of --surface_examples training images and on the test set (the run's own data settings, read
from its record). Batch norm: on the plane every point keeps the run's final running statistics

(Li et al.); on a path the running statistics are interpolated with the parameters (the initial
ones are the initialisation's: mean 0, variance 1). Outputs: surface.md (the centre against the
run's own record, the paths' minima and barriers), surface.json, surface.npz (every grid value),
figures/surface_1d.png and figures/surface_2d.png.

    python -m experiments.loss_surface --flagfile=experiments/flags/loss_surface.flags
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure
import numpy as np

from cifar_jax.study import progress
from cifar_jax.io import checkpoint, files
from cifar_jax.nn import models
from cifar_jax.plots import charts
from cifar_jax.results import run_record, studydir
from cifar_jax.study import cli, config, prepare, runner
from cifar_jax.training import schedules, step, surfaces
from cifar_jax.config.options import Option, table


TITLE = "Loss surface"
METRICS = ("loss", "acc", "top5")

def _odd_points(text: str) -> int:
    n = int(text)
    if n < 3 or n % 2 == 0:
        raise ValueError("must be odd and >= 3 (the run is the grid's centre)")
    return n


OPTIONS = table(
    Option("source_study", "", "A finished study run with --save_final (its name in --results_dir, or its path) whose "
           "run to look at; default: train the core flags' runs as this study's part source/.", kind="str"),
    Option("run", "", "Run id of the source study at the surface's centre (default: its first finished run).",
           kind="str"),
    Option("other_run", "", "A second run of the same model for the 1-D path between the two; default: the next "
           "finished run of the same model, if any; 'none': no such path.", kind="str"),
    Option("surface_points", 21, "Points per axis of the 2-D grid and of each 1-D path (odd, so the run itself is the "
           "grid's centre).", kind="int", convert=_odd_points),
    Option("surface_range", 1.0, "The plane spans [-range, range] along each filter-normalised direction.", low=0.0,
           low_open=True),
    Option("surface_examples", 1000, "Training images (a subset seeded by --direction_seed) evaluated at every point; "
           "the whole test set is evaluated too.", kind="int", low=1),
    Option("direction_seed", 0, "Seed of the two random directions and of the training subset.", kind="int", low=0),
    Option("surface_chunk", 0, "Points evaluated together in one vmapped pass (memory grows with it); 0: by backend "
           "(surfaces.auto_chunk: 1 on CPU, where vmapped convolutions are slower, 32 elsewhere).", kind="int", low=0),
)


# ----------------------------------------------------------------------------- flags and runs

def source_dir(cfg: config.Config) -> studydir.StudyDir:
    """--source_study as a study directory (a name inside --results_dir, or a path)."""
    st = prepare.named_study(cfg, cfg.own.source_study)
    if not st.runs_dir.is_dir():
        raise config.ConfigError(f"--source_study={cfg.own.source_study}: no study with run records at {st.root}")
    return st


def chosen_records(cfg: config.Config, src: studydir.StudyDir) -> tuple[dict, dict | None]:
    """The centre run's record (--run) and the other run's (--other_run), each finished."""
    done = [r for r in src.records() if r["status"] == "done"]
    ids = [r["run_id"] for r in done]
    shown = ", ".join(ids[:6]) + (", ..." if len(ids) > 6 else "")
    if not done:
        raise config.ConfigError(f"--source_study={src.root}: no finished (done) run")

    def find(flag: str, run_id: str) -> dict:
        if run_id not in ids:
            raise config.ConfigError(f"--{flag}={run_id}: no finished run of that id in {src.root} (finished: {shown})")
        return done[ids.index(run_id)]

    own = cfg.own
    centre = find("run", own.run) if own.run else done[0]
    if own.other_run == "none":
        return centre, None
    if own.other_run:
        other = find("other_run", own.other_run)
        if other["config"]["model"] != centre["config"]["model"]:
            raise config.ConfigError(f"--other_run={own.other_run}: another model than --run's {centre['run_id']}")
        return centre, other
    return centre, next((r for r in done if r is not centre and r["config"]["model"] == centre["config"]["model"]), None)


def spec_of(rec: dict, cfg: config.Config) -> step.GroupSpec:
    """The run's group spec from its record (evaluation batch and convolution from the flags)."""
    c = rec["config"]
    as_value = lambda v: tuple(v) if isinstance(v, list) else v
    model = models.ModelConfig(**{k: as_value(v) for k, v in c["model"].items()})
    names = {f.name for f in dataclasses.fields(step.GroupSpec)} - {"model", "eval_batch_size", "conv_impl"}
    return step.GroupSpec(model=model, eval_batch_size=cfg.eval_batch_size, conv_impl=cfg.conv_impl,
                          **{k: as_value(c[k]) for k in names if k in c})


def hparams_of(rec: dict) -> dict[str, Any]:
    """The run's per-run values (as `step.init_run` takes them) from its record."""
    c = rec["config"]
    hp = {k: c[k] for k in step.HP_DEFAULTS if k in c}
    hp["schedule"] = schedules.SCHEDULE_IDS[c["schedule"]]
    return {k: v[0] for k, v in step.stack_hparams([hp]).items()}


def data_config(cfg: config.Config, rec: dict) -> config.Config:
    """The flags with the run's own data settings (dataset, split, normalisation, classes, test set)."""
    c = rec["config"]
    return cfg.replace(dataset=c["dataset"], split=tuple(c["split"]), split_seed=c["split_seed"],
                       normalization=c["normalization"], zca_epsilon=c.get("zca_epsilon", cfg.zca_epsilon),
                       classes=c.get("classes", ""), test_size=c.get("test_size", 0), batch_size=c["batch_size"])


def restored(src: studydir.StudyDir, rec: dict, spec: step.GroupSpec, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """The run's final (params, batch_stats) from its --save_final checkpoint (strict, provenance checked)."""
    path = runner.final_checkpoint(src, rec["run_id"])
    if not path.exists():
        raise config.ConfigError(f"{rec['run_id']!r} of {src.root} has no checkpoint at {path}: run that study with "
                                 "--save_final")
    expected = {"study": src.root, "run_id": rec["run_id"], "config": rec["config"]}
    return checkpoint.restore(path, step.param_shapes(spec, shape), step.batch_stats_shapes(spec, shape),
                              expected=expected)


# ----------------------------------------------------------------------------- the surface

def coordinates(points: int, span: float) -> np.ndarray:
    """`points` evenly spaced values over [-span, span] with an exact 0 at the centre."""
    half = points // 2
    return span * (np.arange(points) - half) / half


def compute(spec: step.GroupSpec, variables: tuple, initial: tuple, other: tuple | None, data: step.Data,
            train_subset: np.ndarray, points: int, span: float, seed: int, chunk: int) -> dict[str, np.ndarray]:
    """Every point's [loss, top-1, top-5] on the training subset and the test set: the plane
    (`train_plane`, `test_plane`: [points, points, 3]) and the paths (`init_*`, `other_*`: [points, 3])."""
    params, stats = variables
    coords, ts = coordinates(points, span), np.linspace(0.0, 1.0, points)
    d1, d2 = (surfaces.random_direction(k, params) for k in jax.random.split(jax.random.PRNGKey(seed)))
    grid = (surfaces.plane(params, d1, d2, coords, coords), surfaces.repeat(stats, points * points))
    paths = {"init": surfaces.line(initial, variables, ts)}
    if other is not None:
        paths["other"] = surfaces.line(variables, other, ts)
    test_idx = jnp.arange(data.y_test.shape[0], dtype=jnp.int32)
    splits = {"train": (data.x, data.y, jnp.asarray(train_subset, jnp.int32)), "test": (data.x_test, data.y_test, test_idx)}
    out = {"coords": coords, "ts": ts}
    for split, (x, y, idx) in splits.items():
        ev = lambda v: surfaces.evaluate_points(spec, *v, x, y, idx, data.mean, data.std, chunk)
        out[f"{split}_plane"] = ev(grid).reshape(points, points, 3)
        out.update((f"{name}_{split}", ev(v)) for name, v in paths.items())
    return out


def path_summary(values: np.ndarray, ts: np.ndarray) -> dict[str, float]:
    """A path's minimum loss and where, and its loss and error barriers (Frankle et al.)."""
    i = int(np.argmin(values[:, 0]))
    return {"min_loss": float(values[i, 0]), "t_min_loss": float(ts[i]),
            "loss_barrier": surfaces.barrier(values[:, 0]), "error_barrier": surfaces.barrier(1 - values[:, 1])}


def summarise(out: dict[str, np.ndarray], rec: dict, other: dict | None) -> dict[str, Any]:
    """The numbers surface.md shows: the centre against the record, the plane's extremes, the paths."""
    c = len(out["coords"]) // 2
    centre = {s: dict(zip(METRICS, map(float, out[f"{s}_plane"][c, c]))) for s in ("train", "test")}
    plane = {}
    for s in ("train", "test"):
        loss = out[f"{s}_plane"][..., 0]
        i, j = np.unravel_index(np.nanargmin(loss), loss.shape)
        plane[s] = {"min_loss": float(loss[i, j]), "at": [float(out["coords"][i]), float(out["coords"][j])],
                    "max_loss": float(np.nanmax(loss))}
    paths = {name: {s: path_summary(out[f"{name}_{s}"], out["ts"]) for s in ("train", "test")}
             for name in ("init", "other") if f"{name}_test" in out}
    return {"run": rec["run_id"], "other_run": other["run_id"] if other else None, "centre": centre,
            "record_test": run_record.final(rec, "test"), "plane": plane, "paths": paths}


def _row(name: str, m: dict | None) -> str:
    return f"| {name} | " + (" | ".join(f"{m[k]:.6f}" if k == "loss" else f"{100 * m[k]:.2f}" for k in METRICS)
                             if m else "– | – | –") + " |"


def markdown(s: dict, header: str) -> str:
    """surface.md: how it was measured, the centre against the run's record, the paths and the plane."""
    lines = [f"# {TITLE}: {s['run']}", "", header, "",
             "Batch norm: every point is evaluated in eval mode. On the plane each point keeps the run's final "
             "running statistics (as Li et al. 2018); on a path the running statistics are interpolated linearly "
             "with the parameters (from the initialisation's, mean 0 and variance 1, on the init → final path). "
             "Directions: a Gaussian per kernel, each filter (a conv's output channel, a dense layer's output unit) "
             "scaled to the norm of that filter of the weights; zero on biases and normalisation parameters.", "",
             "## The centre (the run itself) against its own record", "",
             "| | loss | top-1 % | top-5 % |", "|:---|---:|---:|---:|",
             _row("centre, test set", s["centre"]["test"]), _row("the run's record, test set", s["record_test"]),
             _row("centre, training subset", s["centre"]["train"]), "",
             "## 1-D paths (t = 0 → 1; barrier = max over t − mean of the two ends)", "",
             "| path | split | min loss | at t | loss barrier | error barrier (points) |", "|:---|:---|---:|---:|---:|---:|"]
    names = {"init": "initial → final weights", "other": f"this run → {s['other_run']}"}
    for name, by_split in s["paths"].items():
        for split, p in by_split.items():
            lines.append(f"| {names[name]} | {split} | {p['min_loss']:.4f} | {p['t_min_loss']:.2f} | "
                         f"{p['loss_barrier']:.4f} | {100 * p['error_barrier']:.2f} |")
    lines += ["", "## The plane", "", "| split | min loss | at (α, β) | max loss |", "|:---|---:|:---|---:|"]
    for split, p in s["plane"].items():
        lines.append(f"| {split} | {p['min_loss']:.4f} | ({p['at'][0]:.2f}, {p['at'][1]:.2f}) | {p['max_loss']:.4f} |")
    return "\n".join(lines) + "\n"


def write(st: studydir.StudyDir, out: dict[str, np.ndarray], s: dict, header: str) -> None:
    """surface.md, surface.json, surface.npz and the two figures."""
    buffer = io.BytesIO()
    np.savez(buffer, **out)
    files.atomic_write_bytes(st.root / "surface.npz", buffer.getvalue())
    st.write_json("surface.json", s)
    st.write_text("surface.md", markdown(s, header))
    paths = {"initial (t=0) → final (t=1)": "init"} | ({f"this run (t=0) → {s['other_run']} (t=1)": "other"} if s["other_run"] else {})
    surface_paths({label: {split: out[f"{key}_{split}"] for split in ("train", "test")}
                   for label, key in paths.items()}, out["ts"], st.figures_dir / "surface_1d.png",
                  f"{TITLE}: linear paths from {s['run']}")
    surface_contours(out["coords"], {"train loss (subset)": out["train_plane"][..., 0],
                                     "test loss": out["test_plane"][..., 0],
                                     "test accuracy (%)": 100 * out["test_plane"][..., 1]},
                     st.figures_dir / "surface_2d.png",
                     f"{TITLE}: {s['run']}, two filter-normalised directions")
    progress.log("\n" + markdown(s, header))


def surface(cfg: config.Config, src: studydir.StudyDir) -> None:
    """The surface of the chosen run of study `src`, written into this study's folder."""
    rec, other_rec = chosen_records(cfg, src)
    own = cfg.own
    spec = spec_of(rec, cfg)
    data_cfg = data_config(cfg, rec)
    st = prepare.study_dir(cfg, "loss_surface")
    with st.lock():
        prepared = prepare.data(data_cfg)
        shape = tuple(prepared.dataset.image_shape)
        variables = restored(src, rec, spec, shape)
        other = restored(src, other_rec, spec, shape) if other_rec else None
        init = step.init_run(spec, hparams_of(rec), shape)
        n = min(own.surface_examples, len(prepared.train_idx))
        subset = np.sort(np.random.default_rng(own.direction_seed).choice(prepared.train_idx, n, replace=False))
        runner.write_preamble(st, data_cfg, [], prepared, {"source_study": str(src.root), "run": rec["run_id"],
                                                           "other_run": other_rec and other_rec["run_id"]})
        progress.log(f"{TITLE}: {rec['run_id']} of {src.root}: {own.surface_points}² plane and 1-D paths, "
                     f"{n} training images and {len(prepared.dataset.y_test)} test images per point")
        out = compute(spec, variables, (init.params, init.batch_stats), other, prepared.data, subset,
                      own.surface_points, own.surface_range, own.direction_seed,
                      own.surface_chunk or surfaces.auto_chunk(jax.devices()[0].platform))
        header = (f"Source study {src.root}, model {spec.model.name} (norm {spec.model.norm}); "
                  f"{own.surface_points} points per axis, plane α, β ∈ [−{own.surface_range:g}, "
                  f"{own.surface_range:g}], direction seed {own.direction_seed}; {n:,} training images "
                  f"(seeded subset) and {len(prepared.dataset.y_test):,} test images per point.")
        write(st, out, summarise(out, rec, other_rec), header)


def main(cfg: config.Config) -> None:
    """The source runs (unless --source_study gives them), then the surface of the chosen one."""
    if cfg.own.source_study:
        src = source_dir(cfg)
    else:
        source = cfg.replace(save_final=True)
        src = runner.run(source, "loss_surface", f"{TITLE}: source runs", part="source",
                         runs=lambda p: config.grid(source, len(p.train_idx), p.dataset.num_classes),
                         figures=cfg.epochs > 1).study
    surface(cfg, src)


# ----------------------------------------------------------------------------- figures

@charts.styled
def surface_paths(paths: dict[str, dict[str, np.ndarray]], ts: np.ndarray, path: Path | str, title: str) -> Path:
    """Loss and top-1 accuracy along 1-D linear paths: `paths` maps a label to {split: [points, 3]}
    (loss, top-1, top-5) at the coefficients `ts`; training subset solid, test dashed."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2, sharex=True)
    for i, (label, by_split) in enumerate(paths.items()):
        for split, ls in (("train", "-"), ("test", "--")):
            values = by_split[split]
            ax_loss.plot(ts, values[:, 0], ls, color=charts.PALETTE[i], lw=2, label=f"{label}, {split}")
            ax_acc.plot(ts, 100 * values[:, 1], ls, color=charts.PALETTE[i], lw=2, label=f"{label}, {split}")
    return charts.finish_pair(fig, title, "t (0: start, 1: end)", ((ax_loss, "Loss", "cross-entropy loss"),
                                                                   (ax_acc, "Top-1 accuracy", "accuracy (%)")), path)


@charts.styled
def surface_contours(coords: np.ndarray, grids: dict[str, np.ndarray], path: Path | str, title: str) -> Path:
    """Contour panels of 2-D grids over (α, β) ∈ coords² (grids[name][i, j] at α = coords[i],
    β = coords[j]), the centre (the run itself) marked."""
    fig = Figure(figsize=(5.2 * len(grids), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(grids)))
    for ax, (name, grid) in zip(axes, grids.items()):
        finite = np.where(np.isfinite(grid), grid, np.nan)
        filled = ax.contourf(coords, coords, finite.T, levels=20, cmap="viridis")
        ax.contour(coords, coords, finite.T, levels=10, colors="white", linewidths=0.5, alpha=0.6)
        fig.colorbar(filled, ax=ax)
        ax.plot([0], [0], "*", color="red", ms=12, label="the run")
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.set_title(name)
        ax.grid(False)
    return charts.save(fig, path, title=title)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
