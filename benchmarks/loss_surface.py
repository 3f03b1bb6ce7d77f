"""A 21x21 loss surface of one BaselineNet run: every point one lane of a vmapped evaluation
(`surfaces.evaluate_points`, the points in chunks inside one program) against the 441 points
evaluated one by one (one jitted `step.evaluate` call per point), on the same examples; compile
time excluded (each program runs once before it is timed). Prints seconds, images/s and the ratio
(one by one / vmapped) per chunk size, checks both give the same numbers, and appends a record to
benchmarks/results/loss_surface.jsonl.

    python -m benchmarks.loss_surface [--quick] [--examples=1000] [--chunks=1,16] [--conv_impl=auto]
"""
from __future__ import annotations

import argparse
import functools
import os
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from cifar_jax.nn import models
from cifar_jax.training import step, surfaces

POINTS = 21


def timed(fn) -> tuple[float, np.ndarray]:
    """(seconds, result) of fn() after one untimed call (compilation and first-run costs)."""
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    out = np.asarray(jax.block_until_ready(fn()))
    return time.perf_counter() - t0, out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="250 examples per point (about a minute on 2 CPU cores)")
    parser.add_argument("--examples", type=int, default=1000, help="examples per point (without --quick)")
    parser.add_argument("--chunks", default="1,16", help="points per vmapped pass to time (comma list)")
    parser.add_argument("--conv_impl", default="auto", help="cifar_jax convolution (layers.CONV_IMPLS; auto: the backend's)")
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    n = 250 if args.quick else args.examples
    images = common.load_images(args.data_dir, n)
    idx = np.arange(n, dtype=np.int32)
    mean, std = (np.asarray(v, np.float32) for v in (images.x[:n].mean((0, 1, 2)), images.x[:n].std((0, 1, 2))))
    dev = step.put_data(images.x[:n], images.y[:n], images.x[:0], images.y[:0], idx, idx[:0], mean, std)
    spec = step.GroupSpec(models.ModelConfig("baseline"), eval_batch_size=min(500, n), conv_impl=args.conv_impl)
    state = step.init_run(spec, {k: v[0] for k, v in step.stack_hparams([{"seed": 0}]).items()},
                          tuple(images.x.shape[1:]))
    d1, d2 = (surfaces.random_direction(k, state.params) for k in jax.random.split(jax.random.PRNGKey(0)))
    coords = np.linspace(-1.0, 1.0, POINTS)
    grid = surfaces.plane(state.params, d1, d2, coords, coords)
    stats = surfaces.repeat(state.batch_stats, POINTS * POINTS)
    x, y, ix = dev.x, dev.y, jnp.asarray(idx)

    single = jax.jit(functools.partial(step.evaluate, spec))
    points = [jax.tree_util.tree_map(lambda v: v[i], grid) for i in range(POINTS * POINTS)]

    def one_by_one():
        return jnp.stack([single(step.TrainState(p, state.batch_stats, None, None, None, None, None),
                                 x, y, ix, dev.mean, dev.std) for p in points])

    base_s, base = timed(one_by_one)
    total = POINTS * POINTS * n
    rows = [["one by one (441 jitted calls)", "-", base_s, total / base_s, 1.0, 0.0]]
    out = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        s, values = timed(lambda: surfaces.evaluate_points(spec, grid, stats, x, y, ix, dev.mean, dev.std, chunk))
        diff = float(np.max(np.abs(values - base)))
        rows.append([f"vmapped, chunks of {chunk}", chunk, s, total / s, base_s / s, diff])
        out.append({"chunk": chunk, "seconds": s, "images_per_s": total / s, "ratio_one_by_one_over_vmapped": base_s / s,
                    "max_abs_difference": diff})
    print(f"{POINTS}x{POINTS} surface of BaselineNet, {n} examples per point ({images.source}), "
          f"{jax.devices()[0].platform}")
    print(common.table(["evaluation", "chunk", "seconds", "img/s", "speed-up", "max |Δ|"], rows))
    best = max(out, key=lambda r: r["ratio_one_by_one_over_vmapped"])
    print(f"\nbest: chunks of {best['chunk']}, {best['ratio_one_by_one_over_vmapped']:.2f}x the one-by-one evaluation")
    path = pathlib.Path(args.results) if args.results else common.RESULTS_DIR / "loss_surface.jsonl"
    common.append_jsonl(path, common.make_record("loss_surface", args, {
        "points": POINTS * POINTS, "examples": n, "images": images.source, "one_by_one_s": base_s,
        "vmapped": out, "best_ratio": best["ratio_one_by_one_over_vmapped"], "best_chunk": best["chunk"]}, load_start))
    print(f"{common.load_line(load_start)}\nappended to {path}")


if __name__ == "__main__":
    main()
