"""The options that make the grid, declared once.

`RUN_OPTIONS` vary inside one compiled program: each entry makes a flag (a comma list is a grid
axis inside a group), its validation, its place in a configuration's name and a per-run array of
the engine (`train.HP_DEFAULTS`). Adding a per-run knob is one entry here plus the code that reads
`hp[name]` (the learning rate and the schedule's own parameters live in `config`/`schedules`).

`GROUP_OPTIONS` change the compiled program: each value is a group of its own (a comma list, or
for the width lists --hidden/--channels/--kernels a ';' list, is a grid axis across groups). Each entry makes the flag, its help and
its validation; `config` combines them into groups and `config.group_spec` hands them to the
engine's `train.GroupSpec`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from cifar_jax import models, optim, preprocess
from cifar_jax.registry import ConfigError


@dataclasses.dataclass(frozen=True)
class Option:
    """A per-run float option: flag name, default, the allowed interval (never ±inf or NaN) and
    the flag's help."""

    name: str
    default: float
    low: float
    high: float = math.inf
    low_open: bool = False   # low itself is not allowed
    high_open: bool = False  # high itself is not allowed
    help: str = ""

    @property
    def interval(self) -> str:
        """The allowed values in words, for one-line errors."""
        low, high = "(" if self.low_open else "[", ")" if self.high_open or self.high == math.inf else "]"
        return f"in {low}{self.low:g}, {'inf' if self.high == math.inf else f'{self.high:g}'}{high}"


RUN_OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("decay_rate", 0.0, 0.0, help="k of inverse_time, γ of exponential/step."),
    Option("dropout", 0.0, 0.0, 1.0, high_open=True, help="Dropout rate where the model has dropout (after hidden dense "
           "layers; convnet: also on the flattened conv features)."),
    Option("l2", 0.0, 0.0, help="L2 penalty λ·ΣW² added to the loss (weights only)."),
    Option("label_smoothing", 0.0, 0.0, 1.0, high_open=True,
           help="Label smoothing α of the training loss: targets (1 − α)·one-hot + α/classes."),
    Option("momentum", 0.9, 0.0, 1.0, high_open=True, help="Momentum of --optimizer=momentum/nesterov."),
    Option("rmsprop_decay", 0.9, 0.0, 1.0, low_open=True, high_open=True,
           help="Decay of the squared-gradient average of --optimizer=rmsprop."),
    Option("rmsprop_eps", 1e-8, 0.0, low_open=True, help="ε of --optimizer=rmsprop."),
    Option("adam_b1", 0.9, 0.0, 1.0, high_open=True, help="β1 of --optimizer=adam/adamw."),
    Option("adam_b2", 0.999, 0.0, 1.0, high_open=True, help="β2 of --optimizer=adam/adamw."),
    Option("adam_eps", 1e-8, 0.0, low_open=True, help="ε of --optimizer=adam/adamw."),
    Option("weight_decay", 0.0, 0.0, help="Weight decay as PyTorch's optimisers apply it: decoupled for "
           "--optimizer=adamw, else added to the gradient (wd·θ, every parameter)."),
    Option("init_scale", 0.01, 0.0, low_open=True, help="σ of --init=normal."),
    Option("noise_std", 0.0, 0.0, help="Gaussian input noise σ on normalised training inputs."),
    Option("salt_pepper", 0.0, 0.0, 1.0, high_open=True,
           help="Fraction of training inputs set to salt-and-pepper noise."),
)}


@dataclasses.dataclass(frozen=True)
class GroupOption:
    """A program-changing option: a name from a registry (`choices`), an integer or a float
    (>= `low`), or a list of widths; its values are separated by `sep`."""

    name: str
    default: str                       # as typed on the command line
    kind: str                          # "choice", "bool", "int", "float" or "widths"
    help: str
    choices: Sequence[str] = ()
    low: float = 0.0
    sep: str = ","

    def parse(self, values: Sequence[str]) -> tuple[Any, ...]:
        """The option's values from its absl list (split at commas), checked; ConfigError
        (one line) on a bad value."""
        text = ",".join(values)
        if not text and self.kind == "widths":
            return ((),)  # the model's own (models.MODELS)
        items = text.split(self.sep) if text else []
        if not items:
            raise ConfigError(f"--{self.name} needs at least one value")
        try:
            return tuple(self._one(item.strip()) for item in items)
        except ValueError as err:
            raise ConfigError(f"--{self.name}={text}: {err}") from None

    def _one(self, item: str) -> Any:
        if self.kind == "choice":
            if item not in self.choices:
                raise ValueError(f"{item!r} is unknown; allowed: {', '.join(self.choices)}")
            return item
        if self.kind == "bool":
            if item.lower() not in ("true", "false"):
                raise ValueError(f"{item!r} is not true or false")
            return item.lower() == "true"
        if self.kind == "widths":
            widths = tuple(int(w) for w in item.split(","))
            if not widths or min(widths) < 1:
                raise ValueError("give one or more integers >= 1 per list")
            return widths
        value = int(item) if self.kind == "int" else float(item)
        if not math.isfinite(value) or value < self.low:
            raise ValueError(f"must be >= {self.low:g}" + (" and finite" if self.kind == "float" else ""))
        return value

    @property
    def flag_help(self) -> str:
        """The flag's help line, with the allowed names and how to make it a grid axis."""
        allowed = f" ({', '.join(self.choices)})" if self.choices else ""
        axis = "several lists separated by ';'" if self.sep == ";" else "a comma list"
        return f"{self.help}{allowed}; {axis} is a grid axis (one group per value)."


GROUP_OPTIONS: dict[str, GroupOption] = {o.name: o for o in (
    GroupOption("model", "baseline", "choice", "Architecture", tuple(models.MODELS)),
    GroupOption("hidden", "", "widths", "Hidden dense widths, comma separated (empty: the model's own, e.g. "
                "50,50 for mlp, 1000 for convnet)", sep=";"),
    GroupOption("channels", "", "widths", "Conv layer channels, comma separated (empty: the model's own)", sep=";"),
    GroupOption("kernels", "", "widths", "Conv kernel sizes (odd), one per conv layer (empty: the model's own)",
                sep=";"),
    GroupOption("norm", "none", "choice", "Normalisation layer after every layer but the last", tuple(models.NORMS)),
    GroupOption("init", "torch", "choice", "Weight init (torch: PyTorch's default uniform; normal: N(0, σ²) with σ "
                "from --init_scale)", tuple(models.INITS)),
    GroupOption("dropout_kind", "inverted", "choice", "Dropout: inverted (kept units ×1/(1 − rate) in training) or "
                "unscaled (units zeroed, nothing rescaled in training or at test time)", models.DROPOUTS),
    GroupOption("dropout_place", "after_relu", "choice", "Where a hidden dense layer's dropout acts: after its ReLU, "
                "or before its normalisation (the batch statistics see the dropped units)", models.DROPOUT_PLACES),
    GroupOption("norm_init", "ones", "choice", "Initial γ, β of the normalisation (ones: γ = 1, β = 0; weight_scale: "
                "drawn N(0, σ²) like the weights; sigma: γ = σ, β = 0; both with --init=normal's σ)", tuple(models.NORM_INITS)),
    GroupOption("norm_l2", "false", "bool", "The L2 penalty λ·Σθ² also covers the normalisation's γ and β"),
    GroupOption("optimizer", "sgd", "choice", "Optimiser", tuple(optim.OPTIMIZERS)),
    GroupOption("batch_size", "64", "int", "Training batch size (an epoch's last partial batch is dropped)", low=1),
    GroupOption("epochs", "50", "int", "Training epochs", low=1),
    GroupOption("augment", "none", "choice", "Training augmentation", tuple(preprocess.AUGMENTATIONS)),
    GroupOption("clip_norm", "0", "float", "Clip gradients to this global norm (0: off)"),
)}
MODEL_OPTIONS = ("model", "hidden", "channels", "kernels", "norm", "init", "dropout_kind", "dropout_place", "norm_init",
                 "norm_l2")  # combined into one models.ModelConfig per group
