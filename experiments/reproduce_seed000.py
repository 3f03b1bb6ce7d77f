"""The whole seeds/000 report with one command: §1.1, §1.2, §2.1, §2.2, §3.1–3.3 and §3.4 in
order (each study reusing its finished runs), then one Markdown report with every figure, test
table and protocol. `--smoke` runs the same pipeline at toy size (the *_smoke flagfiles).

    python -m experiments.reproduce_seed000 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "Toy-size preset (the *_smoke flagfiles): the same code path in minutes on a CPU.")
flags.DEFINE_string("data_dir", None, "Passed to every study (default: $CIFAR_JAX_DATA_DIR, else ~/.cache/cifar_jax).")
flags.DEFINE_string("results_dir", "./results", "Root of the study directories and of the report.")
flags.DEFINE_string("dataset", None, "Override every study's dataset (e.g. synthetic for an offline demo).")
flags.DEFINE_list("only", [], "Run only these sections (e.g. 1.1,2.1); the report includes what exists.")

FLAGFILES = Path(__file__).parent / "flags"
# (section, title, experiment module, flagfile and study name stem)
SECTIONS = (
    ("1.1", "Learning rates", "lr_sweep", "lr_sweep"),
    ("1.2", "Learning-rate schedule", "lr_schedule", "lr_schedule"),
    ("2.1", "Dropout rates", "dropout_sweep", "dropout_sweep"),
    ("2.2", "Dropout and transfer learning", "transfer", "transfer"),
    ("3.1-3.3", "Gradient flow", "gradient_flow", "gradient_flow"),
    ("3.4", "BatchNormNet performance", "batchnorm", "batchnorm"),
)
TABLES = ("range_test.md", "test_table.md", "generalisation_gap.md", "transfer_comparison.md",
          "gradient_stats.md", "pretrain/test_table.md", "retrain/test_table.md")


def study_name(stem: str) -> str:
    return f"{stem}_smoke" if FLAGS.smoke else stem


def command(module: str, stem: str) -> list[str]:
    """The command line of one study, with the shared flags."""
    flagfile = FLAGFILES / f"{study_name(stem)}.flags"
    cmd = [sys.executable, "-m", f"experiments.{module}", f"--flagfile={flagfile}", f"--results_dir={FLAGS.results_dir}"]
    cmd += [f"--data_dir={FLAGS.data_dir}"] * bool(FLAGS.data_dir) + [f"--dataset={FLAGS.dataset}"] * bool(FLAGS.dataset)
    if module == "transfer":
        root = Path(FLAGS.results_dir)
        cmd += [f"--dropout_study={root / study_name('dropout_sweep')}", f"--baseline_study={root / study_name('lr_sweep')}"]
    return cmd


def run_section(section: str, title: str, module: str, stem: str) -> float:
    """Run one study as its own process (its flags are its own); returns the wall time."""
    print(f"\n=== §{section} {title}: {' '.join(command(module, stem)[1:])}", flush=True)
    t0 = time.perf_counter()
    result = subprocess.run(command(module, stem))
    if result.returncode:
        sys.exit(f"error: §{section} ({module}) failed with exit status {result.returncode}")
    return time.perf_counter() - t0


def protocol(study: Path) -> str:
    """The study's protocol: the flags it set away from their defaults (its protocol.flags, or
    its first part's for a study in parts, whose parts share the command line)."""
    paths = [study / "protocol.flags", *sorted(study.glob("*/protocol.flags"))]
    path = next((p for p in paths if p.exists()), None)
    return f"```\n{path.read_text().strip()}\n```\n" if path else ""


def section_markdown(section: str, title: str, study: Path, report_dir: Path, seconds: float | None) -> str:
    """One report section: protocol, tables and figures (copied beside the report)."""
    when = f"; this invocation took {seconds:.0f} s (finished runs are reused)" if seconds else ""
    out = [f"## §{section} {title}\n", f"Study directory: `{study}`{when}\n"]
    if not study.exists():
        return "\n".join(out + ["*Not run.*\n"])
    out.append("### Protocol\n" + protocol(study))
    for name in TABLES:
        if (study / name).exists():
            text = (study / name).read_text().strip()
            out.append(text.replace("# ", "#### ", 1) if text.startswith("# ") else text)
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
    known = {s[0] for s in SECTIONS}
    if set(FLAGS.only) - known:
        sys.exit(f"error: --only={','.join(FLAGS.only)}: sections are {', '.join(sorted(known))}")
    times = {}
    for section, title, module, stem in SECTIONS:
        if not FLAGS.only or section in FLAGS.only:
            times[section] = run_section(section, title, module, stem)
    root = Path(FLAGS.results_dir)
    report_dir = root / study_name("seed000_report")
    parts = [f"# Seed 000 reproduced{' (smoke preset: toy size, not the published protocol)' if FLAGS.smoke else ''}\n",
             "Each section: the protocol (flags), test tables (mean ± std across seeds) and figures.\n"]
    parts += [section_markdown(s, t, root / study_name(stem), report_dir, times.get(s)) for s, t, _, stem in SECTIONS]
    report_dir.mkdir(parents=True, exist_ok=True)
    tmp = report_dir / ".report.md.tmp"
    tmp.write_text("\n".join(parts))
    tmp.replace(report_dir / "report.md")
    print(f"\nreport: {report_dir / 'report.md'}  ({', '.join(f'§{k} {v:.0f} s' for k, v in times.items())})")


if __name__ == "__main__":
    app.run(main)
