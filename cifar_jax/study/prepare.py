"""Preparing a study: its data on the devices (splits, normalisation statistics, the padded test
set) and its study directory, named from the config and checked writable before anything trains."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cifar_jax.data import datasets, splits
from cifar_jax.io import files
from cifar_jax.results import studydir
from cifar_jax.study import progress
from cifar_jax.study.config import Config, ConfigError
from cifar_jax.training import step


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A dataset loaded, split, standardised and on the device."""

    dataset: datasets.Dataset
    train_idx: np.ndarray
    val_idx: np.ndarray
    data: step.Data  # on the device

    @property
    def labels_by_split(self) -> dict[str, np.ndarray]:
        y = self.dataset.y_train
        return {"train": y[self.train_idx], "val": y[self.val_idx], "test": self.dataset.y_test}

    def without_test(self) -> Prepared:
        """The same data with an empty test split on the device: a part that chooses hyperparameters
        (the LR range test) neither looks at the test set nor spends its evaluations on it."""
        d = self.data
        return dataclasses.replace(self, data=d._replace(x_test=d.x_test[:0], y_test=d.y_test[:0]))


def data(cfg: Config) -> Prepared:
    """Load the dataset and its split, check the batch size fits, and put it on the device."""
    ds = datasets.load(cfg.dataset, cfg.data_dir, download=cfg.download)
    ds = datasets.select_classes(ds, cfg.classes) if cfg.classes else ds
    ds = datasets.test_subset(ds, cfg.test_size, cfg.split_seed) if cfg.test_size else ds
    n_train, n_val, swap = cfg.split
    try:
        train_idx, val_idx = splits.make_split(len(ds.y_train), n_train, n_val, seed=cfg.split_seed, swap=swap)
    except ValueError as err:
        raise ConfigError(f"--split={n_train}/{n_val}: {err}") from None
    batch = max(dict(v)["batch_size"] for v in cfg.variants)
    if batch > len(train_idx):
        raise ConfigError(f"--batch_size={batch}: larger than the training split ({len(train_idx)} images)")
    mean, std = splits.norm_stats(ds.x_train, train_idx, cfg.normalization, cfg.zca_epsilon)
    on_device = step.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test, train_idx, val_idx, mean, std)
    progress.log(f"data: {ds.name} train {len(train_idx)} / val {len(val_idx)} / test {len(ds.y_test)}, "
                 f"images {ds.image_shape}, {ds.num_classes} classes, normalization {cfg.normalization}")
    return Prepared(ds, train_idx, val_idx, on_device)


def study_dir(cfg: Config, default_name: str) -> studydir.StudyDir:
    """The study directory for these flags (created on its first write)."""
    return studydir.StudyDir(Path(cfg.results_dir).expanduser() / (cfg.name or default_name))


def named_study(cfg: Config, text: str) -> studydir.StudyDir:
    """Another study, given by its name inside --results_dir or by its path."""
    path = Path(text).expanduser()
    return studydir.StudyDir(path if len(path.parts) > 1 else Path(cfg.results_dir).expanduser() / path)


#                            compiled epoch) turns the exception raised below into a JaxRuntimeError


def check_writable(folder: Path | str, flag: str) -> None:
    """Refuse an output folder that cannot be written (a file, under a file, read-only), naming
    `flag`, before anything is loaded or written."""
    problem = files.unwritable(folder)
    if problem:
        raise ConfigError(f"{flag}={folder}: {problem}")


