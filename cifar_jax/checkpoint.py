"""Checkpoints of one trained run: its variables (via orbax) plus the metrics and config that produced them.

A checkpoint is a directory holding `arrays/` (an orbax StandardCheckpointHandler checkpoint of
{"params": ..., "batch_stats": ...}, one run, no run axis) and `metadata.json` (metrics, config and a
manifest of every leaf's path, shape and dtype). `save` writes it into a temporary directory next to
its destination and renames it into place, so a crash never leaves half a checkpoint. `restore` is
strict by default (same leaf paths, shapes and dtypes as the model) and `restore_partial` loads only
chosen layers, for transfer: keep the pretrained convolutions, re-initialise the dense layers.
Arrays are always restored onto the default device, whatever sharding the saving process used.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from cifar_jax import results

ARRAYS = "arrays"
METADATA = "metadata.json"
Manifest = dict[str, dict[str, Any]]  # leaf path → {"shape": [...], "dtype": "float32"}


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or does not fit the model it is restored into."""


def path_str(key_path: tuple) -> str:
    """A jax key path as "params/conv1/kernel", the name used in messages and by `keep`."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """The one tree a checkpoint stores, so every leaf path starts with params/ or batch_stats/."""
    return {"params": params, "batch_stats": batch_stats}


def _manifest(tree: Any) -> Manifest:
    """Every leaf's path, shape and dtype (works on arrays, ShapeDtypeStructs and orbax metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_str(k): {"shape": [int(d) for d in x.shape], "dtype": str(np.dtype(x.dtype))}
            for k, x in leaves}


def _replace_dir(new: Path, dest: Path) -> None:
    """Move a finished directory to `dest`, replacing any existing one (never leaving it half-written)."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        dest.rename(old / dest.name)
        new.rename(dest)
        shutil.rmtree(old)
    else:
        new.rename(dest)


def save(path: str | Path, params: Any, batch_stats: Any, *, metrics: dict, config: dict,
         overwrite: bool = False) -> Path:
    """Save one run's variables and its metadata atomically in directory `path`; returns the path."""
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise CheckpointError(f"checkpoint {path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = _variables(params, batch_stats)
    meta = {"metrics": metrics, "config": config, "manifest": _manifest(tree)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
            ckptr.save(tmp / ARRAYS, args=ocp.args.StandardSave(tree))
        (tmp / METADATA).write_text(results.to_json(meta))
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_metadata(path: str | Path) -> dict:
    """{"metrics", "config", "manifest"} of a checkpoint, without reading its arrays."""
    file = Path(path) / METADATA
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}: {file} is missing") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has an unreadable {METADATA}: {e}") from e
    missing = {"metrics", "config", "manifest"} - set(meta)
    if missing:
        raise CheckpointError(f"checkpoint {path} has a corrupt {METADATA}: no {sorted(missing)}")
    return meta


def _stored_tree(path: str | Path) -> Any:
    """The structure orbax recorded for a checkpoint's arrays (leaves carry shape and dtype)."""
    arrays = Path(path).absolute() / ARRAYS
    if not arrays.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: {arrays} is missing")
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
            tree = ckptr.metadata(arrays).item_metadata
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    if tree is None:
        raise CheckpointError(f"checkpoint {path} cannot be read: {arrays} has no orbax metadata")
    return tree.tree


def _read(path: str | Path, stored: Any) -> dict[str, jax.Array]:
    """All arrays of a checkpoint by leaf path, on the default device (an explicit target sharding,
    so orbax does not reuse the saving process's sharding, whose devices may not exist here)."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), stored)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        restored = ckptr.restore(Path(path).absolute() / ARRAYS, args=ocp.args.StandardRestore(abstract))
    return {path_str(k): x for k, x in jax.tree_util.tree_flatten_with_path(restored)[0]}


def _difference(leaf: str, stored: Manifest, model: Manifest) -> str | None:
    """How leaf `leaf` differs between checkpoint and model, or None when it matches."""
    if leaf not in stored:
        return f"{leaf} is in the model but not in the checkpoint"
    if leaf not in model:
        return f"{leaf} is in the checkpoint but not in the model"
    s, m = stored[leaf], model[leaf]
    if s["shape"] != m["shape"]:
        return f"{leaf} has shape {tuple(s['shape'])} in the checkpoint, {tuple(m['shape'])} in the model"
    if s["dtype"] != m["dtype"]:
        return f"{leaf} has dtype {s['dtype']} in the checkpoint, {m['dtype']} in the model"
    return None


def _fill(target: dict[str, Any], arrays: dict[str, jax.Array], loaded: list[str]) -> tuple[Any, Any]:
    """The target tree with the `loaded` leaves replaced by checkpoint arrays → (params, batch_stats)."""
    chosen = set(loaded)
    tree = jax.tree_util.tree_map_with_path(
        lambda k, x: arrays[path_str(k)] if path_str(k) in chosen else x, target)
    return tree["params"], tree["batch_stats"]


def _open(path: str | Path, target_params: Any, target_batch_stats: Any) -> tuple[Any, dict, Any, dict]:
    """The target variables and the checkpoint's tree, each with its manifest of leaves."""
    target = _variables(target_params, target_batch_stats)
    stored_tree = _stored_tree(path)
    return target, _manifest(target), stored_tree, _manifest(stored_tree)


def restore(path: str | Path, target_params: Any, target_batch_stats: Any, *,
            strict: bool = True) -> tuple[Any, Any]:
    """(params, batch_stats) of a checkpoint in the targets' structure; strict: same leaf paths, shapes
    and dtypes or a CheckpointError naming the first difference, else differing leaves keep target values."""
    target, model, stored_tree, stored = _open(path, target_params, target_batch_stats)
    if strict:
        for leaf in sorted(stored.keys() | model.keys()):
            diff = _difference(leaf, stored, model)
            if diff:
                raise CheckpointError(f"checkpoint {path} does not match the model: {diff}")
    loaded = [leaf for leaf in model if _difference(leaf, stored, model) is None]
    return _fill(target, _read(path, stored_tree), loaded)


def _layers(leaves: list[str]) -> str:
    """Leaf paths summarised by layer: "params/conv1, params/conv2" (or "none")."""
    return ", ".join(dict.fromkeys(leaf.rsplit("/", 1)[0] for leaf in leaves)) or "none"


def restore_partial(path: str | Path, target_params: Any, target_batch_stats: Any, *,
                    keep: Callable[[str], bool]) -> tuple[Any, Any, dict[str, list[str]]]:
    """Load only the leaves selected by `keep` (e.g. the convs, for transfer), which must match; the
    rest keep their fresh target values. Returns (params, batch_stats, report) and prints a summary."""
    target, model, stored_tree, stored = _open(path, target_params, target_batch_stats)
    loaded = sorted(leaf for leaf in model if keep(leaf))
    for leaf in loaded:
        diff = _difference(leaf, stored, model)
        if diff:
            raise CheckpointError(f"checkpoint {path} does not match the model in a selected leaf: {diff}")
    report = {"loaded": loaded,
              "initialised": sorted(model.keys() - set(loaded)),
              "ignored": sorted(stored.keys() - set(loaded))}
    params, batch_stats = _fill(target, _read(path, stored_tree), loaded)
    print(f"restored from {path}:\n"
          f"  loaded      {len(report['loaded'])} arrays: {_layers(report['loaded'])}\n"
          f"  initialised {len(report['initialised'])} arrays afresh: {_layers(report['initialised'])}\n"
          f"  ignored     {len(report['ignored'])} checkpoint arrays: {_layers(report['ignored'])}")
    return params, batch_stats, report
