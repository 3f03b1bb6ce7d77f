"""Any grid of configurations (every combination of the list-valued flags × seeds), for any model:
the MLPs of seeds/002-004, the ConvNet's learning-rate and batch-size effects (seeds/001), the
conv nets of seeds/004. Its analysis: every run in seeds/002's "Model parameters / accuracy
untrained, trained / cost" format (printed and in runs.txt), a table per configuration
(configs.md: eval-mode train, validation and test accuracy, best epochs, time per epoch, loss
noise, the seeds that ended at chance, and the configuration chosen by validation accuracy), per
configuration the cost, loss and accuracy curves, the configurations compared, and, when one
numeric option varies (e.g. --init_scale, --batch_size), accuracy against it with a line per
other configuration.

    python -m experiments.grid_study --flagfile=experiments/flags/seed002_mlp.flags
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from cifar_jax.config import options
from cifar_jax.config.options import Option, table
from cifar_jax.plots import charts, gradients
from cifar_jax.results import run_record, studydir, summary
from cifar_jax.study import cli, config, prepare, progress, runner

OPTIONS = table(
    Option("cycles", 0, "Train for this many cyclic-LR cycles (2·n_s steps each); 0: use --epochs.", kind="int", low=0),
    Option("title", "Grid study", "The study's title in its tables and figures.", kind="str"),
    Option("at_epochs", (), "Also tabulate train, validation and test accuracy at these epochs (test per epoch needs "
           "--eval_test), e.g. 1,2,5,10,20,50,100.", kind="int", many=True, low=1),
)
SPLIT_NAMES = {"train": "Training data", "val": "Validation data", "test": "Test data"}


def run_block(rec: dict, cycles: int) -> str:
    """One run in the seeds/002 report's format (cost = cross-entropy + λ·ΣW²)."""
    c = rec["config"]
    model = c["model"]
    params = [("hidden layers", tuple(model["hidden"])), ("BN", model["norm"] == "batch"),
              ("lambda", c["l2"]), ("cycles", cycles), ("n_s", int(c["half_cycle"])),
              ("n_batches", c["batch_size"]), ("eta_min", c["lr_min"]), ("eta_max", c["lr"]),
              ("initialization", model["init"] if model["init"] != "normal" else c["init_scale"]),
              ("dropout", c["dropout"]), ("seed", rec["seed"])]
    lines = ["Model parameters:"] + [f"   {k + ':':<20} {v}" for k, v in params]
    penalty = c["l2"] * run_record.number(rec.get("l2_penalty"))
    for split, title in SPLIT_NAMES.items():
        untrained, trained = run_record.untrained(rec, split), run_record.final(rec, split)
        if untrained is None or trained is None:
            continue
        lines += ["", f"{title}:",
                  f"   {'accuracy (untrained):':<28} {100 * untrained['acc']:.2f}%",
                  f"   {'accuracy (trained):':<28} {100 * trained['acc']:.2f}%",
                  f"   {'cost (final):':<28} {trained['loss'] + penalty:.2f}"]
    return "\n".join(lines)


def cycle_epochs(cfg: config.Config, cycles: int, n_train: int) -> int:
    """Epochs that make `cycles` cyclic-LR cycles (2·n_s steps each; n_s 5 epochs' worth when unset)."""
    steps_per_epoch = n_train // cfg.batch_size
    n_s = cfg.half_cycle or 5 * steps_per_epoch
    return math.ceil(cycles * 2 * n_s / steps_per_epoch)


def grid_runs(cfg: config.Config, prepared: prepare.Prepared, cycles: int) -> list[config.Run]:
    """The grid's runs, trained for `cycles` cyclic-LR cycles when given (else --epochs)."""
    if cycles:
        cfg = cfg.replace(epochs=cycle_epochs(cfg, cycles, len(prepared.train_idx)))
    fixed = len(cfg.variants) == 1 and len(cfg.lrs) == 1 and all(len(v) == 1 for _, v in cfg.per_run)
    # a configuration is named by the values that vary; with none varying, by its architecture
    label = (f"{cfg.model.name}_" + "-".join(map(str, cfg.model.hidden)) + ("_bn" if cfg.model.norm == "batch" else "")
             if fixed else "")
    return config.grid(cfg, len(prepared.train_idx), prepared.dataset.num_classes, label)


AXES = ("lr", *options.RUN, "batch_size", "clip_norm")  # the numeric options a figure can put on x
# every option that can be a grid axis: model, then group, then per-run options (configs.md's columns)
GRID_OPTIONS = {k: o for level in ("model", "group", "run") for k, o in config.CORE.items() if o.level == level}


def option_values(c: dict) -> dict[str, Any]:
    """Every grid option's value in a run's stored config (its default where the config leaves it
    out), and the learning rate."""
    return {"lr": c["lr"], **{k: c["model"].get(o.field or k, o.default) if o.level == "model" else c.get(k, o.default)
                              for k, o in GRID_OPTIONS.items()}}


def _cell(option: options.Option, value: Any) -> str:
    if option.kind == "widths":
        return f"({', '.join(map(str, value))})"
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def option_columns(rows: list[dict]) -> list[str]:
    """The options configs.md shows: those always shown (`Option.shown`) and those that vary."""
    return [k for k, o in GRID_OPTIONS.items() if o.shown or len({_cell(o, r["options"][k]) for r in rows}) > 1]


def varying_option(records: list[dict]) -> str | None:
    """The one numeric per-run option (or the learning rate) that takes several values within a
    configuration's line (the configurations that differ only in it), if exactly one does."""
    def spans(name: str) -> bool:
        lines: dict[str, set] = {}
        for r in records:
            line = ",".join(p for p in r["config_name"].split(",") if not p.startswith(f"{name}="))
            lines.setdefault(line, set()).add(r["config"].get(name))
        return any(len(values) > 1 for values in lines.values())
    names = [n for n in AXES if spans(n)]
    return names[0] if len(names) == 1 else None


def config_rows(records: list[dict]) -> list[dict]:
    """Per configuration: its architecture and settings, and accuracy statistics across its done seeds
    (train: the eval-mode pass when recorded, else the last epoch's running average)."""
    rows = []
    for name, group in run_record.group_by_config(records).items():
        c = group[0]["config"]
        done = [r for r in group if r["status"] == "done"]
        train = [(run_record.final(r, "train") or {}).get("acc", run_record.last(r, "train_acc")) for r in done]
        rows.append({"config": name, "options": option_values(c), "values": {n: c.get(n) or 0 for n in AXES},
                     "n_runs": len(group), "n_at_chance": sum(map(run_record.at_chance, done)),
                     "n_above_uniform": sum(map(run_record.worse_than_uniform, done)),
                     "n_diverged": sum(r["status"] == "diverged" for r in group),
                     "train_acc": summary.statistics(train),
                     "best_train_acc": summary.finite_statistics([run_record.best(r, "train_eval_acc", "train_acc") for r in done]),
                     "best_val_acc": summary.finite_statistics([run_record.best(r, "val_acc") for r in done]),
                     "final_train_loss": summary.finite_statistics([run_record.last(r, "train_loss") for r in done]),
                     "run_seconds": summary.finite_statistics([run_record.later_mean(r, "run_seconds") for r in done]),
                     "loss_noise": summary.finite_statistics([run_record.last(r, "loss_noise") for r in done]),
                     "b_simple_first": summary.finite_statistics([run_record.curve(r, "b_simple")[0] for r in done
                                                                  if len(run_record.curve(r, "b_simple"))]),
                     "b_simple_last": summary.finite_statistics([run_record.last(r, "b_simple") for r in done]),
                     **{f"{s}_acc": summary.finite_statistics([run_record.final(r, s)["acc"] for r in done
                                                               if run_record.final(r, s)]) for s in ("val", "test")}})
    return rows


def configs_markdown(rows: list[dict], title: str) -> str:
    """The report's table: one row per configuration, its options (`option_columns`) and
    accuracies mean ± std over seeds."""
    noise = any(r["b_simple_last"]["n"] for r in rows)  # --noise_scale was on
    shown = option_columns(rows)
    lines = [f"# {title}: accuracy per configuration (mean ± std over seeds)", "",
             "Final accuracies (train: the eval-mode pass over the training split when recorded), the best "
             "training and validation accuracy of any epoch, and the seeds that ended at chance (final test "
             "accuracy below 1/classes + 1 point: the net did not learn) or whose final training loss is above 1.1·ln(classes), "
             "worse than a uniform guess (it blew up, or started at a huge weight scale and is still far off); diverged "
             "runs (a value overflowed) count in n as not done."
             + (" B_simple: the gradient noise scale tr(Σ)/|G|² (McCandlish et al. 2018) of the first and the last "
                "epoch, the batch size above which larger batches stop paying in steps." if noise else ""), "",
             "| config | " + "".join(f"{GRID_OPTIONS[k].column or k} | " for k in shown)
             + "train acc (%) | val acc (%) | test acc (%) | best train (%) | best val (%) | s/epoch per run | loss noise | "
             + ("B_simple first → last | " if noise else "") + "at chance | loss > uniform | n |",
             "|:---|" + "".join(":---|" if GRID_OPTIONS[k].kind in ("widths", "choice", "str", "bool") else "---:|"
                                for k in shown)
             + "---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if noise else "") + "---:|---:|:---|"]
    for r in rows:
        cells = [_cell(GRID_OPTIONS[k], r["options"][k]) for k in shown]
        cells += [summary.format_stat(k, r[k]) for k in ("train_acc", "val_acc", "test_acc", "best_train_acc",
                                                         "best_val_acc")]
        cells += [_plain(r["run_seconds"], 2), _plain(r["loss_noise"], 3)]
        cells += [f"{_plain(r['b_simple_first'], 0)} → {_plain(r['b_simple_last'], 0)}"] if noise else []
        cells += [f"{r['n_at_chance']}/{r['test_acc']['n']}", f"{r['n_above_uniform']}/{r['test_acc']['n']}"]
        lines.append(f"| {r['config']} | " + " | ".join(cells)
                     + f" | {r['test_acc']['n']}/{r['n_runs']}" + (f", {r['n_diverged']} diverged" if r["n_diverged"] else "")
                     + " |")
    scored = [r for r in rows if r["val_acc"]["mean"] is not None]
    if len(scored) > 1:
        best = max(scored, key=lambda r: r["val_acc"]["mean"])
        lines += ["", f"Chosen by validation accuracy (final, mean over seeds): **{best['config']}**, validation "
                      f"{summary.format_stat('acc', best['val_acc'])}%, test {summary.format_stat('acc', best['test_acc'])}%"
                      + (f"; batch size {best['values']['batch_size']}, B_simple at the last epoch "
                         f"{_plain(best['b_simple_last'], 0)}." if noise else ".")]
    return "\n".join(lines) + "\n"


def _plain(stat: dict, digits: int) -> str:
    return "–" if stat["mean"] is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def at_epochs_markdown(records: list[dict], epochs: list[int], title: str) -> str:
    """Train (eval mode where recorded), validation and test accuracy at the chosen epochs, per
    configuration (mean ± std over seeds; – where that epoch was not evaluated)."""
    lines = [f"# {title}: accuracy (%) at chosen epochs (mean ± std over seeds)", "",
             "| config | split | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
             "|:---|:---|" + "---:|" * len(epochs)]
    for name, group in run_record.group_by_config(records).items():
        for split, keys in (("train", ("train_eval_acc", "train_acc")), ("val", ("val_acc",)), ("test", ("test_acc",))):
            key = next((k for k in keys if any(np.isfinite(run_record.curve(r, k)).any() for r in group)), None)
            if key is None:
                continue
            cells = []
            for e in epochs:
                values = [run_record.curve(r, key)[e - 1] for r in group if len(run_record.curve(r, key)) >= e]
                cells.append(summary.format_stat("acc", summary.finite_statistics(values)))
            lines.append(f"| {name} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def analyse(st: studydir.StudyDir, records: list[dict], cycles: int, title: str, at_epochs: tuple[int, ...] = ()) -> None:
    """Every run in the report's format, the configuration table, the curves of every configuration
    and, where one numeric option varies, accuracy against it."""
    blocks = [run_block(rec, cycles) for rec in records]
    st.write_text("runs.txt", "\n\n".join(f"run {r['run_id']}\n{b}" for r, b in zip(records, blocks)) + "\n")
    for block in blocks:
        progress.log("\n" + block)
    rows = config_rows(records)
    st.write_json("configs.json", rows)
    st.write_text("configs.md", configs_markdown(rows, title))
    for name, group in run_record.group_by_config(records).items():
        cost_loss_accuracy(group, st.figures_dir / f"cost_{studydir.run_file_stem(name)}.png", f"{title}: {name}")
    by_config = run_record.group_by_config(records)
    if len(by_config) > 1:
        training_comparison(by_config, st.figures_dir / "training_comparison.png",
                            f"{title}: training loss, training and validation accuracy")
    if any(r.get("grad_stats") for r in records):
        first = {name: group[0] for name, group in by_config.items() if group[0].get("grad_stats")}
        gradients.gradient_norms(first, st.figures_dir / "gradient_norms.png",
                                 f"{title}: gradient norm of each weight tensor per epoch (first seed)")
    if at_epochs:
        st.write_text("at_epochs.md", at_epochs_markdown(records, list(at_epochs), title))
    option = varying_option(records)
    if option == "batch_size":
        charts.accuracy_against(rows, option, st.figures_dir / "batch_size.png",
                                f"{title}: accuracy, time and loss noise against the batch size",
                                panels=charts.BATCH_PANELS)
    elif option:
        charts.accuracy_against(rows, option, st.figures_dir / f"accuracy_vs_{option}.png",
                                f"{title}: final accuracy against {option}")
        charts.accuracy_against(rows, option, st.figures_dir / f"best_vs_{option}.png",
                                f"{title}: best accuracy over the epochs and final loss against {option}",
                                panels=charts.BEST_PANELS)
    for r in rows:
        acc = r["test_acc"]
        if acc["mean"] is not None:
            progress.log(f"{r['config']}: mean test accuracy {100 * acc['mean']:.2f}% ± {100 * acc['std']:.2f} "
                         f"(95% CI {100 * acc['ci95'][0]:.2f}–{100 * acc['ci95'][1]:.2f}%, n={acc['n']})")


def main(cfg: config.Config) -> None:
    """The grid, trained, and its analysis."""
    own = cfg.own
    runner.run(cfg, "grid_study", own.title, lambda p: grid_runs(cfg, p, own.cycles),
               analysis=lambda st, records: analyse(st, records, own.cycles, own.title, own.at_epochs),
               extra={"cycles": own.cycles})


# ----------------------------------------------------------------------------- figures

@charts.styled
def cost_loss_accuracy(records: list[dict], path: Path | str, title: str) -> Path:
    """seeds/002's figure for the seeds of ONE configuration: cost (loss + λ·ΣW²), loss and
    accuracy per epoch, training (eval mode where recorded, else running averages) and
    validation; each seed thin, the mean of the non-diverged seeds bold."""
    train = "train_eval" if any(np.isfinite(run_record.curve(r, "train_eval_loss")).any() for r in records) else "train"
    panels = (("cost", "cost (loss + λ·ΣW²)"), ("loss", "cross-entropy loss"), ("acc", "accuracy (%)"))
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    for ax, (metric, label) in zip(axes, panels):
        for k, (prefix, name) in enumerate(((train, "training"), ("val", "validation"))):
            kept = []
            for rec in records:
                values = run_record.cost_curve(rec, prefix) if metric == "cost" else charts.plotted(rec, f"{prefix}_{metric}")
                values = charts.until_divergence(rec, values)
                if np.isfinite(values).any():
                    ax.plot(charts.epochs_axis(values), values, color=charts.PALETTE[k], lw=0.8, alpha=0.35)
                    if rec.get("status") != "diverged":
                        kept.append(values)
            if kept:
                mean, _ = charts.mean_std(kept)
                ax.plot(charts.epochs_axis(mean), mean, color=charts.PALETTE[k], lw=2.4, label=f"{name} (mean of {len(kept)})")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title + ("" if train == "train_eval" else " (training: running averages, train mode)"))
    charts.figure_legend(fig, axes, ncol=2)
    return charts.save(fig, path)


@charts.styled
def training_comparison(records_by_config: dict[str, list[dict]], path: Path | str, title: str,
                        smooth: int = 1) -> Path:
    """The optimiser-comparison figure: training loss per iteration (the --loss_every trace,
    else per epoch), training accuracy (eval mode where recorded) and validation accuracy per
    epoch; one line per configuration, the mean over its non-diverged seeds."""
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    traced = any(run_record.loss_trace(r).size for recs in records_by_config.values() for r in recs)
    train = "train_eval_acc" if any(np.isfinite(run_record.curve(r, "train_eval_acc")).any()
                                    for recs in records_by_config.values() for r in recs) else "train_acc"
    for i, (name, records) in enumerate(records_by_config.items()):
        kept = [r for r in records if charts.diverged_at(r) is None]
        style, diverged = charts.line_style(i), charts.diverged_epochs(records)
        label = f"{name} ({charts.diverged_note(diverged, len(records))})" if diverged else name
        if not kept:  # no line, but the legend says when its seeds diverged
            axes[0].plot([], [], lw=2, label=label, **style)
            continue
        if traced:
            every = kept[0]["config"].get("loss_every") or 1
            mean, _ = charts.mean_std([run_record.loss_trace(r) for r in kept])
            mean = charts.moving_average(mean, smooth)
            axes[0].plot(every * np.arange(1, len(mean) + 1), mean, lw=1.2, label=label, **style)
        else:
            mean, _ = charts.mean_std([run_record.curve(r, "train_loss") for r in kept])
            axes[0].plot(charts.epochs_axis(mean), mean, lw=2, label=label, **style)
        for ax, key in ((axes[1], train), (axes[2], "val_acc")):
            mean, _ = charts.mean_std([100 * run_record.curve(r, key) for r in kept])
            ax.plot(charts.epochs_axis(mean), mean, lw=2, marker="o", ms=3, label=label, **style)
    axes[0].set_xlabel("iteration" if traced else "epoch")
    axes[0].set_ylabel("training loss")
    axes[0].set_title("training loss" + (f" per iteration (moving average of {smooth})" if traced and smooth > 1
                                         else " per iteration" if traced else " per epoch (running average)"))
    for ax, what in ((axes[1], "training accuracy" + (" (eval mode)" if train == "train_eval_acc" else "")),
                     (axes[2], "validation accuracy")):
        ax.set_title(what)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return charts.save(fig, path, title=title, legend=axes, ncol=4)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
