"""The per-run options, declared once: each entry makes a flag (a comma list is a grid axis inside
one group), its validation, its place in a configuration's name and a per-run array of the
engine (`train.HP_DEFAULTS`). Adding a per-run knob is one entry here plus the code that reads
`hp[name]` (the learning rate and the schedule's own parameters live in `config`/`schedules`).
"""
from __future__ import annotations

import dataclasses
import math


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
    Option("dropout", 0.0, 0.0, 1.0, high_open=True, help="Dropout rate on hidden dense activations."),
    Option("l2", 0.0, 0.0, help="L2 penalty λ·ΣW² added to the loss (weights only)."),
    Option("momentum", 0.9, 0.0, 1.0, high_open=True, help="Momentum of --optimizer=momentum/nesterov."),
    Option("rmsprop_decay", 0.9, 0.0, 1.0, low_open=True, high_open=True,
           help="Decay of the squared-gradient average of --optimizer=rmsprop."),
    Option("rmsprop_eps", 1e-8, 0.0, low_open=True, help="ε of --optimizer=rmsprop."),
    Option("adam_b1", 0.9, 0.0, 1.0, high_open=True, help="β1 of --optimizer=adam/adamw."),
    Option("adam_b2", 0.999, 0.0, 1.0, high_open=True, help="β2 of --optimizer=adam/adamw."),
    Option("adam_eps", 1e-8, 0.0, low_open=True, help="ε of --optimizer=adam/adamw."),
    Option("weight_decay", 0.0, 0.0, help="Decoupled weight decay of --optimizer=adamw."),
    Option("init_scale", 0.01, 0.0, low_open=True, help="σ of --init=normal."),
    Option("noise_std", 0.0, 0.0, help="Gaussian input noise σ on normalised training inputs."),
    Option("salt_pepper", 0.0, 0.0, 1.0, high_open=True,
           help="Fraction of training inputs set to salt-and-pepper noise."),
)}
