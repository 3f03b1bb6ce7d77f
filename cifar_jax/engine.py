"""The multi-run engine: a group of runs as one state pytree with a leading run axis.

Runs share the model, optimiser kind and batch size (the `GroupSpec`, static); everything else
(seed, learning-rate schedule and its parameters, dropout rate, L2 λ, momentum, weight decay,
init scale, noise) is a per-run array in `hp`. One run's step is written once; the layout decides
how a group executes it: `vmap` over the run axis or the runs one after another, and the steps
of an epoch inside `lax.scan` or as a host loop of jitted steps. Every layout computes the same
numbers; the automatic choice follows the measurements in DESIGN.md (on CPU, conv training
steps are much slower vmapped or inside scan).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cifar_jax import layers, models, optim, options, preprocess, schedules

CONV_IMPLS = ("auto", *layers.CONVS)
LAYOUTS = ("auto", "vmap_scan", "vmap_loop", "map_scan", "map_loop", "seq_scan", "seq_loop")
HP_INT = ("seed", "schedule")
HP_DEFAULTS = dict(seed=0, schedule=0, **{**schedules.PARAM_DEFAULTS,
                                           **{k: o.default for k, o in options.RUN_OPTIONS.items()}})
METRICS = ("loss", "acc", "top5")


class Data(NamedTuple):
    """A dataset on the device: uint8 images, split index arrays and normalisation statistics."""

    x: jax.Array          # uint8 [N, H, W, C]: the official training set
    y: jax.Array          # int32 [N]
    x_test: jax.Array     # uint8 [M, H, W, C]
    y_test: jax.Array     # int32 [M]
    train_idx: jax.Array  # int32 [n_train], indices into x
    val_idx: jax.Array    # int32 [n_val], indices into x
    mean: jax.Array       # broadcastable to an image
    std: jax.Array


class TrainState(NamedTuple):
    """One run's state; a group stacks every leaf along a leading run axis."""

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array       # int32
    alive: jax.Array      # bool: False once the run diverged; it then stops updating
    hp: dict[str, jax.Array]
    grad_acc: jax.Array   # [2, tensors, 3]: Σ over the first / last 5 steps of (mean |g|, mean g², ‖g‖); [0] if off


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """What the compiled program depends on: shared by all runs of a group."""

    model: models.ModelConfig
    optimizer: str = "sgd"
    batch_size: int = 64
    augment: str = "none"
    noise: bool = False
    clip_norm: float | None = None
    eval_batch_size: int = 500
    precision: str = "fp32"
    conv_impl: str = "auto"  # how convolutions execute; same numbers, so not part of a run's identity
    frozen: tuple[str, ...] = ()  # layers (e.g. "conv1") whose parameters and BN statistics stay fixed
    grad_stats: bool = False  # record |gradient| statistics per parameter tensor

    @property
    def net(self) -> models.Net:
        conv = auto_conv_impl(self.precision) if self.conv_impl == "auto" else self.conv_impl
        return models.build(self.model, conv, self.precision, self.frozen)


def put_data(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             train_idx: np.ndarray, val_idx: np.ndarray, mean: np.ndarray, std: np.ndarray) -> Data:
    """Copy a dataset and its split to the device once."""
    arrays = (x, y.astype(np.int32), x_test, y_test.astype(np.int32), train_idx.astype(np.int32),
              val_idx.astype(np.int32), mean.astype(np.float32), std.astype(np.float32))
    return Data(*jax.device_put(arrays))


def stack_hparams(runs: list[dict]) -> dict[str, np.ndarray]:
    """Per-run hyperparameter dicts → one dict of arrays with a leading run axis."""
    unknown = set().union(*runs) - set(HP_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown per-run hyperparameters: {sorted(unknown)}")
    return {k: np.asarray([r.get(k, HP_DEFAULTS[k]) for r in runs],
                          np.int32 if k in HP_INT else np.float32) for k in HP_DEFAULTS}


def _run_key(hp: dict[str, jax.Array], stream: int) -> jax.Array:
    """Independent key streams of a run (0: init, 1: steps, 2: data order), all from its seed."""
    return jax.random.fold_in(jax.random.PRNGKey(hp["seed"]), stream)


def init_run(spec: GroupSpec, hp: dict[str, jax.Array], image_shape: tuple[int, ...]) -> TrainState:
    """Initialise one run from its seed (init scale applied for normal(σ) init)."""
    variables = spec.net.init(_run_key(hp, 0), jnp.zeros((1, *image_shape)), train=False)
    params = variables["params"]
    if spec.model.init == "normal":
        params = models.scale_kernels(params, hp["init_scale"])
    opt_state = _optimizer(spec, 0.0, hp, params).init(params)
    n_tensors = len(jax.tree_util.tree_leaves(params)) if spec.grad_stats else 0
    return TrainState(params, variables.get("batch_stats", {}), opt_state, jnp.int32(0),
                      jnp.bool_(True), hp, jnp.zeros((2, n_tensors, 3)))


def _optimizer(spec: GroupSpec, lr: jax.Array | float, hp: dict[str, jax.Array], params: Any
               ) -> optax.GradientTransformation:
    """The run's optimiser; frozen layers get zero updates (optax.multi_transform)."""
    tx = optim.make(spec.optimizer, lr, hp, spec.clip_norm)
    if not spec.frozen:
        return tx
    labels = {k: jax.tree_util.tree_map(lambda _: "frozen" if k in spec.frozen else "train", v)
              for k, v in params.items()}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _variable_shapes(spec: GroupSpec, image_shape: tuple[int, ...]) -> dict:
    x = jnp.zeros((1, *image_shape))
    return jax.eval_shape(lambda: spec.net.init(jax.random.PRNGKey(0), x, train=False))


def param_shapes(spec: GroupSpec, image_shape: tuple[int, ...]) -> Any:
    """The parameter pytree of one run as shapes and dtypes (no computation)."""
    return _variable_shapes(spec, image_shape)["params"]


def batch_stats_shapes(spec: GroupSpec, image_shape: tuple[int, ...]) -> Any:
    """The batch-norm statistics of one run as shapes and dtypes ({} without batch norm)."""
    return _variable_shapes(spec, image_shape).get("batch_stats", {})


def param_names(params: Any) -> list[str]:
    """"layer/name" of every parameter tensor, in leaf order (the order of gradient statistics)."""
    return ["/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def _grad_stats(grads: Any) -> jax.Array:
    """[tensors, 3]: mean |g|, mean g² and ‖g‖ of every parameter tensor."""
    return jnp.stack([jnp.stack([jnp.mean(jnp.abs(g)), jnp.mean(g ** 2), jnp.sqrt(jnp.sum(g ** 2))])
                      for g in jax.tree_util.tree_leaves(grads)])


def _count_correct(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(top-1 correct, top-5 correct) as float vectors."""
    top1 = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    _, top = jax.lax.top_k(logits, min(5, logits.shape[-1]))
    return top1, jnp.any(top == y[:, None], -1).astype(jnp.float32)


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def train_step(spec: GroupSpec, state: TrainState, data: Data, idx: jax.Array
               ) -> tuple[TrainState, jax.Array]:
    """One SGD step of one run on the examples `idx`; returns the new state and
    [loss, top-1 correct, top-5 correct] summed over the batch (NaN once diverged)."""
    hp = state.hp
    k_drop, k_aug, k_noise = jax.random.split(jax.random.fold_in(_run_key(hp, 1), state.step), 3)
    x = preprocess.normalize(data.x[idx], data.mean, data.std)
    y = data.y[idx]
    if spec.augment == "crop_flip":
        x = preprocess.crop_flip(k_aug, x)
    if spec.noise:
        x = preprocess.add_noise(k_noise, x, hp["noise_std"], hp["salt_pepper"])

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = spec.net.apply(variables, x, train=True, dropout_rate=hp["dropout"],
                                         rngs={"dropout": k_drop}, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return ce.mean() + hp["l2"] * optim.l2_penalty(params), (ce, logits, updates)

    grads, (ce, logits, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    tx = _optimizer(spec, schedules.learning_rate(hp, state.step), hp, state.params)
    deltas, opt_state = tx.update(grads, state.opt_state, state.params)
    new = (optax.apply_updates(state.params, deltas), updates.get("batch_stats", {}), opt_state)
    ok = state.alive & jnp.all(jnp.isfinite(ce)) & _all_finite(new[0])
    keep = lambda n, o: jnp.where(ok, n, o)
    params, batch_stats, opt_state = jax.tree_util.tree_map(
        keep, new, (state.params, state.batch_stats, state.opt_state))
    top1, top5 = _count_correct(logits, y)
    sums = jnp.stack([ce.sum(), top1.sum(), top5.sum()])
    grad_acc = state.grad_acc
    if spec.grad_stats:
        g = _grad_stats(grads)
        window = jnp.stack([state.step < 5, state.step >= hp["total_steps"] - 5]).astype(jnp.float32)
        grad_acc = grad_acc + window[:, None, None] * g
        sums = jnp.concatenate([sums, g[:, 2]])  # per-tensor ‖g‖, averaged per epoch
    sums = jnp.where(ok, sums, jnp.nan)
    return TrainState(params, batch_stats, opt_state, state.step + 1, ok, hp, grad_acc), sums


def epoch_indices(hp: dict[str, jax.Array], epoch: jax.Array, train_idx: jax.Array,
                  batch_size: int) -> jax.Array:
    """This run's shuffled batches for `epoch`: [steps, batch] indices (the last partial batch
    is dropped so every step has the same shape)."""
    steps = train_idx.shape[0] // batch_size
    perm = jax.random.permutation(jax.random.fold_in(_run_key(hp, 2), epoch), train_idx.shape[0])
    return train_idx[perm[: steps * batch_size]].reshape(steps, batch_size)


def train_epoch(spec: GroupSpec, state: TrainState, data: Data, idx: jax.Array
                ) -> tuple[TrainState, jax.Array]:
    """One epoch of one run over its [steps, batch] indices with the steps inside `lax.scan`;
    returns summed step metrics."""
    step = lambda s, i: train_step(spec, s, data, i)
    state, sums = jax.lax.scan(step, state, idx)
    return state, sums.sum(0)


def evaluate(spec: GroupSpec, state: TrainState, x: jax.Array, y: jax.Array, idx: jax.Array,
             mean: jax.Array, std: jax.Array) -> jax.Array:
    """Eval-mode [loss, top-1 acc, top-5 acc] of one run over x[idx], in padded batches."""
    n, bs = idx.shape[0], min(spec.eval_batch_size, idx.shape[0])
    pad = -n % bs
    batches = jnp.pad(idx, (0, pad)).reshape(-1, bs)
    valid = (jnp.arange(n + pad) < n).reshape(-1, bs).astype(jnp.float32)
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def body(total, b):
        i, w = b
        logits = spec.net.apply(variables, preprocess.normalize(x[i], mean, std), train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[i])
        top1, top5 = _count_correct(logits, y[i])
        return total + jnp.stack([(ce * w).sum(), (top1 * w).sum(), (top5 * w).sum()]), None

    total, _ = jax.lax.scan(body, jnp.zeros(3), (batches, valid))
    return total / n


def auto_layout(model: models.ModelConfig, backend: str | None = None) -> str:
    """The measured-fastest layout (benchmarks/README.md). On CPU runs go one at a time: vmapped
    convs become slow grouped convs and even the vmapped MLP group lost to runs in sequence
    (47k vs 77k images/s for 25 seeds/002 MLPs); conv steps are slow inside scan on XLA:CPU, so
    conv models host-loop their steps. Elsewhere the whole group is vmapped with scanned steps."""
    if (backend or jax.default_backend()) != "cpu":
        return "vmap_scan"
    return "seq_scan" if model.name == "mlp" else "seq_loop"


# The measured-fastest convolution per (backend, precision) (README.md, "Performance"): GPU
# (H200): im2col 1.95 ms per 25-run fp32 group step against 2.22 (vjp_taps) and 5.03 (xla);
# bf16: vjp_taps 1.54 ms against 2.87 (xla) (im2col in bf16 not yet measured). CPU (2 cores, one
# run at a time): xla and vjp_taps within noise (20-22 ms per step), im2col 46 ms; xla stays.
AUTO_CONV = {("gpu", "fp32"): "im2col", ("gpu", "bf16"): "vjp_taps"}


def auto_conv_impl(precision: str = "fp32", backend: str | None = None) -> str:
    """The measured-fastest convolution implementation (`layers.CONVS`) for the backend and
    precision; XLA's own where nothing else was measured faster (CPU)."""
    return AUTO_CONV.get((backend or jax.default_backend(), precision), "xla")


class Callbacks(Protocol):
    """What the engine reports as it goes; `runs` are indices into the group."""

    def on_compiled(self, seconds: float) -> None: ...
    def on_log(self, message: str) -> None: ...
    def on_start(self, runs: np.ndarray, untrained: dict[str, np.ndarray]) -> None: ...
    def on_epoch(self, runs: np.ndarray, epoch: int, metrics: dict[str, np.ndarray],
                 seconds: float) -> None: ...
    def on_end(self, runs: np.ndarray, final: dict[str, np.ndarray]) -> None: ...


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

    def epoch(state, data, epoch):
        return batched(functools.partial(train_epoch, spec), 0, None, 0)(state, data, indices(state, data, epoch))

    def step(state, sums, data, idx, s):
        state, m = batched(functools.partial(train_step, spec), 0, None, 0)(state, data, split(idx[:, s]))
        return state, sums + m

    def ev(state, x, y, idx, mean, std):
        return batched(functools.partial(evaluate, spec), 0, None, None, None, None, None)(
            state, x, y, idx, mean, std)

    by_run = NamedSharding(mesh, P("runs"))  # the state lives sharded by run, also where XLA would not infer it
    return dict(init=jax.jit(batched(lambda hp: init_run(spec, hp, image_shape), 0), out_shardings=by_run),
                epoch=jax.jit(epoch, donate_argnums=0, out_shardings=by_run),
                step=jax.jit(step, donate_argnums=(0, 1), out_shardings=by_run),
                indices=jax.jit(indices), evaluate=jax.jit(ev),
                lr=jax.jit(batched(schedules.learning_rate, 0, 0)),
                l2=jax.jit(batched(optim.l2_penalty, 0)))


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


def _eval_splits(prog: dict, state: TrainState, data: Data, splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{"val_loss": [R], "val_acc": [R], ...} for the named splits (train, val, test)."""
    out = {}
    for split in splits:
        if split == "test":
            x, y, idx = data.x_test, data.y_test, jnp.arange(data.y_test.shape[0], dtype=jnp.int32)
        else:
            x, y, idx = data.x, data.y, getattr(data, f"{split}_idx")
        if idx.shape[0] == 0:
            continue
        values = np.asarray(prog["evaluate"](state, x, y, idx, data.mean, data.std))
        out.update({f"{split}_{m}": values[:, i] for i, m in enumerate(METRICS)})
    return out


def _masked(metrics: dict[str, np.ndarray], alive: np.ndarray) -> dict[str, np.ndarray]:
    """NaN for diverged runs: their frozen parameters are not a trained model."""
    return {k: np.where(alive, v, np.nan) for k, v in metrics.items()}


def train(spec: GroupSpec, hp: dict[str, np.ndarray], data: Data, epochs: int,
          callbacks: Callbacks, *, layout: str = "auto", eval_train: bool = False,
          devices: list | None = None, max_chunk: int | None = None,
          memory_limit: int | None = None, initial: dict | None = None) -> TrainState:
    """Train a group of runs for `epochs`, reporting through `callbacks`; returns the final
    state of every run (stacked along the run axis).

    vmap layouts train the runs together, sharded over the local devices; map layouts train
    them one after another inside one program; seq layouts one per device at a time. A group
    whose compiled program needs more than `memory_limit` bytes per device (default: 90% of an
    accelerator's memory) is split into chunks of runs that fit; `max_chunk` caps a chunk.
    `initial` ({"params": {layer: [R, ...]}, "batch_stats": {...}}) replaces those layers of the
    fresh initialisation, e.g. restored pretrained layers to freeze."""
    layout = auto_layout(spec.model) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"--layout={layout!r} is unknown; allowed: {', '.join(LAYOUTS)}")
    devices = list(devices or jax.local_devices())
    n = len(hp["seed"])
    chunk = min(n, len(devices)) if layout.startswith("seq") else n
    chunk = max(1, min(chunk, max_chunk or chunk))
    limit = memory_limit or _device_memory(devices[0])
    states, start = [], 0
    while start < n:
        runs = np.arange(start, min(start + chunk, n))
        try:
            start_from = jax.tree_util.tree_map(lambda x: x[runs], initial) if initial else None
            states.append(_train_chunk(spec, {k: v[runs] for k, v in hp.items()}, runs, data, epochs,
                                       callbacks, layout, eval_train, devices, limit, start_from))
        except _TooBig as big:
            chunk = big.fits
            getattr(callbacks, "on_log", print)(f"group of {len(runs)} runs needs {big.need / 2**30:.2f} GiB per device, "
                             f"more than the {limit / 2**30:.2f} GiB available: training {chunk} runs at a time")
            continue
        start += len(runs)
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


def _window_stats(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[R, tensors, 3] (mean |g|, std |g|, mean ‖g‖) over the first and the last 5 steps, from
    the accumulated sums (std over every element of the 5 steps: sqrt(E[g²] - E[|g|]²))."""
    out = []
    for window in (acc[:, 0] / 5, acc[:, 1] / 5):
        mean, sq, norm = window[..., 0], window[..., 1], window[..., 2]
        out.append(np.stack([mean, np.sqrt(np.maximum(sq - mean ** 2, 0.0)), norm], -1))
    return out[0], out[1]


def _padded(hp: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """Repeat the last run so the run axis divides the mesh's "runs" axis."""
    pad = -len(hp["seed"]) % width
    return {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in hp.items()}


def _train_chunk(spec: GroupSpec, hp: dict[str, np.ndarray], runs: np.ndarray, data: Data,
                 epochs: int, callbacks: Callbacks, layout: str, eval_train: bool,
                 devices: list, limit: int | None, initial: dict | None) -> TrainState:
    n, scan, run_axis = len(runs), layout.endswith("scan"), layout.split("_")[0]
    mesh = make_mesh(1 if run_axis == "map" else n, spec.batch_size, devices)
    data = jax.device_put(data, NamedSharding(mesh, P()))
    prog = _programs(spec, tuple(data.x.shape[1:]), mesh, run_axis)
    by_run = NamedSharding(mesh, P("runs"))
    hp = jax.device_put(_padded(hp, mesh.shape["runs"]), by_run)
    state = prog["init"](hp)
    if initial:
        width = len(hp["seed"])
        pad = lambda x: np.concatenate([x, np.repeat(x[-1:], width - len(x), 0)])
        merged = {k: {**getattr(state, k), **jax.tree_util.tree_map(pad, initial.get(k, {}))}
                  for k in ("params", "batch_stats")}
        state = state._replace(**merged)
    state = jax.device_put(state, by_run)
    width = 3 + (state.grad_acc.shape[2] if spec.grad_stats else 0)
    zeros = lambda: jax.device_put(jnp.zeros((len(hp["seed"]), width)), by_run)
    steps = data.train_idx.shape[0] // spec.batch_size
    if steps == 0:
        raise ValueError(f"--batch_size={spec.batch_size} is larger than the training split "
                         f"({data.train_idx.shape[0]} images)")
    t0 = time.perf_counter()
    if scan:
        run_epoch = prog["epoch"].lower(state, data, jnp.int32(0)).compile()
    else:
        run_step = prog["step"].lower(state, zeros(), data, prog["indices"](state, data, jnp.int32(0)),
                                      jnp.int32(0)).compile()
    _check_fits(run_epoch if scan else run_step, len(hp["seed"]) // mesh.shape["runs"],
                sum(x.nbytes for x in jax.tree_util.tree_leaves(data)), limit, mesh.shape["runs"])
    callbacks.on_compiled(time.perf_counter() - t0)
    real = lambda metrics: {k: v[:n] for k, v in metrics.items()}
    eval_splits = ("train", "val", "test") if eval_train else ("val", "test")
    callbacks.on_start(runs, real(_eval_splits(prog, state, data, eval_splits)))
    for epoch in range(epochs):
        t0 = time.perf_counter()
        lr = np.asarray(prog["lr"](state.hp, state.step))[:n]
        if scan:
            state, sums = run_epoch(state, data, jnp.int32(epoch))
        else:
            idx = prog["indices"](state, data, jnp.int32(epoch))
            sums = zeros()
            for s in range(steps):
                state, sums = run_step(state, sums, data, idx, jnp.int32(s))
        sums = np.asarray(sums)[:n]
        alive = np.asarray(state.alive)[:n]
        metrics = {"lr": lr, "alive": alive,
                   **{f"train_{m}": sums[:, i] / (steps * spec.batch_size) for i, m in enumerate(METRICS)},
                   **_masked(real(_eval_splits(prog, state, data, ("val",))), alive)}
        if spec.grad_stats:
            metrics["grad_norm"] = sums[:, 3:] / steps
        callbacks.on_epoch(runs, epoch + 1, metrics, time.perf_counter() - t0)
    alive = np.asarray(state.alive)[:n]
    final = _masked(real(_eval_splits(prog, state, data, ("train", "test") if eval_train else ("test",))), alive)
    final["alive"] = alive
    final["l2_penalty"] = np.asarray(prog["l2"](state.params))[:n]
    if spec.grad_stats:
        final["grad_first5"], final["grad_last5"] = _window_stats(np.asarray(state.grad_acc)[:n])
    callbacks.on_end(runs, final)
    return jax.tree_util.tree_map(lambda x: jax.device_get(x)[:n], state)
