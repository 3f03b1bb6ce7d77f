"""A whole source report with one command: its studies in order (each reusing its finished runs,
each its own process with its own flagfile), then one Markdown report with every protocol,
table and figure, and the report's published numbers beside ours. The reports, their sections
and the published numbers are declared in experiments/reports.toml. `--smoke` runs the same
pipeline at toy size (the *_smoke flagfiles).

    python -m experiments.reproduce --report=seed000 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
    python -m experiments.reproduce --report=seed001 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
    python -m experiments.reproduce --report=seed002 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
    python -m experiments.reproduce --report=seed003 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
    python -m experiments.reproduce --report=seed004 --data_dir=$HOME/.cache/cifar10-shared [--smoke]
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
import tomllib
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
    """A source report: its title and its studies in order (declared in reports.toml)."""

    title: str
    sections: tuple[Section, ...]


# The tables a study writes, shown in this order where they exist.
TABLES = ("model.md", "ladder.md", "gradient_check.md", "lambda_search.md", "grid.md", "at_epochs.md", "configs.md", "range_test.md",
          "test_table.md", "generalisation_gap.md", "transfer_comparison.md", "baselines.md", "gradient_stats.md",
          "pretrain/test_table.md", "retrain/test_table.md")


def load_reports(path: Path = Path(__file__).with_name("reports.toml")) -> dict[str, Report]:
    """The reports declared in reports.toml (a published accuracy below 0 means not given)."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    return {name: Report(report["title"], tuple(
        Section(s["number"], s["title"], s["module"], s["stem"],
                {k: tuple(None if x < 0 else x for x in v) for k, v in s.get("published", {}).items()})
        for s in report["sections"])) for name, report in raw.items()}


REPORTS = load_reports()

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The driver's flags, defined when it runs as a program (not on import: several of its names
    are core study flags, which a process importing this module may define too)."""
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


def run_child(cmd: list[str]) -> int:
    """Run a study's process to its end and return its exit status. A Ctrl-C reaches it too (one
    process group) and a SIGTERM is passed on to it; either way this waits while the study stops
    itself cleanly (saying what it kept), instead of killing it mid-write."""
    child = subprocess.Popen(cmd)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.terminate())
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_section(section: Section) -> float:
    """Run one study as its own process (its flags are its own); returns the wall time."""
    print(f"\n=== §{section.number} {section.title}: {' '.join(command(section)[1:])}", flush=True)
    t0 = time.perf_counter()
    status = run_child(command(section))
    if status in (130, 143):  # the study said what it kept; the rest of the report is not written
        print(f"reproduce --report={FLAGS.report}: stopped in §{section.number}; run the same command again "
              "to resume", file=sys.stderr, flush=True)
        sys.exit(status)
    if status:
        sys.exit(f"error: §{section.number} ({section.module}) failed with exit status {status}")
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
    define_flags()
    try:
        app.run(main)
    except KeyboardInterrupt:  # between two studies: each finished study is kept
        print("reproduce: interrupted (Ctrl-C); run the same command again to resume", file=sys.stderr)
        sys.exit(130)
