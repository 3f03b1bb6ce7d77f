"""A finished or running study as tidy rows: one row per run and epoch, one per run and split at
the end (`epoch_rows`, `final_rows`), or both as pandas DataFrames (`load`), with every config
field flattened into a `config.` column; a study's parts (its sub-studies) are a column."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

from cifar_jax.io.files import ResultsError
from cifar_jax.results import run_record, studydir

ID_COLUMNS = ("part", "run_id", "config_name", "seed", "status", "diverged_epoch", "pruned_epoch")
FINAL_COLUMNS = ("split", "loss", "acc", "top5", "epochs_done")
_NOT_PARTS = frozenset({"runs", "figures", "checkpoints", "resume", "tensorboard"})  # a study's own folders


class Frames(NamedTuple):
    """A study as two pandas DataFrames (`load`)."""

    epochs: Any  # pandas.DataFrame: one row per run × recorded epoch
    finals: Any  # pandas.DataFrame: one row per run × split


def study_parts(study: studydir.StudyDir | Path | str, *, recursive: bool = True) -> dict[str, list[dict]]:
    """The run records under a study directory by part: "" for its own runs/, and with `recursive`
    the relative path of every folder below it with a runs/ of its own: the parts of a study in
    parts (transfer's "pretrain" and "retrain", cnn_transfer's "pretrain" and "target", each
    ladder stage, lambda_search's searches, lr_sweep's "range_test"), or every study of a
    --results_dir. Parts in path order, records in `studydir.StudyDir.records` order; empty parts left out."""
    root = study.root if isinstance(study, studydir.StudyDir) else Path(study).expanduser()
    if not root.is_dir():
        raise ResultsError(f"{root}: no such study directory")
    parts = {}
    for folder, dirs, _ in os.walk(root):
        dirs[:] = [] if not recursive else sorted(d for d in dirs if d not in _NOT_PARTS and not d.startswith("."))
        records = studydir.StudyDir(folder).records()
        if records:
            rel = Path(folder).relative_to(root)
            parts["" if rel == Path(".") else rel.as_posix()] = records
    return parts


def _cell(value: Any) -> Any:
    """A stored value as a table cell: null or a non-finite number → None, a list → a tuple (so
    columns stay hashable), a dict inside a list → its JSON text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return tuple(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def flat_config(config: dict, prefix: str = "config.") -> dict[str, Any]:
    """A run's config as flat columns: "config." + the key, nested dicts joined with dots
    (config.model.hidden), lists as tuples. (The prefix keeps config.lr, the run's base LR, apart
    from the per-epoch lr, the scheduled one.)"""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _cell(value)
    return out


def _identity(part: str, rec: dict) -> dict[str, Any]:
    return {"part": part, "run_id": rec["run_id"], "config_name": rec["config_name"], "seed": rec["seed"],
            "status": rec["status"], "diverged_epoch": rec.get("diverged_epoch"), "pruned_epoch": rec.get("pruned_epoch")}


def _table(rows: list[tuple[dict, dict, dict]]) -> tuple[list[str], list[dict]]:
    """Columns (identity, then every measured key, then every config key, each in order of first
    appearance) and the rows with every column, None where a row has no value."""
    columns: dict[str, None] = {}
    for i in range(3):
        for row in rows:
            columns.update(dict.fromkeys(row[i]))
    merged = [{**a, **b, **c} for a, b, c in rows]
    return list(columns), [{col: row.get(col) for col in columns} for row in merged]


def _epoch_table(parts: dict[str, list[dict]]) -> tuple[list[str], list[dict]]:
    rows = []
    for part, records in parts.items():
        for rec in records:
            ident, cfg = _identity(part, rec), flat_config(rec["config"])
            entries = [e for e in rec.get("epochs") or [] if isinstance(e, dict)] or [{"epoch": None}]
            rows += [(ident, {k: _cell(v) for k, v in entry.items()}, cfg) for entry in entries]
    columns, table = _table(rows)
    return columns or [*ID_COLUMNS, "epoch"], table


def _final_table(parts: dict[str, list[dict]]) -> tuple[list[str], list[dict]]:
    every = [rec for records in parts.values() for rec in records]
    splits = [s for s in run_record.SPLITS if s != "train" or any(r.get("final_train") for r in every)]
    rows = []
    for part, records in parts.items():
        for rec in records:
            ident, cfg = _identity(part, rec), flat_config(rec["config"])
            for split in splits:
                values = ({m: run_record.last(rec, f"val_{m}") for m in run_record.METRICS} if split == "val"
                          else run_record.final(rec, split) or {})
                rows.append((ident, {"split": split, **{m: run_record.finite_or_none(values.get(m)) for m in run_record.METRICS},
                                     "epochs_done": len(rec.get("epochs") or [])}, cfg))
    columns, table = _table(rows)
    return columns or [*ID_COLUMNS, *FINAL_COLUMNS], table


def epoch_rows(study: studydir.StudyDir | Path | str, *, recursive: bool = True) -> list[dict]:
    """One plain dict per run × recorded epoch (`study_parts`), every dict with the same keys:
    part, run_id, config_name, seed, status, diverged_epoch, pruned_epoch; the epoch's entries as the record
    stores them (epoch, lr, train_loss, train_acc, train_top5, val_*, l2_penalty, loss_noise,
    seconds, run_seconds, and what the study measured: test_*, train_eval_*, grad_norm and
    loss_trace as tuples); then the run's config as config.* (`flat_config`). Null values
    (diverged runs, measurements a run lacks) are None; a run without a recorded epoch yet
    has one row with epoch None, so no run is left out."""
    return _epoch_table(study_parts(study, recursive=recursive))[1]


def final_rows(study: studydir.StudyDir | Path | str, *, recursive: bool = True) -> list[dict]:
    """One plain dict per run × split after training, every dict with the same keys: part, run_id,
    config_name, seed, status, diverged_epoch, pruned_epoch, split ("val": the last epoch's; "test": the
    eval-mode pass after training; "train" too where a run has it, --eval_train), loss, acc,
    top5, epochs_done, config.*. None where a run has no finite value (diverged, unfinished)."""
    return _final_table(study_parts(study, recursive=recursive))[1]


def load(study: studydir.StudyDir | Path | str, *, recursive: bool = True) -> Frames:
    """The study as pandas DataFrames (needs pandas: the [frames] extra): `epochs`, the rows of
    `epoch_rows`, and `finals`, those of `final_rows`; null values are NaN (None in text
    columns), config.* lists are tuples, so every column can be grouped by."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("frames.load needs pandas: pip install pandas (or the [frames] extra)") from None
    parts = study_parts(study, recursive=recursive)
    tables = [_epoch_table(parts), _final_table(parts)]
    return Frames(*(pd.DataFrame.from_records(rows, columns=columns) for columns, rows in tables))
