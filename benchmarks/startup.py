"""A smoke preset run as a command, timed from the start to its first compiled training program
(the study's "compiled in" line: the first step follows its untrained evaluation) and to its end,
with an empty persistent compile cache (cold) and then with the one that run filled (warm); for
this tree and, with --ref, a commit checked out beside it, in alternating order.

    python -m benchmarks.startup [--ref=REV] [--preset=lr_sweep_smoke] [--pairs=1]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Iterator, Sequence

from benchmarks import common

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARK = "compiled in"  # the line a study prints when its first group's programs are compiled


def time_command(tree: pathlib.Path, experiment: str, preset: str, data_dir: str,
                 cache: pathlib.Path, out: pathlib.Path) -> dict[str, float]:
    """Run the preset from `tree` with `cache` as its compile cache, results under `out`: seconds to
    the first `MARK` line and to the end. A failed run raises with its last lines."""
    command = [sys.executable, "-m", f"experiments.{experiment}", f"--flagfile=experiments/flags/{preset}.flags",
               f"--results_dir={out}", f"--compile_cache={cache}", f"--data_dir={data_dir}"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    t0 = time.perf_counter()
    first, lines = None, []
    with subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            lines.append(line)
            if first is None and MARK in line:
                first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    if proc.returncode or first is None:
        tail = "".join(lines[-15:])
        raise RuntimeError(f"{' '.join(command)} in {tree}: exit {proc.returncode}"
                           f"{'' if first else f', no {MARK!r} line'}\n{tail}")
    return {"first_program_s": first, "total_s": total}


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[pathlib.Path]:
    """`rev` checked out in a temporary git worktree (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="startup-ref-") as tmp:
        tree = pathlib.Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def commit_of(tree: pathlib.Path) -> str:
    """The commit checked out in `tree` (with "+changes" when its tracked files differ from it)."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "diff", "--quiet", "HEAD"]).returncode
    return head + ("+changes" if dirty else "")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default=None, help="a commit to measure beside this tree (checked out in a "
                        "temporary git worktree; it must have the preset too)")
    parser.add_argument("--experiment", default="lr_sweep", help="the experiment module under experiments/")
    parser.add_argument("--preset", default="lr_sweep_smoke", help="its flagfile, experiments/flags/PRESET.flags")
    parser.add_argument("--pairs", type=int, default=1, help="cold-then-warm measurements per tree (the trees' "
                        "order alternates)")
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR, help="the CIFAR-10 copy the preset reads")
    parser.add_argument("--results", default=None, help="the JSONL file to append to "
                        "(default benchmarks/results/startup.jsonl)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be >= 1")
    if not (ROOT / "experiments" / "flags" / f"{args.preset}.flags").exists():
        parser.error(f"no experiments/flags/{args.preset}.flags")
    load_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        trees = {"this tree": ROOT}
        if args.ref:
            trees["ref"] = stack.enter_context(checkout(args.ref))
        commits = {name: commit_of(tree) for name, tree in trees.items()}
        times: dict[tuple[str, str], list[dict[str, float]]] = {}
        for i in range(args.pairs):
            for name in (list(trees) if i % 2 == 0 else list(trees)[::-1]):
                with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
                    cache = pathlib.Path(tmp) / "xla"
                    for warmth in ("cold", "warm"):
                        t = time_command(trees[name], args.experiment, args.preset, args.data_dir, cache,
                                         pathlib.Path(tmp) / warmth)
                        times.setdefault((name, warmth), []).append(t)
                        print(f"{name} ({commits[name]}) {warmth}: first program {t['first_program_s']:.1f} s, "
                              f"total {t['total_s']:.1f} s", flush=True)
    median = {key: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for key, ts in times.items()}
    rows = []
    for (name, warmth), m in median.items():
        ref = median.get(("ref", warmth)) if name != "ref" else None
        rows.append([f"{name} ({commits[name]})", warmth, m["first_program_s"], m["total_s"],
                     m["first_program_s"] / ref["first_program_s"] if ref else None,
                     m["total_s"] / ref["total_s"] if ref else None])
    print(f"\n{args.preset} as a command, medians of {args.pairs}:")
    print(common.table(["tree", "cache", "first program s", "total s", "first / ref", "total / ref"], rows))
    print(common.load_line(load_start))
    record = common.make_record("startup", args, {
        "commits": commits, "times": [{"tree": n, "cache": w, **t} for (n, w), ts in times.items() for t in ts],
        "median": [{"tree": n, "cache": w, **m} for (n, w), m in median.items()]}, load_start)
    path = pathlib.Path(args.results) if args.results else common.RESULTS_DIR / "startup.jsonl"
    common.append_jsonl(path, record)
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
