"""The group runner: trains a group of runs as one state pytree with a leading run axis.

One run's math is `train` (state, step, evaluation); here it is batched over the runs of a group
and driven: the layout decides whether the run axis is vmapped (sharded over the devices' mesh)
or the runs go one after another, and whether an epoch's steps run inside `lax.scan` or as a
host loop of jitted steps. Every layout computes the same numbers; the automatic choice follows
the measurements in README.md ("Performance"). A group too big for a device's memory is split
into chunks of runs. Progress and metrics go to `Callbacks` as typed values (`run_record.Epoch`,
`run_record.Final`).
"""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import threading
import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from cifar_jax.nn import models
from cifar_jax.results import run_record
from cifar_jax.results.run_record import Metrics
from cifar_jax.training import dynamics, optim, schedules
from cifar_jax.training.step import COMPILER_OPTIONS, Data, epoch_indices, evaluate, GroupSpec, init_run, LAYOUTS, sharpness_of, sharpness_points, step_columns, train_epoch, train_step, TrainState

PROGRESS_SECONDS = 10.0  # a progress line inside an epoch at most this often (epochs longer than this)
PROGRESS_POINTS = 10     # a scanned epoch reports its step count to the host this many times (0: never)


class _Progress:
    """Progress inside the epoch being trained: steps done, images/s and the epoch's ETA, at most
    every PROGRESS_SECONDS, to `on_progress(runs, epoch, steps done, steps, seconds)` of the
    callbacks. On CPU, after a scanned epoch that took PROGRESS_SECONDS / 2 or more, the next ones
    run a program whose compiled steps call `heard` (a host callback) every steps // PROGRESS_POINTS
    steps: only then, as a program with a host callback is never kept in the persistent compilation
    cache. Accelerator programs have no callback (their epochs take seconds); a host loop of steps
    calls it itself, on any backend. Kept per thread, as runs trained in threads (par layouts)
    report their own; a compiled callback comes from an XLA thread and reports the main thread's
    epoch (only the main thread runs programs with the callback: `_heard`)."""

    def __init__(self) -> None:
        self._by_thread: dict[int, list] = {}  # thread id -> [report, t0, last]

    def start(self, report: Callable[[int, float], None] | None) -> None:
        now = time.perf_counter()
        self._by_thread[threading.get_ident()] = [report, now, now]

    def due(self) -> bool:
        """Whether this thread's epoch is due a progress line."""
        _, _, last = self._by_thread[threading.get_ident()]
        return time.perf_counter() - last >= PROGRESS_SECONDS

    def heard(self, step: Any) -> None:
        entry = self._by_thread.get(threading.get_ident()) or self._by_thread.get(threading.main_thread().ident)
        now = time.perf_counter()
        if entry and entry[0] is not None and now - entry[2] >= PROGRESS_SECONDS:
            entry[2] = now
            entry[0](int(np.max(step)), now - entry[1])


_PROGRESS = _Progress()


def auto_layout(model: models.ModelConfig, backend: str | None = None) -> str:
    """The measured-fastest layout (benchmarks/README.md). On CPU runs are not vmapped: vmapped
    convs become slow grouped convs and even the vmapped MLP group lost to runs in sequence
    (47k vs 77k images/s for 25 seeds/002 MLPs); conv steps are slow inside scan on XLA:CPU, so
    conv models host-loop their steps, a run per core side by side (XLA leaves a core idle in a
    small conv net's step: 1.3-1.7x the images/s of one run at a time on 2 cores). Elsewhere the
    whole group is vmapped with scanned steps."""
    if (backend or jax.default_backend()) != "cpu":
        return "vmap_scan"
    return "par_loop" if models.MODELS[model.name].convolutional else "seq_scan"


class Callbacks(Protocol):
    """What the engine reports as it goes; `runs` are indices into the group."""

    def on_compiled(self, seconds: float) -> None: ...
    def on_log(self, message: str) -> None: ...  # optional: the engine prints when it is missing
    def on_start(self, runs: np.ndarray, untrained: dict[str, Metrics]) -> None: ...
    def on_epoch(self, runs: np.ndarray, epoch: int, metrics: run_record.Epoch, seconds: float) -> None: ...
    def on_end(self, runs: np.ndarray, final: run_record.Final) -> None: ...
    # optional, for mid-run resume: the newest saved state of these runs, shaped like `template`,
    # with the epochs it has done (the records are then continued, not started: on_resume replaces
    # on_start); and after each epoch, before on_epoch, a getter of the state to save from
    def resume(self, runs: np.ndarray, template: Any) -> tuple[int, Any] | None: ...
    def on_resume(self, runs: np.ndarray, epochs_done: int) -> None: ...
    def on_state(self, runs: np.ndarray, epoch: int, state: Callable[[], TrainState]) -> None: ...
    # optional: progress inside an epoch longer than PROGRESS_SECONDS
    def on_progress(self, runs: np.ndarray, epoch: int, done: int, seconds: float, *, steps: int) -> None: ...


def _map_over_runs(f: Callable, *axes: int | None) -> Callable:
    """Like vmap(f, in_axes=axes) but one run after another inside the program (lax.map)."""
    def mapped(*args):
        def one(xs):
            it = iter(xs)
            return f(*[next(it) if ax == 0 else a for a, ax in zip(args, axes)])
        return jax.lax.map(one, [a for a, ax in zip(args, axes) if ax == 0])
    return mapped


@functools.lru_cache(maxsize=None)
def _programs(spec: GroupSpec, image_shape: tuple[int, ...], mesh: Mesh, run_axis: str) -> dict[str, Callable]:
    """The jitted, run-batched programs of a group on `mesh` (cached). The run axis is vmapped
    (mapped to the mesh axis "runs") or lax.mapped; batches split over the mesh axis "batch"."""
    if run_axis == "map":
        batched = _map_over_runs
    else:
        batched = lambda f, *axes: jax.vmap(f, in_axes=axes, spmd_axis_name="runs")
    split = lambda idx: jax.lax.with_sharding_constraint(
        idx, NamedSharding(mesh, P("runs", *[None] * (idx.ndim - 2), "batch")))

    def indices(state, data, epoch):
        idx = batched(lambda hp: epoch_indices(hp, epoch, data.train_idx, spec.batch_size), 0)(state.hp)
        return split(idx)

    def epoch(state, data, epoch, heard=None):
        steps = data.train_idx.shape[0] // spec.batch_size
        one = functools.partial(train_epoch, spec, on_steps=heard, every=max(1, steps // max(1, PROGRESS_POINTS)))
        return batched(one, 0, None, 0)(state, data, indices(state, data, epoch))

    def step(state, sums, per_step, data, idx, s):
        state, m = batched(functools.partial(train_step, spec), 0, None, 0)(state, data, split(idx[:, s]))
        return state, sums + m, per_step.at[:, s].set(m)

    def ev(state, x, y, idx, mean, std):
        return batched(functools.partial(evaluate, spec), 0, None, None, None, None, None)(
            state, x, y, idx, mean, std)

    by_run = NamedSharding(mesh, P("runs"))  # the state lives sharded by run, also where XLA would not infer it
    jit = functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS.get(mesh.devices.flat[0].platform))
    return dict(init=jit(batched(lambda hp: init_run(spec, hp, image_shape), 0), out_shardings=by_run),
                epoch=jit(epoch, donate_argnums=0, out_shardings=by_run),
                heard_epoch=jit(functools.partial(epoch, heard=_PROGRESS.heard), donate_argnums=0, out_shardings=by_run),
                step=jit(step, donate_argnums=(0, 1, 2), out_shardings=by_run),
                indices=jit(indices), evaluate=jit(ev),
                sharpness=jit(batched(functools.partial(sharpness_of, spec), 0, None), donate_argnums=0,
                              out_shardings=by_run),
                lr=jit(batched(schedules.learning_rate, 0, 0)),
                l2=jit(batched(lambda params: optim.l2_penalty(params, spec.model.norm_l2), 0)))


def make_mesh(n_runs: int, batch_size: int, devices: list | None = None) -> Mesh:
    """A ("runs", "batch") mesh over the local devices: the run axis as wide as the runs allow,
    the rest of the devices splitting each batch (data parallel) where the batch divides."""
    devices = list(devices or jax.local_devices())
    runs_axis = min(n_runs, len(devices))
    batch_axis = len(devices) // runs_axis
    while batch_axis > 1 and batch_size % batch_axis:
        batch_axis -= 1
    used = np.asarray(devices[: runs_axis * batch_axis]).reshape(runs_axis, batch_axis)
    return Mesh(used, ("runs", "batch"))


def _eval_splits(prog: dict, state: TrainState, data: Data, splits: tuple[str, ...], n: int
                 ) -> dict[str, Metrics]:
    """Eval-mode metrics of the first n runs on the named splits (train, val, test); a split
    with no examples is left out."""
    out = {}
    for split in splits:
        if split == "test":
            x, y, idx = data.x_test, data.y_test, jnp.arange(data.y_test.shape[0], dtype=jnp.int32)
        else:
            x, y, idx = data.x, data.y, getattr(data, f"{split}_idx")
        if idx.shape[0] == 0:
            continue
        values = np.asarray(prog["evaluate"](state, x, y, idx, data.mean, data.std))[:n]
        out[split] = Metrics(*values.T)
    return out


def _untrained(chunk: _Chunk, state: TrainState, splits: tuple[str, ...], seen: dict | None) -> dict[str, Metrics]:
    """`_eval_splits` of the chunk's untrained runs, evaluated only where a run starts from
    variables no earlier chunk of the group evaluated on a run axis as wide (runs of one seed that
    differ in a per-run option, as an LR sweep's do, share them: the same program on the same
    variables gives the same numbers). `seen` keeps each run's numbers by that key."""
    if seen is None:
        return _eval_splits(chunk.prog, state, chunk.data, splits, chunk.n)
    variables = chunk.first({"params": state.params, "batch_stats": state.batch_stats})
    leaves, width = jax.tree_util.tree_leaves(variables), len(state.hp["seed"])
    keys = [(width, hashlib.sha256(b"".join(np.ascontiguousarray(x[j]).tobytes() for x in leaves)).digest())
            for j in range(chunk.n)]
    if not all(k in seen for k in keys):
        evals = _eval_splits(chunk.prog, state, chunk.data, splits, chunk.n)
        seen.update((k, {split: np.stack(m, -1)[j] for split, m in evals.items()}) for j, k in enumerate(keys))
    return {split: Metrics(*np.stack([seen[k][split] for k in keys]).T) for split in seen[keys[0]]}


def _masked(metrics: Metrics | None, alive: np.ndarray) -> Metrics | None:
    """NaN for diverged runs: their frozen parameters are not a trained model."""
    return None if metrics is None else Metrics(*(np.where(alive, v, np.nan) for v in metrics))


def train_group(spec: GroupSpec, hp: dict[str, np.ndarray], data: Data, epochs: int,
                callbacks: Callbacks, *, layout: str = "auto", memory_limit: int | None = None,
                initial: dict | None = None, first_epoch: int = 0, until: int | None = None) -> TrainState:
    """Train a group of runs for `epochs`, reporting through `callbacks`; returns the final
    state of every run (stacked along the run axis).

    vmap layouts train the runs together, sharded over the local devices; map layouts train
    them one after another inside one program; seq layouts one per device at a time. A group
    whose compiled program needs more than `memory_limit` bytes per device (default: 90% of an
    accelerator's memory) is split into chunks of runs that fit.
    `initial` ({"params": {layer: [R, ...]}, "batch_stats": {...}}) replaces those layers of the
    fresh initialisation, e.g. restored pretrained layers to freeze; with "opt_state" and "step"
    too it is a whole state to continue from, after `first_epoch` epochs (e.g. children spawned
    from a parent run's state at epoch k: the epochs and the schedule go on from there). With
    `until` < `epochs` the runs stop after epoch `until` without their end (no `on_end`: a rung of
    successive halving, after which the runs kept resume from their snapshots); the schedule stays
    `epochs` long."""
    layout = auto_layout(spec.model) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"--layout={layout!r} is unknown; allowed: {', '.join(LAYOUTS)}")
    devices = jax.local_devices()
    n = len(hp["seed"])

    def train(runs: np.ndarray, cbs: Callbacks, devs: list, limit: int | None, seen: dict | None) -> TrainState:
        start_from = jax.tree_util.tree_map(lambda x: x[runs], initial) if initial else None
        return _train_chunk(spec, {k: v[runs] for k, v in hp.items()}, runs, data, epochs, cbs, layout, devs,
                            limit, start_from, first_epoch, epochs if until is None else until, seen)

    if layout.startswith("par"):
        return _in_threads(n, lambda runs, cbs, seen: train(runs, cbs, devices[:1], None, seen), callbacks)
    chunk = min(n, len(devices)) if layout.startswith("seq") else n
    limit = memory_limit or _device_memory(devices[0])
    states, start, untrained = [], 0, {}
    while start < n:
        runs = np.arange(start, min(start + chunk, n))
        try:
            states.append(train(runs, callbacks, devices, limit, untrained if chunk < n else None))
        except _TooBig as big:
            chunk = big.fits
            log = getattr(callbacks, "on_log", print)  # on_log is optional for callers of the engine
            log(f"group of {len(runs)} runs needs {big.need / 2**30:.2f} GiB per device, "
                f"more than the {limit / 2**30:.2f} GiB available: training {chunk} runs at a time")
            continue
        start += len(runs)
    return states[0] if len(states) == 1 else _stack_chunks(states)


def _in_threads(n: int, train: Callable[[np.ndarray, Callbacks, dict], TrainState], callbacks: Callbacks) -> TrainState:
    """Runs 0..n-1 each trained by `train(runs, callbacks, untrained)`, one per host thread and as
    many at a time as the process has CPU cores: on CPU, XLA leaves the second core idle in a small
    net's step (BaselineNet's took the same time on one core as on two), and two runs side by side
    keep both busy. Each run computes what it computes alone; the callbacks are called one at a time,
    and once a run fails (or the caller is interrupted) the others stop at their next callback."""
    stop, lock, seen = threading.Event(), threading.Lock(), {}
    shared = _Serialized(callbacks, lock, stop)
    workers = max(1, min(n, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cifar_jax-run") as pool:
        futures = [pool.submit(train, np.array([i]), shared, seen) for i in range(n)]
        try:
            done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for f in futures:  # the first failure in run order, else every state
                if f in done and f.exception() is not None:
                    raise f.exception()
            states = [f.result() for f in futures]
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise
    return states[0] if n == 1 else _stack_chunks(states)


class _Stopped(Exception):
    """A run trained in a thread stops: another run failed, or the caller was interrupted."""


class _Serialized:
    """Callbacks shared by runs trained in threads: one call at a time, none once `stop` is set
    (the calling run then ends with _Stopped)."""

    def __init__(self, callbacks: Callbacks, lock: threading.Lock, stop: threading.Event) -> None:
        self._callbacks, self._lock, self._stop = callbacks, lock, stop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._callbacks, name)  # AttributeError for an optional callback it lacks
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._stop.is_set():
                raise _Stopped(name)
            with self._lock:
                return attr(*args, **kwargs)
        return call


@jax.jit
def _stack_chunks(states: list[TrainState]) -> TrainState:
    """The chunks' final states as one along the run axis: one program (leaf by leaf, eagerly, it
    was one compiled program per leaf shape: 26 in the lr_sweep smoke preset)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *states)


class _TooBig(Exception):
    """A chunk whose compiled program would not fit; `fits` runs would."""

    def __init__(self, need: int, fits: int):
        super().__init__(need, fits)
        self.need, self.fits = need, fits


def _device_memory(device: Any) -> int | None:
    """Bytes a group may use on `device`: 90% of the accelerator's limit; None on CPU."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    return int(0.9 * stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _check_fits(compiled: Any, n_runs: int, shared_bytes: int, limit: int | None, width: int) -> None:
    """Raise _TooBig when the compiled program's memory (n_runs per device, over `width`
    devices of the run axis) exceeds `limit` bytes per device."""
    if limit is None or n_runs == 1:
        return
    mem = compiled.memory_analysis()
    if mem is None:
        return
    need = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    if need > limit:
        per_run = max(1, (need - shared_bytes) // n_runs)
        raise _TooBig(need, width * max(1, min(n_runs - 1, (limit - shared_bytes) // per_run)))


def _window_stats(acc: np.ndarray, window: int, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """[R, tensors, 3] (mean |g|, std |g|, mean ‖g‖) over the first and the last `window` steps,
    from the accumulated sums (std over every element of those steps: sqrt(E[g²] - E[|g|]²))."""
    out = []
    for sums in (acc[:, 0], acc[:, 1]):
        sums = sums / min(window, total_steps)
        mean, sq, norm = sums[..., 0], sums[..., 1], sums[..., 2]
        out.append(np.stack([mean, np.sqrt(np.maximum(sq - mean ** 2, 0.0)), norm], -1))
    return out[0], out[1]


def _noise_scale(sums: np.ndarray, steps: int, spec: GroupSpec) -> np.ndarray:
    """[R, 3] (|G|², tr Σ, B_simple) of an epoch from its summed noise columns (the small batches'
    |g|², the big ones' and their count): the epoch's means are the smoothing before the ratio."""
    small_sq, big_sq, windows = sums[:, 0] / steps, sums[:, 1] / np.maximum(sums[:, 2], 1), sums[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.stack(dynamics.noise_scale(small_sq, big_sq, *dynamics.noise_batches(spec.batch_size, spec.noise_window)), -1)
    return np.where(windows[:, None] > 0, out, np.nan)


def _loss_noise(losses: np.ndarray, batch_size: int) -> np.ndarray:
    """[R, steps] summed step losses → [R] the noise of the per-step loss: the root mean square of
    its step-to-step changes over √2 (the per-step standard deviation for independent noise on a
    slow trend); NaN with a single step."""
    steps = losses.astype(np.float64) / batch_size  # float64: an exploding loss's square stays finite
    if steps.shape[1] < 2:
        return np.full(len(steps), np.nan)
    return np.sqrt(np.mean(np.diff(steps, axis=1) ** 2, axis=1) / 2)


def _loss_trace(losses: np.ndarray, every: int, batch_size: int) -> np.ndarray:
    """[R, steps] summed step losses → [R, steps // every] mean loss of every `every` steps."""
    points = losses.shape[1] // every
    return losses[:, : points * every].reshape(len(losses), points, every).mean(-1) / batch_size


def _padded(hp: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """Repeat the last run so the run axis divides the mesh's "runs" axis."""
    return _pad_runs(hp, len(hp["seed"]) + -len(hp["seed"]) % width)


def _pad_runs(tree: Any, width: int) -> Any:
    """Every leaf's run axis (the first) padded to `width` by repeating its last run."""
    return jax.tree_util.tree_map(lambda x: np.concatenate([x, np.repeat(x[-1:], width - len(x), 0)]), tree)


class _Chunk(NamedTuple):
    """A chunk of a group's runs laid out on a mesh: its programs, data and sharding, its runs'
    count and the padded count the mesh holds."""

    spec: GroupSpec
    runs: np.ndarray       # the chunk's run indices within the group (the callbacks' names for them)
    mesh: Mesh
    prog: dict[str, Callable]
    data: Data
    by_run: NamedSharding
    scan: bool             # an epoch is one compiled scan (else a Python loop of compiled steps)
    steps: int             # steps per epoch

    @property
    def n(self) -> int:
        return len(self.runs)

    def first(self, tree: Any) -> Any:
        """The chunk's own runs of a padded, run-stacked pytree, on the host."""
        return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x))[:self.n], tree)


def _train_chunk(spec: GroupSpec, hp: dict[str, np.ndarray], runs: np.ndarray, data: Data,
                 epochs: int, callbacks: Callbacks, layout: str, devices: list, limit: int | None,
                 initial: dict | None, first_epoch: int, until: int, untrained: dict | None) -> TrainState:
    """One chunk of a group's runs, in phases: lay it out on a mesh, start its state (fresh, from
    `initial`, or resumed from a snapshot), compile (refusing a program that does not fit), evaluate
    the untrained runs (`untrained`: the group's evaluations so far; None in a group of one chunk),
    train epoch by epoch up to `until`, and evaluate the end when that is the last epoch."""
    with _SETUP:  # runs in threads (par layouts) lay out and compile one at a time: each program once
        chunk, hp = _lay_out(spec, hp, runs, data, layout, devices)
        state, done, resumed = _start(chunk, hp, initial, first_epoch, callbacks)
        t0 = time.perf_counter()
        run = _compile(chunk, state, len(hp["seed"]), limit)
    callbacks.on_compiled(time.perf_counter() - t0)
    if resumed:
        callbacks.on_resume(runs, done)
    else:
        before = ("train", "val", "test") if spec.eval_train != "none" else ("val", "test")
        callbacks.on_start(runs, _untrained(chunk, state, before, untrained))
    on_state = getattr(callbacks, "on_state", None)
    for epoch in range(done, until):
        state, metrics, seconds = _epoch(chunk, run, state, epoch, callbacks)
        run = _heard(chunk, run, state, seconds, callbacks)
        if on_state:  # before the epoch's records: a saved state is never behind them
            on_state(runs, epoch + 1, lambda: chunk.first(state))
        callbacks.on_epoch(runs, epoch + 1, metrics, seconds)
    if until == epochs:
        callbacks.on_end(runs, _final(chunk, state, epochs))
    return jax.tree_util.tree_map(lambda x: jax.device_get(x)[:chunk.n], state)


def _lay_out(spec: GroupSpec, hp: dict[str, np.ndarray], runs: np.ndarray, data: Data, layout: str,
             devices: list) -> tuple[_Chunk, dict[str, jax.Array]]:
    """The chunk on its mesh, and its per-run arrays padded to the mesh and sharded by run."""
    run_axis = layout.split("_")[0]
    mesh = make_mesh(1 if run_axis == "map" else len(runs), spec.batch_size, devices)
    data = jax.device_put(data, NamedSharding(mesh, P()))
    steps = data.train_idx.shape[0] // spec.batch_size
    if steps == 0:
        raise ValueError(f"--batch_size={spec.batch_size} is larger than the training split "
                         f"({data.train_idx.shape[0]} images)")
    if spec.loss_every > steps:
        raise ValueError(f"--loss_every={spec.loss_every} is more than the {steps} steps of an epoch")
    by_run = NamedSharding(mesh, P("runs"))
    chunk = _Chunk(spec, runs, mesh, _programs(spec, tuple(data.x.shape[1:]), mesh, run_axis), data, by_run,
                   layout.endswith("scan"), steps)
    return chunk, jax.device_put(_padded(hp, mesh.shape["runs"]), by_run)


def _start(chunk: _Chunk, hp: dict[str, jax.Array], initial: dict | None, first_epoch: int,
           callbacks: Callbacks) -> tuple[TrainState, int, bool]:
    """The chunk's starting state (fresh, with `initial`'s layers or whole state, or its newest
    snapshot when the callbacks have one), the epochs already done and whether it resumed."""
    state = chunk.prog["init"](hp)
    padded = len(hp["seed"])
    if initial:
        merged = {k: {**getattr(state, k), **_pad_runs(initial.get(k, {}), padded)} for k in ("params", "batch_stats")}
        merged.update((k, _pad_runs(initial[k], padded)) for k in ("opt_state", "step") if k in initial)
        state = state._replace(**merged)
    resume = getattr(callbacks, "resume", None)
    resumed = resume(chunk.runs, jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((chunk.n, *x.shape[1:]), x.dtype), state)) if resume else None
    done = first_epoch
    if resumed:
        done, saved = resumed
        state = _pad_runs(saved, padded)
    return jax.device_put(state, chunk.by_run), done, bool(resumed)


def _compile(chunk: _Chunk, state: TrainState, padded: int, limit: int | None) -> Callable:
    """The chunk's epoch program (scan layouts) or step program, compiled ahead of time so that a
    program too big for the device's memory is refused before it runs (with the sharpness's, which
    runs as a program of its own unless a scanned epoch holds it)."""
    spec, prog, data = chunk.spec, chunk.prog, chunk.data
    if chunk.scan:
        run = _aot(prog["epoch"], state, data, jnp.int32(0))
    else:
        n_columns = step_columns(spec, state.grad_acc.shape[2])["noise"].stop  # grad_acc: [runs, 2, tensors, 3]
        zeros = lambda *shape: jax.device_put(jnp.zeros((padded, *shape)), chunk.by_run)
        run = _aot(prog["step"], state, zeros(n_columns), zeros(chunk.steps, n_columns), data,
                   prog["indices"](state, data, jnp.int32(0)), jnp.int32(0))
    compiled = [run]
    if spec.sharpness_every and not (chunk.scan and sharpness_points(spec, chunk.steps)):
        compiled.append(_aot(prog["sharpness"], state, data))
    for program in compiled:
        _check_fits(program, padded // chunk.mesh.shape["runs"],
                    sum(x.nbytes for x in jax.tree_util.tree_leaves(data)), limit, chunk.mesh.shape["runs"])
    return run


def _heard(chunk: _Chunk, run: Callable, state: TrainState, seconds: float, callbacks: Callbacks) -> Callable:
    """The program for the next epochs: after a scanned epoch on CPU long enough to want progress
    lines inside it (PROGRESS_SECONDS / 2 of training), the one whose steps call the host (the same
    numbers); else `run`."""
    if (chunk.scan and PROGRESS_POINTS and seconds >= PROGRESS_SECONDS / 2 and hasattr(callbacks, "on_progress")
            and chunk.mesh.devices.flat[0].platform == "cpu"
            and threading.current_thread() is threading.main_thread()):  # in a thread (par): see _Progress
        return _aot(chunk.prog["heard_epoch"], state, chunk.data, jnp.int32(0))
    return run


_COMPILED: dict = {}
_SETUP = threading.Lock()


def _aot(program: Callable, *args: Any) -> Any:
    """A jitted program lowered and compiled for the shapes, types and shardings of `args`, once
    per process (a study's later parts, or a study run again, reuse it)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    key = (program, tree, tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in leaves))
    if key not in _COMPILED:
        _COMPILED[key] = program.lower(*args).compile()
    return _COMPILED[key]


def _epoch(chunk: _Chunk, run: Callable, state: TrainState, epoch: int,
           callbacks: Callbacks) -> tuple[TrainState, run_record.Epoch, float]:
    """One epoch of training (a compiled scan, or compiled steps with the sharpness between them
    and progress reports), then its evaluations and measurements; the seconds of training."""
    spec, prog, data, steps, n = chunk.spec, chunk.prog, chunk.data, chunk.steps, chunk.n
    columns = step_columns(spec, state.grad_acc.shape[2])
    points = sharpness_points(spec, steps)
    on_progress = getattr(callbacks, "on_progress", None)
    t0 = time.perf_counter()
    lr = np.asarray(prog["lr"](state.hp, state.step))[:n]
    _PROGRESS.start(functools.partial(on_progress, chunk.runs, epoch + 1, steps=steps) if on_progress else None)
    if chunk.scan:
        state, sums, per_step, in_epoch = run(state, data, jnp.int32(epoch))
    else:
        zeros = lambda *shape: jax.device_put(jnp.zeros((len(state.alive), *shape)), chunk.by_run)
        idx = prog["indices"](state, data, jnp.int32(epoch))
        sums, per_step, in_epoch = zeros(columns["noise"].stop), zeros(steps, columns["noise"].stop), []
        for s in range(steps):
            if points and s % spec.sharpness_every == 0:  # --sharpness_unit=step, between the steps
                values, state = prog["sharpness"](state, data)
                in_epoch.append(values)
            state, sums, per_step = run(state, sums, per_step, data, idx, jnp.int32(s))
            if on_progress and _PROGRESS.due():
                sums.block_until_ready()  # the steps dispatched so far have run
                _PROGRESS.heard(s + 1)
    sums, per_step = np.asarray(sums)[:n], np.asarray(per_step)[:n]  # waits for the epoch's steps
    _PROGRESS.start(None)
    seconds = time.perf_counter() - t0  # training only: evaluation below is not counted
    step_losses = per_step[..., 0]
    alive = np.asarray(state.alive)[:n]
    sharpness = sharpness_trace = None
    if points:
        sharpness_trace = np.asarray(in_epoch if chunk.scan else jnp.stack(in_epoch, 1))[:n]
        sharpness_trace = np.where(alive[:, None, None], sharpness_trace, np.nan)
        sharpness = sharpness_trace[:, -1]
    elif spec.sharpness_every and (epoch + 1) % spec.sharpness_every == 0:
        values, state = prog["sharpness"](state, data)
        sharpness = np.where(alive[:, None], np.asarray(values)[:n], np.nan)
    every_epoch = ("val",) + ("train",) * (spec.eval_train == "epoch") + ("test",) * spec.eval_test
    evals = _eval_splits(prog, state, data, every_epoch, n)
    metrics = run_record.Epoch(
        lr=lr, alive=alive, l2_penalty=np.asarray(prog["l2"](state.params))[:n],
        train=Metrics(*(sums[:, columns["metrics"]] / (steps * spec.batch_size)).T),
        val=_masked(evals.get("val"), alive), train_eval=_masked(evals.get("train"), alive),
        test=_masked(evals.get("test"), alive), loss_noise=_loss_noise(step_losses, spec.batch_size),
        grad_norm=sums[:, columns["grad_norm"]] / steps if spec.grad_stats else None,
        loss_trace=_loss_trace(step_losses, spec.loss_every, spec.batch_size) if spec.loss_every else None,
        sharpness=sharpness, sharpness_trace=sharpness_trace,
        noise_scale=_noise_scale(sums[:, columns["noise"]], steps, spec) if spec.noise_scale else None)
    return state, metrics, seconds


def _final(chunk: _Chunk, state: TrainState, epochs: int) -> run_record.Final:
    """The end of training: the test set (and the training split in eval mode), and the gradient
    statistics of the first and the last window."""
    spec, n = chunk.spec, chunk.n
    alive = np.asarray(state.alive)[:n]
    after = _eval_splits(chunk.prog, state, chunk.data, ("train", "test") if spec.eval_train != "none" else ("test",), n)
    grad_first = grad_last = None
    if spec.grad_stats:
        grad_first, grad_last = _window_stats(np.asarray(state.grad_acc)[:n], spec.grad_window, epochs * chunk.steps)
    return run_record.Final(
        alive=alive, l2_penalty=np.asarray(chunk.prog["l2"](state.params))[:n], test=_masked(after.get("test"), alive),
        train=_masked(after.get("train"), alive), grad_first=grad_first, grad_last=grad_last,
        grad_window=spec.grad_window if spec.grad_stats else 0)
