"""The cost of progress lines inside long epochs: seconds per step of the same workload with the
progress machinery on and off, paired in alternating order (off-on, on-off, ...) in one process,
for a host loop of steps (BaselineNet, seq_loop: the CPU's layout for conv nets) and a scanned
epoch (the seeds/002 MLP group, seq_scan; after an epoch of half the interval or more, its
compiled steps call the host every steps // PROGRESS_POINTS steps). The progress interval is cut
from engine.PROGRESS_SECONDS (10 s) to --interval (1 s) so that an epoch of a few seconds pays
for several lines: an upper bound on the default's cost.

    python -m benchmarks.progress [--quick] [--interval=1] [--pairs=4]
"""
from __future__ import annotations

import argparse
import os
import pathlib
from typing import Sequence

import numpy as np

from benchmarks import common
from cifar_jax.training import engine

DEFAULT_POINTS = engine.PROGRESS_POINTS
# (workload, layout, steps per epoch, epochs): the first epoch is untimed
CASES = {"full": [(common.lr_sweep, "seq_loop", 300, 3), (common.mlp_group, "seq_scan", 450, 3)],
         "quick": [(common.lr_sweep, "seq_loop", 100, 3), (common.mlp_group, "seq_scan", 200, 3)]}


class WithProgress(common.Timings):
    """Timings that also take the progress lines (counted, not printed)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def on_progress(self, runs: np.ndarray, epoch: int, done: int, seconds: float, *, steps: int) -> None:
        self.lines += 1


def measure(w: common.Workload, dev, layout: str, progress: bool) -> tuple[float, int]:
    """(seconds per step of the timed epochs, progress lines) with the progress machinery on or off."""
    engine.PROGRESS_POINTS = DEFAULT_POINTS if progress else 0  # off: the scanned epoch has no host callback at all
    engine._programs.cache_clear()
    timings = WithProgress() if progress else common.Timings()
    engine.train_group(w.spec, w.hparams(), dev, w.epochs, timings, layout=layout)
    timed = sorted(timings.epoch_s)[1:]
    return sum(timings.epoch_s[e] for e in timed) / (len(timed) * w.steps_per_epoch), getattr(timings, "lines", 0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter epochs (about a minute on 2 CPU cores)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between progress lines")
    parser.add_argument("--pairs", type=int, default=4, help="off/on pairs per case (their order alternates)")
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    engine.PROGRESS_SECONDS = args.interval
    rows, out = [], []
    for make, layout, steps, epochs in CASES["quick" if args.quick else "full"]:
        w = make(1, steps, epochs)
        images = common.load_images(args.data_dir, w.train_size)
        dev = common.device_data(images, common.training_split(images, w))
        off, on, lines = [], [], 0
        for pair in range(args.pairs):
            for progress in (False, True) if pair % 2 == 0 else (True, False):  # off-on, on-off, ...: no order bias
                s, n = measure(w, dev, layout, progress)
                (on if progress else off).append(s)
                lines += n
        ratio = float(np.median(on) / np.median(off))
        rows.append([w.title, layout, 1e3 * np.median(off), 1e3 * np.median(on), ratio, lines / args.pairs])
        out.append({"workload": w.name, "layout": layout, "steps_per_epoch": steps, "s_per_step_off": off,
                    "s_per_step_on": on, "ratio_on_off": ratio, "progress_lines_per_call": lines / args.pairs})
    print(common.table(["workload", "layout", "ms/step off", "ms/step on", "on / off", "lines per call"], rows))
    path = pathlib.Path(args.results) if args.results else common.RESULTS_DIR / "progress.jsonl"
    common.append_jsonl(path, common.make_record("progress", args, {"interval_s": args.interval, "cases": out},
                                                 load_start))
    print(f"\n{common.load_line(load_start)}\nappended to {path}")


if __name__ == "__main__":
    main()
