"""Engine throughput: images/s of the seeds/000 LR-sweep group and the seeds/002 MLP group in
every layout, grouped and one run at a time, then every convolution implementation and precision
of the LR-sweep group at each run count, with compile time and peak memory apart.

    python -m benchmarks.engine [--quick] [--conv_runs=25,100] [--impls=...] [--precisions=...]
"""
from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any, Sequence

import jax

from benchmarks import common
from cifar_jax.nn import layers, models
from cifar_jax.training import engine, step

# Full sizes suit a GPU: two epochs per run (the first one untimed).
FULL = {"conv": dict(runs=25, steps_per_epoch=703, epochs=2),
        "mlp": dict(runs=25, steps_per_epoch=450, epochs=2)}
# --quick: a few minutes on 2 CPU cores; 5 conv runs (5 LRs x seed 0) instead of 25.
QUICK = {"conv": dict(runs=5, steps_per_epoch=2, epochs=9),
         "mlp": dict(runs=25, steps_per_epoch=25, epochs=3)}
QUICK_IMPLS = dict(steps_per_epoch=2, epochs=3)  # --quick: the conv-implementation table
MEASURED = tuple(name for name in step.LAYOUTS if name != "auto")
TABLES = ("layouts", "convs")
SLOW = dict(runs=2, epochs=1)  # --quick on CPU: vmapped or mapped conv layouts get 2 runs, 1 timed epoch


def workloads(quick: bool, steps: int | None = None) -> list[common.Workload]:
    """The LR-sweep and MLP groups at full or --quick size (`steps` per epoch if given)."""
    sizes = QUICK if quick else FULL
    return [common.lr_sweep(**{**sizes["conv"], **_steps(steps)}),
            common.mlp_group(**{**sizes["mlp"], **_steps(steps)})]


def _steps(steps: int | None) -> dict[str, int]:
    return {"steps_per_epoch": steps} if steps else {}


def is_slow(w: common.Workload, layout: str) -> bool:
    """Conv models on XLA:CPU vmapped or lax.mapped over runs: grouped or looped convolutions
    (README.md, "Performance"); on CPU a group trains one run at a time."""
    return jax.default_backend() == "cpu" and w.model.name != "mlp" and not layout.startswith("seq")


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
    return {"workload": w.record(), "conv_impl": conv_name(w), "auto_layout": auto,
            "fastest_layout": fastest.label, "group": [m.record() for m in group],
            "one_run": [m.record() for m in alone],
            "grouping_gain": chosen.images_per_s / best_alone.images_per_s,
            "auto_vs_fastest": chosen.images_per_s / fastest.images_per_s,
            "peak_memory": common.peak_memory(w, dev, auto)}


def conv_name(w: common.Workload) -> str | None:
    """The convolution implementation the workload runs (auto resolved); None for an MLP."""
    if w.model.name == "mlp":
        return None
    return layers.auto_conv_impl(w.precision) if w.conv_impl == "auto" else w.conv_impl


def measure(w: common.Workload, dev: step.Data, layout: str, runs: int, quick: bool,
            label: str | None = None) -> common.Measurement:
    """One layout with the first `runs` runs (fewer runs and one epoch for slow combos in --quick)."""
    if quick and is_slow(w, layout):
        return common.measure_engine(w.resized(min(runs, SLOW["runs"]), SLOW["epochs"]), dev, layout, label)
    return common.measure_engine(w.resized(runs), dev, layout, label)


def bench_convs(w: common.Workload, images: common.Images, run_counts: Sequence[int],
                impls: Sequence[str], precisions: Sequence[str]) -> dict[str, Any]:
    """Every (implementation, precision) of the conv workload: one run alone (fp32), then each
    run count as one group, in the auto layout; the grouping gain of each group row is its img/s
    over the fastest one-run img/s (any implementation, fp32)."""
    dev = common.device_data(images, common.training_split(images, w))
    layout = engine.auto_layout(w.model)
    base = common.lr_sweep(max(run_counts), w.steps_per_epoch, w.epochs)
    rows = []
    for precision in precisions:
        for impl in impls:
            for runs in ((1,) if precision == "fp32" else ()) + tuple(run_counts):
                sized = base.resized(runs, conv_impl=impl, precision=precision)
                m = common.measure_engine(sized, dev, layout, f"{impl} {precision}")
                rows.append({"conv_impl": impl, "precision": precision, **m.record()})
                print(f"  {impl} {precision} {runs} runs: {m.s_per_step * 1e3:.3f} ms/step, "
                      f"{m.images_per_s:,.0f} img/s, compile {m.compile_s:.1f} s", flush=True)
    one = max((r for r in rows if r["runs"] == 1 and r["precision"] == "fp32"),
              key=lambda r: r["images_per_s"], default=None)
    for r in rows:
        r["grouping_gain"] = r["images_per_s"] / one["images_per_s"] if one else None
    best = {}
    for precision in precisions:
        for runs in run_counts:
            same = [r for r in rows if r["precision"] == precision and r["runs"] == runs]
            if same:
                best[f"{precision},{runs}"] = max(same, key=lambda r: r["images_per_s"])["conv_impl"]
    return {"workload": w.record(), "layout": layout,
            "auto_conv_impl": {p: layers.auto_conv_impl(p) for p in precisions},
            "rows": rows, "fastest": best, "one_run_reference": one and one["conv_impl"]}


def report(w: common.Workload, result: dict[str, Any]) -> str:
    """The workload's table: every layout grouped, then one run alone, and the verdict on auto."""
    best_alone = max(m["images_per_s"] for m in result["one_run"])
    rows = [[m["label"] + ("*" if m["label"] == result["auto_layout"] else ""), m["runs"],
             m["steps"], m["compile_s"], m["warmup_s"], m["s_per_step"], m["images_per_s"],
             m["images_per_s_per_run"], m["images_per_s"] / best_alone, m["other_cores"]]
            for m in result["group"] + result["one_run"]]
    memory = result["peak_memory"]
    mib = "n/a" if memory["bytes"] is None else f"{memory['bytes'] / common.MIB:.0f} MiB"
    conv = f", convolution {result['conv_impl']}" if result["conv_impl"] else ""
    return "\n".join([
        f"\n{w.title}: {len(w.runs)} runs, {w.steps_per_epoch} steps/epoch{conv}",
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


def report_convs(w: common.Workload, result: dict[str, Any]) -> str:
    """The convolution table: every implementation, precision and run count."""
    rows = [[r["conv_impl"] + ("*" if r["conv_impl"] == result["auto_conv_impl"][r["precision"]] else ""), r["precision"],
             r["runs"], r["compile_s"], r["s_per_step"] * 1e3, r["images_per_s"], r["grouping_gain"],
             r["final_loss"], r["other_cores"]] for r in result["rows"]]
    fastest = "; ".join(f"{k.replace(',', ', ')} runs: {v}" for k, v in result["fastest"].items())
    return "\n".join([
        f"\n{w.title}: convolution implementations, layout {result['layout']}, {w.steps_per_epoch} steps/epoch",
        common.table(["conv_impl", "precision", "runs", "compile s", "ms/step", "img/s total",
                      "x 1 run", "last-epoch loss", "other load"], rows),
        f"* auto on this backend and precision; x 1 run: img/s over the fastest one-run fp32 row "
        f"({result['one_run_reference']}); ms/step: the whole group advancing one step",
        f"fastest: {fastest}"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """common's flags plus this benchmark's."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--conv_runs", type=_ints, default=None)  # the layout table takes the first
    own.add_argument("--steps", type=int, default=None)
    own.add_argument("--impls", type=_names(layers.CONVS), default=list(layers.CONVS))
    own.add_argument("--precisions", type=_names(models.PRECISIONS), default=None)
    own.add_argument("--conv_impl", choices=layers.CONV_IMPLS, default="auto")
    own.add_argument("--tables", type=_names(TABLES), default=list(TABLES))
    mine, rest = own.parse_known_args(argv)
    args = common.parse_args(
        f"{__doc__.splitlines()[0]} Own flags: --conv_runs=N[,N..] run counts of the convolution table, "
        f"the first also the layout table's (default the workload's: {FULL['conv']['runs']}, --quick {QUICK['conv']['runs']}); --steps=N steps "
        f"per epoch; --impls=a,b ({', '.join(layers.CONVS)}; default all); --precisions=fp32,bf16 "
        "(default fp32 on CPU, both elsewhere); --conv_impl=NAME the layout tables' convolution (default auto); "
        f"--tables=a,b which tables ({', '.join(TABLES)}; default both).", rest)
    return argparse.Namespace(**vars(args), **vars(mine))


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma list of integers") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: run counts must be >= 1")
    return values


def _names(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [v for v in text.split(",") if v]
        if not names or set(names) - set(allowed):
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
        return names
    return parse


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the tables and append the record."""
    args = parse_args(argv)
    load_start = os.getloadavg()
    conv, mlp = workloads(args.quick, args.steps)
    run_counts = args.conv_runs or [len(conv.runs)]
    conv = common.lr_sweep(run_counts[0], conv.steps_per_epoch, conv.epochs).resized(conv_impl=args.conv_impl)
    precisions = args.precisions or (["fp32"] if jax.default_backend() == "cpu" else ["fp32", "bf16"])
    images = common.load_images(args.data_dir, max(conv.train_size, mlp.train_size))
    print(f"data: {images.source}; device: {jax.devices()[0].device_kind}; auto convolution "
          f"{layers.auto_conv_impl()} (fp32), {layers.auto_conv_impl('bf16')} (bf16); auto layout "
          f"{engine.auto_layout(conv.model)}")
    if args.quick and jax.default_backend() == "cpu":
        print(f"--quick: {conv.title} uses {len(conv.runs)} runs (5 LRs x seed 0); the conv layouts "
              f"vmapped or mapped over runs run {SLOW['runs']} runs for {SLOW['epochs']} epoch")
    out, convs = [], None
    if "layouts" in args.tables:
        for w in (conv, mlp):
            result = bench_workload(w, images, args.quick)
            print(report(w, result), flush=True)
            out.append(result)
    if "convs" in args.tables:
        sized = conv.resized(**QUICK_IMPLS) if args.quick and not args.steps else conv
        convs = bench_convs(sized, images, run_counts, args.impls, precisions)
        print(report_convs(sized, convs), flush=True)
    path = pathlib.Path(args.results) if args.results else common.RESULTS_DIR / "engine.jsonl"
    common.append_jsonl(path, common.make_record("engine", args, {
        "data": images.source, "workloads": out, "conv_impls": convs}, load_start))
    print(f"\n{common.load_line(load_start)}\nappended to {path}")


if __name__ == "__main__":
    main()
