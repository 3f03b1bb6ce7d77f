"""Mid-run snapshots of a group's training state, so an interrupted study resumes where it stopped.

After an epoch the engine offers the state of the runs it trains (parameters, optimiser and BN
statistics, step, per-run hyperparameters with their seeds, alive mask, gradient accumulators);
`Snapshots.save` keeps it every `every` epochs, or with every = 0 once `min_seconds` of training
have passed since the last one, before the records of that epoch are written. A rerun's
`Snapshots.load` gives back the newest snapshot of exactly those runs (named by a hash of their
ids and configs) that their records have reached, with the epochs it had done; the
data order, dropout masks and augmentation of the epochs after it derive from the seeds, the
epoch and the step, so the rest of the run is the same as without the interruption. A snapshot
is one .npz written atomically (a CRC-32 per array), removed once its runs have finished; a damaged
one is set aside and the one before it used, or the runs start again.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
import time
from typing import Any
import zipfile

import jax
import numpy as np

from cifar_jax.io import files


class Snapshots:
    """The snapshots of one study directory (its `resume/` folder)."""

    def __init__(self, directory: Path, every: int = 0, min_seconds: float = 5.0):
        self.directory, self.every, self.min_seconds = Path(directory), every, min_seconds
        self._last = time.monotonic()

    @staticmethod
    def key(runs: list[tuple[str, dict]]) -> str:
        """The name of the snapshot of these runs (id and config of each, in order)."""
        return hashlib.sha256(files.to_json(runs, indent=None).encode()).hexdigest()[:20]

    def _path(self, key: str, epoch: int) -> Path:
        return self.directory / f"{key}-{epoch}.npz"

    def _epochs(self, key: str) -> list[int]:
        """The epochs of the snapshots kept for these runs, ascending."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem.rpartition("-")[2]) for p in self.directory.glob(f"{key}-*.npz"))

    def due(self, epoch: int) -> bool:
        """Whether the state after `epoch` should be kept."""
        if self.every:
            return epoch % self.every == 0
        return time.monotonic() - self._last >= self.min_seconds

    def save(self, key: str, epoch: int, state: Any) -> None:
        """Keep the (host) state after `epoch` epochs (atomically; the older snapshot stays until
        `prune`, so a kill between this and the records' write still finds one they have reached)."""
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
        with files.atomic_file(self._path(key, epoch)) as f:
            np.savez(f, **{f"leaf{i}": x for i, x in enumerate(leaves)})
        self._last = time.monotonic()

    def prune(self, key: str, recorded: int) -> None:
        """Once the records hold `recorded` epochs, drop every snapshot older than the two newest
        they have reached (the one before the newest stands in if the newest is found damaged)."""
        usable = [e for e in self._epochs(key) if e <= recorded]
        for epoch in usable[:-2]:
            self._path(key, epoch).unlink(missing_ok=True)

    def load(self, keys: list[str], template: Any, recorded: int) -> tuple[int, Any] | None:
        """(epochs done, state shaped like `template`) of the newest snapshot that their records
        have reached (`recorded` epochs): of `keys[0]`'s runs, or with several keys (one run's
        each, e.g. the runs a successive-halving rung kept of a larger group) of each at the same
        epoch, stacked along the run axis. A damaged one (each array carries its zip CRC-32,
        checked over the whole file before it is used) is set aside as <file>.damaged with one
        line and the one before it tried; None when none is left (the runs start again) or the
        snapshot does not fit the template (it is then ignored)."""
        wanted, treedef = jax.tree_util.tree_flatten(template)
        usable = sorted(set.intersection(*(set(self._epochs(k)) for k in keys)))
        usable = [e for e in usable if e <= recorded]
        for n, epoch in enumerate(reversed(usable)):
            paths = [self._path(k, epoch) for k in keys]
            try:
                parts = [_read_leaves(path, len(wanted)) for path in paths]
            except _Damaged as err:
                then = "trying the one before" if n + 1 < len(usable) else "these runs start again from epoch 0"
                print(f"{err.path}: damaged snapshot ({err.cause}); set aside as {files.set_aside(err.path).name}, "
                      f"{then}", flush=True)
                continue
            leaves = [np.concatenate(xs) for xs in zip(*parts)] if len(parts) > 1 else parts[0]
            if any(x.shape != w.shape or x.dtype != w.dtype for x, w in zip(leaves, wanted)):
                print(f"{paths[0]}: snapshot of another program ignored", flush=True)
                return None
            return epoch, jax.tree_util.tree_unflatten(treedef, leaves)
        return None

    def clear(self) -> None:
        """Remove every snapshot (and the folder, unless it keeps damaged ones set aside): for a
        study whose runs have all finished, where one is left only by a process killed between a
        run's last record and its snapshots' removal."""
        for path in self.directory.glob("*.npz") if self.directory.is_dir() else []:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    def remove(self, key: str) -> None:
        """Forget the snapshots of finished runs (and the folder once empty)."""
        for epoch in self._epochs(key):
            self._path(key, epoch).unlink(missing_ok=True)
        if self.directory.is_dir() and not any(self.directory.iterdir()):
            self.directory.rmdir()


class _Damaged(Exception):
    """A snapshot file that cannot be read back whole (`cause` says why)."""

    def __init__(self, path: Path, cause: Exception):
        super().__init__(path, cause)
        self.path, self.cause = path, cause


def _read_leaves(path: Path, n: int) -> list[np.ndarray]:
    """The first n arrays of a snapshot, after checking every array's CRC-32 (_Damaged when one
    differs or the file is not a whole archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"bad CRC-32 for {bad}")
        with np.load(path) as z:
            return [z[f"leaf{i}"] for i in range(n)]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise _Damaged(path, err) from None
