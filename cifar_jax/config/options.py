"""Options, declared once: each entry is a flag, its type and allowed values, its help and its level.

The level says where a value acts:
  run     a per-run array of the engine (`step.HP_DEFAULTS`): a comma list is a grid axis inside one
          compiled group; integers are stored as int32, floats as float32
  model   a field of `models.ModelConfig`: each value is a group of its own (a comma list, or for the
          width lists a ';' list, is a grid axis across groups)
  group   a field of `step.GroupSpec` that changes the compiled program (a grid axis across groups),
          or with `spec=False` another per-group value (--epochs)
  single  one value for the whole study (`many=True`: one list); with `spec=True` also a
          `step.GroupSpec` field (an instrument, the precision, ...)
An option of the first three levels is named in a configuration's name when it varies and is
shown in the configuration tables; `recorded="changed"` leaves it out of a run's stored config at
its default, so the records of studies made before it existed keep their form.

The tables: `RUN` here, `models.OPTIONS` (model), `step.OPTIONS` (group, and the single options
a group's program depends on) and `config.SINGLE`; `config.CORE` joins them, and `config` turns
their flags into a `Config`. An experiment declares its own in a table of the same form
(`Config.own`).
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Callable, Iterable, Sequence

from absl import flags

from cifar_jax.config.registry import ConfigError

LEVELS = ("run", "model", "group", "single")
KINDS = {"float": float, "int": int, "str": str, "bool": bool, "choice": str, "widths": tuple}


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: flag name, default (a Python value; the first group's for the grid levels),
    help, kind (`KINDS`), level (`LEVELS`) and the allowed values: a closed or open interval
    (never NaN or ±inf), `choices`, or `convert`, a function of the text that raises ValueError
    with the reason."""

    name: str
    default: Any
    help: str
    kind: str = "float"
    level: str = "single"
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: Sequence[str] = ()
    sep: str = ","            # what separates a grid axis' values (';' for the width lists)
    many: bool = False        # a single-level option that takes a comma list
    distinct: bool | None = None  # a list's values must differ (default: for choices)
    spec: bool | None = None  # a train.GroupSpec field (default: the group level)
    column: str = ""          # its header in the configuration tables (default: the name)
    shown: bool = False       # always a column of the configuration tables (else only where it varies)
    recorded: str = "always"  # "changed": left out of a run's stored config at its default
    convert: Callable[[str], Any] | None = None  # text → value for kinds a plain type cannot parse
    module: str = ""          # the module that declares it (set by `table`; --helpfull groups flags by it)
    field: str = ""           # the dataclass field it fills (default: its name)

    @property
    def axis(self) -> bool:
        """A grid axis: several values make several configurations."""
        return self.level != "single"

    @property
    def in_spec(self) -> bool:
        return self.level == "group" if self.spec is None else self.spec

    @property
    def interval(self) -> str:
        """The allowed values in words, for one-line errors."""
        finite = " and finite" if self.kind == "float" else ""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}{finite}"
        low, high = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {low}{self.low:g}, {self.high:g}{high}"

    @property
    def flag_help(self) -> str:
        """The flag's help line: the help, the allowed names or values, and how to make it an axis."""
        text = self.help.rstrip(".")
        if self.choices:
            text += f" ({', '.join(self.choices)})"
        if self.kind in ("int", "float") and self.low != -math.inf and self.convert is None:
            text += f"; allowed: {self.interval}"
        if self.axis:
            axis = "several lists separated by ';' are" if self.sep == ";" else "a comma list is"
            text += f"; {axis} a grid axis ({'one compiled group' if self.level == 'run' else 'one group per value'})"
        return text + "."

    @property
    def flag_default(self) -> Any:
        """The default as absl holds it: a list of strings for a list flag, else a plain value."""
        if self.axis or self.many:
            if isinstance(self.default, (tuple, list)) and self.kind != "widths":
                return [self.text(d) for d in self.default]
            return [self.text(self.default)] if self.text(self.default) else []
        if self.convert is None and self.kind in ("int", "float", "bool") or self.default is None:
            return self.default
        return self.text(self.default)

    def define(self, flag_values: flags.FlagValues) -> None:
        """Define the option's absl flag on `flag_values`, filed under its module (a program's own
        options under the main module's name, as absl names it: its path)."""
        define = {"int": flags.DEFINE_integer, "float": flags.DEFINE_float, "bool": flags.DEFINE_bool}
        where = dict(flag_values=flag_values, module_name=sys.argv[0] if self.module == "__main__" else self.module or None)
        if self.axis or self.many:
            flags.DEFINE_list(self.name, self.flag_default, self.flag_help, **where)
        elif self.convert is None and self.kind in define:
            define[self.kind](self.name, self.default, self.flag_help, **where)
        else:
            flags.DEFINE_string(self.name, self.flag_default, self.flag_help, **where)

    def text(self, value: Any) -> str:
        """A value as typed on the command line."""
        if self.kind == "widths":
            return ",".join(map(str, value))
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return f"{value:g}"
        return "" if value is None else str(value)

    def parse(self, raw: Any) -> Any:
        """The option's value from its parsed flag (a tuple of values for a grid axis or a list
        option), checked; ConfigError (one line naming the flag) on a bad value."""
        if not (self.axis or self.many):
            if raw is None or (self.convert is None and self.kind in ("int", "float", "bool")):
                return raw if raw is None else self._checked(raw, self.text(raw))
            return self._one(str(raw), str(raw))
        text = ",".join(raw)
        if not text and self.kind == "widths":
            return ((),)  # the model's own (models.MODELS)
        items = text.split(self.sep) if text else []
        if not items and not self.many:
            raise ConfigError(f"--{self.name} needs at least one value")
        values = tuple(self._one(item.strip(), text) for item in items)
        if (self.kind == "choice" if self.distinct is None else self.distinct) and len(set(values)) != len(values):
            raise ConfigError(f"--{self.name}={text}: give each value once")
        return values

    def _one(self, item: str, text: str) -> Any:
        try:
            if self.convert is not None:
                value = self.convert(item)
            elif self.kind == "bool":
                if item.lower() not in ("true", "false"):
                    raise ValueError(f"{item!r} is not true or false")
                value = item.lower() == "true"
            elif self.kind == "widths":
                value = tuple(int(w) for w in item.split(","))
                if not value or min(value) < 1:
                    raise ValueError("give one or more integers >= 1 per list")
            else:
                value = KINDS[self.kind](item)
        except ValueError as err:
            reason = str(err) if self.convert or self.kind in ("bool", "widths") else f"{item!r} is not a{'n' if self.kind == 'int' else ''} {'integer' if self.kind == 'int' else 'number'}"
            raise ConfigError(f"--{self.name}={text}: {reason}") from None
        return self._checked(value, text)

    def _checked(self, value: Any, text: Any) -> Any:
        if self.choices and value not in self.choices:
            raise ConfigError(f"--{self.name}={text}: {value!r} is unknown; allowed: {', '.join(self.choices)}")
        if self.kind in ("int", "float") and self.convert is None:
            below = value <= self.low if self.low_open else value < self.low
            above = value >= self.high if self.high_open else value > self.high
            if not math.isfinite(value) or below or above:
                raise ConfigError(f"--{self.name}={text}: must be {self.interval}")
        return value

    def stored(self, value: Any) -> bool:
        """Whether a run's stored config keeps this value (see `recorded`)."""
        return self.recorded == "always" or value != self.default


def table(*entries: Option) -> dict[str, Option]:
    """Options by name, each stamped with the module that declares it (a name declared twice is
    an error at import)."""
    caller = sys._getframe(1).f_globals.get("__name__", "")
    out: dict[str, Option] = {}
    for o in entries:
        if o.name in out or o.level not in LEVELS or o.kind not in KINDS:
            raise ValueError(f"option {o.name}: declared twice, or an unknown level or kind")
        out[o.name] = o if o.module else dataclasses.replace(o, module=caller)
    return out


def fields(options: dict[str, Option], after: dict[str, list[tuple]] | None = None,
           defaults: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """(field, type, default) per option, for `dataclasses.make_dataclass`: the structures whose
    fields the options are (models.ModelConfig, train.GroupSpec); `after` puts fields that are no
    option after the named option's (a stored config keeps its key order); `defaults` replaces an
    option's default as the field's."""
    out: list[tuple[str, Any, Any]] = []
    for name, o in options.items():
        out.append((o.field or name, Any, dataclasses.field(default=(defaults or {}).get(name, o.default))))
        out += [(f, t, dataclasses.field(default=d)) for f, t, d in (after or {}).get(name, ())]
    return out


def define(options: Iterable[Option], flag_values: flags.FlagValues) -> None:
    """Define the flags of `options` on `flag_values` (those already defined are left as they are)."""
    for o in options:
        if o.name not in flag_values:
            o.define(flag_values)


def values(options: dict[str, Option], flag_values: Any) -> dict[str, Any]:
    """Every option's checked value from the parsed flags (see `Option.parse`)."""
    return {name: o.parse(getattr(flag_values, name)) for name, o in options.items()}


def namespace(name: str, options: dict[str, Option], given: dict[str, Any]) -> Any:
    """A frozen dataclass instance (class `name`) with one typed field per option: an
    experiment's own options as one value (`Config.own`)."""
    fields = [(k, Any, dataclasses.field(default=None)) for k in options]
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    return cls(**{k: given[k] for k in options})


def serialized(options: dict[str, Option], flag_values: Any) -> list[tuple[str, str, bool]]:
    """(name, --flag=value, whether it differs from the default) per option that has a value, as
    the command line gives it (a study's flags.txt and protocol.flags)."""
    out = []
    for name, o in options.items():
        raw, default = getattr(flag_values, name), o.flag_default
        if raw is None:
            continue
        if isinstance(raw, bool):
            line = f"--{name}" if raw else f"--no{name}"
        else:
            line = f"--{name}={','.join(raw) if isinstance(raw, list) else raw}"
        out.append((name, line, raw != default))
    return out


# A shortcut for the entries below: a float option of the run level from 0 up (or in [0, 1)).
def _run(name: str, default: float, help: str, **kw: Any) -> Option:
    return Option(name, default, help, level="run", low=kw.pop("low", 0.0), **kw)


RUN = table(
    _run("decay_rate", 0.0, "k of inverse_time, γ of exponential/step."),
    _run("dropout", 0.0, "Dropout rate where the model has dropout (after hidden dense layers; convnet: also on "
         "the flattened conv features).", high=1.0, high_open=True, shown=True),
    _run("l2", 0.0, "L2 penalty λ·ΣW² added to the loss (weights only).", column="λ", shown=True),
    _run("label_smoothing", 0.0, "Label smoothing α of the training loss: targets (1 − α)·one-hot + α/classes.",
         high=1.0, high_open=True),
    _run("momentum", 0.9, "Momentum of --optimizer=momentum/nesterov.", high=1.0, high_open=True),
    _run("rmsprop_decay", 0.9, "Decay of the squared-gradient average of --optimizer=rmsprop.", low_open=True,
         high=1.0, high_open=True),
    _run("rmsprop_eps", 1e-8, "ε of --optimizer=rmsprop.", low_open=True),
    _run("adam_b1", 0.9, "β1 of --optimizer=adam/adamw.", high=1.0, high_open=True),
    _run("adam_b2", 0.999, "β2 of --optimizer=adam/adamw.", high=1.0, high_open=True),
    _run("adam_eps", 1e-8, "ε of --optimizer=adam/adamw.", low_open=True),
    _run("weight_decay", 0.0, "Weight decay as PyTorch's optimisers apply it: decoupled for --optimizer=adamw, else "
         "added to the gradient (wd·θ, every parameter)."),
    _run("init_scale", 0.01, "σ of --init=normal.", low_open=True, column="σ"),
    _run("noise_std", 0.0, "Gaussian input noise σ on normalised training inputs.", column="noise σ", shown=True),
    _run("salt_pepper", 0.0, "Fraction of training inputs set to salt-and-pepper noise.", high=1.0, high_open=True,
         column="s&p", shown=True),
    _run("warmup_steps", 0, "Linear learning-rate warmup: the LR rises from 1/k of the schedule's to all of it over the "
         "first k steps (0: none).", kind="int", recorded="changed"),
)

