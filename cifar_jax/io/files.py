"""Files that survive a crash: strict JSON, atomic writes (a reader sees the old file or the new,
never a part), JSON objects sealed with a checksum (damage is found on read) and damaged files set
aside, JSON values compared as they read back, the leftovers of interrupted writes, and whether an
output folder can be written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path
import re
import shutil
import tempfile
import time
from typing import Any, BinaryIO, Iterator

import numpy as np


class ResultsError(Exception):
    """A results directory or run record that cannot be used as asked (one-line message)."""


class DamagedFile(ResultsError):
    """A file whose contents are not what was written: it does not parse, or its checksum differs."""


def _jsonable(obj: Any) -> Any:
    """Convert numpy (or array-like) values for json.dumps, which only knows Python types."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _strict(obj: Any) -> Any:
    """The value with every NaN or ±inf float (numpy's and those inside arrays too) as None, so
    it serialises as JSON's null: strict JSON that every language's parser reads."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, (np.generic, Path)) or hasattr(obj, "__array__"):
        return _strict(_jsonable(obj))
    return obj


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Serialise to strict JSON (one line with `indent` None): NaN and ±inf become null, numpy
    values are converted; the one JSON encoder of the project."""
    try:
        return json.dumps(_strict(obj), indent=indent, default=_jsonable, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ResultsError(f"cannot serialise to JSON: {err}") from None


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` only once the block has finished: written to a
    temp file beside it (.<name>.<pid>.<random>.tmp, which `remove_leftovers` recognises), synced
    and renamed; on an error the temp file is removed. The one way the project writes a file
    atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write bytes atomically, so readers never see a partial file."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename by syncing its directory (best effort: not every OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    """Write JSON atomically (serialised first, so a bad object leaves the old file untouched)."""
    return atomic_write_text(path, to_json(obj))


CHECKSUM = "checksum"  # the key of a sealed JSON object's checksum


def _digest(obj: dict) -> str:
    return "sha256:" + hashlib.sha256(to_json(obj, indent=None).encode()).hexdigest()


def sealed(obj: dict) -> dict:
    """The JSON object with its checksum (sha256 of its one-line strict JSON) under CHECKSUM, so
    that a changed number is found on read (`read_sealed`), not only a file that stops parsing."""
    body = {k: v for k, v in obj.items() if k != CHECKSUM}
    return {**body, CHECKSUM: _digest(body)}


def read_sealed(path: Path | str) -> dict:
    """A JSON object written `sealed`, without its checksum; DamagedFile when it does not parse,
    is not an object, or its checksum differs (one without a checksum, written before there were
    any, is read as it is)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise DamagedFile(f"{path}: unreadable ({err})") from None
    except OSError as err:
        raise ResultsError(f"cannot read {path}: {err}") from None
    if not isinstance(obj, dict):
        raise DamagedFile(f"{path}: not a JSON object")
    want = obj.pop(CHECKSUM, None)
    if want is not None and want != _digest(obj):
        raise DamagedFile(f"{path}: checksum differs from its contents")
    return obj


def set_aside(path: Path | str) -> Path:
    """Rename a damaged file to <name>.damaged (.damaged-2, ... when taken), kept beside the
    good ones for a look but never read again; returns the new path."""
    path = Path(path)
    target, n = path.with_name(path.name + ".damaged"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{n}")
    path.rename(target)
    return target


# ----------------------------------------------------------------------------- comparing JSON values

def plain(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples → lists, numpy → Python)."""
    return json.loads(to_json(obj))


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


# ----------------------------------------------------------------------------- leftovers and output folders

# atomic_file's .<name>.<pid>.<random>.tmp (older versions: no pid, or no random part)
_TEMP_FILE = re.compile(r"^\..+?(?:\.(?P<pid>\d+))?(?:\.\w+)?\.tmp$")
_TEMP_DIR = re.compile(r"^\..+\.tmp-\w+$")  # checkpoint.save's
LEFTOVER_AGE_S = 2.0


def remove_leftovers(root: Path | str, *, recursive: bool = True, min_age_s: float = LEFTOVER_AGE_S) -> list[Path]:
    """Remove the temp files of interrupted atomic writes (`atomic_file`) and the temp folders of
    interrupted checkpoint saves under `root` (only its top level without `recursive`); returns
    them. One that may still be written is kept: its name's pid is a live process on this host, or
    it changed in the last `min_age_s` seconds (a writer on another host of a shared folder)."""
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if _TEMP_DIR.match(d)]:
            dirs.remove(name)
            if _idle(Path(folder, name), min_age_s):
                shutil.rmtree(Path(folder, name), ignore_errors=True)
                removed.append(Path(folder, name))
        for name in files:
            match = _TEMP_FILE.match(name)
            if match and not (match["pid"] and pid_alive(int(match["pid"]))) and _idle(Path(folder, name), min_age_s):
                with contextlib.suppress(OSError):
                    Path(folder, name).unlink()
                    removed.append(Path(folder, name))
        if not recursive:
            break
    return removed


def _idle(path: Path, seconds: float) -> bool:
    """Whether nothing in `path` (a file, or a folder's whole tree) changed in the last `seconds`."""
    try:
        newest = max(p.stat().st_mtime for p in [path, *(path.rglob("*") if path.is_dir() else [])])
    except OSError:
        return False
    return time.time() - newest >= seconds


def unwritable(folder: Path | str) -> str | None:
    """Why files cannot be written under `folder` (made when first written), or None; checked with
    nothing created, so bad output flags fail before any work."""
    folder = Path(folder).expanduser()
    existing = next(p for p in [folder, *folder.parents] if p.exists() or p.is_symlink())
    if not existing.is_dir():
        return f"{existing} is {'a file' if existing.exists() else 'a broken link'}, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid runs on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
