"""seeds/001 §3: a model improved step by step. Each stage of the ladder adds one change to the
stage before it (standardisation, augmentation, momentum with LR decay, dropout, batch norm); side
variants (mean-image standardisation, ZCA whitening) branch from a stage without joining the
chain, and chosen stages are also trained longer. Every stage is a study of its own (a stage may
change the data preparation) under one directory; the analysis compares each stage with the one
it came from, in one figure and one table, and writes the model's layer table and its untrained
loss and top-1/top-5 accuracy.

    python -m experiments.ladder --flagfile=experiments/flags/seed001_ladder.flags
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.nn import models
from cifar_jax.plots import charts
from cifar_jax.results import run_record, summary
from cifar_jax.study import cli, config, prepare, progress, runner

# name → (the stage it builds on, its change to that stage's flags). A change sets Config fields,
# per-run options (tuples) or, under "model", ModelConfig fields.
STAGES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "baseline": (None, {}),
    "standardised": ("baseline", {"normalization": "per_channel"}),
    "mean_image": ("baseline", {"normalization": "mean_image"}),
    "zca": ("baseline", {"normalization": "zca"}),
    "augmented": ("standardised", {"augment": "crop_flip"}),
    "momentum_decay": ("augmented", {"optimizer": "momentum", "momentum": (0.9,), "schedule": "exponential",
                                     "decay_rate": (0.95,), "decay_unit": "epoch"}),
    "dropout": ("momentum_decay", {"dropout": (0.5,), "model": {"use_dropout": True}}),
    "batch_norm": ("dropout", {"model": {"norm": "batch"}}),
}

OPTIONS = table(
    Option("stages", tuple(STAGES), "Stages to train, in order; each needs the stage it builds on "
           f"({', '.join(f'{k} ← {v[0]}' for k, v in STAGES.items() if v[0])}).", kind="choice", many=True,
           choices=tuple(STAGES)),
    Option("long_stages", ("dropout", "batch_norm"), "Stages also trained for --long_epochs (a '<stage>_long' variant).",
           kind="choice", many=True, choices=tuple(STAGES)),
    Option("long_epochs", 100, "Epochs of the long variants.", kind="int", low=1),
)
TITLE = "ladder (seeds/001)"

U_THRESHOLD = 0.05  # a final validation loss this far above its minimum is a U (overfitting)


def stage_config(cfg: config.Config, stage: str) -> config.Config:
    """The flags of `stage`: the flags as given, with every change up the chain applied in order."""
    parent, change = STAGES[stage.removesuffix("_long")]
    if stage.endswith("_long"):
        return stage_config(cfg, stage.removesuffix("_long")).replace(epochs=cfg.own.long_epochs)
    base = stage_config(cfg, parent) if parent else cfg
    fields = {k: v for k, v in change.items() if k != "model"}
    if "model" in change:
        fields["model"] = dataclasses.replace(base.model, **change["model"])
    return base.replace(**fields)


def plan(stages: tuple[str, ...], long_stages: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """(stage, the stage it is compared with) in training order; ConfigError on unknown names or a
    stage whose parent is not trained."""
    unknown = [s for s in [*stages, *long_stages] if s not in STAGES]
    if unknown or not stages:
        raise config.ConfigError(f"--stages/--long_stages: unknown {', '.join(unknown) or 'none given'}; known: "
                                 f"{', '.join(STAGES)}")
    out = []
    for s in stages:
        parent = STAGES[s][0]
        if parent and parent not in stages:
            raise config.ConfigError(f"--stages: {s} builds on {parent}; add it")
        out.append((s, parent))
    out += [(f"{s}_long", s) for s in long_stages if s in stages]
    return out


def stage_row(name: str, parent: str | None, records: list[dict]) -> dict:
    """A stage's numbers across seeds: test top-1/top-5, best validation accuracy, the minimum
    and the final validation loss and whether it turned up again (a U)."""
    done = [r for r in records if r and r["status"] == "done"]
    val_loss = [run_record.curve(r, "val_loss") for r in done]
    final_val = [v[-1] for v in val_loss]
    min_val = [float(np.nanmin(v)) for v in val_loss if np.isfinite(v).any()]
    rise = float(np.nanmean(np.subtract(final_val, min_val))) if min_val else float("nan")
    return {"stage": name, "builds_on": parent or "–", "n": len(done),
            "test_acc": summary.finite_statistics([run_record.final(r, "test")["acc"] for r in done]),
            "test_top5": summary.finite_statistics([run_record.final(r, "test")["top5"] for r in done]),
            "best_val_acc": summary.finite_statistics([float(np.nanmax(run_record.curve(r, "val_acc"))) for r in done]),
            "min_val_loss": summary.finite_statistics(min_val), "final_val_loss": summary.finite_statistics(final_val),
            "min_val_epoch": summary.finite_statistics([float(np.nanargmin(v) + 1) for v in val_loss if np.isfinite(v).any()]),
            "u_shape": bool(rise > U_THRESHOLD)}


def ladder_markdown(rows: list[dict], title: str, long_epochs: int) -> str:
    """One row per stage, the change it adds, and the numbers beside the stage it builds on."""
    lines = [f"# {title}: each stage against the stage it builds on (mean ± std over seeds)", "",
             f"U: the final validation loss ends more than {U_THRESHOLD} above its minimum (overfitting).", "",
             "| stage | builds on | change | test top-1 (%) | test top-5 (%) | best val (%) | min val loss | "
             "at epoch | final val loss | U | n |", "|:---|:---|:---|---:|---:|---:|---:|---:|---:|:---|---:|"]
    for r in rows:
        stage = r["stage"].removesuffix("_long")
        change = f"{long_epochs} epochs" if r["stage"].endswith("_long") else _change_text(STAGES[stage][1])
        cells = [summary.format_stat(metric, r[key]) for metric, key in (
            ("acc", "test_acc"), ("acc", "test_top5"), ("acc", "best_val_acc"), ("loss", "min_val_loss"))]
        epoch = "–" if r["min_val_epoch"]["mean"] is None else f"{r['min_val_epoch']['mean']:.0f}"
        cells += [epoch, summary.format_stat("loss", r["final_val_loss"])]
        lines.append(f"| {r['stage']} | {r['builds_on']} | {change} | " + " | ".join(cells)
                     + f" | {'yes' if r['u_shape'] else 'no'} | {r['n']} |")
    return "\n".join(lines) + "\n"


def _change_text(change: dict) -> str:
    parts = [f"{k}={v[0] if isinstance(v, tuple) else v}" for k, v in change.items() if k != "model"]
    parts += [f"{k}={v}" for k, v in change.get("model", {}).items()]
    return ", ".join(parts) or "the flags as given"


def model_markdown(model: models.ModelConfig, image_shape: tuple[int, ...], records: list[dict]) -> str:
    """The layer table (weights, biases, receptive fields, totals) and the untrained network's
    loss and top-1/top-5 accuracy per split (mean ± std over seeds)."""
    lines = [f"# The model ({model.name}): layers, and the network before any step", "", "```",
             models.format_layer_table(models.layer_table(model, image_shape)), "```", "",
             "| split | loss | top-1 (%) | top-5 (%) | n |", "|:---|---:|---:|---:|---:|"]
    for split in ("train", "val", "test"):
        got = [m for m in (run_record.untrained(r, split) for r in records) if m]
        if got:
            loss, top1, top5 = (summary.statistics([m[k] for m in got]) for k in ("loss", "acc", "top5"))
            lines.append(f"| {split} | {loss['mean']:.4f} ± {loss['std']:.4f} | {summary.format_stat('acc', top1)} | "
                         f"{summary.format_stat('acc', top5)} | {len(got)} |")
    return "\n".join(lines) + "\n"


def train_stage(cfg: config.Config, stage: str, parent: str | None, title: str) -> runner.Outcome:
    """One stage, a study of its own in part `stage`."""
    scfg = stage_config(cfg, stage)
    progress.log(f"\n=== stage {stage}" + (f" (builds on {parent})" if parent else ""))
    return runner.run(scfg, "ladder", f"{title}: {stage}", part=stage,
                      runs=lambda p: config.grid(scfg, len(p.train_idx), p.dataset.num_classes, stage))


def main(cfg: config.Config) -> None:
    """Every stage in order, then the ladder's table, figures and the model's table."""
    cfg.single_group("the ladder's stages set the model, optimiser and augmentation")
    stages = plan(cfg.own.stages, cfg.own.long_stages)
    title = f"{cfg.model.name} {TITLE}"
    done = {stage: train_stage(cfg, stage, parent, title) for stage, parent in stages}
    if not runner.is_lead():
        return
    records = {stage: outcome.finished for stage, outcome in done.items()}
    root = prepare.study_dir(cfg, "ladder")
    rows = [stage_row(s, p, records[s]) for s, p in stages]
    root.write_json("ladder.json", rows)
    root.write_text("ladder.md", ladder_markdown(rows, title, cfg.own.long_epochs))
    first = done[stages[0][0]]
    root.write_text("model.md", model_markdown(cfg.model, first.prepared.dataset.image_shape, first.finished))
    for stage, parent in stages:
        if parent:
            stage_comparison({parent: records[parent], stage: records[stage]},
                             root.figures_dir / f"{stage}_vs_{parent}.png", f"{title}: {stage} against {parent}")
    progress.log("\n" + ladder_markdown(rows, title, cfg.own.long_epochs))


# ----------------------------------------------------------------------------- figures

@charts.styled
def stage_comparison(records_by_config: dict[str, list[dict]], path: Path | str, title: str) -> Path:
    """Two or more configurations (e.g. a ladder stage and the stage it builds on) side by side:
    loss, top-1 and top-5 accuracy per epoch, training (running average, dashed) and validation
    (solid), the mean over each configuration's non-diverged seeds with a ±1 std band."""
    fig = Figure(figsize=(14, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for i, (name, records) in enumerate(records_by_config.items()):
        kept = [r for r in records if r.get("status") != "diverged"]
        color = charts.PALETTE[i % len(charts.PALETTE)]
        for ax, metric in zip(axes, ("loss", "acc", "top5")):
            scale = 1.0 if metric == "loss" else 100.0
            for split, ls in (("train", "--"), ("val", "-")):
                mean, std = charts.mean_std([scale * run_record.curve(r, f"{split}_{metric}") for r in kept])
                if np.isfinite(mean).any():
                    ax.plot(charts.epochs_axis(mean), mean, color=color, ls=ls, lw=1.8, label=f"{name} ({split})")
                    ax.fill_between(charts.epochs_axis(mean), mean - std, mean + std, color=color, alpha=0.12, lw=0)
    for ax, what in zip(axes, ("cross-entropy loss", "top-1 accuracy (%)", "top-5 accuracy (%)")):
        ax.set_title(what)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return charts.save(fig, path, title=title, legend=axes, ncol=4)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
