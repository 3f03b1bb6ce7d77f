"""Successive halving on the run axis (--prune=halving) against the full grid, measured in one run:
27 configurations (3 MLP widths, each its own group × 3 learning rates × 3 L2 penalties) × 2 seeds,
9 epochs, keep 1/3 at rungs 1 and 3 (27 → 9 → 3 configurations). Per segment between rungs: the
configurations and runs still training and the time of one step of all of them together
(Σ over runs of the epoch's seconds per run trained together, / steps: it falls as runs stop);
then the run-epochs and wall time of each study, and the configuration each ends with.

    python -m benchmarks.halving [--quick] [--data_dir=DIR] [--layout=auto]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from benchmarks import common
from cifar_jax.results import run_record, studydir
from cifar_jax.study import config, halving, runner

GRID = dict(model="mlp", hidden=[[64], [128], [256]], lr=[0.1, 0.03, 0.01], l2=[0.0, 1e-4, 1e-3], seeds=2,
            epochs=9, batch_size=128)
PRUNE = dict(prune="halving", prune_rungs=[1, 3], prune_keep=1 / 3)
SPLITS = {"quick": "4096/1024", "full": "45000/5000"}


def _study(root: pathlib.Path, name: str, args: argparse.Namespace, **more: Any) -> tuple[list[dict], float]:
    """The grid as a study of its own (no figures): its records and wall seconds."""
    data = pathlib.Path(args.data_dir).expanduser()
    source = dict(dataset="cifar10", data_dir=str(data), download=False) if data.is_dir() else dict(dataset="synthetic")
    cfg = config.build(**GRID, **source, split=SPLITS["quick" if args.quick else "full"], test_size=2000 if args.quick else 0,
                       results_dir=str(root), layout=args.layout, compile_cache="", **more)
    common.forget_programs()  # each study compiles its own programs, as in a process of its own
    t0 = time.perf_counter()
    runner.run(cfg, name, name, lambda p: config.grid(cfg, len(p.train_idx), p.dataset.num_classes), figures=False)
    return studydir.StudyDir(root / name).records(), time.perf_counter() - t0


def _segments(records: list[dict], rungs: Sequence[int], epochs: int, steps: int) -> list[dict[str, Any]]:
    """Per segment between rungs: configurations and runs training, and the ms of one step of all
    of them (Σ run_seconds of each epoch / steps, the segment's median epoch)."""
    out, bounds = [], [0, *rungs, epochs]
    for a, b in zip(bounds, bounds[1:]):
        training = [r for r in records if run_record.last_epoch(r) > a]
        per_epoch = [sum(e["run_seconds"] for r in training for e in r["epochs"] if e["epoch"] == epoch)
                     for epoch in range(a + 1, b + 1)]
        out.append({"epochs": f"{a + 1}-{b}" if b > a + 1 else str(b), "configs": len({r["config_name"] for r in training}),
                    "runs": len(training), "group_ms_per_step": 1e3 * float(np.median(per_epoch)) / steps})
    return out


def _best(records: list[dict]) -> tuple[str, float, float]:
    """The configuration with the best mean final validation accuracy among the finished ones, with
    its mean validation and test accuracy."""
    by_config = run_record.group_by_config([r for r in records if r["status"] == "done"])
    val = {name: float(np.mean([run_record.last(r, "val_acc") for r in recs])) for name, recs in by_config.items()}
    name = max(val, key=val.get)
    return name, val[name], float(np.mean([run_record.final(r, "test")["acc"] for r in by_config[name]]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4,096 training images (about 2 minutes on 2 CPU cores)")
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR, help="a CIFAR-10 copy; synthetic images when absent")
    parser.add_argument("--layout", default="auto", help="--layout of both studies")
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        full, full_s = _study(pathlib.Path(tmp), "full", args)
        pruned, pruned_s = _study(pathlib.Path(tmp), "halving", args, **PRUNE)
    steps = int(SPLITS["quick" if args.quick else "full"].split("/")[0]) // GRID["batch_size"]
    segments = _segments(pruned, PRUNE["prune_rungs"], GRID["epochs"], steps)
    for s in segments:
        s["ratio_to_first"] = s["group_ms_per_step"] / segments[0]["group_ms_per_step"]
    print(common.table(["epochs", "configurations", "runs", "group ms/step", "/ first segment"],
                       [[s["epochs"], s["configs"], s["runs"], s["group_ms_per_step"], s["ratio_to_first"]] for s in segments]))
    spent, whole = halving.run_epochs(pruned), halving.run_epochs(full)
    chosen, best = _best(pruned), _best(full)
    print(f"\nrun-epochs: halving {spent} of the full grid's {whole} ({spent / whole:.1%}); wall time "
          f"{pruned_s:.1f} s against {full_s:.1f} s ({pruned_s / full_s:.2f}x), compilation included")
    print(f"chosen by halving: {chosen[0]} (val {100 * chosen[1]:.2f}%, test {100 * chosen[2]:.2f}%); best of the "
          f"full grid by final val: {best[0]} (val {100 * best[1]:.2f}%, test {100 * best[2]:.2f}%)")
    path = pathlib.Path(args.results) if args.results else common.RESULTS_DIR / "halving.jsonl"
    common.append_jsonl(path, common.make_record("halving", args, {
        "segments": segments, "run_epochs": {"halving": spent, "full": whole}, "wall_s": {"halving": pruned_s, "full": full_s},
        "chosen": {"halving": chosen, "full": best}}, load_start))
    print(f"\n{common.load_line(load_start)}\nappended to {path}")


if __name__ == "__main__":
    main()
