"""Engine throughput: images/s of the seeds/000 LR-sweep group and the seeds/002 MLP group in
every layout, grouped and one run at a time, with compile time and peak memory apart.

    python -m benchmarks.engine [--quick] [--data_dir=...] [--results=...]
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import jax

from benchmarks import common
from cifar_jax import engine

# Full sizes suit a GPU: two epochs of the 45k split per run (the first one untimed).
FULL = {"conv": dict(runs=25, steps_per_epoch=703, epochs=2),
        "mlp": dict(runs=25, steps_per_epoch=450, epochs=2)}
# --quick: ~2 minutes on 2 CPU cores; 5 conv runs (5 LRs x seed 0) instead of 25.
QUICK = {"conv": dict(runs=5, steps_per_epoch=2, epochs=9),
         "mlp": dict(runs=25, steps_per_epoch=25, epochs=3)}
MEASURED = tuple(name for name in engine.LAYOUTS if name != "auto")
SLOW = dict(runs=2, epochs=1)  # --quick: conv layouts XLA:CPU runs slowly get 2 runs, 1 timed epoch


def workloads(quick: bool) -> list[common.Workload]:
    """The LR-sweep and MLP groups at full or --quick size."""
    sizes = QUICK if quick else FULL
    return [common.lr_sweep(**sizes["conv"]), common.mlp_group(**sizes["mlp"])]


def is_slow(w: common.Workload, layout: str) -> bool:
    """Conv models on XLA:CPU in any layout but seq_loop: vmap makes grouped convolutions, and
    scan or map loops slow weight-gradient convolutions (DESIGN.md "Performance")."""
    return jax.default_backend() == "cpu" and w.model.name != "mlp" and layout != "seq_loop"


def bench_workload(w: common.Workload, images: common.Images, quick: bool,
                   layouts: Sequence[str] = MEASURED) -> dict[str, Any]:
    """The layouts (the auto one among them) with the whole group, one run alone per step kind
    (loop, scan: with one run the vmap_*, map_* and seq_* layouts do the same work), and the
    auto layout's peak memory."""
    dev = common.device_data(images, common.training_split(images, w))
    group = [measure(w, dev, layout, len(w.runs), quick) for layout in layouts]
    alone = [measure(w, dev, layout, 1, quick) for layout in ("seq_loop", "seq_scan")]
    auto = engine.auto_layout(w.model)
    best_alone = max(alone, key=lambda m: m.images_per_s)
    fastest = max(group, key=lambda m: m.images_per_s)
    chosen = next(m for m in group if m.label == auto)
    return {"workload": w.record(), "auto_layout": auto, "fastest_layout": fastest.label,
            "group": [m.record() for m in group], "one_run": [m.record() for m in alone],
            "grouping_gain": chosen.images_per_s / best_alone.images_per_s,
            "auto_vs_fastest": chosen.images_per_s / fastest.images_per_s,
            "peak_memory": common.peak_memory(w, dev, auto)}


def measure(w: common.Workload, dev: engine.Data, layout: str, runs: int, quick: bool) -> common.Measurement:
    """One layout with the first `runs` runs (fewer runs and one epoch for slow combos in --quick)."""
    if quick and is_slow(w, layout):
        return common.measure_engine(w.resized(min(runs, SLOW["runs"]), SLOW["epochs"]), dev, layout)
    return common.measure_engine(w.resized(runs), dev, layout)


def report(w: common.Workload, result: dict[str, Any]) -> str:
    """The workload's table: every layout grouped, then one run alone, and the verdict on auto."""
    best_alone = max(m["images_per_s"] for m in result["one_run"])
    rows = [[m["label"] + ("*" if m["label"] == result["auto_layout"] else ""), m["runs"],
             m["steps"], m["compile_s"], m["warmup_s"], m["s_per_step"], m["images_per_s"],
             m["images_per_s_per_run"], m["images_per_s"] / best_alone, m["other_cores"]]
            for m in result["group"] + result["one_run"]]
    memory = result["peak_memory"]
    mib = "n/a" if memory["bytes"] is None else f"{memory['bytes'] / common.MIB:.0f} MiB"
    return "\n".join([
        f"\n{w.title}: {len(w.runs)} runs, {w.steps_per_epoch} steps/epoch",
        common.table(["layout", "runs", "timed steps", "compile s", "warm-up s", "s/step",
                      "img/s total", "img/s/run", "x 1 run", "other load"], rows),
        "* auto layout; warm-up s: the untimed first epoch (-: one epoch, timed); s/step: the whole "
        "group advancing one step;\nx 1 run: img/s total over the best one-run img/s; compile ~0: "
        "the program was compiled by an earlier row;\nother load: cores kept busy by other processes "
        "meanwhile (above ~0.2 the timing is suspect)",
        f"grouping gain (auto, {result['auto_layout']}): {result['grouping_gain']:.2f}x one run at "
        f"a time; fastest layout measured: {result['fastest_layout']} (auto reaches "
        f"{result['auto_vs_fastest']:.0%} of it)",
        f"peak memory ({result['auto_layout']}): {mib} [{memory['source']}]"])


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the tables and append the record."""
    args = common.parse_args(__doc__.splitlines()[0], argv)
    load_start = os.getloadavg()
    loads = workloads(args.quick)
    images = common.load_images(args.data_dir, max(w.train_size for w in loads))
    print(f"data: {images.source}; device: {jax.devices()[0].device_kind}")
    if args.quick:
        print(f"--quick: {loads[0].title} uses {len(loads[0].runs)} runs (5 LRs x seed 0), not the "
              f"full 25" + (f"; the conv layouts slow on XLA:CPU (all but seq_loop) run "
                            f"{SLOW['runs']} runs for {SLOW['epochs']} epoch" if jax.default_backend() == "cpu" else ""))
    out = []
    for w in loads:
        result = bench_workload(w, images, args.quick)
        print(report(w, result), flush=True)
        out.append(result)
    path = pathlib.Path(args.results) if args.results else common.RESULTS_DIR / "engine.jsonl"
    common.append_jsonl(path, common.make_record("engine", args, {"data": images.source, "workloads": out},
                                                 load_start))
    print(f"\n{common.load_line(load_start)}\nappended to {path}")


if __name__ == "__main__":
    main()
