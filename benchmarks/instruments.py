"""What the training-dynamics instruments cost (issue 19, acceptance 5), measured in one run:

1. off: the training step with every instrument off against the same step at a reference commit
   (default: the last commit before the instruments), each timed in a fresh process of its own
   tree, the two trees alternating (BaselineNet, one run at a time as on CPU; the seeds/002 MLP
   group of 25 runs): images/s and the ratio this tree / reference;
2. one sharpness evaluation (`step.sharpness_of`) against its arithmetic: iterations × one
   Hessian-vector product on the same examples, and one HVP against a plain gradient there;
3. the default settings (`--sharpness_iters`, `--sharpness_examples`) against a BaselineNet epoch
   (45,000 images, batch 64) timed in the same run: the fraction of an epoch one evaluation adds;
4. the noise scale's step (`--noise_scale`) against the plain step.

    python -m benchmarks.instruments [--quick] [--reference=28d1aba] [--pairs=3]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from cifar_jax.nn import models
from cifar_jax.training import dynamics, step

REFERENCE = "28d1aba"  # the last commit before the instruments (issue 19)
ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCH_IMAGES, BATCH = 45_000, 64

# The step-time probe, run in a fresh process by each tree: only the API both trees share.
PROBE = r"""
import json, sys, time
import numpy as np
try:
    from cifar_jax.nn import models
    from cifar_jax.training import engine, step as train
except ImportError:  # a reference tree from before the sub-packages
    from cifar_jax import engine, models, train
steps, epochs = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
out = {}
for name, model, runs, batch, shape, layout in (
        ("baseline", models.ModelConfig("baseline"), 1, 64, (32, 32, 3), "seq_loop"),
        ("mlp_group", models.ModelConfig("mlp", hidden=(50, 50), init="he"), 25, 100, (32, 32, 3), "seq_scan")):
    n = steps * batch
    x = rng.integers(0, 256, (n, *shape), np.uint8)
    y = rng.integers(0, 10, n)
    idx = np.arange(n, dtype=np.int32)
    data = train.put_data(x, y, x[:0], y[:0], idx, idx[:0], np.full(3, 120.0), np.full(3, 60.0))
    spec = train.GroupSpec(model, batch_size=batch)
    seconds = []
    class CB:
        def on_compiled(self, s): pass
        def on_start(self, runs, untrained): pass
        def on_epoch(self, runs, epoch, metrics, s): seconds.append(s)
        def on_end(self, runs, final): pass
    hp = train.stack_hparams([dict(seed=s, lr=0.01, total_steps=steps * epochs) for s in range(runs)])
    engine.train_group(spec, hp, data, epochs, CB(), layout=layout)
    per_epoch = sorted(seconds[1:])[len(seconds[1:]) // 2]
    out[name] = runs * n / per_epoch
print(json.dumps(out))
"""


def probe(tree: pathlib.Path, steps: int, epochs: int) -> dict[str, float]:
    """Images/s of the probe's workloads in a fresh process importing cifar_jax from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    done = subprocess.run([sys.executable, "-c", PROBE, str(steps), str(epochs)], env=env, cwd=tree,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def off_against_reference(reference: str, pairs: int, steps: int, epochs: int) -> dict[str, Any]:
    """The probe in this tree and at `reference` (a temporary git worktree), alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        ref_tree = pathlib.Path(tmp) / "reference"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref_tree), reference],
                       check=True, capture_output=True)
        try:
            runs = {"this": [], "reference": []}
            for i in range(pairs):
                order = (("this", ROOT), ("reference", ref_tree)) if i % 2 == 0 else (("reference", ref_tree), ("this", ROOT))
                for label, tree in order:
                    runs[label].append(probe(tree, steps, epochs))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)], capture_output=True)
    out = {}
    for name in runs["this"][0]:
        this = [r[name] for r in runs["this"]]
        ref = [r[name] for r in runs["reference"]]
        out[name] = {"this_images_per_s": this, "reference_images_per_s": ref,
                     "ratio_median": statistics.median(t / r for t, r in zip(this, ref))}
    return out


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls after one untimed call (compilation)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sharpness_costs(images: common.Images, examples: Sequence[int], iters: int, repeats: int) -> list[dict]:
    """Per subset size: seconds of a gradient, an HVP and a sharpness evaluation of BaselineNet on
    those examples (fixed weights), and a training step of batch 64 (for the epoch's time)."""
    n = max(max(examples), BATCH)
    idx = np.arange(n, dtype=np.int32)
    mean, std = images.x[:n].mean((0, 1, 2)), images.x[:n].std((0, 1, 2))
    data = step.put_data(images.x[:n], images.y[:n], images.x[:0], images.y[:0], idx, idx, mean, std)
    base = step.GroupSpec(models.ModelConfig("baseline"), batch_size=BATCH)
    hp = {k: v[0] for k, v in step.stack_hparams([dict(seed=0, lr=0.05)]).items()}
    rows = []
    for m in examples:
        spec = dataclasses.replace(base, sharpness_every=1, sharpness_iters=iters, sharpness_examples=m)
        state = step.init_run(spec, hp, (32, 32, 3))
        sub = step.sharpness_subset(spec, data.train_idx)
        x, y = step.preprocess.normalize(data.x[sub], data.mean, data.std), data.y[sub]
        loss = lambda p, x, y, net=None: step.objective(spec, p, state.batch_stats, hp, x, y, jax.random.PRNGKey(0),
                                                        0.0, net)[0]
        grad = jax.jit(jax.grad(loss))  # the training step's own net
        matvec = jax.jit(lambda p, v, x, y: dynamics.hvp(lambda q: loss(q, x, y, spec.forward_net), p)[0](v))
        evaluate = jax.jit(functools.partial(step.sharpness_of, spec))
        v = state.probes["lanczos"]
        g_s = timed(lambda: grad(state.params, x, y), repeats)
        h_s = timed(lambda: matvec(state.params, v, x, y), repeats)
        e_s = timed(lambda: evaluate(state, data)[0], repeats)
        rows.append({"examples": m, "iters": iters, "grad_s": g_s, "hvp_s": h_s, "evaluation_s": e_s,
                     "hvp_over_grad": h_s / g_s, "evaluation_over_arithmetic": e_s / (iters * h_s)})
    train_step = jax.jit(functools.partial(step.train_step, base))
    state = step.init_run(base, hp, (32, 32, 3))
    step_s = timed(lambda: train_step(state, data, jnp.arange(BATCH))[1], repeats * 5)
    noisy = dataclasses.replace(base, noise_scale=True)
    noisy_state = step.init_run(noisy, hp, (32, 32, 3))
    noisy_step = jax.jit(functools.partial(step.train_step, noisy))
    noise_s = timed(lambda: noisy_step(noisy_state, data, jnp.arange(BATCH))[1], repeats * 5)
    return rows, {"step_s": step_s, "noise_scale_step_s": noise_s, "epoch_s": step_s * (EPOCH_IMAGES // BATCH)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and probe steps (a few minutes on 2 cores)")
    parser.add_argument("--reference", default=REFERENCE, help="the commit whose step time the 'off' step must equal")
    parser.add_argument("--pairs", type=int, default=3, help="alternating probe pairs (this tree, the reference)")
    parser.add_argument("--examples", default="128,256,512", help="sharpness subset sizes to time (comma list)")
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    defaults = step.GroupSpec(models.ModelConfig("baseline"))
    iters = defaults.sharpness_iters
    examples = sorted({*(int(e) for e in args.examples.split(",")), defaults.sharpness_examples})
    images = common.load_images(args.data_dir, max(examples))
    rows, timing = sharpness_costs(images, examples, iters, 3 if args.quick else 7)
    print(f"BaselineNet on {jax.devices()[0].platform} ({images.source}); a training step of batch {BATCH}: "
          f"{1000 * timing['step_s']:.1f} ms, an epoch of {EPOCH_IMAGES:,} images ≈ {timing['epoch_s']:.1f} s")
    print(common.table(["examples", "iters", "grad ms", "HVP ms", "HVP / grad", "evaluation s",
                        "eval / (iters × HVP)", "eval / epoch"],
                       [[r["examples"], r["iters"], 1000 * r["grad_s"], 1000 * r["hvp_s"], r["hvp_over_grad"],
                         r["evaluation_s"], r["evaluation_over_arithmetic"], r["evaluation_s"] / timing["epoch_s"]]
                        for r in rows]))
    default = next(r for r in rows if r["examples"] == defaults.sharpness_examples)
    print(f"\ndefault settings ({iters} iterations, {defaults.sharpness_examples} examples): one evaluation "
          f"{default['evaluation_s']:.2f} s = {100 * default['evaluation_s'] / timing['epoch_s']:.1f}% of an epoch; "
          f"--noise_scale step {timing['noise_scale_step_s'] / timing['step_s']:.3f}x the plain step")
    steps, epochs = (30, 3) if args.quick else (60, 4)
    off = off_against_reference(args.reference, args.pairs, steps, epochs)
    print(f"\nevery instrument off, this tree against {args.reference} (fresh processes, alternating, {args.pairs} pairs):")
    print(common.table(["workload", "this img/s (median)", "reference img/s (median)", "ratio (median of pairs)"],
                       [[k, statistics.median(v["this_images_per_s"]), statistics.median(v["reference_images_per_s"]),
                         v["ratio_median"]] for k, v in off.items()]))
    path = pathlib.Path(args.results) if args.results else common.RESULTS_DIR / "instruments.jsonl"
    common.append_jsonl(path, common.make_record("instruments", args, {
        "sharpness": rows, "step": timing, "default_fraction_of_epoch": default["evaluation_s"] / timing["epoch_s"],
        "off_against_reference": off}, load_start))
    print(f"{common.load_line(load_start)}\nappended to {path}")


if __name__ == "__main__":
    main()
