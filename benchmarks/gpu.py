"""Every GPU measurement in one command: the engine benchmark (every convolution implementation,
fp32 and bf16, 25 and 100 runs; every layout), the PyTorch reference with all its variants, and
the seeds/000 §1.1 sweep end to end in fp32 and in bf16 (its test accuracies side by side), and
on request the layer equality tests on the device, a report at full protocol (`report_seed000`
… `report_seed004`: `experiments.reproduce`, its studies packed into OUT_DIR/<part>.tar.gz) or an
instrument study at its full preset (`sharpness`, `sharpness_gd`, `connectivity`,
`connectivity_convnet`: packed the same way, figures included); one JSONL record and a Markdown
table in OUT_DIR.

    PYTHONPATH=. python -m benchmarks.gpu OUT_DIR [--data_dir=DIR] [--shared=DIR] [--parts=a,b]

Runs from the repository root with jax (CUDA), flax, optax, orbax, absl, matplotlib, numpy and
torch installed, without network or tensorflow-datasets. When DIR holds no CIFAR-10 copy, it is
built from `--shared`'s data/cifar10-jpeg.tar.gz. Each part runs in its own process under a time
limit; the record is rewritten after every part, so a part that fails or is cut short loses only
itself. The part limits add up to about 10 minutes on one H100 or H200.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import time
from typing import Any, Callable, Sequence

from benchmarks import common
from cifar_jax.io import environment
from cifar_jax.nn import layers

# Steps per benchmark epoch (two epochs, the first untimed; 100 give a steady rate), the run
# counts, and the §1.1 flagfile; --smoke: the same pipeline at toy size (a check on a CPU).
SIZES = {"full": dict(steps=100, conv_runs="25,100", layout_runs="25", sweep="experiments/flags/lr_sweep.flags",
                      bench=[]),
         "smoke": dict(steps=4, conv_runs="2,3", layout_runs="2", sweep="experiments/flags/lr_sweep_smoke.flags",
                       bench=["--quick"])}


def _engine_convs(o: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "benchmarks.engine", f"--data_dir={o.data_dir}", f"--steps={o.size['steps']}",
            f"--conv_runs={o.size['conv_runs']}", "--precisions=fp32,bf16", "--tables=convs", f"--impls={o.impls}",
            f"--results={o.out / 'engine.jsonl'}", *o.size["bench"]]


def _engine_layouts(o: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "benchmarks.engine", f"--data_dir={o.data_dir}", f"--steps={o.size['steps']}",
            f"--conv_runs={o.size['layout_runs']}", f"--conv_impl={o.conv_impl}", "--tables=layouts",
            f"--results={o.out / 'engine.jsonl'}", *o.size["bench"]]


def _torch(o: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "benchmarks.torch_reference", f"--data_dir={o.data_dir}",
            f"--steps={o.size['steps']}", f"--conv_runs={o.size['layout_runs']}",
            f"--results={o.out / 'torch_reference.jsonl'}", *o.size["bench"]]


def _sweep(precision: str, *extra: str) -> Callable[[argparse.Namespace], list[str]]:
    def command(o: argparse.Namespace) -> list[str]:
        return [sys.executable, "-m", "experiments.lr_sweep", f"--flagfile={o.size['sweep']}", f"--data_dir={o.data_dir}",
                f"--results_dir={o.results_dir}", f"--name=lr_sweep_{precision}", f"--precision={precision}",
                f"--conv_impl={o.conv_impl}", *extra]
    return command


def _tests(o: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layers.py"]


def _report(report: str) -> Callable[[argparse.Namespace], list[str]]:
    def command(o: argparse.Namespace) -> list[str]:
        return [sys.executable, "-m", "experiments.reproduce", f"--report={report}", f"--data_dir={o.data_dir}",
                f"--results_dir={o.results_dir}", *(["--smoke"] if o.smoke else [])]
    return command


def _study(module: str, preset: str) -> Callable[[argparse.Namespace], list[str]]:
    """An experiment at its full preset (with --smoke, the experiment's own smoke preset)."""
    def command(o: argparse.Namespace) -> list[str]:
        flagfile = f"experiments/flags/{f'{module}_smoke' if o.smoke else preset}.flags"
        return [sys.executable, "-m", f"experiments.{module}", f"--flagfile={flagfile}", f"--data_dir={o.data_dir}",
                f"--results_dir={o.results_dir}"]
    return command


def pack_results(results_dir: pathlib.Path, archive: pathlib.Path, figures: bool = False) -> pathlib.Path | None:
    """What a device call brings back of a report, finished or cut short, as one .tar.gz (a call
    returns at most 16 MiB a file): every study's records, summaries and tables, and the report
    folder with its figures re-encoded as 128-colour PNGs (a third of the size). Left out: resume
    snapshots, checkpoints, connectivity's spawned states and (unless `figures`: an instrument
    study, which has no report) the studies' own figures/ (the report holds a copy of each, and
    reproduce run again redraws them from the records)."""
    if not results_dir.is_dir():
        return None
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(p for p in results_dir.rglob("*") if p.is_file()):
            name = str(path.relative_to(results_dir.parent))
            parts = pathlib.PurePath(name).parts
            in_report = figures or any(part.endswith(("_report", "_report_smoke")) for part in parts)
            if {"resume", "checkpoints", "spawn"} & set(parts) or ("figures" in parts and not in_report):
                continue
            if in_report and path.suffix == ".png":
                data = _small_png(path)
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.add(path, arcname=name)
    return archive


def _small_png(path: pathlib.Path) -> bytes:
    """The figure as a 128-colour PNG (the file as it is without Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        return path.read_bytes()
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").quantize(128).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


# name -> (command, time limit in seconds), in the order they run
# (Measured on an H200: the convolution table of 4 implementations took over 180 s, the fp32
# sweep 136 s with vjp_taps-era convolutions, the bf16 sweep 89 s; the layer tests need > 60 s.)
PARTS: dict[str, tuple[Callable[[argparse.Namespace], list[str]], int]] = {
    "engine_convs": (_engine_convs, 150),
    "sweep_fp32": (_sweep("fp32"), 130),
    "torch": (_torch, 130),
    "sweep_bf16": (_sweep("bf16", "--nolr_range"), 90),
    "engine_layouts": (_engine_layouts, 90),
    "tests": (_tests, 150),
    # The reports at full protocol (issues 9 and 10): one per call, each packed into OUT/<part>.tar.gz
    **{f"report_{r}": (_report(r), 540) for r in ("seed000", "seed001", "seed002", "seed003", "seed004")},
    # issue 19's instrument studies at their full presets, each packed into OUT/<part>.tar.gz
    "sharpness": (_study("sharpness", "sharpness"), 540),
    "sharpness_gd": (_study("sharpness", "sharpness_gd"), 540),
    "connectivity": (_study("connectivity", "connectivity"), 540),
    "connectivity_convnet": (_study("connectivity", "connectivity_convnet"), 540),
}
INSTRUMENT_PARTS = ("sharpness", "sharpness_gd", "connectivity", "connectivity_convnet")
DEFAULT_PARTS = ("engine_convs", "sweep_fp32", "torch", "sweep_bf16", "engine_layouts")  # ~10 minutes; no report


def gpu_name() -> dict[str, str | None]:
    """The GPU's name and memory from nvidia-smi (this process leaves JAX's GPU memory to the parts)."""
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    name, memory, driver = (text.splitlines()[0].split(", ") + [None] * 3)[:3] if text else (None, None, None)
    return {"device_kind": name, "memory": memory, "driver": driver}


# The torch reference shares the GPU between JAX and torch: JAX takes half, not its default 75%.
# The tests run on the default backend (the GPU) instead of tests/conftest.py's CPU default.
PART_ENV = {"torch": {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}, "tests": {"JAX_PLATFORMS": ""}}


def ensure_cifar(data_dir: pathlib.Path, shared: pathlib.Path, log: Callable[[str], None]) -> None:
    """Build the CIFAR-10 copy from the shared JPEG archive when `data_dir` has none."""
    if (data_dir / "cifar-10-batches-py" / "test_batch").exists() or (data_dir / "cifar10.npz").exists():
        return
    builder = shared / "data" / "build_cifar10.py"
    if not builder.exists():
        sys.exit(f"error: no CIFAR-10 copy in {data_dir} and no {builder} to build one (--shared)")
    log(f"building the CIFAR-10 copy in {data_dir} from {builder.parent}")
    subprocess.run([sys.executable, str(builder), "--out", str(data_dir)], check=True)


def fastest_conv(engine_jsonl: pathlib.Path, runs: int) -> str | None:
    """The convolution implementation of the fastest fp32 group of `runs` in the engine record."""
    if not engine_jsonl.exists():
        return None
    for line in reversed(engine_jsonl.read_text().splitlines()):
        fastest = (json.loads(line).get("conv_impls") or {}).get("fastest", {})
        if f"fp32,{runs}" in fastest:
            return fastest[f"fp32,{runs}"]
    return None


ROW = re.compile(r"^  (\S+) (fp32|bf16) (\d+) runs: ([\d.]+) ms/step, ([\d,]+) img/s, compile ([\d.]+) s$")


def conv_rows_from_log(log: pathlib.Path) -> list[dict[str, Any]]:
    """The convolution-table rows that benchmarks.engine printed as it went (what survives a
    part cut short before it wrote its record)."""
    rows = []
    for line in log.read_text().splitlines() if log.exists() else []:
        m = ROW.match(line)
        if m:
            rows.append({"conv_impl": m[1], "precision": m[2], "runs": int(m[3]), "s_per_step": float(m[4]) / 1e3,
                         "images_per_s": float(m[5].replace(",", "")), "compile_s": float(m[6])})
    return rows


def sweep_table(results_dir: pathlib.Path) -> list[dict[str, Any]]:
    """Per LR: test accuracy mean ± std over seeds in fp32 and in bf16, from the sweeps' summaries."""
    summaries = {}
    for precision in ("fp32", "bf16"):
        path = results_dir / f"lr_sweep_{precision}" / "summary.json"
        if path.exists():
            summaries[precision] = json.loads(path.read_text())["configs"]
    rows = []
    for name in sorted(set().union(*summaries.values()) if summaries else (), key=lambda n: -float(n.split("=")[1])):
        row = {"config": name}
        for precision, configs in summaries.items():
            if name in configs:
                acc = configs[name]["metrics"]["test_acc"]
                row[precision] = {"mean": acc["mean"], "std": acc["std"], "n": acc["n"],
                                  "diverged": configs[name]["n_diverged"]}
        rows.append(row)
    return rows


def markdown(record: dict[str, Any]) -> str:
    """The suite's tables: parts, convolution rows, torch ratios and the precision table."""
    lines = [f"# GPU suite, {record['device'].get('device_kind')} ({record['date_utc']}, commit "
             f"{(record['git_commit'] or '')[:10]})", "", "| part | status | wall s |", "|---|---|---:|"]
    lines += [f"| {name} | {p['status']} | {p['wall_s']:.0f} |" for name, p in record["parts"].items()]
    convs = record.get("engine_convs")
    if convs:
        lines += ["", f"## Engine: convolution implementations ({convs['layout']}, batch 64, "
                  f"{convs['workload']['steps_per_epoch']} timed steps)", "",
                  "| conv_impl | precision | runs | compile s | ms/step | img/s | x 1 run |", "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['conv_impl']} | {r['precision']} | {r['runs']} | {r['compile_s']:.1f} | "
                  f"{1e3 * r['s_per_step']:.3f} | {r['images_per_s']:,.0f} | {r['grouping_gain'] or 0:.2f} |"
                  for r in convs["rows"]]
    for w in record.get("torch", {}).get("workloads", []):
        lines += ["", f"## PyTorch reference: {w['workload']['title']}, {len(w['workload']['runs'])} runs", "",
                  "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in w.get("ratios", {}).items() if isinstance(v, (int, float))]
    for name in ("sweep_fp32", "sweep_bf16"):
        part = record["parts"].get(name)
        if part:
            lines.append(f"\n§1.1 sweep {name[-4:]}: {part['status']}, {part['wall_s']:.0f} s end to end")
    if record.get("precision_table"):
        lines += ["", "## §1.1 test accuracy, fp32 vs bf16 (mean ± std over seeds)", "",
                  "| config | fp32 | bf16 | bf16 − fp32 (pp) |", "|---|---:|---:|---:|"]
        for row in record["precision_table"]:
            cell = lambda p: f"{100 * row[p]['mean']:.2f} ± {100 * row[p]['std']:.2f}" if p in row and row[p]["mean"] is not None else "–"
            both = all(p in row and row[p]["mean"] is not None for p in ("fp32", "bf16"))
            diff = f"{100 * (row['bf16']['mean'] - row['fp32']['mean']):+.2f}" if both else "–"
            lines.append(f"| {row['config']} | {cell('fp32')} | {cell('bf16')} | {diff} |")
    return "\n".join(lines) + "\n"


def last_record(path: pathlib.Path) -> dict[str, Any] | None:
    """The last JSON line of a benchmark's record file, if any."""
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="folder for gpu.jsonl, gpu.md, gpu.log and the benchmark records")
    parser.add_argument("--data_dir", type=pathlib.Path, default=pathlib.Path(common.DEFAULT_DATA_DIR).expanduser())
    parser.add_argument("--shared", type=pathlib.Path, default=pathlib.Path("../shared"),
                        help="the shared folder whose data/ builds the CIFAR-10 copy when needed")
    parser.add_argument("--results_dir", type=pathlib.Path, default=pathlib.Path("/tmp/cifar_jax_gpu_results"),
                        help="where the §1.1 sweeps and the reports write their study folders")
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                        help=f"comma list from {', '.join(PARTS)} (default: {', '.join(DEFAULT_PARTS)})")
    parser.add_argument("--impls", default=",".join(layers.CONVS), help="the convolution table's implementations")
    parser.add_argument("--smoke", action="store_true", help="the same pipeline at toy size (a check on a CPU)")
    parser.add_argument("--commit", default=None, help="the git commit to record (default: this checkout's)")
    parser.add_argument("--conv_impl", default=None, help="the sweeps' --conv_impl (default: the fastest "
                        "fp32 25-run implementation of the engine_convs part, else auto)")
    o = parser.parse_args(argv)
    o.size = SIZES["smoke" if o.smoke else "full"]
    parts = [p for p in o.parts.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    o.out.mkdir(parents=True, exist_ok=True)
    log_file = (o.out / "gpu.log").open("a")

    def log(message: str) -> None:
        print(message, flush=True)
        log_file.write(message + "\n")
        log_file.flush()

    ensure_cifar(o.data_dir.expanduser(), o.shared, log)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(pathlib.Path.cwd()), os.environ.get("PYTHONPATH")]))}
    record = {"benchmark": "gpu", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
              "git_commit": o.commit or (environment.git_state() or {}).get("commit"),
              "args": {k: v if isinstance(v, dict) else str(v) for k, v in vars(o).items()}, "device": gpu_name(), "parts": {}}
    for name in parts:
        if name in ("sweep_fp32", "sweep_bf16", "engine_layouts") and o.conv_impl is None:
            o.conv_impl = fastest_conv(o.out / "engine.jsonl", int(o.size["layout_runs"])) or "auto"
            log(f"the sweeps and the layout table use --conv_impl={o.conv_impl}")
        command, limit = PARTS[name]
        args = command(o)
        log(f"\n=== {name} (limit {limit} s): {' '.join(args)}")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(args, stdout=log_file, stderr=subprocess.STDOUT, env={**env, **PART_ENV.get(name, {})},
                                  timeout=limit)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            status = f"cut at {limit} s"
        record["parts"][name] = {"status": status, "wall_s": time.perf_counter() - t0, "command": args}
        log(f"=== {name}: {status} in {record['parts'][name]['wall_s']:.0f} s")
        if name.startswith("report_") or name in INSTRUMENT_PARTS:
            packed = pack_results(o.results_dir, o.out / f"{name}.tar.gz", figures=name in INSTRUMENT_PARTS)
            record["parts"][name]["archive"] = packed and packed.name
            log(f"packed {o.results_dir} into {packed} ({packed.stat().st_size / 2**20:.1f} MiB)" if packed
                else f"nothing under {o.results_dir} to pack")
        engine_rec = last_record(o.out / "engine.jsonl")
        if name == "engine_convs":
            if engine_rec and engine_rec.get("conv_impls"):
                record["engine_convs"] = engine_rec["conv_impls"]
            else:  # cut short: keep the rows it printed
                record["engine_convs_rows"] = conv_rows_from_log(o.out / "gpu.log")
        torch_rec = last_record(o.out / "torch_reference.jsonl")
        if torch_rec:
            record["torch"] = {k: torch_rec[k] for k in ("passed", "torch_device", "workloads") if k in torch_rec}
        record["sweep_conv_impl"] = o.conv_impl
        record["precision_table"] = sweep_table(o.results_dir)
        (o.out / "gpu.md").write_text(markdown(record))
        (o.out / "gpu.json").write_text(json.dumps(record, default=str))
    common.append_jsonl(o.out / "gpu.jsonl", record)
    (o.out / "gpu.json").unlink()
    log((o.out / "gpu.md").read_text())


if __name__ == "__main__":
    main()
