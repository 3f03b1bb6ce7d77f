"""seeds/000 §3.4: BatchNormNet (batch norm after every layer but the last, no bias before a BN)
against BaselineNet and DropoutNet, trained in one study. BN changes the architecture, so it is
its own group; dropout is a per-run value, so BaselineNet (rate 0) and DropoutNet share a group.

    python -m experiments.batchnorm --flagfile=experiments/flags/batchnorm.flags

The three architectures are set here: --norm and --dropout are refused; --compare_dropout sets
DropoutNet's rate on fc1.
"""
from __future__ import annotations

from cifar_jax import config, study
from experiments import model_family


def main(cfg: config.Config) -> None:
    rate = model_family.validate()
    prepared = study.prepare(cfg)
    by_model = model_family.model_runs(cfg, len(prepared.train_idx), prepared.dataset.num_classes, rate)
    runs = [r for model in ("BatchNormNet", "BaselineNet", "DropoutNet") for r in by_model[model]]
    st = study.open_study(cfg, "batchnorm")
    st.pending([(r.run_id, r.config) for r in runs])  # a changed config fails before anything is written
    study.write_preamble(st, cfg, runs, prepared, {"compare_dropout": rate})
    study.execute(st, runs, prepared, cfg)
    study.finish(st, runs, "BatchNormNet vs BaselineNet and DropoutNet")


if __name__ == "__main__":
    study.main(main)
