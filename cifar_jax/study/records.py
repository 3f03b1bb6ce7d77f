"""Run records as a study trains: after every epoch the engine's metrics of each run become its
record (`run_record`), stored atomically, so an interrupted study keeps what it has done."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from cifar_jax.io.snapshots import Snapshots
from cifar_jax.results import run_record, studydir, summary, tensorboard
from cifar_jax.study import progress
from cifar_jax.study.config import Run


def _mean(x: Any) -> float:
    """Mean of the finite values (NaN, without a warning, when there are none: all runs diverged)."""
    x = np.asarray(x, dtype=np.float64)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else float("nan")


class RecordWriter:
    """Engine callbacks: builds each run's record, writes it every epoch, prints progress. With
    `pause` (a rung of successive halving, before the runs' last epoch) the state after that epoch
    is kept as a snapshot of each run of its own, for whichever of them train on."""

    def __init__(self, study: studydir.StudyDir, runs: list[Run], total_epochs: int, label: str,
                 tally: dict, tensor_names: list[str], snapshots: Snapshots,
                 events: tensorboard.StudyWriter | None = None, on_epoch: Callable | None = None,
                 pause: int | None = None):
        self.study, self.runs, self.label, self.tensor_names = study, runs, label, tensor_names
        self.snapshots, self.events = snapshots, events  # events: --tensorboard's files
        self.on_epoch_state = on_epoch  # a study's own look at the full state after every epoch (`execute`)
        self.records: dict[int, dict] = {}
        self.total, self.tally = total_epochs, tally  # epochs done and their seconds, shared across groups
        self.pause = pause

    def on_compiled(self, seconds: float) -> None:
        if seconds > 0.5:
            progress.log(f"{self.label}: compiled in {seconds:.1f} s")

    def on_log(self, message: str) -> None:
        progress.log(f"{self.label}: {message}")

    def on_start(self, runs: np.ndarray, untrained: dict[str, run_record.Metrics]) -> None:
        for j, i in enumerate(runs):
            run = self.runs[i]
            self.records[i] = run_record.new(run.run_id, run.config_name, run.seed, run.config, untrained, j)

    def on_epoch(self, runs: np.ndarray, epoch: int, metrics: run_record.Epoch, seconds: float) -> None:
        for j, i in enumerate(runs):
            run_record.add_epoch(self.records[i], epoch, metrics, j, seconds)
            if epoch < self.runs[i].epochs:  # the last epoch is written with the final status (on_end), so a
                self.study.write_record(self.records[i])  # record never holds every epoch yet lacks its end
            if self.events is not None:  # the record's own numbers, so TensorBoard shows exactly them
                self.events.add_epoch(self.runs[i].run_id, self.records[i]["epochs"][-1], self.tensor_names)
        self.snapshots.prune(self._key(runs), epoch)
        if epoch == self.pause and len(runs) > 1:  # each run has its own snapshot now
            self.snapshots.remove(self._key(runs))
            for key in self._run_keys(runs):
                self.snapshots.prune(key, epoch)
        self.tally["done"] += 1
        self.tally["seconds"] += seconds
        left = (self.total - self.tally["done"]) * self.tally["seconds"] / self.tally["done"]
        first = self.runs[runs[0]].run_id if len(runs) == 1 else f"{len(runs)} runs"
        n_div = int((~metrics.alive).sum())
        val = metrics.val or run_record.Metrics(np.nan, np.nan, np.nan)
        progress.log(f"{self.label} [{first}] epoch {epoch}/{self.runs[runs[0]].epochs}  "
                     f"train loss {_mean(metrics.train.loss):.3f} acc {summary.percent(_mean(metrics.train.acc), 1)}%  "
                     f"val loss {_mean(val.loss):.3f} acc {summary.percent(_mean(val.acc), 1)}%  "
                     f"{seconds:.1f} s/epoch  ETA {progress.duration(left)}" + (f"  ({n_div} diverged)" if n_div else ""))

    def on_progress(self, runs: np.ndarray, epoch: int, done: int, seconds: float, *, steps: int) -> None:
        first = self.runs[runs[0]].run_id if len(runs) == 1 else f"{len(runs)} runs"
        images = done * self.runs[runs[0]].spec.batch_size * len(runs)
        progress.log(f"{self.label} [{first}] epoch {epoch}/{self.runs[runs[0]].epochs}: step {done}/{steps}, "
                     f"{images / seconds:,.0f} images/s, epoch ETA {progress.duration(seconds * (steps - done) / done)}")

    def on_end(self, runs: np.ndarray, final: run_record.Final) -> None:
        for j, i in enumerate(runs):
            run_record.finish(self.records[i], final, j, self.tensor_names)
            self.study.write_record(self.records[i])
        for key in {self._key(runs), *self._run_keys(runs)}:
            self.snapshots.remove(key)
        if self.events is not None:
            self.events.close([self.runs[i].run_id for i in runs])

    def _key(self, runs: np.ndarray) -> str:
        return self.snapshots.key([(self.runs[i].run_id, self.runs[i].config) for i in runs])

    def _run_keys(self, runs: np.ndarray) -> list[str]:
        return [self._key(np.array([i])) for i in runs]

    def resume(self, runs: np.ndarray, template: Any) -> tuple[int, Any] | None:
        """The newest snapshot that every run's record has reached: of these runs together, or
        of each run on its own (kept at a rung), whichever is newer."""
        records = [self.study.record(self.runs[i].run_id) for i in runs]
        recorded = min(run_record.last_epoch(r) for r in records)
        if not recorded:
            return None
        found = [self.snapshots.load([self._key(runs)], template, recorded)]
        if len(runs) > 1:
            found.append(self.snapshots.load(self._run_keys(runs), template, recorded))
        return max((f for f in found if f is not None), key=lambda f: f[0], default=None)

    def on_resume(self, runs: np.ndarray, epochs_done: int) -> None:
        for i in runs:
            self.records[i] = run_record.truncate(self.study.record(self.runs[i].run_id), epochs_done)
        self.total -= epochs_done
        progress.log(f"{self.label} resuming {len(runs)} run(s) after epoch {epochs_done} from their snapshot")

    def on_state(self, runs: np.ndarray, epoch: int, state: Callable[[], Any]) -> None:
        if epoch == self.pause:
            whole = state()
            for j, key in enumerate(self._run_keys(runs)):
                self.snapshots.save(key, epoch, jax.tree_util.tree_map(lambda x: x[j:j + 1], whole))
        elif epoch < self.runs[runs[0]].epochs and self.snapshots.due(epoch):
            self.snapshots.save(self._key(runs), epoch, state())
        if self.on_epoch_state:
            self.on_epoch_state([self.runs[i] for i in runs], epoch, state)


#                            compiled epoch) turns the exception raised below into a JaxRuntimeError


