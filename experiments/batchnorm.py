"""seeds/000 §3.4: BatchNormNet (batch norm after every layer but the last, no bias before a BN)
against BaselineNet and DropoutNet, trained in one study. BN changes the architecture, so it is
its own group; dropout is a per-run value, so BaselineNet (rate 0) and DropoutNet share a group.

    python -m experiments.batchnorm --flagfile=experiments/flags/batchnorm.flags

The three architectures are set here: --norm and --dropout are refused; --compare_dropout sets
DropoutNet's rate on fc1.
"""
from __future__ import annotations

from cifar_jax.study import cli, config, prepare, runner
from experiments import model_family

OPTIONS = model_family.OPTIONS


def main(cfg: config.Config) -> None:
    rate = model_family.validate(cfg)

    def runs(prepared: prepare.Prepared) -> list[config.Run]:
        by_model = model_family.model_runs(cfg, len(prepared.train_idx), prepared.dataset.num_classes, rate)
        return [r for model in ("BatchNormNet", "BaselineNet", "DropoutNet") for r in by_model[model]]

    runner.run(cfg, "batchnorm", "BatchNormNet vs BaselineNet and DropoutNet", runs, extra={"compare_dropout": rate})


if __name__ == "__main__":
    cli.main(main, OPTIONS)
