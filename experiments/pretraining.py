"""What the studies that pretrain runs and restore their checkpoints share (experiments.transfer,
experiments.cnn_transfer): --checkpoint_dir and --repair, the study's checkpoint folder, the check
of the finished pretraining runs' checkpoints before the pretraining part trains, the save after it
and what a restore expects.

A finished pretraining run whose checkpoint is missing (its save was cut short) is trained again;
one whose checkpoint is damaged or of another run (another study, run or configuration) stops the
study with one line naming it, or with --repair is trained again and its checkpoint rewritten.
"""
from __future__ import annotations

from pathlib import Path

from cifar_jax.config.options import Option, table
from cifar_jax.io import checkpoint, files
from cifar_jax.results import studydir
from cifar_jax.study import config, runner

OPTIONS = table(
    Option("checkpoint_dir", None, "Root of the pretrained checkpoints, kept in <checkpoint_dir>/<study name>/; "
           "default: the study's own folder, <results_dir>/<study name>/checkpoints.", kind="str"),
    Option("repair", False, "Pretrain a run again when its checkpoint is damaged or of another run (default: stop, "
           "naming the checkpoint).", kind="bool"),
)


def checkpoint_root(cfg: config.Config, parent: studydir.StudyDir) -> Path:
    """Where the study keeps its pretrained checkpoints (--checkpoint_dir)."""
    if cfg.own.checkpoint_dir:
        return Path(cfg.own.checkpoint_dir).expanduser() / parent.root.name
    return parent.root / "checkpoints"


def finished(st: studydir.StudyDir, runs: list[config.Run]) -> list[config.Run]:
    """The runs the study has finished (and would skip)."""
    todo = set(st.pending([(r.run_id, r.config) for r in runs]))
    return [r for r in runs if r.run_id not in todo]


def check(cfg: config.Config, parent: studydir.StudyDir, st: studydir.StudyDir,
          pretrained: list[tuple[config.Run, Path]]) -> None:
    """Before the pretraining part `st` trains (`runner.run`'s `before`, under its lock): remove the
    leftovers of killed saves, then check the checkpoint of every finished (run, checkpoint path)."""
    files.remove_leftovers(checkpoint_root(cfg, parent))
    paths = {run.run_id: path for run, path in pretrained}
    for run in finished(st, [run for run, _ in pretrained]):
        path = paths[run.run_id]
        if not path.exists():
            runner.train_again(st, run.run_id, f"its checkpoint {path} is missing")
            continue
        try:
            checkpoint.verify(path, runner.provenance(parent, run))
        except checkpoint.CheckpointError as err:
            if not cfg.own.repair:
                raise checkpoint.CheckpointError(f"{err} (pass --repair to pretrain {run.run_id} again)") from None
            runner.train_again(st, run.run_id, str(err))


def save(parent: studydir.StudyDir, st: studydir.StudyDir, path: Path, run: config.Run, variables: tuple) -> None:
    """The checkpoint of pretraining run `run` (part `st`): its final variables, provenance and final metrics."""
    runner.save_checkpoint(path, st, run, variables, provenance_of=parent)
