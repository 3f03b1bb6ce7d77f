"""One run's math: its state, initialisation, training step, epoch batches and evaluation.

Everything here is written for a single run; `engine` batches it over a group of runs (vmap or
one after another) and drives the loop. What the compiled program depends on is the `GroupSpec`
(shared by a group); everything else is a per-run array in `hp` (`HP_DEFAULTS`). The in-step
measurements (`--grad_stats`, `--loss_every`, `--noise_scale`) are computed here, inside the compiled
step; `sharpness_of` is the sharpness evaluation (between steps: `train_epoch` runs it before every
k-th step with --sharpness_unit=step). An instrument that is off adds nothing to the program.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cifar_jax.config import options
from cifar_jax.config.registry import lookup
from cifar_jax.data import preprocess
from cifar_jax.nn import layers, models
from cifar_jax.training import dynamics, optim, schedules

HP_INT = ("seed", "init_seed", "order_seed", "schedule", *(k for k, o in options.RUN.items() if o.kind == "int"))
SEED_OF_RUN = -1  # an init_seed or order_seed of -1 is the run's own seed
# every per-run array of a group and its default (the options table overrides the schedule's decay_rate)
HP_DEFAULTS = {"seed": 0, "init_seed": SEED_OF_RUN, "order_seed": SEED_OF_RUN, "schedule": 0, **schedules.PARAM_DEFAULTS,
               **{k: o.default for k, o in options.RUN.items()}}
# how the engine runs a group's runs (engine.train_group): vmapped, mapped, one after another, or
# one per host thread with as many at a time as CPU cores (par: seq in threads), each epoch a scan
# or a Python loop; auto: the measured-fastest for the backend and model
LAYOUTS = ("auto", "vmap_scan", "vmap_loop", "map_scan", "map_loop", "seq_scan", "seq_loop", "par_scan", "par_loop")
EVAL_TRAIN = ("none", "final", "epoch")  # when the training split is evaluated in eval mode
SHARPNESS_UNITS = ("epoch", "step")  # the unit of --sharpness_every
SHARPNESS_SUBSET_SEED = 0  # the fixed subset of the training split whose loss Hessian is measured


class Data(NamedTuple):
    """A dataset on the device: uint8 images, split index arrays and normalisation statistics."""

    x: jax.Array          # uint8 [N, H, W, C]: the official training set
    y: jax.Array          # int32 [N]
    x_test: jax.Array     # uint8 [M, H, W, C]
    y_test: jax.Array     # int32 [M]
    train_idx: jax.Array  # int32 [n_train], indices into x
    val_idx: jax.Array    # int32 [n_val], indices into x
    mean: jax.Array       # broadcastable to an image
    std: jax.Array        # broadcastable to an image, or the [D, D] ZCA matrix (preprocess.normalize)


class TrainState(NamedTuple):
    """One run's state; a group stacks every leaf along a leading run axis."""

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array       # int32
    alive: jax.Array      # bool: False once the run diverged; it then stops updating
    hp: dict[str, jax.Array]
    grad_acc: jax.Array   # [2, tensors, 3]: Σ over the first / last grad_window steps of (mean |g|,
    #                       mean g², ‖g‖); [2, 0, 3] without --grad_stats
    probes: dict[str, Any] = {}  # the instruments' state: "lanczos" (--sharpness_every: the flat
    #                       start vector of the next evaluation), "noise" (--noise_scale with a
    #                       --noise_window of steps: Σ of the window's gradients, shaped like
    #                       params); {} when off


O = options.Option
# The options of a group's compiled program, declared once: each is a flag (those of the group
# level a grid axis across groups) and a field of GroupSpec; --epochs is a group's too, but not
# part of its program.
OPTIONS = options.table(*(dataclasses.replace(o, spec=o.name != "epochs") for o in (
    O("optimizer", "sgd", "Optimiser", kind="choice", level="group", choices=tuple(optim.OPTIMIZERS)),
    O("batch_size", 64, "Training batch size (an epoch's last partial batch is dropped)", kind="int", level="group",
      low=1),
    O("epochs", 50, "Training epochs", kind="int", level="group", low=1),
    O("augment", "none", "Training augmentation", kind="choice", level="group", choices=tuple(preprocess.AUGMENTATIONS)),
    O("clip_norm", 0.0, "Clip gradients to this global norm (0: off)", level="group", low=0.0),
    O("clip_value", 0.0, "Clip every gradient element to [−c, c], before --clip_norm (0: off)", level="group", low=0.0,
      recorded="changed"),
    O("eval_batch_size", 500, "Batch size of evaluation passes.", kind="int", low=1),
    O("precision", "fp32", "Compute precision: fp32, or bf16 (bf16 compute with float32 master weights, loss and BN "
      "statistics). On CPU, XLA computes bf16 matmuls and convolutions in float32 between conversions: the bf16 "
      "numbers, at a little more than fp32's time.", kind="choice", choices=tuple(models.PRECISIONS)),
    O("conv_impl", "auto", "Convolution implementation (auto: the measured-fastest for the backend and precision; "
      "cifar_jax/nn/layers.py describes each); the same numbers either way.", kind="choice",
      choices=tuple(layers.CONV_IMPLS)),
    O("grad_stats", False, "Record |gradient| statistics per parameter tensor: ‖g‖ per epoch, and mean and std of |g| "
      "and mean ‖g‖ over the first and the last --grad_window steps.", kind="bool"),
    O("grad_window", 5, "Steps in each window of --grad_stats.", kind="int", low=1),
    O("loss_every", 0, "Record the mean training loss of every this many steps (records' loss_trace; 0: off).",
      kind="int", low=0),
    O("eval_test", False, "Also evaluate the test set after every epoch (records' test_* per epoch).", kind="bool",
      spec=True),
    O("eval_train", "none", "Evaluate the whole training split in eval mode: none, final (before and after training) "
      "or epoch (also after every epoch: records' train_eval_*).", kind="choice", choices=EVAL_TRAIN),
    O("sharpness_every", 0, "Measure the sharpness, λ_max (and λ_min) of the Hessian of the training loss, every "
      "this many --sharpness_unit (0: off); records' sharpness, sharpness_min.", kind="int", low=0),
    O("sharpness_unit", "epoch", "Unit of --sharpness_every: epoch (after every k-th epoch) or step (before every "
      "k-th step of each epoch, inside the compiled epoch: records' sharpness_trace; for the early steps, where it "
      "moves fastest).", kind="choice", choices=SHARPNESS_UNITS),
    O("sharpness_iters", 6, "Lanczos iterations (Hessian-vector products) per sharpness evaluation, each started "
      "from the previous evaluation's top eigenvector.", kind="int", low=2),
    O("sharpness_examples", 256, "Size of the fixed training subset whose loss Hessian is measured (dropout off, "
      "batch norm on the subset's own statistics; at most the training split).", kind="int", low=1),
    O("noise_scale", False, "Measure the gradient noise scale B_simple = tr(Σ)/|G|² per epoch (McCandlish et al. "
      "2018) from gradient norms at two batch sizes; records' b_simple, b_simple_g2, b_simple_trace (groups of batch "
      "size 1 with --noise_window=0 record none).", kind="bool"),
    O("noise_window", 0, "The two batch sizes of --noise_scale: 0, each half of the step's batch against the whole, "
      "at the step's weights (one more backward pass a step); k >= 2, the step's batch against the mean gradient of "
      "k consecutive steps (free, but the weights move within the window).", kind="int", low=0),
)))


class _Program:
    """GroupSpec's networks (its fields come from OPTIONS)."""

    @property
    def net(self) -> models.Net:
        conv = layers.auto_conv_impl(self.precision) if self.conv_impl == "auto" else self.conv_impl
        return models.build(self.model, conv, self.precision, self.frozen)

    @property
    def forward_net(self) -> models.Net:
        """The same function as `net` built for forward-mode differentiation (the sharpness's
        Hessian-vector products): no layer with a custom VJP (max-pooling by its JVP, `vjp_taps`
        as XLA's convolution)."""
        conv = self.net.conv_impl
        return models.build(self.model, "xla" if conv == "vjp_taps" else conv, self.precision, self.frozen, "jvp")


# What the compiled program depends on, shared by all runs of a group: the model, a field per
# option of OPTIONS (conv_impl changes how, not what: the same numbers either way), whether the
# inputs get noise, and the layers (e.g. "conv1") whose parameters and BN statistics stay fixed.
GroupSpec = dataclasses.make_dataclass(
    "GroupSpec", [("model", Any), *options.fields({k: o for k, o in OPTIONS.items() if o.in_spec},
                                                  after={"augment": [("noise", bool, False)],
                                                         "conv_impl": [("frozen", tuple, ())]},
                                                  defaults={"clip_norm": None})],  # None: off (as records hold it)
    bases=(_Program,), frozen=True, namespace={"__module__": __name__})


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


def _run_key(hp: dict[str, jax.Array], stream: int, seed: str = "seed") -> jax.Array:
    """Independent key streams of a run (0: init, 1: steps, 2: data order) from its seed, or from
    its `init_seed` / `order_seed` where one is set (>= 0)."""
    own = hp[seed] if seed == "seed" else jnp.where(hp[seed] >= 0, hp[seed], hp["seed"])
    return jax.random.fold_in(jax.random.PRNGKey(own), stream)


# XLA options of the compiled programs per platform: on CPU, LLVM at -O1 trains as fast as the default
# -O2, a group call, its compiles included, takes 1.12-1.19x less wall time (benchmarks.compile_options),
# and a BaselineNet initialisation (its random draws) compiles in 1.6 s instead of 4.3, bit-identical.
COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 1}}


def init_run(spec: GroupSpec, hp: dict[str, jax.Array], image_shape: tuple[int, ...]) -> TrainState:
    """Initialise one run from its seed (init scale applied for normal(σ) init). Compiled with the
    backend's COMPILER_OPTIONS, so a call outside a program is one program, not one per
    initialiser and per operation."""
    if any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(hp)):
        return _init_run(spec, hp, image_shape)  # inside a program (whose options apply)
    options = COMPILER_OPTIONS.get(jax.default_backend(), {})
    return _init_program(tuple(sorted(options.items())))(spec, hp, image_shape)


@functools.cache
def _init_program(options: tuple[tuple[str, Any], ...]) -> Callable:
    return jax.jit(_init_run, static_argnums=(0, 2), compiler_options=dict(options))


def _init_run(spec: GroupSpec, hp: dict[str, jax.Array], image_shape: tuple[int, ...]) -> TrainState:
    variables = spec.net.init(_run_key(hp, 0, "init_seed"), jnp.zeros((1, *image_shape)), train=False)
    params = variables["params"]
    if spec.model.init == "normal":
        params = models.scale_kernels(params, hp["init_scale"], spec.model.norm_init != "ones")
    opt_state = _optimizer(spec, 0.0, hp, params).init(params)
    n_tensors = len(jax.tree_util.tree_leaves(params)) if spec.grad_stats else 0
    probes = {}
    if spec.sharpness_every:
        n = sum(x.size for x in jax.tree_util.tree_leaves(params))
        probes["lanczos"] = jax.random.normal(_run_key(hp, 3), (n,))
    if spec.noise_scale and spec.noise_window:
        probes["noise"] = jax.tree_util.tree_map(jnp.zeros_like, params)
    return TrainState(params, variables.get("batch_stats", {}), opt_state, jnp.int32(0),
                      jnp.bool_(True), hp, jnp.zeros((2, n_tensors, 3)), probes)


def _optimizer(spec: GroupSpec, lr: jax.Array | float, hp: dict[str, jax.Array], params: Any
               ) -> optax.GradientTransformation:
    """The run's optimiser; frozen layers get zero updates (optax.multi_transform)."""
    tx = optim.make(spec.optimizer, lr, hp, spec.clip_norm, spec.clip_value)
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


def objective(spec: GroupSpec, params: Any, batch_stats: Any, hp: dict[str, jax.Array], x: jax.Array,
              y: jax.Array, k_drop: jax.Array, dropout_rate: jax.Array | float, net: models.Net | None = None
              ) -> tuple[jax.Array, tuple]:
    """The training objective on normalised inputs x in train mode (batch norm on the batch's own
    statistics): mean cross-entropy + label smoothing + λ·ΣW²; with (per-example cross-entropy,
    logits, the batch-norm updates). `net`: the spec's own by default."""
    variables = {"params": params, "batch_stats": batch_stats}
    logits, updates = (net or spec.net).apply(variables, x, train=True, dropout_rate=dropout_rate,
                                              rngs={"dropout": k_drop}, mutable=["batch_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    smoothing = hp["label_smoothing"] * (-jax.nn.log_softmax(logits).mean(-1) - ce).mean()  # 0 at α = 0
    return ce.mean() + smoothing + hp["l2"] * optim.l2_penalty(params, spec.model.norm_l2), (ce, logits, updates)


def sharpness_subset(spec: GroupSpec, train_idx: jax.Array) -> jax.Array:
    """The examples whose loss Hessian --sharpness_every measures: the same `sharpness_examples`
    of the training split for every run and every evaluation (a fixed seeded draw)."""
    key = jax.random.PRNGKey(SHARPNESS_SUBSET_SEED)
    return train_idx[jax.random.permutation(key, train_idx.shape[0])[: spec.sharpness_examples]]


def sharpness_of(spec: GroupSpec, state: TrainState, data: Data) -> tuple[jax.Array, TrainState]:
    """[λ_max, λ_min] of the Hessian of the training objective on the sharpness subset, with
    dropout off and batch norm in train mode on the subset's own statistics (the objective the
    step differentiates; running statistics untouched), by `sharpness_iters` Lanczos steps from
    the previous evaluation's top Ritz vector, which the returned state keeps for the next."""
    idx = sharpness_subset(spec, data.train_idx)
    x, y = preprocess.normalize(data.x[idx], data.mean, data.std), data.y[idx]
    loss = lambda p: objective(spec, p, state.batch_stats, state.hp, x, y, jax.random.PRNGKey(0), 0.0, spec.forward_net)[0]
    # a conv net's Lanczos loop is unrolled: XLA:CPU runs convolutions inside a loop many times slower
    unroll = models.MODELS[spec.model.name].convolutional
    top, bottom, ritz = dynamics.sharpness(loss, state.params, state.probes["lanczos"], spec.sharpness_iters, unroll)
    return jnp.stack([top, bottom]), state._replace(probes={**state.probes, "lanczos": ritz})


def step_columns(spec: GroupSpec, n_tensors: int) -> dict[str, slice]:
    """Where each measurement sits in a step's output vector (`train_step`): loss, top-1, top-5
    sums; per-tensor ‖g‖ (--grad_stats); the noise-scale parts (--noise_scale)."""
    widths = {"metrics": 3, "grad_norm": n_tensors if spec.grad_stats else 0,
              "noise": len(dynamics.NOISE_COLUMNS) if spec.noise_scale else 0}
    ends = np.cumsum(list(widths.values()))
    return {name: slice(int(end - w), int(end)) for (name, w), end in zip(widths.items(), ends)}


def train_step(spec: GroupSpec, state: TrainState, data: Data, idx: jax.Array) -> tuple[TrainState, jax.Array]:
    """One SGD step of one run on the examples `idx`; returns the new state and the step's
    measurements (`step_columns`: loss, top-1 and top-5 correct summed over the batch first), NaN
    once diverged."""
    hp = state.hp
    k_drop = jax.random.split(jax.random.fold_in(_run_key(hp, 1), state.step), 3)[0]  # dropout: the run seed
    _, k_aug, k_noise = jax.random.split(jax.random.fold_in(_run_key(hp, 1, "order_seed"), state.step), 3)
    x = preprocess.normalize(data.x[idx], data.mean, data.std)
    y = data.y[idx]
    x = lookup(preprocess.AUGMENTATIONS, spec.augment, "augment")(k_aug, x)
    if spec.noise:
        x = preprocess.add_noise(k_noise, x, hp["noise_std"], hp["salt_pepper"])

    probes, measured = state.probes, []
    loss_fn = lambda params: objective(spec, params, state.batch_stats, hp, x, y, k_drop, hp["dropout"])
    grads, (ce, logits, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    if spec.noise_scale and spec.noise_window:
        window_sum, noise = dynamics.noise_update(probes["noise"], grads, state.step, spec.noise_window)
        probes = {**probes, "noise": window_sum}
        measured.append(noise)
    elif spec.noise_scale:  # the halves of this batch at these weights: a measurement apart from the update
        half = idx.shape[0] // 2
        split = lambda a: a[: 2 * half].reshape(2, half, *a.shape[1:])
        half_grad = lambda xs, ys: jax.grad(lambda p: objective(spec, p, state.batch_stats, hp, xs, ys, k_drop,
                                                                hp["dropout"])[0])(state.params)
        halves = [half_grad(xs, ys) for xs, ys in zip(split(x), split(y))]  # not vmapped: XLA:CPU would group the convs
        measured.append(dynamics.noise_halves(jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), *halves), grads))
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
        k = spec.grad_window
        window = jnp.stack([state.step < k, state.step >= hp["total_steps"] - k]).astype(jnp.float32)
        grad_acc = grad_acc + window[:, None, None] * g
        sums = jnp.concatenate([sums, g[:, 2]])  # per-tensor ‖g‖, averaged per epoch
    sums = jnp.where(ok, jnp.concatenate([sums, *measured]), jnp.nan)
    return TrainState(params, batch_stats, opt_state, state.step + 1, ok, hp, grad_acc, probes), sums


def epoch_indices(hp: dict[str, jax.Array], epoch: jax.Array, train_idx: jax.Array,
                  batch_size: int) -> jax.Array:
    """This run's shuffled batches for `epoch`: [steps, batch] indices (the last partial batch
    is dropped so every step has the same shape)."""
    steps = train_idx.shape[0] // batch_size
    perm = jax.random.permutation(jax.random.fold_in(_run_key(hp, 2, "order_seed"), epoch), train_idx.shape[0])
    return train_idx[perm[: steps * batch_size]].reshape(steps, batch_size)


def sharpness_points(spec: GroupSpec, steps: int) -> int:
    """How many sharpness evaluations an epoch of `steps` steps makes with --sharpness_unit=step
    (before steps 0, k, 2k, ...); 0 otherwise."""
    return -(-steps // spec.sharpness_every) if spec.sharpness_every and spec.sharpness_unit == "step" else 0


def train_epoch(spec: GroupSpec, state: TrainState, data: Data, idx: jax.Array,
                on_steps: Any = None, every: int = 1) -> tuple[TrainState, jax.Array, jax.Array, jax.Array]:
    """One epoch of one run over its [steps, batch] indices with the steps inside `lax.scan`;
    returns the step measurements summed over the epoch, every step's own [steps, columns]
    (`step_columns`) and [points, 2] λ_max, λ_min before every k-th step (--sharpness_unit=step:
    the epoch is scanned in segments of k steps, each after an evaluation, with no conditional in
    the program). `on_steps(k)`, a host function, hears every `every`-th step k of the epoch
    (progress inside long epochs)."""
    def step(s, xs):
        k, i = xs
        s, sums = train_step(spec, s, data, i)
        if on_steps is not None:
            jax.lax.cond((k + 1) % every == 0, lambda: jax.debug.callback(on_steps, k + 1), lambda: None)
        return s, sums

    ks = jnp.arange(idx.shape[0])
    if not sharpness_points(spec, idx.shape[0]):
        state, sums = jax.lax.scan(step, state, (ks, idx))
        return state, sums.sum(0), sums, jnp.zeros((0, 2))

    def segment(s, xs):
        values, s = sharpness_of(spec, s, data)
        s, sums = jax.lax.scan(step, s, xs)
        return s, (sums, values)
    k, full = spec.sharpness_every, idx.shape[0] // spec.sharpness_every * spec.sharpness_every
    state, (sums, values) = jax.lax.scan(segment, state, (ks[:full].reshape(-1, k), idx[:full].reshape(-1, k, *idx.shape[1:])))
    sums = sums.reshape(full, -1)
    if full < idx.shape[0]:  # the epoch's last, shorter segment
        state, (rest, last) = segment(state, (ks[full:], idx[full:]))
        sums, values = jnp.concatenate([sums, rest]), jnp.concatenate([values, last[None]])
    return state, sums.sum(0), sums, values


def eval_batches(idx: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """`idx` in batches of at most `batch_size`, the last padded (with index 0): the batches
    [B, bs] and the weight of each slot [B, bs] (1 for a real example, 0 for padding)."""
    n, bs = idx.shape[0], min(batch_size, idx.shape[0])
    pad = -n % bs
    return (jnp.pad(idx, (0, pad)).reshape(-1, bs),
            (jnp.arange(n + pad) < n).reshape(-1, bs).astype(jnp.float32))


def predict(spec: GroupSpec, variables: dict, x: jax.Array, idx: jax.Array, mean: jax.Array,
            std: jax.Array) -> jax.Array:
    """Eval-mode predicted class (int32) of every x[idx], in padded batches."""
    batches, _ = eval_batches(idx, spec.eval_batch_size)

    def body(_, i):
        logits = spec.net.apply(variables, preprocess.normalize(x[i], mean, std), train=False)
        return None, jnp.argmax(logits, -1).astype(jnp.int32)

    return jax.lax.scan(body, None, batches)[1].reshape(-1)[:idx.shape[0]]


def evaluate(spec: GroupSpec, state: TrainState, x: jax.Array, y: jax.Array, idx: jax.Array,
             mean: jax.Array, std: jax.Array) -> jax.Array:
    """Eval-mode [loss, top-1 acc, top-5 acc] of one run over x[idx], in padded batches."""
    n = idx.shape[0]
    batches, valid = eval_batches(idx, spec.eval_batch_size)
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def body(total, b):
        i, w = b
        logits = spec.net.apply(variables, preprocess.normalize(x[i], mean, std), train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[i])
        top1, top5 = _count_correct(logits, y[i])
        return total + jnp.stack([(ce * w).sum(), (top1 * w).sum(), (top5 * w).sum()]), None

    total, _ = jax.lax.scan(body, jnp.zeros(3), (batches, valid))
    return total / n
