"""Checkpoints of one trained run: its variables (via orbax), what they are of, and its metrics.

A checkpoint is a directory holding `arrays/` (an orbax StandardCheckpointHandler checkpoint of
{"params": ..., "batch_stats": ...}, one run, no run axis) and `metadata.json`: the provenance (the
study directory, the run id, the run's full config, the code version: git commit and package
versions; and where it was written), the metrics, a manifest of every leaf's path, shape and
dtype, and a SHA-256 of every file orbax wrote. `save` writes it into a temporary directory next to
its destination and renames it into place, so a crash never leaves half a checkpoint (the
`.<name>.*tmp-*` directories a killed save leaves are what `files.remove_leftovers` deletes).
`restore` checks the provenance against what the caller expects, naming the first differing
field, and is strict (same leaf paths, shapes and dtypes as the model); `restore_partial` loads
only chosen layers, for transfer: keep the pretrained convolutions, re-initialise the dense
layers. `verify` checks a whole checkpoint without a model. Whatever is wrong (missing, of
another run, of another model, a garbage `metadata.json`, a truncated, altered or missing file of
orbax's, `_METADATA` among them: found by its checksum before orbax reads anything) is a
CheckpointError with a one-line message naming the checkpoint and the file. Arrays are always restored onto the default device, whatever sharding the saving
process used.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import shutil
import tempfile
from typing import Any, Callable, TYPE_CHECKING, TypeVar

import jax
import numpy as np

from cifar_jax.io import environment, files

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

ARRAYS = "arrays"
METADATA = "metadata.json"
PROVENANCE = ("study", "run_id", "config", "code")  # what `expected` may name
_KEYS = (*PROVENANCE, "path", "metrics", "manifest", "files")  # every key of metadata.json
Manifest = dict[str, dict[str, Any]]  # leaf path → {"shape": [...], "dtype": "float32"}
T = TypeVar("T")


class CheckpointError(files.ResultsError):
    """A checkpoint is missing, damaged, of another run, or does not fit the model it is restored
    into; a ResultsError (a stored result that cannot be used as asked), so a study's entry point
    reports it as one line and exit status 2 like any other."""


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


def _sha256(file: Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    with file.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(path: Path) -> dict[str, str]:
    """SHA-256 of every file under a checkpoint's arrays/, by its path in the checkpoint: damage is
    found before orbax reads (orbax reads some altered files without an error, and a failed read
    leaves asynchronous reads behind that print tracebacks)."""
    return {f.relative_to(path).as_posix(): _sha256(f) for f in sorted((path / ARRAYS).rglob("*")) if f.is_file()}


def _normalised(fields: dict) -> dict:
    """Provenance fields as stored and compared: the study as an absolute path, every value as
    JSON reads it back (tuples as lists)."""
    study = {"study": str(Path(fields["study"]).expanduser().resolve())} if "study" in fields else {}
    return files.plain({**fields, **study})


def _replace_dir(new: Path, dest: Path) -> None:
    """Move a finished directory to `dest`, replacing any existing one (never leaving it half-written;
    the old one waits in a `.<name>.old.tmp-*` directory, a leftover `files.remove_leftovers` knows)."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.tmp-", dir=dest.parent))
        dest.rename(old / dest.name)
        new.rename(dest)
        shutil.rmtree(old)
    else:
        new.rename(dest)


def save(path: str | Path, params: Any, batch_stats: Any, *, study: str | Path, run_id: str, config: dict,
         metrics: dict, overwrite: bool = False) -> Path:
    """Save one run's variables with its provenance (`study` directory, `run_id`, full `config`, and
    the code version) and `metrics` atomically in directory `path`; returns the path."""
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise CheckpointError(f"checkpoint {path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = _variables(params, batch_stats)
    env = environment.environment()
    meta = {**_normalised({"study": study, "run_id": run_id, "config": config}),
            "code": {"git": env["git"], "versions": env["versions"]}, "path": str(path.resolve()),
            "metrics": metrics, "manifest": _manifest(tree)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        orbax = _orbax_module()
        with orbax.Checkpointer(orbax.StandardCheckpointHandler()) as ckptr:
            ckptr.save(tmp / ARRAYS, args=orbax.args.StandardSave(tree))
        (tmp / METADATA).write_text(files.to_json({**meta, "files": _files(tmp)}))
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_metadata(path: str | Path) -> dict:
    """A checkpoint's metadata.json (provenance, metrics, manifest, file checksums), without its arrays."""
    file = Path(path) / METADATA
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        state = "is damaged" if Path(path).is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {state}: {file} is missing") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged: {file} is not readable JSON ({e})") from None
    missing = [k for k in _KEYS if k not in meta] if isinstance(meta, dict) else list(_KEYS)
    if missing:
        raise CheckpointError(f"checkpoint {path} is damaged, or older than provenance records: "
                              f"{file} has no {', '.join(missing)}")
    return meta


def _relative_study(fields: dict, location: str | Path) -> dict:
    """The fields with the study as a path relative to the checkpoint at `location`, as compared:
    a study moved or copied together with its checkpoints stays the same study."""
    if "study" not in fields:
        return fields
    return {**fields, "study": os.path.relpath(fields["study"], Path(location).resolve())}


def check_provenance(path: str | Path, meta: dict, expected: dict) -> None:
    """Refuse a checkpoint that is not of the run the caller expects: `expected` holds any of
    PROVENANCE; the first differing field is named with both values."""
    stored = {k: meta[k] for k in expected}
    wanted = _normalised(expected)
    key = files.first_difference(_relative_study(stored, meta["path"]), _relative_study(wanted, path))
    if key is not None:
        raise CheckpointError(f"checkpoint {path} is of another run: {key} is {files.dotted_value(stored, key, None)} "
                              f"in the checkpoint, {files.dotted_value(wanted, key, None)} expected")


def _innermost(err: BaseException) -> str:
    """The first line of the deepest cause of an error (orbax wraps tensorstore's, which names the file)."""
    while err.__cause__ or err.__context__:
        err = err.__cause__ or err.__context__
    return (str(err).splitlines() or [type(err).__name__])[0]


def check_files(path: str | Path, files: dict[str, str]) -> None:
    """Refuse a checkpoint with a file of orbax's missing or altered since it was saved, naming it."""
    for name, digest in files.items():
        file = Path(path) / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is damaged: {file} is missing")
        if _sha256(file) != digest:
            raise CheckpointError(f"checkpoint {path} is damaged: {file} differs from its checksum in {METADATA}")


def _orbax_module():
    """orbax.checkpoint, imported on first use: its import takes about 0.3 s of every process's
    start, and most studies never write or read a checkpoint."""
    import orbax.checkpoint

    return orbax.checkpoint


def _orbax(path: str | Path, read: Callable[[ocp.Checkpointer], T]) -> T:
    """`read(checkpointer)` of checkpoint `path`; a failure (orbax and tensorstore raise bare
    Exception) is a CheckpointError naming the checkpoint and the cause."""
    orbax = _orbax_module()
    try:
        with orbax.Checkpointer(orbax.StandardCheckpointHandler()) as ckptr:
            return read(ckptr)
    except Exception as err:  # noqa: BLE001 - orbax's errors have no common class
        raise CheckpointError(f"checkpoint {path} cannot be read: {_innermost(err)}") from err


def _stored_tree(path: str | Path) -> Any:
    """The structure orbax recorded for a checkpoint's arrays (leaves carry shape and dtype)."""
    tree = _orbax(path, lambda ckptr: ckptr.metadata(Path(path).absolute() / ARRAYS).item_metadata)
    if tree is None:
        raise CheckpointError(f"checkpoint {path} cannot be read: orbax finds no metadata in {Path(path) / ARRAYS}")
    return tree.tree


def _read(path: str | Path, stored: Any) -> dict[str, jax.Array]:
    """All arrays of a checkpoint by leaf path, on the default device (an explicit target sharding,
    so orbax does not reuse the saving process's sharding, whose devices may not exist here)."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), stored)
    restored = _orbax(path, lambda ckptr: ckptr.restore(Path(path).absolute() / ARRAYS,
                                                        args=_orbax_module().args.StandardRestore(abstract)))
    return {path_str(k): x for k, x in jax.tree_util.tree_flatten_with_path(restored)[0]}


def verify(path: str | Path, expected: dict) -> Any:
    """Check a whole checkpoint without a model: its metadata, its provenance against `expected`
    (see `check_provenance`), every file against its checksum and orbax's metadata; returns the
    tree orbax recorded."""
    meta = load_metadata(path)
    check_provenance(path, meta, expected)
    check_files(path, meta["files"])
    return _stored_tree(path)


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


def _open(path: str | Path, target_params: Any, target_batch_stats: Any,
          expected: dict) -> tuple[dict, Manifest, Manifest, dict[str, jax.Array]]:
    """A checkpoint of the expected run (see `check_provenance`), read: the target variables and
    the checkpoint's leaves, each with its manifest, and the checkpoint's arrays."""
    target, stored_tree = _variables(target_params, target_batch_stats), verify(path, expected)
    return target, _manifest(target), _manifest(stored_tree), _read(path, stored_tree)


def restore(path: str | Path, target_params: Any, target_batch_stats: Any, *, expected: dict,
            strict: bool = True) -> tuple[Any, Any]:
    """(params, batch_stats) of a checkpoint of the `expected` run ({} checks nothing) in the targets'
    structure; strict: same leaf paths, shapes and dtypes or a CheckpointError naming the first
    difference, else differing leaves keep target values."""
    target, model, stored, arrays = _open(path, target_params, target_batch_stats, expected)
    if strict:
        for leaf in sorted(stored.keys() | model.keys()):
            diff = _difference(leaf, stored, model)
            if diff:
                raise CheckpointError(f"checkpoint {path} does not match the model: {diff}")
    loaded = [leaf for leaf in model if _difference(leaf, stored, model) is None]
    return _fill(target, arrays, loaded)


def _layers(leaves: list[str]) -> str:
    """Leaf paths summarised by layer: "params/conv1, params/conv2" (or "none")."""
    return ", ".join(dict.fromkeys(leaf.rsplit("/", 1)[0] for leaf in leaves)) or "none"


def restore_partial(path: str | Path, target_params: Any, target_batch_stats: Any, *, expected: dict,
                    keep: Callable[[str], bool]) -> tuple[Any, Any, dict[str, list[str]]]:
    """Load only the leaves selected by `keep` (e.g. the convs, for transfer) of a checkpoint of the
    `expected` run, which must match; the rest keep their fresh target values. Returns
    (params, batch_stats, report) and prints a summary."""
    target, model, stored, arrays = _open(path, target_params, target_batch_stats, expected)
    loaded = sorted(leaf for leaf in model if keep(leaf))
    for leaf in loaded:
        diff = _difference(leaf, stored, model)
        if diff:
            raise CheckpointError(f"checkpoint {path} does not match the model in a selected leaf: {diff}")
    report = {"loaded": loaded,
              "initialised": sorted(model.keys() - set(loaded)),
              "ignored": sorted(stored.keys() - set(loaded))}
    params, batch_stats = _fill(target, arrays, loaded)
    print(f"restored from {path}:\n"
          f"  loaded      {len(report['loaded'])} arrays: {_layers(report['loaded'])}\n"
          f"  initialised {len(report['initialised'])} arrays afresh: {_layers(report['initialised'])}\n"
          f"  ignored     {len(report['ignored'])} checkpoint arrays: {_layers(report['ignored'])}")
    return params, batch_stats, report
