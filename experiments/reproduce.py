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
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from typing import Any

from absl import app, flags

from cifar_jax.config import options
from cifar_jax.config.options import Option
from cifar_jax.config.registry import ConfigError
from experiments import claims, verdicts


@dataclasses.dataclass(frozen=True)
class Published:
    """One table of a source report's numbers: what it is, the part of the study it is compared
    with ("" for the study's own runs), its accuracies (%) per configuration: (train, val, test),
    None where not given, and whether the verdict summary counts it (not when it repeats numbers
    beside a variant of ours: another init, our own λ, a probe)."""

    label: str
    part: str
    numbers: dict[str, tuple[float | None, float | None, float | None]]
    counted: bool = True  # False: the same numbers again beside a variant of ours (not counted in the summary)


@dataclasses.dataclass(frozen=True)
class Section:
    """One study of a report: its number, title, experiment module and flagfile / study name stem,
    the source's published tables, the sizes of the source's train / val / test sets (for the
    tolerance of its numbers), the protocol choices made where the source is ambiguous, and what
    the full-protocol run showed where words must say it (a probe's conclusion)."""

    number: str
    title: str
    module: str
    stem: str
    published: tuple[Published, ...] = ()
    n_source: tuple[int, int, int] = (45_000, 5_000, 10_000)
    choices: str = ""
    findings: str = ""  # what a run at full protocol showed, in words (a probe's conclusion)


@dataclasses.dataclass(frozen=True)
class Report:
    """A source report: its title, its studies in order, the points every tolerance adds for the
    data copy (and why), and the claims of its text (experiments.claims)."""

    title: str
    sections: tuple[Section, ...]
    margin: float
    margin_why: str
    claims: tuple[claims.Claim, ...]


# The tables a study writes, shown in this order where they exist.
TABLES = ("model.md", "ladder.md", "gradient_check.md", "lambda_search.md", "grid.md", "at_epochs.md", "configs.md", "range_test.md",
          "test_table.md", "generalisation_gap.md", "transfer_comparison.md", "baselines.md", "gradient_stats.md",
          "pretrain/test_table.md", "retrain/test_table.md")
# Figures of one configuration each (left out of a report unless --config_figures).
CONFIG_FIGURES = ("curves_", "cost_")


def _section(s: dict) -> Section:
    published = tuple(Published(t["label"], t.get("part", ""),
                                {k: tuple(None if x < 0 else x for x in v) for k, v in t["numbers"].items()},
                                t.get("counted", True))
                      for t in s.get("published", []))
    return Section(s["number"], s["title"], s["module"], s["stem"], published,
                   tuple(s.get("n_source", Section.n_source)), s.get("choices", "").strip(), s.get("findings", "").strip())


def load_reports(path: Path = Path(__file__).with_name("reports.toml")) -> dict[str, Report]:
    """The reports declared in reports.toml (a published accuracy below 0 means not given)."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    return {name: Report(r["title"], tuple(map(_section, r["sections"])), float(r["margin"]), r["margin_why"].strip(),
                         claims.CLAIMS.get(name, ())) for name, r in raw.items()}


REPORTS = load_reports()

OPTIONS = options.table(
    Option("report", "seed000", "Which source report to reproduce.", kind="choice", choices=tuple(REPORTS)),
    Option("smoke", False, "Toy-size preset (the *_smoke flagfiles): the same code path in minutes on a CPU.",
           kind="bool"),
    Option("data_dir", None, "Passed to every study (default: $CIFAR_JAX_DATA_DIR, else ~/.cache/cifar_jax).",
           kind="str"),
    Option("results_dir", "./results", "Root of the study directories and of the report.", kind="str"),
    Option("dataset", None, "Override every study's dataset (e.g. synthetic for an offline demo).", kind="str"),
    Option("only", (), "Run only these sections (e.g. 1.1,2.1); the report includes what exists.", kind="str",
           many=True),
    Option("assemble_only", False, "Train nothing: write the report from the study directories as they are (e.g. "
           "records brought back from another machine).", kind="bool"),
    Option("config_figures", False, "Also put every per-configuration figure (curves_*, cost_*) in the report; by "
           "default only the comparison figures, the others staying in each study's figures/.", kind="bool"),
)
FLAGFILES = Path(__file__).parent / "flags"


def study_name(stem: str, smoke: bool) -> str:
    return f"{stem}_smoke" if smoke else stem


def command(section: Section, opts: Any) -> list[str]:
    """The command line of one study, with the shared flags (`opts`: this driver's options)."""
    flagfile = FLAGFILES / f"{study_name(section.stem, opts.smoke)}.flags"
    cmd = [sys.executable, "-m", f"experiments.{section.module}", f"--flagfile={flagfile}",
           f"--results_dir={opts.results_dir}"]
    cmd += [f"--data_dir={opts.data_dir}"] * bool(opts.data_dir) + [f"--dataset={opts.dataset}"] * bool(opts.dataset)
    if section.module == "transfer":
        root = Path(opts.results_dir)
        cmd += [f"--dropout_study={root / study_name('dropout_sweep', opts.smoke)}",
                f"--baseline_study={root / study_name('lr_sweep', opts.smoke)}"]
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


def run_section(section: Section, opts: Any) -> float:
    """Run one study as its own process (its flags are its own); returns the wall time."""
    print(f"\n=== §{section.number} {section.title}: {' '.join(command(section, opts)[1:])}", flush=True)
    t0 = time.perf_counter()
    status = run_child(command(section, opts))
    if status in (130, 143):  # the study said what it kept; the rest of the report is not written
        print(f"reproduce --report={opts.report}: stopped in §{section.number}; run the same command again "
              "to resume", file=sys.stderr, flush=True)
        sys.exit(status)
    if status:
        sys.exit(f"error: §{section.number} ({section.module}) failed with exit status {status}")
    return time.perf_counter() - t0


MACHINE_PATHS = ("--data_dir=", "--results_dir=")  # where this machine keeps things: not part of a protocol


def protocol(study: Path) -> str:
    """The study's protocol: the flags it set away from their defaults (its protocol.flags, or
    its first part's for a study in parts, whose parts share the command line), without the flags
    that only say where this machine keeps its data and results."""
    paths = [study / "protocol.flags", *sorted(study.glob("*/protocol.flags"))]
    path = next((p for p in paths if p.exists()), None)
    if not path:
        return ""
    lines = [line for line in path.read_text().strip().splitlines() if not line.startswith(MACHINE_PATHS)]
    return "```\n" + "\n".join(lines) + "\n```\n"


def published_tables(section: Section, ev: verdicts.Evidence) -> tuple[str, list[dict]]:
    """Ours (mean ± std over seeds; train in eval mode where recorded) beside each published table,
    with Δ, tolerance and verdict; and the rows the verdict summary counts."""
    out, every = [], []
    for table in section.published:
        study = f"{section.stem}/{table.part}" if table.part else section.stem
        rows = verdicts.published_rows(ev, study, table.numbers, section.n_source)
        every += rows if table.counted else []
        where = f" (our part `{table.part}`)" if table.part else ""
        out += [f"#### {table.label}{where}\n", verdicts.published_markdown(rows)]
    return "\n".join(out), every


def section_markdown(section: Section, study: Path, report_dir: Path, seconds: float | None,
                     ev: verdicts.Evidence, config_figures: bool = False) -> str:
    """One report section: protocol, the choices made, ours against the published numbers, tables
    and figures (copied beside the report)."""
    when = f"; this invocation took {seconds:.0f} s (finished runs are reused)" if seconds else ""
    out = [f"## §{section.number} {section.title}\n", f"Study directory: `<results_dir>/{study.name}`{when}\n"]
    out += ["### Protocol\n" + protocol(study)] if protocol(study) else []
    if section.choices:
        out.append("### Protocol choices\n\n" + section.choices + "\n")
    if section.published:
        out.append("### Ours against the report\n\n" + published_tables(section, ev)[0])
    if section.findings:
        out.append("### What the full-protocol run shows\n\n" + section.findings + "\n")
    for name in TABLES:
        if (study / name).exists():
            text = (study / name).read_text().strip()  # its headings go three levels down, under the section's
            out.append("\n".join("###" + line if line.startswith("#") else line for line in text.splitlines()))
            out.append("")
    figures = sorted(study.glob("figures/*.png")) + sorted(study.glob("*/figures/*.png"))
    left = [f for f in figures if f.name.startswith(CONFIG_FIGURES)] if not config_figures else []
    for fig in (f for f in figures if f not in left):
        rel = fig.relative_to(study)
        dest = report_dir / "figures" / f"{study.name}__{str(rel).replace('/', '__')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fig, dest)
        out.append(f"![{rel}](figures/{dest.name})\n")
    if left:
        out.append(f"{len(left)} per-configuration figures (curves_*, cost_*) stay in the study's figures/ "
                   "(`--config_figures` puts them here).\n")
    return "\n".join(out)


def verdict_markdown(report: Report, ev: verdicts.Evidence) -> str:
    """The report's opening: how many published numbers lie within their tolerance (and what the
    tolerance is), and each claim of the source's text with its verdict and the numbers behind it."""
    rows = [r for s in report.sections for r in published_tables(s, ev)[1]]
    counted = verdicts.count(rows)
    found = [(c, c.rule(ev)) for c in report.claims]
    tally = {v: sum(f.verdict == v for _, f in found) for v in (verdicts.HOLDS, verdicts.FAILS, verdicts.NOT_RUN)}
    out = ["## Verdicts\n"]
    if rows:
        out.append(f"**Published numbers: {counted[verdicts.WITHIN]} of {len(rows)} within tolerance**, "
                   f"{counted[verdicts.OUTSIDE]} outside, {counted[verdicts.NOT_RUN]} not run. "
                   f"The tolerance of a published accuracy p (%) is {report.margin:g} point(s) + 2·√(s² + p(100 − p)/N): "
                   f"{report.margin_why} s is our standard deviation across seeds (a single run of the source "
                   "spreads as much) and N the size of the set the source measured on (its own draw of a "
                   "validation or test set adds binomial error). Δ is ours − published. The same numbers beside "
                   "variants of ours (another init, our own λ, the probes) are judged in their sections and not "
                   "counted here.\n")
    else:
        out.append("The source report publishes no accuracy table; its claims are judged below.\n")
    out.append(f"**Claims of the report's text: {tally[verdicts.HOLDS]} hold, {tally[verdicts.FAILS]} do not, "
               f"{tally[verdicts.NOT_RUN]} not run.** Each is decided by a rule over our records "
               "(experiments/claims.py).\n")
    out += ["| § | claim (the source) | verdict | ours |", "|:---|:---|:---|:---|"]
    out += [f"| {c.section} | {c.text} | {f.verdict} | {f.evidence} |".replace("\n", " ") for c, f in found]
    return "\n".join(out) + "\n"


def main(opts: Any) -> None:
    """The report's studies in order (those of --only), then its report.md."""
    report = REPORTS[opts.report]
    known = {s.number for s in report.sections}
    if set(opts.only) - known:
        sys.exit(f"error: --only={','.join(opts.only)}: the sections of {opts.report} are {', '.join(sorted(known))}")
    times = {}
    for section in report.sections:
        if not opts.assemble_only and (not opts.only or section.number in opts.only):
            times[section.number] = run_section(section, opts)
    root = Path(opts.results_dir)
    report_dir = root / study_name(f"{opts.report}_report", opts.smoke)
    write_report(report, root, report_dir, times, opts.smoke, opts.config_figures)
    print(f"\nreport: {report_dir / 'report.md'}  ({', '.join(f'§{k} {v:.0f} s' for k, v in times.items())})")


def _entry(argv: list[str]) -> None:
    """The program: absl's parsed flags → this driver's options → `main`."""
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])!r}")
    try:
        opts = options.namespace("Reproduce", OPTIONS, options.values(OPTIONS, flags.FLAGS))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main(opts)


def write_report(report: Report, root: Path, report_dir: Path, times: dict[str, float], smoke: bool = False,
                 config_figures: bool = False) -> Path:
    """report.md from the study directories under `root` (the *_smoke ones with `smoke`): the
    verdicts, then every section that has run (the others named at the top)."""
    suffix = "_smoke" if smoke else ""
    shutil.rmtree(report_dir / "figures", ignore_errors=True)  # copies of the studies' figures, made anew
    ev = verdicts.Evidence.load(root, [s.stem for s in report.sections], suffix, report.margin)
    ran = [s for s in report.sections if (root / f"{s.stem}{suffix}").is_dir()]
    missing = [s for s in report.sections if s not in ran]
    parts = [f"# {report.title} reproduced{' (smoke preset: toy size, not the published protocol)' if smoke else ''}\n",
             f"This report holds §{', §'.join(s.number for s in ran) or ' none'}"
             + (f"; §{', §'.join(s.number for s in missing)} {('has', 'have')[len(missing) > 1]} not run here and "
                f"{('is', 'are')[len(missing) > 1]} left out" if missing else "")
             + ". Each section: the protocol (flags), the choices made where the source is ambiguous, our numbers "
             "beside the report's with their difference and verdict, tables (mean ± std across seeds) and figures.\n",
             verdict_markdown(report, ev)]
    parts += [section_markdown(s, root / f"{s.stem}{suffix}", report_dir, times.get(s.number), ev, config_figures)
              for s in ran]
    report_dir.mkdir(parents=True, exist_ok=True)
    tmp = report_dir / ".report.md.tmp"
    tmp.write_text("\n".join(parts))
    return tmp.replace(report_dir / "report.md")


if __name__ == "__main__":
    options.define(OPTIONS.values(), flags.FLAGS)
    try:
        app.run(_entry)
    except KeyboardInterrupt:  # between two studies: each finished study is kept
        print("reproduce: interrupted (Ctrl-C); run the same command again to resume", file=sys.stderr)
        sys.exit(130)
