"""The run record: what one training run leaves on disk, built from the engine's typed metrics
and read back (by summaries, tables, figures and experiments) through the readers below.

A record is one JSON object per run (`studydir.StudyDir` stores it atomically after every epoch):

    run_id, config_name, seed, config   identity; `config` is everything that defines the run
                                        (config.Run.config: its inputs, GroupSpec and per-run
                                        values; an option recorded only when changed, e.g.
                                        --activation, --clip_value, --warmup_steps, is absent
                                        at its default)
    status                              "done", "diverged", "pruned" (stopped at a rung of
                                        --prune=halving: no test numbers) or "incomplete"
    diverged_epoch                      the first epoch whose loss was not finite, or null
    pruned_epoch                        (pruned runs) the rung's epoch: the record's last
    untrained                           {split: {loss, acc, top5}} in eval mode before training
                                        (a run continued from another's state after epoch k, as
                                        a connectivity child: at that state; its epochs then
                                        start at k + 1)
    epochs                              per epoch: epoch, lr, train_* (running averages over the
                                        epoch's batches, train mode), val_*, l2_penalty (ΣW² at
                                        the epoch's end: cost = loss + λ·l2_penalty), loss_noise
                                        (RMS step-to-step change of the per-step loss / √2),
                                        seconds (the group's training time, evaluation not
                                        counted) and run_seconds (seconds / the
                                        runs trained together), and with the
                                        in-step measurements train_eval_* (--eval_train=epoch),
                                        test_* (--eval_test),
                                        grad_norm (--grad_stats), loss_trace (--loss_every),
                                        sharpness and sharpness_min (--sharpness_every: λ_max,
                                        λ_min of the loss Hessian on a fixed training subset,
                                        after the epoch; with --sharpness_unit=step also
                                        sharpness_trace and sharpness_min_trace, before every
                                        k-th step of the epoch, and sharpness is the last),
                                        b_simple, b_simple_g2 and b_simple_trace (--noise_scale:
                                        the gradient noise scale tr Σ/|G|² and its two parts)
    test, final_train                   {loss, acc, top5} in eval mode after training
                                        (final_train with --eval_train)
    l2_penalty                          ΣW² of the final weights
    grad_stats                          (--grad_stats) {tensors, columns, window, first, last}: per
                                        tensor mean |g|, std |g| and mean ‖g‖ over the first and
                                        the last `window` steps
    checksum                            on disk only: "sha256:" and the SHA-256 of the record's
                                        other keys as one line of strict JSON (`files.sealed`);
                                        reading checks and drops it (a record that fails is set
                                        aside by `studydir.StudyDir` and its run trained again)

The file is strict JSON: a number that is not finite (a diverged run's NaN or ±inf loss) is stored
as null, and the readers below give NaN for it (records of older versions may hold NaN tokens,
which Python's json still reads).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple

import numpy as np

from cifar_jax.io import files

METRICS = ("loss", "acc", "top5")
SPLITS = ("train", "val", "test")
STATUSES = ("done", "diverged", "pruned", "incomplete")
FINISHED = ("done", "diverged", "pruned")
GRAD_COLUMNS = ("mean_abs", "std_abs", "norm")
NOISE_SCALE = ("b_simple_g2", "b_simple_trace", "b_simple")  # an epoch's |G|², tr Σ and B_simple


class Metrics(NamedTuple):
    """Loss, top-1 and top-5 accuracy of one split: [runs] arrays from the engine."""

    loss: Any
    acc: Any
    top5: Any

    def of_run(self, j: int) -> dict[str, float]:
        """The values of run j of the group, as a record stores them."""
        return {m: float(v[j]) for m, v in zip(METRICS, self)}


class Epoch(NamedTuple):
    """What the engine reports after each epoch: [runs] arrays (grad_norm [runs, tensors],
    loss_trace [runs, points]); None where a measurement is off."""

    lr: np.ndarray
    alive: np.ndarray
    l2_penalty: np.ndarray          # ΣW² of the weights at the epoch's end
    train: Metrics                  # running averages over the epoch's batches (train mode)
    val: Metrics | None             # eval mode; None with an empty validation split
    train_eval: Metrics | None = None  # eval mode over the training split (--eval_train=epoch)
    test: Metrics | None = None         # eval mode over the test set (--eval_test)
    loss_noise: np.ndarray | None = None  # RMS of the per-step training loss's step-to-step changes / √2
    grad_norm: np.ndarray | None = None   # mean ‖g‖ per tensor over the epoch's steps
    loss_trace: np.ndarray | None = None  # mean training loss of every --loss_every steps
    sharpness: np.ndarray | None = None   # [runs, 2] λ_max, λ_min of the loss Hessian (--sharpness_every)
    sharpness_trace: np.ndarray | None = None  # [runs, points, 2] the same before every k-th step (unit step)
    noise_scale: np.ndarray | None = None  # [runs, 3] |G|², tr Σ and B_simple of the epoch (--noise_scale)


class Final(NamedTuple):
    """What the engine reports after training, per run ([runs] arrays)."""

    alive: np.ndarray
    l2_penalty: np.ndarray
    test: Metrics | None             # None with an empty test set
    train: Metrics | None = None     # eval mode over the training split (--eval_train)
    grad_first: np.ndarray | None = None  # [runs, tensors, 3] over the first window of steps
    grad_last: np.ndarray | None = None   # ... and the last
    grad_window: int = 0


# ----------------------------------------------------------------------------- writer

def new(run_id: str, config_name: str, seed: int, config: dict, untrained: dict[str, Metrics], j: int) -> dict:
    """The record of run j of a group before its first epoch."""
    return dict(run_id=run_id, config_name=config_name, seed=seed, config=config, status="incomplete",
                diverged_epoch=None, epochs=[], test=None, final_train=None,
                untrained={split: m.of_run(j) for split, m in untrained.items()})


def add_epoch(record: dict, epoch: int, m: Epoch, j: int, seconds: float) -> None:
    """Append run j's metrics of one epoch (and note its first diverged epoch)."""
    entry: dict[str, Any] = {"epoch": epoch, "lr": float(m.lr[j]), "l2_penalty": float(m.l2_penalty[j])}
    for prefix, split in (("train", m.train), ("val", m.val), ("train_eval", m.train_eval), ("test", m.test)):
        if split is not None:
            entry.update({f"{prefix}_{k}": v for k, v in split.of_run(j).items()})
    for name in ("grad_norm", "loss_trace"):
        if getattr(m, name) is not None:
            entry[name] = np.asarray(getattr(m, name)[j], np.float64).tolist()
    if m.loss_noise is not None:
        entry["loss_noise"] = float(m.loss_noise[j])
    if m.sharpness is not None:
        entry.update(sharpness=float(m.sharpness[j, 0]), sharpness_min=float(m.sharpness[j, 1]))
    if m.sharpness_trace is not None:
        entry.update(sharpness_trace=np.asarray(m.sharpness_trace[j, :, 0], np.float64).tolist(),
                     sharpness_min_trace=np.asarray(m.sharpness_trace[j, :, 1], np.float64).tolist())
    if m.noise_scale is not None:
        entry.update(zip(NOISE_SCALE, map(float, m.noise_scale[j])))
    entry["seconds"] = seconds
    entry["run_seconds"] = seconds / len(m.lr)  # the epoch's time per run trained together
    record["epochs"].append(entry)
    if not m.alive[j] and record["diverged_epoch"] is None:
        record["diverged_epoch"] = epoch


def last_epoch(record: dict | None) -> int:
    """The number of the last recorded epoch (0 with none; a run spawned at epoch k starts at k + 1)."""
    epochs = (record or {}).get("epochs") or []
    return int(epochs[-1]["epoch"]) if epochs else 0


def truncate(record: dict, epochs: int) -> dict:
    """The record as it was after epoch `epochs` (a resumed run continues from there)."""
    kept = [e for e in record["epochs"] if e["epoch"] <= epochs]
    diverged = record["diverged_epoch"] if record["diverged_epoch"] and record["diverged_epoch"] <= epochs else None
    return {**record, "epochs": kept, "diverged_epoch": diverged, "status": "incomplete"}


def finish(record: dict, f: Final, j: int, tensor_names: list[str]) -> None:
    """Run j's final metrics and status."""
    record["test"] = None if f.test is None else f.test.of_run(j)
    if f.train is not None:
        record["final_train"] = f.train.of_run(j)
    record["l2_penalty"] = float(f.l2_penalty[j])
    if f.grad_first is not None:
        record["grad_stats"] = {"tensors": tensor_names, "columns": list(GRAD_COLUMNS), "window": f.grad_window,
                                "first": f.grad_first[j].tolist(), "last": f.grad_last[j].tolist()}
    record["status"] = "done" if f.alive[j] else "diverged"


def prune(record: dict, epoch: int) -> dict:
    """The record of a run stopped by successive halving after `epoch` (its rung): its epochs up to
    there, status "pruned" and no final numbers (it was never evaluated at an end)."""
    kept = truncate(record, epoch)
    return {**kept, "status": "pruned", "pruned_epoch": epoch}


def pruned_epochs(records: Iterable[dict]) -> list[int]:
    """The rungs at which the pruned runs among `records` stopped, ascending."""
    return sorted({r["pruned_epoch"] for r in records if r.get("status") == "pruned" and "pruned_epoch" in r})


def check(record: Any, where: str) -> dict:
    """The record, if it has the keys resume and statistics depend on (else files.ResultsError)."""
    if not isinstance(record, dict):
        raise files.ResultsError(f"{where}: a run record must be a JSON object")
    for key, kind in (("run_id", str), ("config_name", str), ("seed", int), ("config", dict)):
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise files.ResultsError(f"{where}: run record needs {key!r} of type {kind.__name__}")
    if record.get("status") not in STATUSES:
        raise files.ResultsError(f"{where}: status {record.get('status')!r} is not one of {', '.join(STATUSES)}")
    return record


# ----------------------------------------------------------------------------- readers

def last(record: dict, key: str) -> float:
    """The last epoch's value of `key` (e.g. "train_loss", "val_acc"); NaN when absent."""
    epochs = record.get("epochs") or []
    return number(epochs[-1].get(key) if epochs and isinstance(epochs[-1], dict) else None)


def number(value: Any) -> float:
    """A stored number as float; NaN for null (a non-finite number), a missing value or anything else."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def finite_or_none(value: Any) -> float | None:
    """A number as float when it is finite, else None (null, NaN, inf, a missing value, anything else)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _metrics(values: dict | None) -> dict[str, float] | None:
    """A stored {loss, acc, top5} with null read as NaN."""
    return None if values is None else {k: number(v) for k, v in values.items()}


def curve(record: dict, key: str) -> np.ndarray:
    """`key` per epoch as float64 (e.g. curve(rec, "val_acc")), NaN where an epoch lacks a finite number."""
    values = [(e.get(key) if isinstance(e, dict) else None) for e in record.get("epochs") or []]
    arr = np.array([v if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan for v in values],
                   dtype=np.float64)
    arr[~np.isfinite(arr)] = np.nan
    return arr


def later_mean(record: dict, key: str) -> float:
    """The mean of `key` over the epochs after the first (which carries one-off costs), else the first."""
    values = curve(record, key)
    return float(np.nanmean(values[1:] if len(values) > 1 else values)) if np.isfinite(values).any() else float("nan")


def best(record: dict, *keys: str) -> float:
    """The highest per-epoch value of the first of `keys` the record has (NaN when none)."""
    for key in keys:
        values = curve(record, key)
        if np.isfinite(values).any():
            return float(np.nanmax(values))
    return float("nan")


def cost_curve(record: dict, prefix: str) -> np.ndarray:
    """The training cost per epoch, loss + λ·ΣW², of "train", "train_eval" or "val" (λ: the run's l2)."""
    return curve(record, f"{prefix}_loss") + float(record["config"].get("l2", 0.0)) * curve(record, "l2_penalty")


def loss_trace(record: dict) -> np.ndarray:
    """The training-loss trace (--loss_every) of every epoch, concatenated; empty without one."""
    points = [v for e in record.get("epochs") or [] if isinstance(e, dict) for v in e.get("loss_trace") or []]
    return np.array(points, dtype=np.float64)


def final(record: dict, split: str) -> dict[str, float] | None:
    """{loss, acc, top5} after training: test and train from the eval-mode passes (train only
    with --eval_train), val from the last epoch; None where the record has none, NaN where a
    value is null."""
    if split == "test":
        return _metrics(record.get("test"))
    if split == "train":
        return _metrics(record.get("final_train"))
    if split == "val":
        values = {m: last(record, f"val_{m}") for m in METRICS}
        return None if math.isnan(values["loss"]) else values
    raise files.ResultsError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")


def untrained(record: dict, split: str) -> dict[str, float] | None:
    """{loss, acc, top5} of the untrained network on `split`; None where not evaluated, NaN where
    a value is null."""
    return _metrics((record.get("untrained") or {}).get(split))


def failed(record: dict) -> bool:
    """The run did not learn or blew up: it diverged, or its last epoch's training loss is not
    finite or not below the untrained loss (validation, else test where there is no validation)."""
    loss = last(record, "train_loss")
    reference = (untrained(record, "val") or untrained(record, "test") or {}).get("loss", float("nan"))
    return record["status"] == "diverged" or not np.isfinite(loss) or not loss < reference


def worse_than_uniform(record: dict) -> bool:
    """A run trained to the end (no value overflowed) whose last training loss is not finite or
    above 1.1·ln(classes), a uniform guess's loss: confidently wrong, as a run that blew up or one
    that started at a huge weight scale (seeds/004's nets without batch norm at scale ≥ 0.2 end
    at losses up to 10⁷, down from 10⁸)."""
    loss = last(record, "train_loss")
    return record["status"] == "done" and not loss <= 1.1 * math.log(record["config"]["model"]["num_classes"])


CHANCE_MARGIN = 0.01  # "at chance": final accuracy below 1/classes + this (a stuck net predicts ~one class)


def at_chance(record: dict) -> bool:
    """A run trained to the end (not diverged) whose final test (else validation) accuracy is below
    1/classes + 1 point: the net ended where it started, as seeds/002's small-σ nets without BN do
    (10.00%, cost 2.30)."""
    final_acc = (final(record, "test") or final(record, "val") or {}).get("acc", float("nan"))
    chance = 1 / record["config"]["model"]["num_classes"]
    return record["status"] == "done" and not final_acc >= chance + CHANCE_MARGIN


def group_by(items: Iterable[dict], key: str) -> dict[Any, list[dict]]:
    """Dicts grouped by their value of `key`, in order of first appearance."""
    groups: dict[Any, list[dict]] = {}
    for item in items:
        groups.setdefault(item[key], []).append(item)
    return groups


def group_by_config(records: Iterable[dict]) -> dict[str, list[dict]]:
    """Records grouped by config_name in order of first appearance (the seeds of one config)."""
    return group_by(records, "config_name")
