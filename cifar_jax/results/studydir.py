"""The study directory: run records stored one file per run, its lock against a second writer,
the bookkeeping of resumes, and the helpers that name and compare the configs runs are stored under.
Every file is written atomically (`io.files`); a record is sealed with a checksum, and one found
damaged on read is set aside and its run trained again. A record's contents are `run_record`'s."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from pathlib import Path
import re
import socket
import time
from typing import Any, Iterator

from cifar_jax.io import files
from cifar_jax.io.files import ResultsError
from cifar_jax.results import run_record

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_STEM = 120


def run_file_stem(run_id: str) -> str:
    """File-system-safe name for a run id; a hash suffix keeps altered or long ids unique."""
    stem = _UNSAFE.sub("_", run_id)[:_MAX_STEM]
    if stem != run_id or stem.startswith("."):
        digest = hashlib.sha1(run_id.encode("utf-8")).hexdigest()[:8]
        stem = f"{stem.lstrip('.')}-{digest}"
    return stem


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
        """The stored record of run_id, or None when it was never written or is damaged (`_read`)."""
        path = self._record_path(run_id)
        rec = self._read(path) if path.is_file() else None
        if rec is not None and rec["run_id"] != run_id:
            raise ResultsError(f"{path}: holds run {rec['run_id']!r}, expected {run_id!r}")
        return rec

    def records(self) -> list[dict]:
        """All run records, grouped by config (first appearance in file-name order), seeds ascending."""
        if not self.runs_dir.is_dir():
            return []
        paths = sorted(p for p in self.runs_dir.glob("*.json") if not p.name.startswith("."))
        loaded = [rec for rec in map(self._read, paths) if rec is not None]
        groups = run_record.group_by_config(loaded)
        return [rec for group in groups.values() for rec in sorted(group, key=lambda r: r["seed"])]

    @staticmethod
    def _read(path: Path) -> dict | None:
        """A record file's run record; a damaged one (it does not parse, its checksum differs, or it
        is not a run record) is set aside as <file>.damaged with one line, and is None: its run is
        trained again."""
        try:
            rec = files.read_sealed(path)
        except files.DamagedFile as err:
            why = str(err)
        else:
            try:
                return run_record.check(rec, str(path))
            except ResultsError as err:
                why = str(err)
        with contextlib.suppress(FileNotFoundError):  # another process of the study set it aside first
            print(f"{why}; set aside as {files.set_aside(path).name}: its run is trained again", flush=True)
        return None

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
            requested = files.plain(config)
            key = files.first_difference(rec["config"], requested)
            if key is not None:
                raise ResultsError(
                    f"run {run_id!r} in {self.root} finished with a different config: {key!r} is "
                    f"{files.dotted_value(rec['config'], key)} there, {files.dotted_value(requested, key)} now; "
                    "pass a new --name or --results_dir")
        return todo

    def write_record(self, record: dict) -> Path:
        """Store a run record atomically (replacing an older one of the same run)."""
        run_record.check(record, "write_record")
        return files.atomic_write_json(self._record_path(record["run_id"]), files.sealed(record))

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
