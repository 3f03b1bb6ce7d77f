"""seeds/000 §3.4: BatchNormNet (batch norm after every layer but the last, no bias before a BN)
against BaselineNet and DropoutNet, trained in one study. BN changes the architecture, so it is
its own group; dropout is a per-run value, so BaselineNet (rate 0) and DropoutNet share a group.

    python -m experiments.batchnorm --flagfile=experiments/flags/batchnorm.flags

The three architectures are set here: --norm and --dropout are refused; --compare_dropout sets
DropoutNet's rate on fc1.
"""
from __future__ import annotations

import dataclasses

from absl import flags

from cifar_jax import config, study

flags.DEFINE_float("compare_dropout", 0.6, "DropoutNet's dropout rate on fc1 (the best rate of §2.1), in (0, 1).")
FLAGS = flags.FLAGS


def model_runs(cfg: config.Config, n_train: int, num_classes: int, rate: float) -> list[config.Run]:
    """BatchNormNet, BaselineNet and DropoutNet (rate) runs, each seed of each, from the validated flags."""
    bn = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, norm="batch", use_dropout=False),
                             dropouts=(0.0,))
    plain = dataclasses.replace(cfg.model, norm="none", use_dropout=True)  # one model, so one group for both
    baseline = dataclasses.replace(cfg, model=plain, dropouts=(0.0,))
    dropout = dataclasses.replace(cfg, model=plain, dropouts=(rate,))
    return (config.grid(bn, n_train, num_classes, label="BatchNormNet")
            + config.grid(baseline, n_train, num_classes, label="BaselineNet")
            + config.grid(dropout, n_train, num_classes, label=f"DropoutNet p={rate:g}"))


def main(cfg: config.Config) -> None:
    if FLAGS["norm"].present or FLAGS["dropout"].present:
        raise config.ConfigError("--norm/--dropout: this study sets the architectures itself "
                                 "(BatchNormNet, BaselineNet, DropoutNet at --compare_dropout)")
    if not 0 < FLAGS.compare_dropout < 1:
        raise config.ConfigError(f"--compare_dropout={FLAGS.compare_dropout}: must be in (0, 1)")
    prepared = study.prepare(cfg)
    runs = model_runs(cfg, len(prepared.train_idx), prepared.dataset.num_classes, FLAGS.compare_dropout)
    st = study.open_study(cfg, "batchnorm")
    st.pending([(r.run_id, r.config) for r in runs])  # a changed config fails before anything is written
    study.write_preamble(st, cfg, runs, prepared, {"compare_dropout": FLAGS.compare_dropout})
    study.execute(st, runs, prepared, cfg)
    study.finish(st, runs, "BatchNormNet vs BaselineNet and DropoutNet")


if __name__ == "__main__":
    study.main(main)
