"""What both benchmarks share: the workloads, their data, timing `engine.train_group` through its
callbacks, peak memory, the JSONL record and the text tables."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import math
import os
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax.data import datasets, splits
from cifar_jax.io import environment, files
from cifar_jax.nn import models
from cifar_jax.results import run_record
from cifar_jax.training import engine, schedules, step

DEFAULT_DATA_DIR = "~/.cache/cifar10-shared"
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
LRS = (0.1, 0.075, 0.05, 0.025, 0.01)  # seeds/000 §1.1
MIB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model, its optimiser settings and runs, and how many steps: one benchmark workload."""

    name: str
    title: str
    model: models.ModelConfig
    batch_size: int
    runs: tuple[tuple[int, float], ...]  # (seed, learning rate) of every run
    steps_per_epoch: int
    epochs: int
    normalization: str
    schedule: str = "constant"  # or "cyclic": lr_min → lr → lr_min, one cycle over all steps
    lr_min: float = 0.0
    l2: float = 0.0
    conv_impl: str = "auto"  # cifar_jax's convolution implementation (layers.CONV_IMPLS)
    precision: str = "fp32"  # cifar_jax's compute precision (models.PRECISIONS)

    @property
    def train_size(self) -> int:
        """Images in the training split: one epoch is exactly `steps_per_epoch` steps."""
        return self.steps_per_epoch * self.batch_size

    @property
    def half_cycle(self) -> int:
        """n_s of the cyclic schedule: one whole cycle over the benchmark's steps."""
        return max(1, self.steps_per_epoch * self.epochs // 2)

    @property
    def spec(self) -> step.GroupSpec:
        """The engine's static group description (plain SGD)."""
        return step.GroupSpec(self.model, "sgd", self.batch_size, precision=self.precision,
                              conv_impl=self.conv_impl)

    def resized(self, runs: int | None = None, epochs: int | None = None, **changes: Any) -> Workload:
        """The same workload with its first `runs` runs and/or another number of epochs (and any
        other field changed)."""
        return dataclasses.replace(self, runs=self.runs[:runs or len(self.runs)],
                                   epochs=epochs or self.epochs, **changes)

    def hparams(self) -> dict[str, np.ndarray]:
        """Per-run engine hyperparameters, stacked along the run axis."""
        cyclic = dict(lr_min=self.lr_min, half_cycle=float(self.half_cycle))
        return step.stack_hparams([
            dict(seed=seed, lr=lr, l2=self.l2, schedule=schedules.SCHEDULE_IDS[self.schedule],
                 **(cyclic if self.schedule == "cyclic" else {})) for seed, lr in self.runs])

    def learning_rate(self, lr: float, step: int) -> float:
        """The LR at `step`, written apart from cifar_jax so that the loss check covers it too."""
        if self.schedule == "constant":
            return lr
        pos = step % (2 * self.half_cycle) / self.half_cycle
        return self.lr_min + (lr - self.lr_min) * (pos if pos <= 1 else 2 - pos)

    def record(self) -> dict[str, Any]:
        """The workload as plain JSON values."""
        return {**dataclasses.asdict(self), "train_size": self.train_size,
                "half_cycle": self.half_cycle if self.schedule == "cyclic" else None}


def lr_sweep(runs: int, steps_per_epoch: int, epochs: int) -> Workload:
    """seeds/000 §1.1: BaselineNet, batch 64, plain SGD; runs are 5 LRs × seeds (LR varies fastest)."""
    grid = [(seed, lr) for seed in range(math.ceil(runs / len(LRS))) for lr in LRS][:runs]
    return Workload("baseline_lr_sweep", "BaselineNet, batch 64, SGD, LR in {0.1..0.01} x seeds",
                    models.ModelConfig("baseline"), 64, tuple(grid), steps_per_epoch, epochs,
                    "per_channel")


def mlp_group(runs: int, steps_per_epoch: int, epochs: int) -> Workload:
    """seeds/002: MLP 3072-50-50-10, He init, batch 100, cyclic LR 1e-5..0.1, L2 0.005, a seed per run."""
    return Workload("mlp_seed002", "MLP 3072-50-50-10 (He), batch 100, cyclic LR, L2 0.005",
                    models.ModelConfig("mlp", hidden=(50, 50), init="he"), 100,
                    tuple((seed, 0.1) for seed in range(runs)), steps_per_epoch, epochs, "per_dim",
                    "cyclic", 1e-5, 0.005)


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass(frozen=True, eq=False)
class Images:
    """The uint8 NHWC images every workload draws its training split from, and their source."""

    x: np.ndarray
    y: np.ndarray
    source: str

    @property
    def learnable(self) -> bool:
        """False for random images: their loss cannot show learning."""
        return self.source != "random"


def load_images(data_dir: str, n_train: int) -> Images:
    """The CIFAR-10 copy in `data_dir` when it exists, else random images (throughput does not
    depend on pixel values)."""
    root = pathlib.Path(data_dir).expanduser()
    if root.exists():
        ds = datasets.load("cifar10", str(root), download=False)
        return Images(ds.x_train, ds.y_train, f"cifar10 ({root})")
    print(f"note: no CIFAR-10 copy at {root}: random uint8 images instead (throughput does not "
          f"depend on pixel values; the loss check can then only compare, not see learning)")
    return random_images(n_train, (32, 32, 3))


def random_images(n_train: int, image_shape: tuple[int, int, int]) -> Images:
    """Random uint8 images and labels of 10 classes."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train, *image_shape), np.uint8)
    return Images(x, rng.integers(0, 10, n_train).astype(np.int32), "random")


Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # train indices, mean, std


def training_split(images: Images, w: Workload) -> Split:
    """A random subset of `w.train_size` training images and its normalisation statistics."""
    train_idx, _ = splits.make_split(len(images.y), w.train_size, 0, seed=0)
    mean, std = splits.norm_stats(images.x, train_idx, w.normalization)
    return train_idx, mean, std


def device_data(images: Images, split: Split) -> step.Data:
    """The images and split on the device, with empty validation and test sets: epochs then time
    training only, and no evaluation program is compiled."""
    train_idx, mean, std = split
    return step.put_data(images.x, images.y, images.x[:0], images.y[:0], train_idx,
                         np.zeros(0, np.int32), mean, std)


# ----------------------------------------------------------------------------- timing

@dataclasses.dataclass(frozen=True)
class Measurement:
    """One way of training a workload: throughput over each run's epochs after its first."""

    label: str
    runs: int
    steps: int            # timed steps per run
    batch_size: int
    compile_s: float
    step_s: float         # seconds of the timed epochs, all runs together
    warmup_s: float | None  # seconds of the untimed first epochs (None: a single, timed epoch)
    wall_s: float         # the whole call, compilation and warm-up included
    first_loss: float     # training loss of the first epoch, mean over runs
    final_loss: float     # training loss of the last epoch (its last `steps_per_epoch` steps)
    other_cores: float | None = None  # cores other processes kept busy meanwhile (None: unknown)

    @property
    def images_per_s(self) -> float:
        """Training images per second, all runs together."""
        return self.runs * self.steps * self.batch_size / self.step_s

    @property
    def s_per_step(self) -> float:
        """Seconds for the whole group to advance one step."""
        return self.step_s / self.steps

    def record(self) -> dict[str, Any]:
        """The measurement and its derived rates as plain JSON values."""
        return {**dataclasses.asdict(self), "s_per_step": self.s_per_step,
                "images_per_s": self.images_per_s,
                "images_per_s_per_run": self.images_per_s / self.runs}


class Timings:
    """Engine callbacks (the torch loops feed it too) keeping compile time, the seconds of each
    epoch's training, and every run's training loss per epoch. An epoch's seconds are the time
    covered by its runs' training (the union of their spans): the sum over runs trained one after
    another, the wall time of runs trained side by side (par layouts)."""

    def __init__(self) -> None:
        self.compile_s = 0.0
        self.spans: dict[int, list[tuple[float, float]]] = {}
        self.losses: dict[int, list[float]] = {}

    @property
    def epoch_s(self) -> dict[int, float]:
        """Seconds covered by each epoch's training spans."""
        return {epoch: _covered(spans) for epoch, spans in self.spans.items()}

    def on_compiled(self, seconds: float) -> None:
        """Add a chunk's compile time."""
        self.compile_s += seconds

    def on_start(self, runs: np.ndarray, untrained: dict[str, run_record.Metrics]) -> None:
        """Untrained metrics are not needed."""

    def on_epoch(self, runs: np.ndarray, epoch: int, metrics: run_record.Epoch, seconds: float) -> None:
        """Keep the epoch's seconds (compilation excluded by the engine) and training losses."""
        self.add_epoch(epoch, metrics.train.loss, seconds)

    def add_epoch(self, epoch: int, losses: Any, seconds: float) -> None:
        """One epoch's training seconds, ending about now, and its runs' training losses (the torch
        loops call this)."""
        now = time.perf_counter()
        self.spans.setdefault(epoch, []).append((now - seconds, now))
        self.losses.setdefault(epoch, []).extend(np.asarray(losses, float).ravel().tolist())

    def on_end(self, runs: np.ndarray, final: run_record.Final) -> None:
        """Test metrics are not needed."""

    def measurement(self, label: str, w: Workload, wall_s: float, other_cores: float | None) -> Measurement:
        """Time the epochs after the first (which carries one-off warm-up); all of them if only one."""
        epochs = sorted(self.epoch_s)
        timed = epochs[1:] or epochs
        warmup = [e for e in epochs if e not in timed]
        return Measurement(label, len(w.runs), len(timed) * w.steps_per_epoch, w.batch_size,
                           self.compile_s, sum(self.epoch_s[e] for e in timed),
                           sum(self.epoch_s[e] for e in warmup) if warmup else None, wall_s,
                           float(np.mean(self.losses[epochs[0]])), float(np.mean(self.losses[epochs[-1]])),
                           other_cores)


def forget_programs() -> None:
    """Drop every compiled program this process holds (the engine's and JAX's in-memory caches),
    so the next call compiles, or loads from a persistent compile cache, as a new process would."""
    engine._programs.cache_clear()
    engine._COMPILED.clear()
    jax.clear_caches()


def _covered(spans: list[tuple[float, float]]) -> float:
    """Length of the union of the (start, end) spans."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def measure_engine(w: Workload, dev: step.Data, layout: str, label: str | None = None) -> Measurement:
    """Train the workload with cifar_jax in `layout` and measure it."""
    rec = Timings()
    watch = CpuWatch()
    engine.train_group(w.spec, w.hparams(), dev, w.epochs, rec, layout=layout)
    return rec.measurement(label or layout, w, *watch.stop())


class CpuWatch:
    """Wall time since creation, and how many cores other processes kept busy meanwhile (from
    /proc/stat minus this process's CPU time): the noise a shared machine adds to a timing."""

    def __init__(self) -> None:
        self.wall0, self.busy0, self.own0 = time.perf_counter(), _machine_busy_s(), _own_cpu_s()

    def stop(self) -> tuple[float, float | None]:
        """(wall seconds, cores used by other processes; None where /proc/stat is missing)."""
        wall = time.perf_counter() - self.wall0
        if self.busy0 is None:
            return wall, None
        others = (_machine_busy_s() - self.busy0) - (_own_cpu_s() - self.own0)
        return wall, round(max(0.0, others / wall), 2)


def _machine_busy_s() -> float | None:
    """CPU seconds all cores have been busy since boot (Linux), None elsewhere."""
    try:
        fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds this process has used (all its threads)."""
    t = os.times()
    return t.user + t.system


def peak_memory(w: Workload, dev: step.Data, layout: str) -> dict[str, Any]:
    """Peak device memory of the group: the device's counter where it keeps one (process-wide peak
    so far), else XLA's memory analysis of the layout's compiled program, else n/a."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"bytes": int(stats["peak_bytes_in_use"]), "source": "memory_stats (process peak so far)"}
    try:
        analysis = _compiled(w, dev, layout).memory_analysis()
    except Exception as err:  # noqa: BLE001 - a backend without the analysis must not lose the timings
        return {"bytes": None, "source": f"n/a ({type(err).__name__}: {err})"}
    if analysis is None:
        return {"bytes": None, "source": "n/a"}
    parts = {k: int(getattr(analysis, f"{k}_size_in_bytes"))
             for k in ("argument", "output", "temp", "alias")}
    return {"bytes": parts["argument"] + parts["output"] + parts["temp"] - parts["alias"],
            "source": "memory_analysis (arguments + outputs + temporaries - aliased)", **parts}


def _compiled(w: Workload, dev: step.Data, layout: str) -> jax.stages.Compiled:
    """The layout's program built from the engine's public per-run step: one step (loop layouts)
    or an epoch of steps in `lax.scan` (scan layouts), over all runs (vmap, or lax.map for map
    layouts) or over one (seq); the data is an argument, as in the engine."""
    n = 1 if layout.startswith("seq") else len(w.runs)
    hp = {k: v[:n] for k, v in w.hparams().items()}
    state = jax.eval_shape(jax.vmap(lambda h: step.init_run(w.spec, h, tuple(dev.x.shape[1:]))), hp)
    one_step = functools.partial(step.train_step, w.spec)

    def epoch(s: step.TrainState, d: step.Data) -> tuple[step.TrainState, jax.Array]:
        idx = step.epoch_indices(s.hp, jnp.int32(0), d.train_idx, w.batch_size)
        return jax.lax.scan(lambda carry, i: one_step(carry, d, i), s, idx)

    over_runs = _lax_map if layout.startswith("map") else _vmap
    if layout.endswith("scan"):
        return jax.jit(over_runs(epoch), donate_argnums=0).lower(state, dev).compile()
    idx = jax.ShapeDtypeStruct((n, w.batch_size), jnp.int32)
    return jax.jit(over_runs(one_step), donate_argnums=0).lower(state, dev, idx).compile()


def _vmap(f: Any) -> Any:
    """f(state, data, *per_run) vmapped over the runs of state and per_run, data shared."""
    return lambda s, d, *xs: jax.vmap(f, in_axes=(0, None, *[0] * len(xs)))(s, d, *xs)


def _lax_map(f: Any) -> Any:
    """f(state, data, *per_run) on one run after another inside the program (lax.map)."""
    return lambda s, d, *xs: jax.lax.map(lambda a: f(a[0], d, *a[1:]), (s, *xs))


# ----------------------------------------------------------------------------- records

def _environment() -> dict[str, Any]:
    """cifar_jax's environment record plus torch's version and the device: CPU model, its extensions, cores."""
    env = environment.environment()
    try:
        env["versions"]["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        env["versions"]["torch"] = None
    device = jax.devices()[0]
    env["device"] = {"platform": device.platform, "device_kind": device.device_kind,
                     "cpu_model": env["cpu"]["model"] or "unknown", "cpu_features": env["cpu"]["features"],
                     "cores": os.cpu_count()}
    return env


def make_record(benchmark: str, args: argparse.Namespace, body: dict[str, Any],
                load_start: Sequence[float]) -> dict[str, Any]:
    """One JSONL record: what ran, where, when, from which commit, how busy the machine was
    (load averages at the start and the end), and `body`'s numbers."""
    env = _environment()
    return {"benchmark": benchmark, "date_utc": env["timestamp_utc"],
            "git_commit": (env["git"] or {}).get("commit"), "args": vars(args),
            "device": env["device"], "versions": env["versions"], "environment": env,
            "loadavg": {"start": list(load_start), "end": list(os.getloadavg())}, **body}


def load_line(load_start: Sequence[float]) -> str:
    """The 1-minute load average at the start and now, against the cores: other work skews timings."""
    return (f"1-min load average: {load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
            f"end, on {os.cpu_count()} cores (this benchmark itself adds up to the core count)")


def append_jsonl(path: pathlib.Path, record: dict[str, Any]) -> None:
    """Append the record to `path` as one line of JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(files.to_json(record, indent=None))


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags both benchmarks take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes on 2 CPU cores: fewer steps (and fewer conv runs)")
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                        help="a CIFAR-10 copy; random images when it does not exist")
    parser.add_argument("--results", default=None,
                        help="the JSONL file to append to (default benchmarks/results/<name>.jsonl)")
    return parser.parse_args(argv)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as an aligned text table (first column left, the rest right)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(cells[0]), "-" * len(fmt(cells[0]))] + [fmt(r) for r in cells[1:]])


def _cell(value: Any) -> str:
    """A table cell: floats with 3 significant digits (thousands grouped when large)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)
