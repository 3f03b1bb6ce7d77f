"""seeds/000 §1.2: inverse-time LR decay α0/(1 + k·t) applied every epoch, against the best
static LR, both in one group (the schedule kind is a per-run value), plus the figure of decay
shapes over the training length used to choose it.

    python -m experiments.lr_schedule --flagfile=experiments/flags/lr_schedule.flags
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.plots import charts
from cifar_jax.study import cli, config, prepare, runner
from cifar_jax.training import schedules

OPTIONS = table(
    Option("compare_lr", 0.05, "The static LR to compare against (the best of §1.1); 0: none.", low=0.0),
    Option("shape_epochs", 50, "Length of the decay-shapes figure, in epochs.", kind="int", low=1),
)


def shape_curves(lr: float, epochs: int) -> dict[str, np.ndarray]:
    """Candidate decay shapes from α0 = lr over `epochs`, evaluated once per epoch."""
    t = np.arange(epochs)
    return {
        "inverse time, k = 0.25": schedules.lr_at("inverse_time", t, lr=lr, decay_rate=0.25),
        "inverse time, k = 1": schedules.lr_at("inverse_time", t, lr=lr, decay_rate=1.0),
        "exponential, γ = 0.95": schedules.lr_at("exponential", t, lr=lr, decay_rate=0.95),
        "step, ×0.5 every 10": schedules.lr_at("step", t, lr=lr, decay_rate=0.5, decay_every=10, staircase=1),
        "linear to 0": schedules.lr_at("linear", t, lr=lr, total_steps=epochs),
        "cosine to 0": schedules.lr_at("cosine", t, lr=lr, total_steps=epochs),
    }


def schedule_runs(cfg: config.Config, prepared: prepare.Prepared) -> list[config.Run]:
    """The scheduled runs, after the static-LR runs they are compared with (--compare_lr)."""
    n_train, classes = len(prepared.train_idx), prepared.dataset.num_classes
    label = cfg.schedule + (f" lr0={cfg.lrs[0]:g}" if len(cfg.lrs) == 1 else "") + (
        f" k={cfg.values('decay_rate')[0]:g}" if len(cfg.values("decay_rate")) == 1 and cfg.schedule != "constant" else "")
    runs = config.grid(cfg, n_train, classes, label=label)
    if cfg.own.compare_lr:
        static = cfg.replace(schedule="constant", lrs=(cfg.own.compare_lr,), decay_rate=(0.0,))
        runs = config.grid(static, n_train, classes, label=f"constant lr={cfg.own.compare_lr:g}") + runs
    return runs


def main(cfg: config.Config) -> None:
    """The scheduled and the static runs, after the figure of decay shapes."""
    epochs = cfg.own.shape_epochs

    def shapes_figure(st, prepared, runs) -> None:
        if runner.is_lead():
            schedule_shapes(shape_curves(max(cfg.lrs), epochs), st.figures_dir / "decay_shapes.png",
                            f"LR decay shapes from α0 = {max(cfg.lrs):g} over {epochs} epochs")

    runner.run(cfg, "lr_schedule", "LR schedule", lambda p: schedule_runs(cfg, p), before=shapes_figure,
               extra={"compare_lr": cfg.own.compare_lr})


# ----------------------------------------------------------------------------- figures

@charts.styled
def schedule_shapes(curves: dict[str, np.ndarray], path: Path | str, title: str, xlabel: str = "epoch") -> Path:
    """Learning rate vs epoch (x = 1..len) for several schedule shapes, one line each."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=np.float64)
        ax.plot(charts.epochs_axis(values), values, lw=2, label=name, **charts.line_style(i))
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("learning rate")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(frameon=False)
    return charts.save(fig, path)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
