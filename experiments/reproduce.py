"""A whole source report with one command: its studies in order (each reusing its finished runs,
each its own process with its own flagfile), then one Markdown report with every protocol,
table and figure, and the report's published numbers beside ours. `--smoke` runs the same
pipeline at toy size (the *_smoke flagfiles).

    python -m experiments.reproduce --report=seed000 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
    python -m experiments.reproduce --report=seed002 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
    python -m experiments.reproduce --report=seed003 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
    python -m experiments.reproduce --report=seed004 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags


@dataclasses.dataclass(frozen=True)
class Section:
    """One study of a report: its number, title, experiment module and flagfile / study name stem,
    and the report's published accuracies (%) per configuration name: (train, val, test)."""

    number: str
    title: str
    module: str
    stem: str
    published: dict[str, tuple[float | None, float | None, float | None]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Report:
    title: str
    sections: tuple[Section, ...]


# The tables a study writes, shown in this order where they exist.
TABLES = ("gradient_check.md", "lambda_search.md", "grid.md", "at_epochs.md", "configs.md", "range_test.md", "test_table.md",
          "generalisation_gap.md", "transfer_comparison.md", "gradient_stats.md", "pretrain/test_table.md",
          "retrain/test_table.md")
REPORTS = {
    "seed000": Report("Seed 000 (CNNs on CIFAR-10: learning rates, dropout, transfer, gradient flow, batch norm)", (
        Section("1.1", "Learning rates", "lr_sweep", "lr_sweep"),
        Section("1.2", "Learning-rate schedule", "lr_schedule", "lr_schedule"),
        Section("2.1", "Dropout rates", "dropout_sweep", "dropout_sweep"),
        Section("2.2", "Dropout and transfer learning", "transfer", "transfer"),
        Section("3.1-3.3", "Gradient flow", "gradient_flow", "gradient_flow"),
        Section("3.4", "BatchNormNet performance", "batchnorm", "batchnorm"),
    )),
    "seed002": Report("Seed 002 (k-layer MLPs with batch norm and cyclic learning rates on CIFAR-10)", (
        Section("1", "Gradient check", "gradient_check", "seed002_gradient_check"),
        Section("2", "2-layer and 9-layer networks, without and with batch norm", "mlp_baseline", "seed002_nets", {
            "hidden=50-50,norm=none": (58.72, 53.16, 53.36), "hidden=50-50,norm=batch": (61.63, 53.22, 53.37),
            "hidden=50-30-20-20-10-10-10-10,norm=none": (44.14, 40.74, 40.37),
            "hidden=50-30-20-20-10-10-10-10,norm=batch": (50.02, 43.74, 43.76)}),
        Section("3", "Coarse-to-fine search for λ", "lambda_search", "seed002_lambda", {
            "l2=0.1": (51.71, 49.50, 49.65), "l2=0.01": (58.00, 52.44, 52.05), "l2=0.001": (58.22, 51.16, 50.87),
            "l2=0.0001": (57.81, 50.96, 50.39), "l2=1e-05": (57.61, 50.20, 49.55),
            "norm=none": (58.80, 53.76, 53.58), "norm=batch": (62.24, 53.84, 52.87)}),
        Section("4", "Sensitivity to initialisation", "mlp_baseline", "seed002_init", {
            "norm=none,init_scale=0.1": (53.19, 50.72, 50.64), "norm=batch,init_scale=0.1": (57.70, 52.32, 51.99),
            "norm=none,init_scale=0.001": (10.06, 9.50, 10.00), "norm=batch,init_scale=0.001": (52.16, 48.00, 48.13),
            "norm=none,init_scale=0.0001": (10.06, 9.50, 10.00),
            "norm=batch,init_scale=0.0001": (52.00, 48.60, 47.76)}),
        Section("5.1", "Depth with batch norm", "mlp_baseline", "seed002_depth", {
            "hidden=60-50-40": (64.33, 54.60, 53.72), "hidden=80-70-60-50-40-30": (66.19, 56.30, 54.83),
            "hidden=120-110-100-90-80-70-60-50-40-30-20-10": (51.92, 46.36, 45.61)}),
        Section("5.2", "Dropout", "mlp_baseline", "seed002_dropout", {
            "norm=none": (32.18, 31.22, 31.74), "norm=batch": (48.70, 47.44, 47.07)}),
        Section("5.3", "Noise on the training inputs", "mlp_baseline", "seed002_noise", {
            "noise_std=0.01,salt_pepper=0": (55.81, 51.44, 50.86), "noise_std=0,salt_pepper=0.05": (55.51, 51.68, 50.67)}),
        Section("5.4", "The final model", "mlp_baseline", "seed002_final", {
            "mlp_80-70-60-50-40-30_bn": (65.87, 56.36, 55.13)}),
    )),
    "seed003": Report("Seed 003, MLP part (learning rate, epochs, batch norm, batch size, depth × width, "
                      "gradient clipping)", (
        Section("6.1.1", "Learning rate too high and too low", "mlp_baseline", "seed003_lr"),
        Section("6.1.2", "The number of epochs", "mlp_baseline", "seed003_epochs"),
        Section("6.1.3", "Batch normalisation", "mlp_baseline", "seed003_bn"),
        Section("6.1.4", "Batch size: accuracy, time, stability", "mlp_baseline", "seed003_batch_size"),
        Section("6.1.5", "Gradient magnitude per layer, without and with clipping", "mlp_baseline", "seed003_clip"),
        Section("6.2", "Depth × width", "mlp_grid", "seed003_grid"),
    )),
    "seed004": Report("Seed 004, fully connected part (CS231n-style nets on CIFAR-10 subsets: optimisers, "
                      "normalisation, weight scale, dropout)", (
        Section("1.1", "Overfitting 50 images: learning rate × weight scale", "mlp_baseline", "seed004_overfit"),
        Section("1.2", "Optimisers", "mlp_baseline", "seed004_optimizers"),
        Section("2.1", "Batch norm, layer norm, none", "mlp_baseline", "seed004_norms"),
        Section("2.2", "Batch size with batch norm and layer norm", "mlp_baseline", "seed004_batch_size"),
        Section("2.3", "Weight-scale sensitivity", "mlp_baseline", "seed004_weight_scale"),
        Section("4", "Dropout: keep 1.0 against 0.25", "mlp_baseline", "seed004_dropout"),
    )),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("report", "seed000", list(REPORTS), "Which source report to reproduce.")
flags.DEFINE_bool("smoke", False, "Toy-size preset (the *_smoke flagfiles): the same code path in minutes on a CPU.")
flags.DEFINE_string("data_dir", None, "Passed to every study (default: $CIFAR_JAX_DATA_DIR, else ~/.cache/cifar_jax).")
flags.DEFINE_string("results_dir", "./results", "Root of the study directories and of the report.")
flags.DEFINE_string("dataset", None, "Override every study's dataset (e.g. synthetic for an offline demo).")
flags.DEFINE_list("only", [], "Run only these sections (e.g. 1.1,2.1); the report includes what exists.")

FLAGFILES = Path(__file__).parent / "flags"


def study_name(stem: str) -> str:
    return f"{stem}_smoke" if FLAGS.smoke else stem


def command(section: Section) -> list[str]:
    """The command line of one study, with the shared flags."""
    flagfile = FLAGFILES / f"{study_name(section.stem)}.flags"
    cmd = [sys.executable, "-m", f"experiments.{section.module}", f"--flagfile={flagfile}",
           f"--results_dir={FLAGS.results_dir}"]
    cmd += [f"--data_dir={FLAGS.data_dir}"] * bool(FLAGS.data_dir) + [f"--dataset={FLAGS.dataset}"] * bool(FLAGS.dataset)
    if section.module == "transfer":
        root = Path(FLAGS.results_dir)
        cmd += [f"--dropout_study={root / study_name('dropout_sweep')}", f"--baseline_study={root / study_name('lr_sweep')}"]
    return cmd


def run_section(section: Section) -> float:
    """Run one study as its own process (its flags are its own); returns the wall time."""
    print(f"\n=== §{section.number} {section.title}: {' '.join(command(section)[1:])}", flush=True)
    t0 = time.perf_counter()
    result = subprocess.run(command(section))
    if result.returncode:
        sys.exit(f"error: §{section.number} ({section.module}) failed with exit status {result.returncode}")
    return time.perf_counter() - t0


def protocol(study: Path) -> str:
    """The study's protocol: the flags it set away from their defaults (its protocol.flags, or
    its first part's for a study in parts, whose parts share the command line)."""
    paths = [study / "protocol.flags", *sorted(study.glob("*/protocol.flags"))]
    path = next((p for p in paths if p.exists()), None)
    return f"```\n{path.read_text().strip()}\n```\n" if path else ""


def _pct(stat: dict | None) -> str:
    return "–" if not stat or stat.get("mean") is None else f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def published_table(section: Section, study: Path) -> str:
    """Ours (mean ± std over seeds; train in eval mode) beside the report's numbers, per
    configuration the report has, from the study's configs.json (every part's, for a study in parts)."""
    if not section.published:
        return ""
    rows = {}
    for path in [study / "configs.json", *sorted(study.glob("*/configs.json"))]:
        if path.exists():
            rows.update({r["config"]: r for r in json.loads(path.read_text())})
    lines = ["#### Ours against the report (accuracy, %)", "",
             "| config | train (ours) | train (report) | val (ours) | val (report) | test (ours) | test (report) |",
             "|:---|---:|---:|---:|---:|---:|---:|"]
    for name, numbers in section.published.items():
        ours = rows.get(name, {})
        cells = [c for split, ref in zip(("train", "val", "test"), numbers)
                 for c in (_pct(ours.get(f"{split}_acc")), "–" if ref is None else f"{ref:.2f}")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def section_markdown(section: Section, study: Path, report_dir: Path, seconds: float | None) -> str:
    """One report section: protocol, ours against the published numbers, tables and figures
    (copied beside the report)."""
    when = f"; this invocation took {seconds:.0f} s (finished runs are reused)" if seconds else ""
    out = [f"## §{section.number} {section.title}\n", f"Study directory: `{study}`{when}\n"]
    if not study.exists():
        return "\n".join(out + ["*Not run.*\n"])
    out.append("### Protocol\n" + protocol(study))
    if section.published:
        out.append(published_table(section, study))
    for name in TABLES:
        if (study / name).exists():
            text = (study / name).read_text().strip()  # its headings go three levels down, under the section's
            out.append("\n".join("###" + line if line.startswith("#") else line for line in text.splitlines()))
            out.append("")
    figures = sorted(study.glob("figures/*.png")) + sorted(study.glob("*/figures/*.png"))
    for fig in figures:
        rel = fig.relative_to(study)
        dest = report_dir / "figures" / f"{study.name}__{str(rel).replace('/', '__')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fig, dest)
        out.append(f"![{rel}](figures/{dest.name})\n")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])!r}")
    report = REPORTS[FLAGS.report]
    known = {s.number for s in report.sections}
    if set(FLAGS.only) - known:
        sys.exit(f"error: --only={','.join(FLAGS.only)}: the sections of {FLAGS.report} are {', '.join(sorted(known))}")
    times = {}
    for section in report.sections:
        if not FLAGS.only or section.number in FLAGS.only:
            times[section.number] = run_section(section)
    root = Path(FLAGS.results_dir)
    report_dir = root / study_name(f"{FLAGS.report}_report")
    parts = [f"# {report.title} reproduced{' (smoke preset: toy size, not the published protocol)' if FLAGS.smoke else ''}\n",
             "Each section: the protocol (flags), our numbers beside the report's where it gives them, "
             "tables (mean ± std across seeds) and figures.\n"]
    parts += [section_markdown(s, root / study_name(s.stem), report_dir, times.get(s.number)) for s in report.sections]
    report_dir.mkdir(parents=True, exist_ok=True)
    tmp = report_dir / ".report.md.tmp"
    tmp.write_text("\n".join(parts))
    tmp.replace(report_dir / "report.md")
    print(f"\nreport: {report_dir / 'report.md'}  ({', '.join(f'§{k} {v:.0f} s' for k, v in times.items())})")


if __name__ == "__main__":
    app.run(main)
