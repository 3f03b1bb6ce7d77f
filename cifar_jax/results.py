"""Study results on disk: the study directory (run records, its lock, resume bookkeeping), the
environment, and a study as tidy rows or pandas DataFrames (`frames`). Its files are written
atomically (`files`); the run record itself is `run_record`; statistics across seeds and their
tables are `summary`."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple


from cifar_jax import files, run_record
from cifar_jax.run_record import ResultsError  # noqa: F401 (raised here; imported from here by callers)

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_STEM = 120


# ----------------------------------------------------------------------------- atomic writes

# ----------------------------------------------------------------------------- study directory

def run_file_stem(run_id: str) -> str:
    """File-system-safe name for a run id; a hash suffix keeps altered or long ids unique."""
    stem = _UNSAFE.sub("_", run_id)[:_MAX_STEM]
    if stem != run_id or stem.startswith("."):
        digest = hashlib.sha1(run_id.encode("utf-8")).hexdigest()[:8]
        stem = f"{stem.lstrip('.')}-{digest}"
    return stem


def plain(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples → lists, numpy → Python)."""
    return json.loads(files.to_json(obj))


def _same(a: Any, b: Any) -> bool:
    """JSON-value equality where NaN equals NaN and a bool never equals a number."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def first_difference(stored: dict, requested: dict, prefix: str = "") -> str | None:
    """Dotted path of the first key whose value differs (requested key order first), or None."""
    for key in list(requested) + [k for k in stored if k not in requested]:
        name = f"{prefix}{key}"
        if key not in stored or key not in requested:
            return name
        a, b = stored[key], requested[key]
        if isinstance(a, dict) and isinstance(b, dict):
            nested = first_difference(a, b, f"{name}.")
            if nested is not None:
                return nested
        elif not _same(a, b):
            return name
    return None


def dotted_value(config: dict, dotted: str, width: int | None = 60) -> str:
    """Repr of a dotted key's value for error messages ('missing' when absent), cut to `width`
    characters (None: whole, e.g. for paths that differ at their end)."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return "missing"
        value = value[part]
    text = repr(value)
    return text if width is None or len(text) <= width else text[:width - 3] + "..."


class StudyDir:
    """One directory per study: run records under runs/, figures under figures/, summaries at the root."""

    def __init__(self, root: Path | str):
        """Remember the paths only; nothing is created until the first write."""
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.figures_dir = self.root / "figures"

    def _record_path(self, run_id: str) -> Path:
        """Where the record of run_id lives."""
        return self.runs_dir / f"{run_file_stem(run_id)}.json"

    def record(self, run_id: str) -> dict | None:
        """The stored record of run_id, or None when it was never written."""
        path = self._record_path(run_id)
        if not path.is_file():
            return None
        rec = run_record.check(files.read_json(path), str(path))
        if rec["run_id"] != run_id:
            raise ResultsError(f"{path}: holds run {rec['run_id']!r}, expected {run_id!r}")
        return rec

    def records(self) -> list[dict]:
        """All run records, grouped by config (first appearance in file-name order), seeds ascending."""
        if not self.runs_dir.is_dir():
            return []
        paths = sorted(p for p in self.runs_dir.glob("*.json") if not p.name.startswith("."))
        loaded = [run_record.check(files.read_json(p), str(p)) for p in paths]
        groups = run_record.group_by_config(loaded)
        return [rec for group in groups.values() for rec in sorted(group, key=lambda r: r["seed"])]

    def pending(self, run_ids_and_configs: list[tuple[str, dict]]) -> list[str]:
        """Run ids still to train; a finished run with a different config is an error, not a rerun."""
        ids = [run_id for run_id, _ in run_ids_and_configs]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ResultsError(f"duplicate run id {duplicates[0]!r} in the requested runs")
        todo = []
        for run_id, config in run_ids_and_configs:
            rec = self.record(run_id)
            if rec is None or rec["status"] not in run_record.FINISHED:
                todo.append(run_id)
                continue
            requested = plain(config)
            key = first_difference(rec["config"], requested)
            if key is not None:
                raise ResultsError(
                    f"run {run_id!r} in {self.root} finished with a different config: {key!r} is "
                    f"{dotted_value(rec['config'], key)} there, {dotted_value(requested, key)} now; "
                    "pass a new --name or --results_dir")
        return todo

    def write_record(self, record: dict) -> Path:
        """Store a run record atomically (replacing an older one of the same run)."""
        run_record.check(record, "write_record")
        return files.atomic_write_json(self._record_path(record["run_id"]), record)

    def _root_file(self, name: str) -> Path:
        """Path of a root-level file; names with directories are refused."""
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ResultsError(f"study file name {name!r} must be a plain file name")
        return self.root / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Write a root-level JSON file (config.json, env.json, summary.json, ...) atomically."""
        return files.atomic_write_json(self._root_file(name), obj)

    def write_text(self, name: str, text: str) -> Path:
        """Write a root-level text file (flags.txt, report tables, ...) atomically."""
        return files.atomic_write_text(self._root_file(name), text)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Own the study while the block runs: a lock file naming this process (pid, host, start).
        A lock of a live process refuses with one line naming it; a lock left by a dead process
        on this host is taken over with a message. Released (and an empty study removed) on exit."""
        path = self.root / ".lock"
        made = [p for p in (self.root, *self.root.parents) if not p.exists()]  # removed again if left empty
        self.root.mkdir(parents=True, exist_ok=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now().isoformat(timespec="seconds")}
        for attempt in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                owner = _lock_owner(path)
                if attempt or not _stale(path, owner, mine["host"]):
                    who = (f"process {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"
                           if owner else "another process")
                    raise ResultsError(f"{self.root} is in use by {who}; wait for it to finish, or use another "
                                       f"--name or --results_dir (a stale lock: delete {path})") from None
                print(f"{self.root}: taking over the lock of {'process ' + str(owner['pid']) if owner else 'a process'}"
                      " (no longer running)", flush=True)
                path.unlink(missing_ok=True)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine))
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            self.remove_if_empty()
            for folder in made[1:]:  # e.g. a new --results_dir of a study that stopped at a bad input
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def remove_if_empty(self) -> bool:
        """Remove empty runs/, figures/ and root directories; True when the root is gone."""
        for directory in (self.runs_dir, self.figures_dir, self.root):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        return not self.root.exists()


def _lock_owner(path: Path) -> dict | None:
    """The owner recorded in a study lock file; None when it is unreadable (half-written)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _stale(path: Path, owner: dict | None, host: str) -> bool:
    """Whether a study lock may be taken over: its process on this host is gone, or it stayed
    unreadable (a lock whose writer was killed) for more than 10 s."""
    if owner is not None:
        return owner.get("host") == host and not files.pid_alive(owner.get("pid"))
    try:
        return time.time() - path.stat().st_mtime > 10
    except FileNotFoundError:
        return True


# ----------------------------------------------------------------------------- environment

def _version(package: str) -> str | None:
    """Installed version of a distribution, None when absent."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """Output of a git command in this file's repository, None on any failure."""
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> dict | None:
    """Commit and dirty flag of the repository holding this code, None outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    if commit is None or status is None:
        return None
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def _devices() -> tuple[str | None, list[str] | None]:
    """JAX backend name and device kinds; (None, None) if JAX is unavailable or fails."""
    try:
        import jax
        return jax.default_backend(), [d.device_kind for d in jax.devices()]
    except Exception:  # noqa: BLE001 - any backend failure must not stop a study
        return None, None


def environment() -> dict:
    """Versions, devices, host and git commit, so every result can be traced to what produced it."""
    backend, devices = _devices()
    return {
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in _PACKAGES}},
        "backend": backend,
        "devices": devices,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
    }


# ----------------------------------------------------------------------------- tidy tables (notebooks, pandas)

ID_COLUMNS = ("part", "run_id", "config_name", "seed", "status", "diverged_epoch")
FINAL_COLUMNS = ("split", "loss", "acc", "top5", "epochs_done")
_NOT_PARTS = frozenset({"runs", "figures", "checkpoints", "resume", "tensorboard"})  # a study's own folders


class Frames(NamedTuple):
    """A study as two pandas DataFrames (`frames`)."""

    epochs: Any  # pandas.DataFrame: one row per run × recorded epoch
    finals: Any  # pandas.DataFrame: one row per run × split


def study_parts(study: StudyDir | Path | str, *, recursive: bool = True) -> dict[str, list[dict]]:
    """The run records under a study directory by part: "" for its own runs/, and with `recursive`
    the relative path of every folder below it with a runs/ of its own: the parts of a study in
    parts (transfer's "pretrain" and "retrain", cnn_transfer's "pretrain" and "target", each
    ladder stage, lambda_search's searches, lr_sweep's "range_test"), or every study of a
    --results_dir. Parts in path order, records in `StudyDir.records` order; empty parts left out."""
    root = study.root if isinstance(study, StudyDir) else Path(study).expanduser()
    if not root.is_dir():
        raise ResultsError(f"{root}: no such study directory")
    parts = {}
    for folder, dirs, _ in os.walk(root):
        dirs[:] = [] if not recursive else sorted(d for d in dirs if d not in _NOT_PARTS and not d.startswith("."))
        records = StudyDir(folder).records()
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
            "status": rec["status"], "diverged_epoch": rec.get("diverged_epoch")}


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


def epoch_rows(study: StudyDir | Path | str, *, recursive: bool = True) -> list[dict]:
    """One plain dict per run × recorded epoch (`study_parts`), every dict with the same keys:
    part, run_id, config_name, seed, status, diverged_epoch; the epoch's entries as the record
    stores them (epoch, lr, train_loss, train_acc, train_top5, val_*, l2_penalty, loss_noise,
    seconds, run_seconds, and what the study measured: test_*, train_eval_*, grad_norm and
    loss_trace as tuples); then the run's config as config.* (`flat_config`). Null values
    (diverged runs, measurements a run lacks) are None; a run without a recorded epoch yet
    has one row with epoch None, so no run is left out."""
    return _epoch_table(study_parts(study, recursive=recursive))[1]


def final_rows(study: StudyDir | Path | str, *, recursive: bool = True) -> list[dict]:
    """One plain dict per run × split after training, every dict with the same keys: part, run_id,
    config_name, seed, status, diverged_epoch, split ("val": the last epoch's; "test": the
    eval-mode pass after training; "train" too where a run has it, --eval_train), loss, acc,
    top5, epochs_done, config.*. None where a run has no finite value (diverged, unfinished)."""
    return _final_table(study_parts(study, recursive=recursive))[1]


def frames(study: StudyDir | Path | str, *, recursive: bool = True) -> Frames:
    """The study as pandas DataFrames (needs pandas: the [frames] extra): `epochs`, the rows of
    `epoch_rows`, and `finals`, those of `final_rows`; null values are NaN (None in text
    columns), config.* lists are tuples, so every column can be grouped by."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("results.frames needs pandas: pip install pandas (or the [frames] extra)") from None
    parts = study_parts(study, recursive=recursive)
    tables = [_epoch_table(parts), _final_table(parts)]
    return Frames(*(pd.DataFrame.from_records(rows, columns=columns) for columns, rows in tables))
