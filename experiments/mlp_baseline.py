"""seeds/002: a k-layer MLP with cyclic learning rates and L2, many seeds in one group, each
run printed in the report's "Model parameters / accuracy untrained, trained / cost" format.

    python -m experiments.mlp_baseline --flagfile=experiments/flags/seed002_mlp.flags
"""
from __future__ import annotations

import math

from absl import flags

from cifar_jax import config, results, run_record, study

flags.DEFINE_integer("cycles", 0, "Train for this many cyclic-LR cycles (2·n_s steps each); 0: use --epochs.")
FLAGS = flags.FLAGS
SPLIT_NAMES = {"train": "Training data", "val": "Validation data", "test": "Test data"}


def report(rec: dict, cycles: int) -> str:
    """One run in the seeds/002 report's format (cost = cross-entropy + λ·ΣW²)."""
    c = rec["config"]
    model = c["model"]
    params = [("hidden layers", tuple(model["hidden"])), ("BN", model["norm"] == "batch"),
              ("lambda", c["l2"]), ("cycles", cycles), ("n_s", int(c["half_cycle"])),
              ("n_batches", c["batch_size"]), ("eta_min", c["lr_min"]), ("eta_max", c["lr"]),
              ("initialization", model["init"] if model["init"] != "normal" else c["init_scale"]),
              ("dropout", c["dropout"]), ("seed", rec["seed"])]
    lines = ["Model parameters:"] + [f"   {k + ':':<20} {v}" for k, v in params]
    penalty = c["l2"] * rec.get("l2_penalty", float("nan"))
    for split, title in SPLIT_NAMES.items():
        untrained, trained = run_record.untrained(rec, split), run_record.final(rec, split)
        if untrained is None or trained is None:
            continue
        lines += ["", f"{title}:",
                  f"   {'accuracy (untrained):':<28} {100 * untrained['acc']:.2f}%",
                  f"   {'accuracy (trained):':<28} {100 * trained['acc']:.2f}%",
                  f"   {'cost (final):':<28} {trained['loss'] + penalty:.2f}"]
    return "\n".join(lines)


def mlp_runs(cfg: config.Config, prepared: study.Prepared) -> list[config.Run]:
    """The grid's runs, trained for --cycles cyclic-LR cycles when given (else --epochs)."""
    steps_per_epoch = len(prepared.train_idx) // cfg.batch_size
    if FLAGS.cycles:
        n_s = cfg.half_cycle or 5 * steps_per_epoch
        cfg = cfg.replace(epochs=math.ceil(FLAGS.cycles * 2 * n_s / steps_per_epoch))
    one = len(cfg.variants) == 1  # several groups are named by the values that vary
    label = "mlp_" + "-".join(map(str, cfg.model.hidden)) + ("_bn" if cfg.model.norm == "batch" else "") if one else ""
    return config.grid(cfg, len(prepared.train_idx), prepared.dataset.num_classes, label)


def print_runs(st: results.StudyDir, records: list[dict]) -> None:
    """Every run in the report's format, then each configuration's mean test accuracy."""
    for rec in records:
        study.log("\n" + report(rec, FLAGS.cycles))
    for name, s in results.summarize(records)["configs"].items():
        acc = s["metrics"]["test_acc"]
        if acc["mean"] is not None:
            study.log(f"{name}: mean test accuracy {100 * acc['mean']:.2f}% ± {100 * acc['std']:.2f} "
                      f"(95% CI {100 * acc['ci95'][0]:.2f}–{100 * acc['ci95'][1]:.2f}%, n={acc['n']})")


def main(cfg: config.Config) -> None:
    if FLAGS.cycles < 0:
        raise config.ConfigError(f"--cycles={FLAGS.cycles}: must be >= 0")
    study.run(cfg, "mlp_baseline", "MLP (seeds/002)", lambda p: mlp_runs(cfg, p), report=print_runs,
              extra={"cycles": FLAGS.cycles})


if __name__ == "__main__":
    study.main(main)
