"""The core options every experiment shares, the typed `Config` they make, and its run grid.

Options are declared once (`SINGLE` here; the others in `options`, `models` and `train`), with an experiment's own in a
table of the same form. `from_flags` turns parsed flags into a validated `Config` (one-line
`ConfigError` naming the flag and what is allowed); `parse` and `build` make one in Python,
without absl's global flags; `grid` expands the list-valued options (× seeds) into runs. Nothing
here touches data or disk.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Sequence

from absl import flags

from cifar_jax.config import options
from cifar_jax.config.registry import ConfigError
from cifar_jax.data import splits
from cifar_jax.nn import models
from cifar_jax.study import halving
from cifar_jax.training import schedules, step


def _study_name(name: str) -> str:
    """--name as one plain folder name, so the study stays inside --results_dir."""
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name):
        raise ValueError("must be one folder name inside --results_dir (no '/', '\\', '.' or '..')")
    return name


O = options.Option
# The options every experiment shares that are one value per study (the grid's are options.RUN,
# models.OPTIONS and train.OPTIONS, whose single-level entries a group's program also depends on).
SINGLE = options.table(
    O("dataset", "cifar10", "cifar10, cifar100, synthetic, or a tfds catalogue name (mnist, fashion_mnist, "
      "svhn_cropped, ...; needs the [tfds] extra).", kind="str"),
    O("data_dir", None, "Where datasets live; default $CIFAR_JAX_DATA_DIR, else ~/.cache/cifar_jax.", kind="str"),
    O("results_dir", "./results", "Root of the study directories.", kind="str"),
    O("name", None, "Study directory name under --results_dir (default: the experiment's name).", kind="str",
      convert=_study_name),
    O("lr", ("0.05",), "Learning rate (α0; η_max for --schedule=cyclic); a comma list is a grid axis; OPTIMIZER:LR "
      "entries give each optimiser its own (--optimizer=sgd,adam --lr=sgd:0.05,adam:0.001).", kind="str", many=True),
    O("schedule", "constant", "LR schedule.", kind="choice", choices=tuple(schedules.SCHEDULES)),
    O("lr_min", 0.0, "End LR of linear/cosine; η_min of cyclic.", low=0.0),
    O("lr_batch_scale", 0, "Scale the learning rates of each --batch_size by batch_size / this reference batch (the "
      "linear scaling rule; e.g. 64: lr 0.01 at batch 64 is 0.16 at 1024); 0: off.", kind="int", low=0),
    O("decay_unit", "epoch", "Unit of t in the decay schedules: epoch (LR changes once per epoch) or step (every step).",
      kind="choice", choices=("epoch", "step")),
    O("decay_every", 1.0, "t advances by one every this many decay units (step schedule: 10 = every 10 epochs).",
      low=0.0, low_open=True),
    O("half_cycle", 0, "n_s of the cyclic schedule, in steps (0: 5 epochs' worth, as in seeds/002).", kind="int", low=0),
    O("seeds", ("5",), "A count n (seeds 0..n-1) or a comma list of seeds.", kind="str", many=True),
    O("init_seed", (), "Seed of the weight initialisation, apart from the run seed (empty: the run seed); a comma "
      "list is a grid axis.", kind="int", many=True, low=0, distinct=True),
    O("order_seed", (), "Seed of the data order, augmentation and input noise, apart from the run seed (which keeps "
      "dropout; empty: the run seed); a comma list is a grid axis.", kind="int", many=True, low=0,
      distinct=True),
    O("classes", "", "Train on a class subset, relabelled: the new classes in order, comma separated, each a source "
      "class or several joined by '+' (names or indices), e.g. cat,dog or airplane+ship,cat+dog ('': every class as "
      "it is).", kind="str", convert=str.strip),
    O("test_size", 0, "Evaluate on this many test images drawn with --split_seed (0: the whole test set).", kind="int",
      low=0),
    O("split", "45000/5000", "train/validation sizes drawn from the official training set; append :swap to exchange "
      "them (transfer studies).", kind="str", convert=splits.parse_split),
    O("split_seed", 0, "Seed of the train/validation split (shared by every run).", kind="int"),
    O("normalization", "per_channel", "Input standardisation (statistics from the training split only; zca: ZCA "
      "whitening, see --zca_epsilon).", kind="choice", choices=tuple(splits.NORMALIZATIONS)),
    O("zca_epsilon", splits.ZCA_EPSILON, "ε added to the covariance eigenvalues by --normalization=zca, in x/255 "
      "units (CIFAR-10's mean eigenvalue is ≈ 0.06).", low=0.0, low_open=True),
    O("layout", "auto", "How a group runs (auto: the measured-fastest for the backend and model; every layout gives "
      "the same numbers).", kind="choice", choices=step.LAYOUTS),
    O("memory_limit_gb", 0.0, "Per-device memory a group may use before it is split into chunks of runs (0: 90% of "
      "an accelerator's memory; no limit on CPU).", low=0.0),
    O("compile_cache", "~/.cache/cifar_jax/xla", "Persistent XLA compilation cache directory (every program kept), so a "
      "repeated study does not recompile ('' disables).", kind="str"),
    O("snapshot_every", 0, "Save each group's training state every this many epochs, so an interrupted study resumes "
      "mid-run (0: whenever 5 s of training passed since the last).", kind="int", low=0),
    O("save_final", False, "Save every run's final variables as an orbax checkpoint with its provenance "
      "(<study>/checkpoints/<run>/; experiments.loss_surface reads them); a finished run without one is trained "
      "again.", kind="bool"),
    O("tensorboard", False, "Write every run's epoch metrics as TensorBoard scalars as epochs finish "
      "(<study>/tensorboard/<run>/; no TensorFlow needed; view with tensorboard --logdir).", kind="bool"),
    O("download", True, "Download a missing CIFAR archive from its official address.", kind="bool"),
    O("coordinator_address", None, "Multi-host: host:port of process 0 for jax.distributed (default "
      "$CIFAR_JAX_COORDINATOR).", kind="str"),
    O("num_processes", None, "Multi-host: number of processes (default $CIFAR_JAX_NUM_PROCESSES, else 1).",
      kind="int", low=1),
    O("process_id", None, "Multi-host: this process's index (default $CIFAR_JAX_PROCESS_ID, else 0).", kind="int",
      low=0),
    O("prune", "none", "Successive halving (halving): at each of --prune_rungs the configurations are ranked by the "
      "mean over seeds of --prune_metric, the best --prune_keep fraction train on, the others stop with status "
      "'pruned'; none: every run trains to its last epoch.", kind="choice", choices=("none", "halving")),
    O("prune_rungs", (), "--prune=halving: the epochs after which configurations are ranked, each below --epochs "
      "(empty: epochs·keep^k rounded, for k = 1, 2, ...; 9 epochs at keep 1/3: 1,3).", kind="int", many=True, low=1,
      distinct=True),
    O("prune_keep", 1 / 3, "--prune=halving: the fraction of configurations each rung keeps (rounded up, at least "
      "one).", low=0.0, high=1.0, low_open=True, high_open=True),
    O("prune_metric", "val_acc", "--prune=halving: what ranks the configurations at a rung (the epoch's validation "
      "accuracy or loss, or its running training accuracy or loss).", kind="choice", choices=halving.METRICS),
    O("host_timeout", 120.0, "Multi-host: a process that sees no sign of another (its heartbeat file under "
      "--results_dir/.hosts) for this many seconds while waiting for its runs stops with one line naming it (exit 3).",
      low=1.0),
)
# Every core option: one table (names are unique across the levels), its flags filed under this module.
CORE = options.table(*(dataclasses.replace(o, module=__name__) for table in (SINGLE, options.RUN, models.OPTIONS,
                                                                             step.OPTIONS) for o in table.values()))


def define_flags(flag_values: flags.FlagValues, own: dict[str, options.Option] | None = None) -> None:
    """Define the core flags, and an experiment's `own`, on `flag_values` (once per name)."""
    options.define([*CORE.values(), *(own or {}).values()], flag_values)


# The options every group of a study has a value of (one combination per group: `Config.variants`).
PER_GROUP = ("model", "lrs", *(k for k, o in step.OPTIONS.items() if o.level == "group"))


@dataclasses.dataclass(frozen=True)
class Config:
    """A study's validated options: a field per core option of one value (`SINGLE`, and the
    single-level ones of `step.OPTIONS`), the per-run values (`per_run`), every combination of
    the group-level ones (`variants`; `cfg.model`, `cfg.batch_size`, `cfg.lrs`, ... read the
    first) and the experiment's own options (`own`)."""

    dataset: str
    data_dir: str | None
    results_dir: str
    name: str | None
    schedule: str
    lr_min: float
    decay_unit: str
    decay_every: float
    half_cycle: int
    seeds: tuple[int, ...]
    init_seeds: tuple[int, ...]   # () : the run seed
    order_seeds: tuple[int, ...]  # () : the run seed
    split: tuple[int, int, bool]
    split_seed: int
    classes: str
    test_size: int
    normalization: str
    zca_epsilon: float
    layout: str
    precision: str
    conv_impl: str
    memory_limit_gb: float
    compile_cache: str
    eval_batch_size: int
    snapshot_every: int
    eval_train: str
    eval_test: bool
    grad_stats: bool
    grad_window: int
    loss_every: int
    download: bool
    sharpness_every: int
    sharpness_unit: str
    sharpness_iters: int
    sharpness_examples: int
    noise_scale: bool
    noise_window: int
    distributed: tuple[str | None, int, int]  # (coordinator address, process count, process index)
    host_timeout: float
    prune: str
    prune_rungs: tuple[int, ...]  # resolved: the given rungs, or the default ones (halving.default_rungs)
    prune_keep: float
    prune_metric: str
    per_run: tuple[tuple[str, tuple[float, ...]], ...]  # every options.RUN name → its values
    # every combination of the group-level options (`PER_GROUP`: the model, the learning rates of
    # its optimiser and every group option of train.OPTIONS) as (name, value) pairs
    variants: tuple[tuple[tuple[str, Any], ...], ...]
    tensorboard: bool = False  # write TensorBoard scalars of every epoch (cifar_jax/results/tensorboard.py)
    save_final: bool = False   # save every run's final variables as a checkpoint (study.final_checkpoint)
    own: Any = None            # the experiment's own options (a frozen dataclass: options.namespace)
    # every option as given: (name, --flag=value, whether it differs from its default): flags.txt
    given: tuple[tuple[str, str, bool], ...] = ()

    def __getattr__(self, name: str) -> Any:
        """A group-level value (`PER_GROUP`) of the first variant."""
        if name in PER_GROUP:
            return dict(self.variants[0])[name]
        raise AttributeError(f"Config has no option {name!r}")

    def values(self, option: str) -> tuple[float, ...]:
        """The values of a per-run option (`options.RUN`)."""
        return dict(self.per_run)[option]

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes`: fields, per-run options by name (a tuple of values) or group-level
        values, which stop varying (every variant takes the new value)."""
        per_run = {**dict(self.per_run), **{k: v for k, v in changes.items() if k in options.RUN}}
        group = {k: v for k, v in changes.items() if k in PER_GROUP}
        fields = {k: v for k, v in changes.items() if k not in options.RUN and k not in PER_GROUP}
        variants = dict.fromkeys(tuple((k, group.get(k, v)) for k, v in variant) for variant in self.variants)
        return dataclasses.replace(self, variants=tuple(variants), per_run=tuple(per_run.items()), **fields)

    def vary(self, name: str, values: Sequence[Any]) -> Config:
        """A copy whose group-level `name` takes each of `values` in turn (a grid axis: one group
        per value, crossed with the variants there are)."""
        variants = tuple(tuple((k, value if k == name else v) for k, v in variant)
                         for variant in self.variants for value in values)
        return dataclasses.replace(self, variants=tuple(dict.fromkeys(variants)))

    def changed(self, option: str) -> bool:
        """Whether an option was given a value other than its default."""
        return any(changed for name, _, changed in self.given if name == option)

    def single_group(self, why: str) -> None:
        """Refuse several values of a group-level flag where a study sets its own architectures."""
        if len(self.variants) > 1:
            axes = (k for k, o in CORE.items() if o.level in ("model", "group"))
            raise ConfigError(f"{'/'.join('--' + name for name in axes)}: give one value each; {why}")


def parse_seeds(values: Sequence[str]) -> tuple[int, ...]:
    """--seeds: a count n → 0..n-1, or a list of distinct non-negative seeds."""
    try:
        ints = [int(v) for v in values]
    except ValueError:
        raise ConfigError(f"--seeds={','.join(values)}: give a count or a comma list of integers") from None
    if not ints:
        raise ConfigError("--seeds is empty: give a count or a comma list of integers")
    if len(ints) == 1:
        if ints[0] < 1:
            raise ConfigError(f"--seeds={ints[0]}: a count must be >= 1")
        return tuple(range(ints[0]))
    if min(ints) < 0 or len(set(ints)) != len(ints):
        raise ConfigError(f"--seeds={','.join(values)}: seeds must be distinct and >= 0")
    return tuple(ints)


def _learning_rates(values: Sequence[str], optimizers: tuple[str, ...]) -> dict[str, tuple[float, ...]]:
    """--lr per optimiser: plain values apply to every one; OPTIMIZER:LR entries to that one."""
    lr = options.Option("lr", 0.05, "", level="run", low=0.0, low_open=True)
    if not any(":" in v for v in values):
        lrs = lr.parse(values)
        return {o: lrs for o in optimizers}
    per: dict[str, list[str]] = {}
    for v in values:
        name, sep, value = v.partition(":")
        if not sep or name not in optimizers:
            raise ConfigError(f"--lr={','.join(values)}: {v!r} is not OPTIMIZER:LR for one of --optimizer "
                              f"({', '.join(optimizers)})")
        per.setdefault(name, []).append(value)
    missing = [o for o in optimizers if o not in per]
    if missing:
        raise ConfigError(f"--lr={','.join(values)}: no learning rate for {', '.join(missing)}")
    return {o: lr.parse(per[o]) for o in optimizers}


def _variants(given: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the program-changing options (models.OPTIONS, and the group level of
    train.OPTIONS; each combination is a group of its own), with the learning rates of its
    optimiser."""
    model_axes = {o.field or k: given[k] for k, o in models.OPTIONS.items()}
    model_configs = list(dict.fromkeys(
        models.ModelConfig(**dict(zip(model_axes, combo)), use_dropout=any(d > 0 for d in given["dropout"]))
        for combo in itertools.product(*model_axes.values())))
    axes = {"model": model_configs, **{k: given[k] for k, o in step.OPTIONS.items() if o.level == "group"}}
    lrs = _learning_rates(given["lr"], given["optimizer"])
    combos = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    scale = lambda combo: combo["batch_size"] / given["lr_batch_scale"] if given["lr_batch_scale"] else 1.0
    return [{**combo, "lrs": tuple(float(f"{lr * scale(combo):.6g}") for lr in lrs[combo["optimizer"]])}
            for combo in combos]


def from_flags(fl: Any, own: dict[str, options.Option] | None = None, own_name: str = "Options") -> Config:
    """Validate the parsed flags (absl FlagValues, or any object with one attribute per option) into
    a Config (raises ConfigError, one line): the core options, and the experiment's `own` as
    `Config.own`. The scalar fields hold the first combination of the group-level options;
    `variants` holds them all."""
    given = options.values(CORE, fl)
    mine = options.values(own or {}, fl)
    variants = _variants(given)
    if given["noise_window"] == 1:
        raise ConfigError("--noise_window=1: must be 0 (the halves of each batch) or >= 2 (steps)")
    if given["schedule"] == "cyclic" and given["lr_min"] >= min(min(v["lrs"]) for v in variants):
        raise ConfigError(f"--lr_min={given['lr_min']}: must be below every --lr (η_max) for the cyclic schedule")
    given["prune_rungs"] = _rungs(given, variants)
    fields = {f.name for f in dataclasses.fields(Config)}
    return Config(
        **{k: v for k, v in given.items() if k in fields and k != "seeds"},
        seeds=parse_seeds(given["seeds"]), init_seeds=given["init_seed"], order_seeds=given["order_seed"],
        per_run=tuple((k, given[k]) for k in options.RUN), distributed=_distributed(given),
        variants=tuple(tuple(v.items()) for v in variants),
        own=options.namespace(own_name, own or {}, mine),
        given=tuple(options.serialized(CORE, fl) + options.serialized(own or {}, fl)))


def parse(*args: str, own: dict[str, options.Option] | None = None) -> Config:
    """A Config from command-line flags ("--model=mlp", "--lr=0.01,0.1", ...) on flags of its own,
    outside absl's app and its global FLAGS: for notebooks, scripts and tests (`own`: an
    experiment's options, e.g. experiments.lr_sweep.OPTIONS)."""
    fv = flags.FlagValues()
    define_flags(fv, own)
    try:
        fv(["cifar_jax", *args])
    except flags.Error as err:
        raise ConfigError(str(err)) from None
    return from_flags(fv, own)


def build(own: dict[str, options.Option] | None = None, **values: Any) -> Config:
    """A Config from Python values by option name (build(lr_sweep.OPTIONS, model="mlp", lr=[0.01, 0.1],
    epochs=2)), checked like the flags: a list is a comma list (of width lists for --hidden,
    --channels and --kernels: hidden=[[50, 50], [100]])."""
    known = {**CORE, **(own or {})}

    def text(name: str, value: Any) -> str:
        if name not in known:
            raise ConfigError(f"{name}: no such option; known: {', '.join(known)}")
        o = known[name]
        listed = bool(value) and isinstance(value[0], (list, tuple)) if o.kind == "widths" else isinstance(value, (list, tuple))
        return (o.sep if o.kind == "widths" else ",").join(map(o.text, value)) if listed else o.text(value)
    return parse(*(f"--{k}={text(k, v)}" for k, v in values.items()), own=own)


def _rungs(given: dict[str, Any], variants: list[dict[str, Any]]) -> tuple[int, ...]:
    """--prune_rungs checked against the groups' epochs (and a validation split for validation
    metrics), or the default rungs of the shortest group; () without --prune."""
    rungs, epochs = tuple(sorted(given["prune_rungs"])), min(v["epochs"] for v in variants)
    if given["prune"] == "none":
        if rungs:
            raise ConfigError(f"--prune_rungs={','.join(map(str, rungs))}: give --prune=halving too")
        return ()
    if given["prune_metric"].startswith("val") and given["split"][1] == 0:
        raise ConfigError(f"--prune_metric={given['prune_metric']}: --split has no validation images to rank by; "
                          "give some, or --prune_metric=train_acc or train_loss")
    if rungs and rungs[-1] >= epochs:
        raise ConfigError(f"--prune_rungs={','.join(map(str, rungs))}: every rung must be below --epochs ({epochs})")
    rungs = rungs or halving.default_rungs(epochs, given["prune_keep"])
    if not rungs:
        raise ConfigError(f"--prune=halving: {epochs} epoch(s) leave no rung below --epochs; give more epochs")
    return rungs


def _distributed(given: dict[str, Any]) -> tuple[str | None, int, int]:
    """(coordinator, process count, process index) from the options, else the environment."""
    env = os.environ.get
    address = given["coordinator_address"] or env("CIFAR_JAX_COORDINATOR")
    try:
        count = given["num_processes"] if given["num_processes"] is not None else int(env("CIFAR_JAX_NUM_PROCESSES", "1"))
        index = given["process_id"] if given["process_id"] is not None else int(env("CIFAR_JAX_PROCESS_ID", "0"))
    except ValueError:
        raise ConfigError("$CIFAR_JAX_NUM_PROCESSES / $CIFAR_JAX_PROCESS_ID must be integers") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--num_processes={count} --process_id={index}: need 0 <= process_id < num_processes")
    if count > 1 and not address:
        raise ConfigError(f"--num_processes={count}: multi-host needs --coordinator_address=host:port")
    return address, count, index


# the GroupSpec fields of each training-dynamics instrument, by the field that turns it on
INSTRUMENT_FIELDS = {"sharpness_every": ("sharpness_every", "sharpness_unit", "sharpness_iters", "sharpness_examples"),
                     "noise_scale": ("noise_scale", "noise_window")}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: its configuration name, seed, group spec and per-run hyperparameters."""

    config_name: str
    seed: int
    spec: step.GroupSpec
    hp: dict[str, Any]
    epochs: int
    inputs: dict[str, Any]  # what it is trained from: the data settings (data_config) and, where a study
    #                         sets them, its start (a pretrained run and its checkpoint, a parent run)

    @property
    def run_id(self) -> str:
        return f"{self.config_name},seed={self.seed}"

    @property
    def config(self) -> dict[str, Any]:
        """Everything that defines the run, as plain JSON values (stored in its record)."""
        spec = dataclasses.asdict(self.spec)
        del spec["conv_impl"]  # changes how, not what: the same numbers either way (tested)
        # an option recorded only when changed, an instrument that is off and a seed of the run's
        # own are left out, so that records keep their form
        spec["model"] = {k: v for k, v in spec["model"].items() if _stored(models.OPTIONS, k, v)}
        spec = {k: v for k, v in spec.items() if _stored(step.OPTIONS, k, v)}
        for switch, fields in INSTRUMENT_FIELDS.items():
            if not spec[switch]:
                for field in fields:
                    del spec[field]
        hp = {k: v for k, v in self.hp.items() if _stored(options.RUN, k, v)
              and not (k in ("init_seed", "order_seed") and v == step.SEED_OF_RUN)}
        hp["schedule"] = list(schedules.SCHEDULES)[hp["schedule"]]
        return {"epochs": self.epochs, **self.inputs, **spec, **hp}


def _stored(table: dict[str, options.Option], field: str, value: Any) -> bool:
    """Whether a run's stored config keeps this field (options.Option.recorded)."""
    o = next((o for k, o in table.items() if (o.field or k) == field), None)
    return o is None or o.stored(value)


def schedule_hparams(cfg: Config, lr: float, decay_rate: float, steps_per_epoch: int,
                     schedule: str | None = None) -> dict[str, Any]:
    """The per-run schedule parameters implied by the flags."""
    unit = steps_per_epoch if cfg.decay_unit == "epoch" else 1
    return dict(schedule=schedules.SCHEDULE_IDS[schedule or cfg.schedule], lr=lr, lr_min=cfg.lr_min,
                decay_rate=decay_rate, decay_every=cfg.decay_every * unit,
                staircase=float(cfg.decay_unit == "epoch"), total_steps=cfg.epochs * steps_per_epoch,
                half_cycle=cfg.half_cycle or 5 * steps_per_epoch)


def group_spec(cfg: Config, num_classes: int) -> step.GroupSpec:
    """The static part shared by every run of one group: every option of train.OPTIONS (an
    instrument that is off at its defaults, so it adds nothing to the program or a run's config)."""
    fields = {k: getattr(cfg, k) for k, o in step.OPTIONS.items() if o.in_spec}
    fields.update({k: step.OPTIONS[k].default for names in INSTRUMENT_FIELDS.values() for k in names})
    fields.update(instruments(cfg), clip_norm=cfg.clip_norm or None, grad_window=cfg.grad_window if cfg.grad_stats else 5)
    return step.GroupSpec(model=dataclasses.replace(cfg.model, num_classes=num_classes),
                          noise=max(cfg.values("noise_std") + cfg.values("salt_pepper")) > 0, **fields)


def instruments(cfg: Config) -> dict[str, Any]:
    """The GroupSpec fields of the training-dynamics instruments that are on (those that are off
    keep their defaults, so they add nothing to the program or to a run's config)."""
    out: dict[str, Any] = {}
    if cfg.sharpness_every:
        out.update(sharpness_every=cfg.sharpness_every, sharpness_unit=cfg.sharpness_unit,
                   sharpness_iters=cfg.sharpness_iters, sharpness_examples=cfg.sharpness_examples)
    if cfg.noise_scale and (cfg.noise_window or cfg.batch_size >= 2):  # a batch of 1 has no halves
        out.update(noise_scale=True, noise_window=cfg.noise_window)
    return out


def data_config(cfg: Config) -> dict[str, Any]:
    """The data settings a run's numbers depend on (zca_epsilon, classes and test_size only where
    they are used, so other runs' records keep their form)."""
    optional = dict(zca_epsilon=cfg.zca_epsilon) if cfg.normalization == "zca" else {}
    optional.update((k, v) for k, v in (("classes", cfg.classes), ("test_size", cfg.test_size)) if v)
    return dict(dataset=cfg.dataset, split=list(cfg.split), split_seed=cfg.split_seed,
                normalization=cfg.normalization, **optional)


def grid(cfg: Config, n_train: int, num_classes: int, label: str = "") -> list[Run]:
    """Runs for every combination of the list-valued flags × every seed; each combination of the
    group-level flags (`Config.variants`) is a group of its own. A configuration is named by the
    values that vary (after `label`; "default" when nothing varies)."""
    variants = [dict(v) for v in cfg.variants]
    shown = [_shown(variant) for variant in variants]
    varying = [k for k in shown[0] if len({s[k] for s in shown}) > 1]
    runs = []
    for variant, names in zip(variants, shown):
        prefix = ([label] if label else []) + [f"{k}={names[k]}" for k in varying if k != "lr"]
        if "lr" in varying and len(variant["lrs"]) == 1:  # a learning rate per optimiser
            prefix.append(f"lr={variant['lrs'][0]:g}")
        runs += _grid_one(cfg.replace(**variant), n_train, num_classes, prefix)
    return runs


def _shown(variant: dict[str, Any]) -> dict[str, str]:
    """How a variant's group-level values appear in a configuration name, per flag."""
    out = {}
    for field, value in variant.items():
        if field == "model":
            out.update({k: _shown_value(o, getattr(value, o.field or k)) for k, o in models.OPTIONS.items()})
        elif field == "lrs":
            out["lr"] = "/".join(f"{lr:g}" for lr in value)
        else:
            out[field] = f"{value:g}" if isinstance(value, float) else str(value)
    return out


def _shown_value(option: options.Option, value: Any) -> str:
    """A model option's value in a configuration's name (a width list as 50-50, an empty one as none)."""
    if option.kind == "widths":
        return "-".join(map(str, value)) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _grid_one(cfg: Config, n_train: int, num_classes: int, prefix: list[str]) -> list[Run]:
    """The per-run grid of one group: every combination of the per-run flags × every seed."""
    spe = n_train // cfg.batch_size
    axes = {"lr": cfg.lrs, **dict(cfg.per_run), "init_seed": cfg.init_seeds or (step.SEED_OF_RUN,),
            "order_seed": cfg.order_seeds or (step.SEED_OF_RUN,)}
    varying = [k for k, v in axes.items() if len(v) > 1]
    spec = group_spec(cfg, num_classes)
    runs = []
    for values in itertools.product(*axes.values()):
        v = dict(zip(axes, values))
        name = ",".join(prefix + [f"{k}={v[k]:g}" for k in varying]) or "default"
        hp = {**schedule_hparams(cfg, v["lr"], v["decay_rate"], spe),
              **{name: v[name] for name in (*options.RUN, "init_seed", "order_seed")}}
        runs += [Run(name, s, spec, {**hp, "seed": s}, cfg.epochs, data_config(cfg)) for s in cfg.seeds]
    return runs
