"""The seeds/000 model family shared by the BatchNormNet and gradient-flow studies: BaselineNet,
DropoutNet (dropout on fc1 at --compare_dropout) and BatchNormNet, built from the validated flags.
BaselineNet (rate 0) and DropoutNet share one model, so one group; BatchNormNet is its own."""
from __future__ import annotations

import dataclasses

from cifar_jax.config.options import Option, table
from cifar_jax.study import config

OPTIONS = table(Option("compare_dropout", 0.6, "DropoutNet's dropout rate on fc1 (the best rate of §2.1).", low=0.0,
                       low_open=True, high=1.0, high_open=True))


def validate(cfg: config.Config) -> float:
    """The architectures are set here: refuse --norm/--dropout and several groups; return
    DropoutNet's rate."""
    cfg.single_group("this study sets its architectures itself")
    if cfg.changed("norm") or cfg.changed("dropout"):
        raise config.ConfigError("--norm/--dropout: this study sets the architectures itself "
                                 "(BaselineNet, DropoutNet at --compare_dropout, BatchNormNet)")
    return cfg.own.compare_dropout


def model_runs(cfg: config.Config, n_train: int, num_classes: int, rate: float) -> dict[str, list[config.Run]]:
    """Per model (BaselineNet, DropoutNet, BatchNormNet): its runs, every seed."""
    plain = dataclasses.replace(cfg.model, norm="none", use_dropout=True)
    batch = dataclasses.replace(cfg.model, norm="batch", use_dropout=False)
    configs = {"BaselineNet": ("BaselineNet", cfg.replace(model=plain, dropout=(0.0,))),
               "DropoutNet": (f"DropoutNet p={rate:g}", cfg.replace(model=plain, dropout=(rate,))),
               "BatchNormNet": ("BatchNormNet", cfg.replace(model=batch, dropout=(0.0,)))}
    return {model: config.grid(c, n_train, num_classes, label=label) for model, (label, c) in configs.items()}
