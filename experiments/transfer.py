"""seeds/000 §2.2: dropout and transfer. Pretrain BaselineNet and DropoutNet (5 seeds, one group),
save each final model as an orbax checkpoint with its provenance and metrics (in the study's
checkpoints/ folder, or --checkpoint_dir; see experiments.pretraining for --repair); swap the
train and validation sets; restore each checkpoint strictly, checking it is this study's
pretraining run, freeze every conv layer, re-initialise the dense layers from the retraining
seed and retrain only them; compare with the best static-LR model of §1.1 during retraining and
on the test set.

    python -m experiments.transfer --flagfile=experiments/flags/transfer.flags
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cifar_jax.config.options import Option, table
from cifar_jax.io import checkpoint
from cifar_jax.nn import models
from cifar_jax.results import studydir
from cifar_jax.study import cli, config, prepare, progress, runner
from cifar_jax.training import step
from experiments import pretraining


def _rate_or_best(text: str) -> float:
    """--transfer_dropout: a rate in [0, 1), or -1."""
    rate = float(text)
    if rate != -1 and not 0 <= rate < 1:  # NaN too
        raise ValueError("must be in [0, 1), or -1 for the dropout study's best rate")
    return rate


OPTIONS = table(
    *pretraining.OPTIONS.values(),
    Option("transfer_dropout", -1.0, "DropoutNet's rate, in [0, 1); -1: the best rate of the dropout study "
           "(--dropout_study), else 0.6 (the report's best).", convert=_rate_or_best),
    Option("dropout_study", None, "Dropout-sweep study directory (default <results_dir>/dropout_sweep).", kind="str"),
    Option("baseline_study", None, "§1.1 LR-sweep study directory to compare with (default <results_dir>/lr_sweep); "
           "skipped with a note when absent.", kind="str"),
    Option("baseline_config", "lr=0.05", "The configuration of the baseline study to compare with.", kind="str"),
    Option("retrain_seed_offset", 100, "Retraining seed = pretraining seed + this.", kind="int", low=0),
)


def dropout_rate(cfg: config.Config) -> float:
    """--transfer_dropout, else the dropout study's best rate, else 0.6."""
    if cfg.own.transfer_dropout != -1:
        return cfg.own.transfer_dropout
    gap = Path(cfg.own.dropout_study or Path(cfg.results_dir) / "dropout_sweep") / "generalisation_gap.json"
    if gap.exists():
        rate = float(json.loads(gap.read_text())["best_rate"])
        progress.log(f"DropoutNet rate {rate:g}: the best rate of {gap}")
        return rate
    progress.log(f"DropoutNet rate 0.6: no dropout study at {gap} (the report's best rate)")
    return 0.6


def pretrain_runs(cfg: config.Config, rate: float, n_train: int, classes: int) -> list[config.Run]:
    """BaselineNet and DropoutNet × seeds: one group (the dropout rate is a per-run value)."""
    model = dataclasses.replace(cfg.model, use_dropout=True)
    base = config.grid(cfg.replace(model=model, dropout=(0.0,)), n_train, classes, "BaselineNet")
    drop = config.grid(cfg.replace(model=model, dropout=(rate,)), n_train, classes,
                       f"DropoutNet p={rate:g}")
    return base + drop


def retrain_run(pre: config.Run, cfg: config.Config, frozen: tuple[str, ...], ckpt: Path) -> config.Run:
    """The retraining of one pretrained run: frozen conv layers, a new seed, the swapped split."""
    seed = pre.seed + cfg.own.retrain_seed_offset
    return config.Run(f"{pre.config_name} retrained", seed, dataclasses.replace(pre.spec, frozen=frozen),
                      {**pre.hp, "seed": seed}, pre.epochs,
                      {**config.data_config(cfg), "pretrained": pre.run_id, "checkpoint": str(ckpt)})


def pretrain(cfg: config.Config, rate: float, parent: studydir.StudyDir) -> tuple[runner.Outcome, dict[str, Path]]:
    """Part pretrain: BaselineNet and DropoutNet, each run's final variables saved as a
    checkpoint; the outcome and the checkpoint of every run (by run id)."""
    root = pretraining.checkpoint_root(cfg, parent)
    path = lambda run: root / studydir.run_file_stem(run.run_id)
    pre_study = studydir.StudyDir(parent.root / "pretrain")
    done = runner.run(cfg, "transfer", "Transfer: pretraining", part="pretrain",
                      runs=lambda p: pretrain_runs(cfg, rate, len(p.train_idx), p.dataset.num_classes),
                      before=lambda st, p, runs: pretraining.check(cfg, parent, st, [(r, path(r)) for r in runs]),
                      on_state=lambda run, variables: pretraining.save(parent, pre_study, path(run), run, variables),
                      extra={"dropout_rate": rate})
    return done, {r.run_id: path(r) for r in done.runs}


def retrain(cfg: config.Config, rate: float, parent: studydir.StudyDir, pretrained: runner.Outcome,
            checkpoints: dict[str, Path]) -> runner.Outcome:
    """Part retrain, on the swapped split: every pretrained run restored strictly (checked to be
    this study's), its conv layers frozen, its dense layers re-initialised and retrained."""
    n_train, n_val, swap = cfg.split
    swapped = cfg.replace(split=(n_train, n_val, not swap))
    image_shape = pretrained.prepared.dataset.image_shape
    frozen = tuple(k for k in step.param_shapes(pretrained.runs[0].spec, image_shape) if "conv" in k)
    runs = [retrain_run(r, swapped, frozen, checkpoints[r.run_id]) for r in pretrained.runs]
    by_id = {r.run_id: r for r in pretrained.runs}
    shapes = (step.param_shapes(runs[0].spec, image_shape), step.batch_stats_shapes(runs[0].spec, image_shape))

    def pretrained_layers(run: config.Run) -> dict:
        params, stats = checkpoint.restore(run.inputs["checkpoint"], *shapes, strict=True,
                                           expected=runner.provenance(parent, by_id[run.inputs["pretrained"]]))
        progress.log(f"{run.run_id}: restored {run.inputs['checkpoint']} (strict); frozen {', '.join(frozen)}; "
                     f"{', '.join(k for k in params if k not in frozen)} re-initialised from seed {run.seed}")
        return {"params": {k: params[k] for k in frozen},
                "batch_stats": {k: stats[k] for k in frozen if k in stats}}

    return runner.run(swapped, "transfer", "Transfer: retraining the dense layers (swapped split)", lambda p: runs,
                      part="retrain", initial_for=pretrained_layers, extra={"dropout_rate": rate, "frozen": frozen},
                      analysis=lambda st, records: compare(cfg, parent, records))


def main(cfg: config.Config) -> None:
    """Pretraining, then retraining from its checkpoints, then the comparison with §1.1."""
    if not models.MODELS[cfg.model.name].convolutional:
        raise config.ConfigError(f"--model={cfg.model.name}: transfer freezes the conv layers; use a conv net")
    cfg.single_group("transfer pretrains one architecture")
    rate = dropout_rate(cfg)
    parent = prepare.study_dir(cfg, "transfer")
    pretrained, checkpoints = pretrain(cfg, rate, parent)
    retrain(cfg, rate, parent, pretrained, checkpoints)


def compare(cfg: config.Config, parent: studydir.StudyDir, retrained: list[dict]) -> None:
    """Retrained models against the best static-LR model of §1.1: validation curves and test table."""
    baseline_dir = Path(cfg.own.baseline_study or parent.root.parent / "lr_sweep")
    name = cfg.own.baseline_config
    base = [r for r in studydir.StudyDir(baseline_dir).records()
            if r["config_name"] == name and r["status"] == "done"] if baseline_dir.exists() else []
    note = "" if base else f"\n(no §1.1 baseline found at {baseline_dir}: run experiments.lr_sweep first)\n"
    base = [{**r, "config_name": f"§1.1 {name}"} for r in base]
    runner.write_summary(parent, retrained + base, "Transfer, retrained against the §1.1 baseline",
                         table_file="transfer_comparison.md", figure_prefix="transfer_", note=note)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
