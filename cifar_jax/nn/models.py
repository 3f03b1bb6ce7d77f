"""Models as layer stacks: one flax module builds any stack, and the same stack gives the layer table.

A stack is a tuple of layers: ("conv", features, kernel, norm), ("pool", window),
("dense", features, norm) or ("dropout",); the classifier layer (dense, num_classes) is appended by
the module. `norm` says whether the model's normalisation (batch or layer norm, or none) follows
that layer; a layer feeding batch norm has no bias. Dropout, with a rate given per call (so it can
be a per-run array), acts where the stack says, in train mode when the model uses dropout. Every
model's widths and kernel sizes are options with the model's own defaults (`MODELS`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cifar_jax.config import options
from cifar_jax.config.options import Option
from cifar_jax.config.registry import ConfigError, lookup
from cifar_jax.nn.layers import Conv, Dense, max_pool

Layer = tuple


def _conv_pool(channels: Sequence[int], kernels: Sequence[int], norm: bool = True) -> tuple[Layer, ...]:
    """conv(k×k, 'same') → [norm] → ReLU → 2×2 max-pool, per (channels, kernel)."""
    return tuple(layer for c, k in zip(channels, kernels) for layer in (("conv", c, k, norm), ("pool", 2)))


def _hidden(widths: Sequence[int], norm: bool = True) -> tuple[Layer, ...]:
    """dense → [norm] → ReLU → dropout, per width."""
    return tuple(layer for w in widths for layer in (("dense", w, norm), ("dropout",)))


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A model family: its stack from (channels, kernels, hidden widths), and their defaults."""

    stack: Callable[[tuple[int, ...], tuple[int, ...], tuple[int, ...]], tuple[Layer, ...]]
    channels: tuple[int, ...] = ()
    kernels: tuple[int, ...] = ()
    hidden: tuple[int, ...] = ()

    @property
    def convolutional(self) -> bool:
        """Whether the family has conv layers (a dense-only net has none to freeze or to lay out as convs)."""
        return bool(self.channels)


# The architectures of STUDIES.md "Models" (the classifier layer is added by Net).
MODELS: dict[str, Architecture] = {
    # seeds/000 BaselineNet (DropoutNet: dropout on fc1's activations; BatchNormNet: norm everywhere)
    "baseline": Architecture(lambda c, k, h: _conv_pool(c, k) + _hidden(h), (16, 32, 64), (3, 3, 3), (64,)),
    # seeds/001 ConvNet; dropout before every dense layer (on the flattened conv features and fc4)
    "convnet": Architecture(lambda c, k, h: _conv_pool(c, k) + (("dropout",),) + _hidden(h),
                            (32, 64, 64), (5, 5, 5), (1000,)),
    # seeds/002-004 fully connected nets
    "mlp": Architecture(lambda c, k, h: _hidden(h), hidden=(50, 50)),
    # seeds/004 (CS231n) three-layer conv net: conv 7×7 → spatial norm → ReLU → pool → dense → ReLU → dense
    "threelayer": Architecture(lambda c, k, h: _conv_pool(c, k) + _hidden(h, norm=False), (32,), (7,), (100,)),
    # seeds/004 OpenNet: conv-BN-ReLU-pool ×2, then dense layers with ReLU and dropout between them
    "opennet": Architecture(lambda c, k, h: _conv_pool(c, k) + _hidden(h, norm=False), (64, 32), (5, 3), (256, 128)),
}


def _torch_uniform(key: jax.Array, shape: Sequence[int], dtype: Any, fan_in: int) -> jax.Array:
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (what seeds/000 used)."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _torch_init(fan_in: int) -> tuple[Any, Any]:
    f = lambda key, shape, dtype=jnp.float32: _torch_uniform(key, shape, dtype, fan_in)
    return f, f


# name → (fan_in → (kernel_init, bias_init)); "normal" is N(0, 1), scaled per run by init_scale.
INITS: dict[str, Callable[[int], tuple[Any, Any]]] = {
    "torch": _torch_init,
    "he": lambda fan_in: (nn.initializers.he_normal(), nn.initializers.zeros),
    "xavier": lambda fan_in: (nn.initializers.xavier_normal(), nn.initializers.zeros),
    "normal": lambda fan_in: (nn.initializers.normal(1.0), nn.initializers.zeros),
}

@dataclasses.dataclass(frozen=True)
class Norm:
    """A normalisation: `make(train mode, compute dtype, layer name, (scale init, shift init))` →
    the module after a layer (None: no normalisation), the prefix of its parameters' names, its
    short label, and whether the layer it follows drops its bias (the shift makes it redundant)."""

    make: Callable[[bool, Any, str, tuple], nn.Module] | None
    prefix: str = ""
    label: str = ""
    drops_bias: bool = False


# Batch norm: momentum 0.9 = PyTorch's 0.1; statistics are per run because each run is its own apply.
NORMS: dict[str, Norm] = {
    "none": Norm(None),
    "batch": Norm(lambda train, dtype, name, inits: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, scale_init=inits[0],
        bias_init=inits[1], name=f"bn_{name}"), "bn_", "BN", drops_bias=True),
    "layer": Norm(lambda train, dtype, name, inits: nn.LayerNorm(
        epsilon=1e-5, dtype=dtype, scale_init=inits[0], bias_init=inits[1], name=f"ln_{name}"), "ln_", "LN"),
}
NORM_PREFIXES = tuple(n.prefix for n in NORMS.values() if n.prefix)  # a normalisation's parameters: <prefix><layer>
# name → the normalisation's (γ, β) init, before `scale_kernels` multiplies the scaled ones by the
# run's init_scale σ like the weights: probes of seeds/002's small-σ batch-norm nets.
# weight_scale: γ, β ~ N(0, σ²), drawn like the weights; sigma: γ = σ, β = 0.
NORM_INITS: dict[str, tuple[Any, Any]] = {
    "ones": (nn.initializers.ones, nn.initializers.zeros),
    "weight_scale": (nn.initializers.normal(1.0), nn.initializers.normal(1.0)),
    "sigma": (nn.initializers.ones, nn.initializers.zeros),
}
# Dropout: inverted (kept units scaled by 1/(1 - rate) in training) or unscaled (zeroed, nothing
# rescaled, in training or at test time: the test-time net sees larger activations than training).
DROPOUTS = ("inverted", "unscaled")
# Where a hidden layer's dropout acts: after its ReLU, or on its output before the normalisation
# (so the batch statistics see the dropped units).
DROPOUT_PLACES = ("after_relu", "before_norm")


def dropout(x: jax.Array, rate: jax.Array, key: jax.Array, kind: str = "inverted") -> jax.Array:
    """Dropout with a traced rate (`DROPOUTS`): inverted keeps E[out] = x in train mode; rate 0
    returns x exactly."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep if kind == "inverted" else x, 0.0)


ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh}  # after every layer but the classifier
PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16}  # None: compute in the parameters' dtype


class Net(nn.Module):
    """A conv/pool/dense stack, then a dense classifier. Parameters are float32;
    `dtype` is the compute precision (bf16: mixed precision, BN statistics still float32)."""

    model: Any  # its ModelConfig
    layers: tuple[Layer, ...]
    conv_impl: str = "xla"
    dtype: Any = None
    frozen: tuple[str, ...] = ()  # layers whose batch norm uses running statistics in train mode too
    pool: str = "vjp"  # max-pooling's differentiation rule (layers.POOLS): "jvp" for forward mode

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, dropout_rate: jax.Array | float = 0.0) -> jax.Array:
        m = self.model
        norm_kind = NORMS[m.norm]
        drop = lambda x: dropout(x, dropout_rate, self.make_rng("dropout"), m.dropout_kind) \
            if m.use_dropout and train else x
        early = m.dropout_place == "before_norm"
        n_conv = n_fc = 0
        for i, layer in enumerate(self.layers):
            kind = layer[0]
            if kind == "pool":
                x = max_pool(x, layer[1], self.pool)
                continue
            if kind == "dropout":
                if not (early and i and self.layers[i - 1][0] == "dense"):  # else it acted before the norm
                    x = drop(x)
                continue
            norm = norm_kind.make if layer[-1] else None
            bias = norm is None or not norm_kind.drops_bias
            if kind == "conv":
                n_conv += 1
                name = f"conv{n_conv}"
                k = layer[2]
                kinit, binit = INITS[m.init](k * k * x.shape[-1])
                x = Conv(layer[1], k, bias, kinit, binit, self.conv_impl, self.dtype, name=name)(x)
            else:
                n_fc += 1
                name = f"fc{n_fc}"
                x = x.reshape(x.shape[0], -1)
                kinit, binit = INITS[m.init](x.shape[-1])
                x = Dense(layer[1], bias, kinit, binit, self.dtype, name=name)(x)
                if early and self.layers[i + 1:i + 2] == (("dropout",),):
                    x = drop(x)
            if norm is not None:
                x = norm(train and name not in self.frozen, self.dtype, name, NORM_INITS[m.norm_init])(x)
            x = ACTIVATIONS[m.activation](x)
        x = x.reshape(x.shape[0], -1)
        kinit, binit = INITS[m.init](x.shape[-1])
        logits = Dense(m.num_classes, True, kinit, binit, self.dtype, name=f"fc{n_fc + 1}")(x)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bf16 → float32 loss


# The model options, declared once: each is a flag (a grid axis: one group per value), a field of
# ModelConfig and of the network (`Net.model`), and a column of the configuration tables.
def _model(name: str, default: Any, help: str, **kw: Any) -> Option:
    return Option(name, default, help, level="model", **kw)


OPTIONS = options.table(
    _model("model", "baseline", "Architecture", kind="choice", choices=tuple(MODELS), field="name"),
    _model("hidden", (), "Hidden dense widths, comma separated (empty: the model's own, e.g. 50,50 for mlp, 1000 for "
           "convnet)", kind="widths", sep=";", column="hidden layers", shown=True),
    _model("norm", "none", "Normalisation layer after every layer but the last", kind="choice", choices=tuple(NORMS),
           shown=True),
    _model("init", "torch", "Weight init (torch: PyTorch's default uniform; normal: N(0, σ²) with σ from --init_scale)",
           kind="choice", choices=tuple(INITS), shown=True),
    _model("channels", (), "Conv layer channels, comma separated (empty: the model's own)", kind="widths", sep=";"),
    _model("kernels", (), "Conv kernel sizes (odd), one per conv layer (empty: the model's own)", kind="widths", sep=";"),
    _model("dropout_kind", "inverted", "Dropout: inverted (kept units ×1/(1 − rate) in training) or unscaled (units "
           "zeroed, nothing rescaled in training or at test time)", kind="choice", choices=DROPOUTS, recorded="changed"),
    _model("dropout_place", "after_relu", "Where a hidden dense layer's dropout acts: after its ReLU, or before its "
           "normalisation (the batch statistics see the dropped units)", kind="choice", choices=DROPOUT_PLACES,
           recorded="changed"),
    _model("norm_init", "ones", "Initial γ, β of the normalisation (ones: γ = 1, β = 0; weight_scale: drawn N(0, σ²) "
           "like the weights; sigma: γ = σ, β = 0; both with --init=normal's σ)", kind="choice",
           choices=tuple(NORM_INITS), recorded="changed"),
    _model("norm_l2", False, "The L2 penalty λ·Σθ² also covers the normalisation's γ and β", kind="bool",
           recorded="changed"),
    _model("activation", "relu", "Nonlinearity after every layer but the classifier", kind="choice",
           choices=tuple(ACTIVATIONS), recorded="changed"),
)


class _ModelChecks:
    """ModelConfig's checks: the architecture's own widths fill in empty ones, and the options
    that depend on each other agree (ConfigError, one line)."""

    def __post_init__(self) -> None:
        arch = lookup(MODELS, self.name, "model")
        for field in ("hidden", "channels", "kernels"):
            given = tuple(getattr(self, field))
            if given and not getattr(arch, field):
                raise ConfigError(f"--{field}={','.join(map(str, given))}: --model={self.name} has no such layers")
            object.__setattr__(self, field, given or getattr(arch, field))
        kernels, channels = (",".join(map(str, v)) for v in (self.kernels, self.channels))
        if len(self.kernels) != len(self.channels):
            raise ConfigError(f"--kernels={kernels} --channels={channels}: give one kernel size per conv layer")
        if any(k % 2 == 0 for k in self.kernels):
            raise ConfigError(f"--kernels={kernels}: kernel sizes must be odd ('same' padding)")
        for name, o in OPTIONS.items():
            if o.choices:
                lookup(dict.fromkeys(o.choices), getattr(self, o.field or name), name)
        if self.norm_init != "ones" and self.init != "normal":
            raise ConfigError(f"--norm_init={self.norm_init} scales γ, β by --init=normal's σ; --init={self.init} has none")


# What defines a model: a field per option (`name` is --model; empty widths: the architecture's
# own, filled in by the checks), its class count and whether it uses dropout.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig", options.fields(OPTIONS, after={"init": [("use_dropout", bool, False), ("num_classes", int, 10)]}),
    bases=(_ModelChecks,), frozen=True, namespace={"__module__": __name__})


def layer_stack(cfg: ModelConfig) -> tuple[Layer, ...]:
    """The layers of a model config (the classifier not included)."""
    return MODELS[cfg.name].stack(cfg.channels, cfg.kernels, cfg.hidden)


def build(cfg: ModelConfig, conv_impl: str = "xla", precision: str = "fp32",
          frozen: tuple[str, ...] = (), pool: str = "vjp") -> Net:
    """The flax module for a model config, with a convolution implementation, precision, the
    layers whose BN statistics are frozen and max-pooling's differentiation rule."""
    return Net(cfg, layer_stack(cfg), conv_impl, lookup(PRECISIONS, precision, "precision"), frozen, pool)


def is_norm_param(path: tuple) -> bool:
    """A normalisation layer's γ or β (its module named bn_* or ln_*)."""
    return len(path) > 1 and str(path[-2].key).startswith(NORM_PREFIXES)


def scale_kernels(params: Any, scale: jax.Array, norm_too: bool = False) -> Any:
    """Multiply every weight matrix by `scale` (the per-run σ of a normal(σ) init), and with
    `norm_too` the normalisations' γ and β (--norm_init other than ones)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p * scale if path[-1].key == "kernel" or (norm_too and is_norm_param(path)) else p, params)


def layer_table(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> list[dict]:
    """Per layer: output shape, weights, biases, norm parameters and receptive field (in pixels)."""
    net = build(cfg)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, train=False))
    params = variables["params"]
    rows, shape = [], tuple(image_shape)
    rf, jump, n_conv, n_fc, n_pool = 1, 1, 0, 0, 0
    for layer in layer_stack(cfg) + (("dense", cfg.num_classes, False),):
        if layer[0] == "dropout":
            continue
        if layer[0] == "pool":
            n_pool += 1
            w = layer[1]
            rf, jump = rf + (w - 1) * jump, jump * w
            shape = (shape[0] // w, shape[1] // w, shape[2])
            rows.append(dict(layer=f"pool{n_pool}", kind=f"maxpool {w}x{w}/{w}", output=shape,
                             weights=0, biases=0, norm=0, receptive_field=rf))
            continue
        if layer[0] == "conv":
            n_conv += 1
            name, k = f"conv{n_conv}", layer[2]
            rf += (k - 1) * jump
            shape = (shape[0], shape[1], layer[1])
            kind = f"conv {k}x{k}, pad {k // 2}"
        else:
            n_fc += 1
            name = f"fc{n_fc}"
            shape = (layer[1],)
            kind = "dense"
            rf = max(rf, image_shape[0], image_shape[1])  # a dense unit sees the whole image
        p = params[name]
        norm = sum(int(v.size) for key in (prefix + name for prefix in NORM_PREFIXES) if key in params
                   for v in jax.tree_util.tree_leaves(params[key]))
        rows.append(dict(layer=name, kind=kind, output=shape, weights=int(p["kernel"].size),
                         biases=int(p["bias"].size) if "bias" in p else 0, norm=norm,
                         receptive_field=rf))
    return rows


def format_layer_table(rows: list[dict]) -> str:
    """The layer table as aligned text, with a total line."""
    head = f"{'layer':<7} {'kind':<16} {'output':<14} {'weights':>9} {'biases':>7} {'norm':>6} {'RF':>4}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layer']:<7} {r['kind']:<16} {str(r['output']):<14} {r['weights']:>9,} "
                     f"{r['biases']:>7,} {r['norm']:>6,} {r['receptive_field']:>4}")
    total = sum(r["weights"] + r["biases"] + r["norm"] for r in rows)
    lines.append(f"total parameters: {total:,} ({sum(r['weights'] for r in rows):,} weights)")
    return "\n".join(lines)
