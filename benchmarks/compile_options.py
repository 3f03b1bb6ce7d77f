"""The engine's XLA compile options (`step.COMPILER_OPTIONS`) against XLA's defaults: a whole
`train_group` call (every program compiled, nothing cached, then the epochs) and the training
speed of its timed epochs, for the LR-sweep group (BaselineNet) and the seeds/002 MLP group, paired
in alternating order (default-ours, ours-default, ...) in one process.

    python -m benchmarks.compile_options [--quick] [--pairs=2]
"""
from __future__ import annotations

import argparse
import os
import pathlib
from typing import Sequence

import jax
import numpy as np

from benchmarks import common
from cifar_jax.training import engine, step

OURS = dict(step.COMPILER_OPTIONS)
# (workload, runs, steps per epoch, epochs): the first epoch is untimed
CASES = {"full": [(common.lr_sweep, 5, 100, 3), (common.mlp_group, 25, 200, 3)],
         "quick": [(common.lr_sweep, 5, 20, 3), (common.mlp_group, 25, 50, 3)]}


def use(options: dict) -> None:
    """Make `options` the compile options of every program compiled from now on."""
    step.COMPILER_OPTIONS.clear()
    step.COMPILER_OPTIONS.update(options)


def measure(w: common.Workload, dev, ours: bool) -> common.Measurement:
    """One `train_group` call of the workload in its automatic layout, compiled afresh with the
    project's compile options or with XLA's defaults."""
    use(OURS if ours else {})
    common.forget_programs()
    return common.measure_engine(w, dev, engine.auto_layout(w.spec.model), "ours" if ours else "XLA default")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter epochs (about a minute on 2 CPU cores)")
    parser.add_argument("--pairs", type=int, default=2, help="default/ours pairs per workload (their order alternates)")
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    if jax.config.jax_compilation_cache_dir:
        parser.error("unset the persistent compilation cache (JAX_COMPILATION_CACHE_DIR): every call must compile")
    platform = jax.devices()[0].platform
    print(f"{platform}: ours {OURS.get(platform) or 'none (XLA defaults)'}")
    load_start = os.getloadavg()
    rows, out = [], []
    for make, runs, steps, epochs in CASES["quick" if args.quick else "full"]:
        w = make(runs, steps, epochs)
        images = common.load_images(args.data_dir, w.train_size)
        dev = common.device_data(images, common.training_split(images, w))
        by = {False: [], True: []}
        for pair in range(args.pairs):
            for ours in (False, True) if pair % 2 == 0 else (True, False):  # no order bias
                by[ours].append(measure(w, dev, ours))
        median = lambda ms, attr: float(np.median([getattr(m, attr) for m in ms]))
        wall = {k: median(v, "wall_s") for k, v in by.items()}
        speed = {k: median(v, "images_per_s") for k, v in by.items()}
        rows.append([w.title, median(by[False], "compile_s"), median(by[True], "compile_s"), wall[False], wall[True],
                     wall[False] / wall[True], speed[False], speed[True], speed[True] / speed[False]])
        out.append({"workload": w.name, "runs": runs, "steps_per_epoch": steps, "epochs": epochs,
                    "default": [m.record() for m in by[False]], "ours": [m.record() for m in by[True]],
                    "wall_default_over_ours": wall[False] / wall[True],
                    "speed_ours_over_default": speed[True] / speed[False]})
    print(common.table(["workload", "compile s default", "compile s ours", "wall s default", "wall s ours",
                        "wall default / ours", "img/s default", "img/s ours", "img/s ours / default"], rows))
    print("compile s: the engine's step or epoch program; wall s: the whole call (every program, the epochs)")
    use(OURS)
    path = pathlib.Path(args.results) if args.results else common.RESULTS_DIR / "compile_options.jsonl"
    common.append_jsonl(path, common.make_record("compile_options", args, {"ours": OURS, "cases": out}, load_start))
    print(f"\n{common.load_line(load_start)}\nappended to {path}")


if __name__ == "__main__":
    main()
