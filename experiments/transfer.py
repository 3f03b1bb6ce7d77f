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

from absl import flags

from cifar_jax import checkpoint, config, plots, results, run_record, study, summary, train
from experiments import pretraining

flags.DEFINE_float("transfer_dropout", -1.0, "DropoutNet's rate; -1: the best rate of the dropout study "
                   "(--dropout_study), else 0.6 (the report's best).")
flags.DEFINE_string("dropout_study", None, "Dropout-sweep study directory (default <results_dir>/dropout_sweep).")
flags.DEFINE_string("baseline_study", None, "§1.1 LR-sweep study directory to compare with (default "
                    "<results_dir>/lr_sweep); skipped with a note when absent.")
flags.DEFINE_string("baseline_config", "lr=0.05", "The configuration of the baseline study to compare with.")
flags.DEFINE_integer("retrain_seed_offset", 100, "Retraining seed = pretraining seed + this.")
FLAGS = flags.FLAGS


def dropout_rate(cfg: config.Config) -> float:
    """--transfer_dropout, else the dropout study's best rate, else 0.6."""
    if FLAGS.transfer_dropout != -1:
        if not 0 <= FLAGS.transfer_dropout < 1:  # NaN too
            raise config.ConfigError(f"--transfer_dropout={FLAGS.transfer_dropout}: must be in [0, 1), or -1 for "
                                     "the dropout study's best rate")
        return FLAGS.transfer_dropout
    gap = Path(FLAGS.dropout_study or Path(cfg.results_dir) / "dropout_sweep") / "generalisation_gap.json"
    if gap.exists():
        rate = float(json.loads(gap.read_text())["best_rate"])
        study.log(f"DropoutNet rate {rate:g}: the best rate of {gap}")
        return rate
    study.log(f"DropoutNet rate 0.6: no dropout study at {gap} (the report's best rate)")
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
    seed = pre.seed + FLAGS.retrain_seed_offset
    return config.Run(f"{pre.config_name} retrained", seed, dataclasses.replace(pre.spec, frozen=frozen),
                      {**pre.hp, "seed": seed}, pre.epochs,
                      {**config.data_config(cfg), "pretrained": pre.run_id, "checkpoint": str(ckpt)})


def main(cfg: config.Config) -> None:
    if cfg.model.name == "mlp":
        raise config.ConfigError("--model=mlp: transfer freezes the conv layers; use baseline or convnet")
    cfg.single_group("transfer pretrains one architecture")
    rate = dropout_rate(cfg)
    n_train, n_val, swap = cfg.split
    swapped = cfg.replace(split=(n_train, n_val, not swap))
    parent = study.study_dir(cfg, "transfer")
    ckpt_root = pretraining.checkpoint_root(parent)
    plan: dict = {}  # the pretraining runs, their checkpoints and the frozen layers, once the data is known

    def pretrain(prepared: study.Prepared) -> list[config.Run]:
        pre = pretrain_runs(cfg, rate, len(prepared.train_idx), prepared.dataset.num_classes)
        shapes = train.param_shapes(pre[0].spec, prepared.dataset.image_shape)
        plan.update(pre={r.run_id: r for r in pre}, frozen=tuple(k for k in shapes if "conv" in k),
                    ckpts={r.run_id: ckpt_root / results.run_file_stem(r.run_id) for r in pre})
        return pre

    def check_checkpoints(pre_study: results.StudyDir, prepared: study.Prepared) -> None:
        pretraining.check(parent, pre_study, [(r, plan["ckpts"][i]) for i, r in plan["pre"].items()])

    def save(run: config.Run, variables: tuple) -> None:
        pretraining.save(parent, pre_study, plan["ckpts"][run.run_id], run, variables)

    pre_study = results.StudyDir(parent.root / "pretrain")
    study.run(cfg, "transfer", "Transfer: pretraining", pretrain, part="pretrain",
              before=check_checkpoints, on_state=save, extra={"dropout_rate": rate})

    def retraining(prepared: study.Prepared) -> list[config.Run]:
        retrain = [retrain_run(r, swapped, plan["frozen"], plan["ckpts"][i]) for i, r in plan["pre"].items()]
        spec = retrain[0].spec
        plan.update(params=train.param_shapes(spec, prepared.dataset.image_shape),
                    stats=train.batch_stats_shapes(spec, prepared.dataset.image_shape))
        return retrain

    def pretrained_layers(run: config.Run) -> dict:
        frozen = plan["frozen"]
        expected = study.provenance(parent, plan["pre"][run.data["pretrained"]])
        params, stats = checkpoint.restore(run.data["checkpoint"], plan["params"], plan["stats"],
                                           expected=expected, strict=True)
        study.log(f"{run.run_id}: restored {run.data['checkpoint']} (strict); frozen {', '.join(frozen)}; "
                  f"{', '.join(k for k in params if k not in frozen)} re-initialised from seed {run.seed}")
        return {"params": {k: params[k] for k in frozen},
                "batch_stats": {k: stats[k] for k in frozen if k in stats}}

    study.run(swapped, "transfer", "Transfer: retraining the dense layers (swapped split)", retraining,
              part="retrain", initial_for=pretrained_layers, extra={"dropout_rate": rate, "frozen": plan.get("frozen")},
              report=lambda st, records: compare(parent, records))


def compare(parent: results.StudyDir, retrained: list[dict]) -> None:
    """Retrained models against the best static-LR model of §1.1: validation curves and test table."""
    baseline_dir = Path(FLAGS.baseline_study or parent.root.parent / "lr_sweep")
    base = [r for r in results.StudyDir(baseline_dir).records()
            if r["config_name"] == FLAGS.baseline_config and r["status"] == "done"] if baseline_dir.exists() else []
    note = "" if base else f"\n(no §1.1 baseline found at {baseline_dir}: run experiments.lr_sweep first)\n"
    base = [{**r, "config_name": f"§1.1 {FLAGS.baseline_config}"} for r in base]
    records = retrained + base
    stats = summary.summarize(records)
    parent.write_json("summary.json", stats)
    table = summary.test_table_markdown(stats)
    parent.write_text("transfer_comparison.md", f"# Transfer: test set (mean ± std over seeds)\n\n{table}\n{note}")
    plots.val_comparison(run_record.group_by_config(records), parent.figures_dir / "transfer_val_comparison.png",
                         "Retraining vs the §1.1 baseline: mean validation (smoothed)")
    plots.test_table(stats, parent.figures_dir / "transfer_test_table.png", "Transfer: test set")
    study.log(f"\nTransfer vs §1.1 baseline (test set)\n{table}{note}")


if __name__ == "__main__":
    study.main(main)
