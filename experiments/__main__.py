"""Every experiment with its purpose and flagfiles: `./launch.sh list` (or `python -m experiments`).

An experiment is a module of this folder that runs as a program (`if __name__ == "__main__":`);
its purpose is its docstring's first sentence (cut to one line in the listing). Flagfiles do not name their module, so they are
assigned by name: `<stem>.flags` and `<stem>_*.flags` (the smoke and long variants) belong to the
module of the reports.toml section with that stem, or to the module named `<stem>` (the seeds/000
presets, lr_landscape); the longest stem wins. A protocol flagfile that no name assigns (e.g.
seed001_convnet, seed002_mlp) is listed as shared by every experiment whose flagfiles include it
(--flagfile=..., directly or through another), and so are its own `_*` variants. Read from the
files alone: nothing is imported, no flag is defined.
"""
from __future__ import annotations

import ast
import dataclasses
import re
import sys
import textwrap
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGFILE_DIR = HERE / "flags"
_MAIN = re.compile(r'^if __name__ == "__main__":', re.M)
_INCLUDE = re.compile(r"^\s*--flagfile=(\S+)", re.M)
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)\.(?=\s|$)")


@dataclasses.dataclass
class Experiment:
    """One experiment: its module name, purpose, own flagfiles and the shared protocol flagfiles
    its flagfiles include (flagfile stems, sorted)."""

    name: str
    purpose: str
    flagfiles: list[str] = dataclasses.field(default_factory=list)
    shared: list[str] = dataclasses.field(default_factory=list)


def purpose(docstring: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join((docstring or "").strip().split("\n\n")[0].split())
    end = _SENTENCE_END.search(paragraph)
    return paragraph[:end.end()] if end else paragraph


def _stem_modules(modules: list[str], reports: Path) -> dict[str, str]:
    """Flagfile stem → module: each reports.toml section's, and every module's own name."""
    with open(reports, "rb") as f:
        raw = tomllib.load(f)
    stems = {m: m for m in modules}
    stems.update((s["stem"], s["module"]) for report in raw.values() for s in report.get("sections", []))
    return stems


def _prefix_match(name: str, stems: dict[str, object]) -> object | None:
    """The value of the longest stem that is `name` or begins it followed by '_'."""
    found = [s for s in stems if name == s or name.startswith(f"{s}_")]
    return stems[max(found, key=len)] if found else None


def catalog(folder: Path = HERE, flags_dir: Path = FLAGFILE_DIR) -> tuple[list[Experiment], list[str]]:
    """The experiments in name order, and the flagfile stems no experiment could be given."""
    experiments = {}
    for path in sorted(folder.glob("[a-z]*.py")):
        source = path.read_text(encoding="utf-8")
        if _MAIN.search(source):
            experiments[path.stem] = Experiment(path.stem, purpose(ast.get_docstring(ast.parse(source))))
    stems = _stem_modules(list(experiments), folder / "reports.toml")
    files = {p.stem: p for p in sorted(flags_dir.glob("*.flags"))}
    includes = {name: [Path(m).stem for m in _INCLUDE.findall(p.read_text(encoding="utf-8"))]
                for name, p in files.items()}
    own = {name: m for name in files if (m := _prefix_match(name, stems)) in experiments}
    shared: dict[str, set[str]] = {}
    for name, module in own.items():
        todo = list(includes[name])
        while todo:
            inc = todo.pop()
            if inc in files and inc not in own and module not in shared.setdefault(inc, set()):
                shared[inc].add(module)
                todo += includes[inc]
    for name in files:
        if name not in own and name not in shared:
            shared[name] = set(_prefix_match(name, {s: shared[s] for s in list(shared)}) or ())
    for name, module in own.items():
        experiments[module].flagfiles.append(name)
    for name, modules in shared.items():
        for module in modules:
            experiments[module].shared.append(name)
    for e in experiments.values():
        e.shared.sort()
    return list(experiments.values()), sorted(n for n in files if n not in own and not shared.get(n))


def _names(stems: list[str]) -> str:
    """Flagfile stems, a smoke preset folded into its full one: "lr_sweep[_smoke]"."""
    return ", ".join(f"{s}[_smoke]" if f"{s}_smoke" in stems else s
                     for s in stems if not (s.endswith("_smoke") and s.removesuffix("_smoke") in stems))


def listing(width: int = 100) -> str:
    """The catalogue as text: per experiment its name, purpose and flagfiles, wrapped to `width`."""
    experiments, unassigned = catalog()
    column = max(len(e.name) for e in experiments) + 2
    indent = " " * column
    lines = ["Experiments: ./launch.sh <name> --flagfile=experiments/flags/<flagfile>.flags [--flag=value ...]",
             "(x[_smoke]: the flagfiles x and x_smoke; `./launch.sh <name> --help`: its flags and the core flags;",
             " `--helpfull`: every flag, grouped by the module that defines it)", ""]
    for e in experiments:
        lines.append(e.name.ljust(column) + textwrap.shorten(e.purpose, width - column, placeholder=" …"))
        for label, names in (("flagfiles", e.flagfiles), ("shared protocols", e.shared)):
            if names:
                lines += textwrap.wrap(f"{label}: {_names(names)}", width, initial_indent=indent,
                                       subsequent_indent=indent + "  ", break_on_hyphens=False)
    if unassigned:
        lines += ["", f"flagfiles of no experiment: {', '.join(unassigned)}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(listing())
