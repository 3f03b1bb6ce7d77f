"""seeds/002's gradient check: for every MLP of --hidden × --norm, the relative error between the
autodiff gradient and centred finite differences, per layer for W, b and batch norm's γ and β, in
float64, on the first --check_samples training images reduced to their first --check_dims
(standardised) input dimensions; the loss is the training cost (cross-entropy + λ·ΣW², batch
statistics in train mode). Nothing is trained.

    python -m experiments.gradient_check --flagfile=experiments/flags/seed002_gradient_check.flags

Writes gradient_check.md (one table per net, as in the report) and gradient_check.json.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cifar_jax.config.options import Option, table
from cifar_jax.data import datasets, splits
from cifar_jax.io import environment
from cifar_jax.nn import models
from cifar_jax.results import studydir
from cifar_jax.study import cli, config, progress
from cifar_jax.training import gradcheck, optim

OPTIONS = table(
    Option("check_dims", 10, "Input dimensions kept (the first ones of each flattened image).", kind="int", low=1),
    Option("check_samples", 20, "Training images in the batch (two or more: batch norm).", kind="int", low=2),
    Option("check_h", 1e-6, "Step of the centred differences.", low=0.0, low_open=True),
)
TITLE = "Gradient check"
COLUMNS = (("W", "kernel", "fc"), ("b", "bias", "fc"), ("γ", "scale", "bn_fc"), ("β", "bias", "bn_fc"))


def batch(cfg: config.Config) -> tuple[np.ndarray, np.ndarray, int]:
    """The first samples of the training set, standardised (--normalization over the training
    split), flattened and cut to the first dims: float64 [samples, dims], labels, class count."""
    ds = datasets.load(cfg.dataset, cfg.data_dir, download=cfg.download)
    try:
        train_idx, _ = splits.make_split(len(ds.y_train), *cfg.split[:2], seed=cfg.split_seed)
    except ValueError as err:
        raise config.ConfigError(f"--split: {err}") from None
    mean, std = splits.norm_stats(ds.x_train, train_idx, cfg.normalization, cfg.zca_epsilon)
    idx = train_idx[:cfg.own.check_samples]
    x = ds.x_train[idx].astype(np.float64) / 255.0 - mean
    x = x.reshape(len(idx), -1) @ std if std.ndim == 2 else (x / std).reshape(len(idx), -1)  # a matrix: zca
    return x[:, :cfg.own.check_dims], ds.y_train[idx], ds.num_classes


def layer_errors(model: models.ModelConfig, x: np.ndarray, y: np.ndarray, l2: float, seed: int,
                 h: float) -> dict[str, float]:
    """Relative error per parameter tensor ("fc1/kernel", "bn_fc1/scale", ...) of one net."""
    net = models.build(model)
    with jax.enable_x64(True):
        x, y = jnp.asarray(x, jnp.float64), jnp.asarray(y)
        variables = jax.jit(lambda key: net.init(key, x[:1], train=False))(jax.random.PRNGKey(seed))
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), variables["params"])
        stats = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), variables.get("batch_stats", {}))

        def cost(p):
            logits, _ = net.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + l2 * optim.l2_penalty(p)

        return gradcheck.relative_errors(cost, params, h)


def markdown(nets: list[tuple[models.ModelConfig, dict[str, float]]], dims: int, samples: int) -> str:
    """One table per net: layer, nodes and the relative error of each of its tensors."""
    worst = max(e for _, errors in nets for e in errors.values())
    lines = [f"# {TITLE}: autodiff against centred differences (float64)", "",
             f"{samples} training images, their first {dims} input dimensions; relative error "
             "‖g_auto − g_num‖ / (‖g_auto‖ + ‖g_num‖) per tensor; a layer feeding batch norm has no bias.",
             f"Largest relative error over every net and tensor: **{worst:.3g}**.", ""]
    for model, errors in nets:
        widths = (*model.hidden, model.num_classes)
        shown = [c for c in COLUMNS if any(k.startswith(c[2]) and k.endswith("/" + c[1]) for k in errors)]
        lines += [f"## hidden {model.hidden}, {'BN' if model.norm == 'batch' else 'no BN'}", "",
                  "| layer | nodes | " + " | ".join(f"rel. error {c[0]}" for c in shown) + " |",
                  "|---:|---:|" + "---:|" * len(shown)]
        for i, width in enumerate(widths, 1):
            cells = [f"{errors[key]:.3g}" if (key := f"{c[2]}{i}/{c[1]}") in errors else "" for c in shown]
            lines.append(f"| {i} | {width} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(cfg: config.Config) -> None:
    """Every net's relative errors, as tables."""
    x, y, num_classes = batch(cfg)
    nets = []
    for variant in cfg.variants:
        model = dataclasses.replace(dict(variant)["model"], use_dropout=False, num_classes=num_classes)
        errors = layer_errors(model, x, y, cfg.values("l2")[0], cfg.seeds[0], cfg.own.check_h)
        nets.append((model, errors))
        progress.log(f"hidden {model.hidden}, norm {model.norm}: largest relative error {max(errors.values()):.3g}")
    st = studydir.StudyDir(Path(cfg.results_dir).expanduser() / (cfg.name or "gradient_check"))
    text = markdown(nets, x.shape[1], len(y))
    st.write_text("gradient_check.md", text)
    st.write_json("gradient_check.json", {"dims": x.shape[1], "samples": len(y), "h": cfg.own.check_h,
                                          "nets": [{"hidden": m.hidden, "norm": m.norm, "errors": e} for m, e in nets],
                                          "env": environment.environment()})
    progress.log("\n" + text + f"\nresults: {st.root}")


if __name__ == "__main__":
    cli.main(main, OPTIONS)
