"""Datasets as uint8 NHWC images and int32 labels in host memory, read once and cached as .npz.

Sources: CIFAR-10/100 from the official archives (python or binary layout, extracted folder or
.tar.gz, read with numpy and pickle; downloaded with a pinned size and sha256 when online), any
other name through tensorflow_datasets (an optional extra), and a small learnable synthetic set.
A placed copy is checked by structure (files, keys, shapes, dtypes, label range, counts), not by
checksum, so a re-encoded copy such as the shared JPEG one loads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import importlib.util
import logging
import os
import pathlib
import pickle
import re
import tarfile
import urllib.request
import zipfile
import zlib

import numpy as np

from cifar_jax.io import files

DATASETS = ("cifar10", "cifar100", "synthetic")

_ENV_VAR = "CIFAR_JAX_DATA_DIR"
_DEFAULT_DATA_DIR = "~/.cache/cifar_jax"
_DOWNLOAD_TIMEOUT_S = 10.0
_CIFAR_ROW = 3 * 32 * 32  # one image: channel-major R, G, B planes of 32x32 bytes
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")

_log = logging.getLogger(__name__)


class DataError(Exception):
    """A dataset that cannot be found/read; the message is ONE line naming the path or flag and what to do."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One image classification set: the full official train and test splits, uint8 NHWC."""

    name: str
    x_train: np.ndarray = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    classes: tuple[str, ...] = dataclasses.field(repr=False)

    @property
    def num_classes(self) -> int:
        """Number of classes, from the class names."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image, (H, W, C)."""
        return tuple(self.x_train.shape[1:])


@dataclasses.dataclass(frozen=True)
class _Layout:
    """One official file layout of a CIFAR variant: its folder, archive and member names."""

    kind: str  # "python" (pickled dicts) or "binary" (fixed-size records)
    folder: str
    tar: str
    train: tuple[str, ...]
    test: str
    names: str  # the member holding the class names


@dataclasses.dataclass(frozen=True)
class _Cifar:
    """What one CIFAR variant's official archives hold and where to download them."""

    num_classes: int
    python: _Layout
    binary: _Layout
    label_key: str  # python layout: key of the labels used
    names_key: str  # python layout: key of the class names in the meta file
    label_bytes: int  # binary layout: label bytes per record; the last one is used
    url: str
    size: int
    sha256: str
    n_train: int = 50_000
    n_test: int = 10_000

    @property
    def fix(self) -> str:
        """What to do about a broken copy."""
        return f"replace it with an intact copy of the official archive ({self.url})"


# Pins: size and sha256 of the official python-layout archives, as pinned by torchvision's
# prototype datasets and by keras.datasets (md5 c58f3010... and eb9058c3... as in torchvision).
_CIFAR = {
    "cifar10": _Cifar(
        num_classes=10,
        python=_Layout("python", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                       tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                       "batches.meta"),
        binary=_Layout("binary", "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
                       tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin",
                       "batches.meta.txt"),
        label_key="labels", names_key="label_names", label_bytes=1,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", size=170_498_071,
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
    "cifar100": _Cifar(
        num_classes=100,
        python=_Layout("python", "cifar-100-python", "cifar-100-python.tar.gz",
                       ("train",), "test", "meta"),
        binary=_Layout("binary", "cifar-100-binary", "cifar-100-binary.tar.gz",
                       ("train.bin",), "test.bin", "fine_label_names.txt"),
        label_key="fine_labels", names_key="fine_label_names", label_bytes=2,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", size=169_001_437,
        sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),
}


def resolve_data_dir(data_dir: str | None) -> pathlib.Path:
    """The data directory: --data_dir, else $CIFAR_JAX_DATA_DIR, else ~/.cache/cifar_jax."""
    return pathlib.Path(data_dir or os.environ.get(_ENV_VAR) or _DEFAULT_DATA_DIR).expanduser()


def load(name: str, data_dir: str | None = None, *, download: bool = True) -> Dataset:
    """Loads a dataset by name, from its .npz cache when present, else from its source (then cached)."""
    if name == "synthetic":
        return synthetic()
    root = resolve_data_dir(data_dir)
    if root.is_dir():  # temp files of interrupted cache writes and downloads (of dead processes)
        files.remove_leftovers(root, recursive=False)
    cache = _cache_path(name, root)
    if cache.is_file():
        return _read_npz(cache, name)
    if name in _CIFAR:
        ds = _read_cifar(name, root, download)
    else:
        ds = _read_tfds(name, root)
    _write_npz(cache, ds)
    return ds


def _cache_path(name: str, root: pathlib.Path) -> pathlib.Path:
    """Where the .npz cache of dataset `name` lives under the data directory."""
    return root / (re.sub(r"[^\w.-]", "_", name) + ".npz")


def check_name(name: str, data_dir: str | None = None) -> None:
    """Refuse, before anything is loaded, a dataset name that cannot be found: neither native, nor
    cached, nor a possible tfds name (tensorflow_datasets is not installed to look it up)."""
    if name in DATASETS or _cache_path(name, resolve_data_dir(data_dir)).is_file():
        return
    try:
        found = importlib.util.find_spec("tensorflow_datasets") is not None
    except ValueError:  # imported already, without a spec (a stand-in)
        found = True
    if not found:
        raise DataError(_no_tfds(name))


def _no_tfds(name: str) -> str:
    """One line for a dataset name only tfds could know, with tfds absent."""
    return (f"--dataset={name}: unknown dataset {name!r}: not {'/'.join(DATASETS)}, and tfds (the [tfds] "
            "extra: pip install -e .[tfds]) is not installed to look it up")


def select_classes(ds: Dataset, spec: str) -> Dataset:
    """A class-subset, relabelled copy of `ds`: `spec` lists the new classes in order, comma separated,
    each one source class or several joined by '+' (names or indices), e.g. "cat,dog" (cat → 0,
    dog → 1) or "airplane+ship,cat+dog". Images of classes not listed are dropped."""
    groups = [[c.strip() for c in item.split("+")] for item in spec.split(",")]
    new_of = np.full(ds.num_classes, -1, np.int32)
    for label, group in enumerate(groups):
        for c in group:
            index = int(c) if c.isdigit() else ds.classes.index(c) if c in ds.classes else -1
            if not 0 <= index < ds.num_classes:
                raise DataError(f"--classes={spec}: {c!r} is not a class of {ds.name} "
                                f"({', '.join(ds.classes)}, or 0-{ds.num_classes - 1})")
            if new_of[index] >= 0:
                raise DataError(f"--classes={spec}: {c!r} is listed twice")
            new_of[index] = label
    if len(groups) < 2:
        raise DataError(f"--classes={spec}: give at least two classes")
    keep_train, keep_test = new_of[ds.y_train] >= 0, new_of[ds.y_test] >= 0
    names = tuple("+".join(ds.classes[int(c) if c.isdigit() else ds.classes.index(c)] for c in g) for g in groups)
    return Dataset(f"{ds.name}[{spec}]", ds.x_train[keep_train], new_of[ds.y_train[keep_train]],
                   ds.x_test[keep_test], new_of[ds.y_test[keep_test]], names)


def test_subset(ds: Dataset, size: int, seed: int) -> Dataset:
    """`ds` with `size` test images drawn without replacement (seeded, order kept), e.g. the
    400-image test set of seeds/003; the training set is unchanged."""
    if not 0 < size <= len(ds.y_test):
        raise DataError(f"--test_size={size}: must be in 1..{len(ds.y_test)} (the test set of {ds.name})")
    keep = np.sort(np.random.default_rng(seed).permutation(len(ds.y_test))[:size])
    return dataclasses.replace(ds, x_test=ds.x_test[keep], y_test=ds.y_test[keep])


def synthetic(n_train: int = 5000, n_test: int = 1000, *, num_classes: int = 10,
              image_shape: tuple[int, int, int] = (32, 32, 3), seed: int = 0) -> Dataset:
    """A small learnable image set for tests and offline demos, deterministic in seed.

    Each class has a random low-frequency colour pattern; an image is its class pattern plus a
    random low-frequency pattern of its own (so classes overlap and 100% is out of reach) plus
    pixel noise. With the defaults, nearest class mean scores ~70% on test and logistic regression
    ~80% after a few epochs (chance: 10%); fewer channels make it harder.
    """
    if n_train < 1 or n_test < 1 or num_classes < 2 or len(image_shape) != 3:
        raise ValueError(f"synthetic: needs n_train, n_test >= 1, num_classes >= 2 and an (H, W, C) "
                         f"image_shape, got {n_train}, {n_test}, {num_classes}, {image_shape}")
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(num_classes, _SYNTH_GRID, _SYNTH_GRID, image_shape[2]))
    x_train, y_train = _synthetic_split(rng, prototypes, n_train, image_shape)
    x_test, y_test = _synthetic_split(rng, prototypes, n_test, image_shape)
    return Dataset("synthetic", x_train, y_train, x_test, y_test,
                   tuple(f"class{i}" for i in range(num_classes)))


# --- synthetic -----------------------------------------------------------------------------

_SYNTH_GRID = 4  # patterns vary on a 4x4 grid, smoothly upsampled to the image size
_SYNTH_OWN = 2.5  # scale of each image's own pattern, relative to the class pattern
_SYNTH_CONTRAST = 14.0  # grey levels per unit of pattern
_SYNTH_PIXEL_NOISE = 16.0  # grey levels of independent pixel noise
_SYNTH_CHUNK = 256  # images generated at a time


def _synthetic_split(rng: np.random.Generator, prototypes: np.ndarray, n: int,
                     image_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """n balanced, shuffled images drawn around the class prototypes, `_SYNTH_CHUNK` at a time (the
    same numbers as all at once, without float64 temporaries of the whole set)."""
    y = rng.permutation(np.arange(n) % len(prototypes)).astype(np.int32)
    coarse = prototypes[y] + _SYNTH_OWN * rng.normal(size=(n,) + prototypes.shape[1:])
    rows, cols = _upsampler(image_shape[0]), _upsampler(image_shape[1])
    x = np.empty((n, image_shape[0], image_shape[1], prototypes.shape[-1]), np.uint8)
    for start in range(0, n, _SYNTH_CHUNK):
        smooth = np.einsum("hi,wj,nijc->nhwc", rows, cols, coarse[start:start + _SYNTH_CHUNK], optimize=True)
        pixels = 128.0 + _SYNTH_CONTRAST * smooth + _SYNTH_PIXEL_NOISE * rng.normal(size=smooth.shape)
        x[start:start + _SYNTH_CHUNK] = np.clip(np.rint(pixels), 0, 255)
    return x, y


def _upsampler(size: int) -> np.ndarray:
    """[size, grid] matrix that linearly interpolates grid values onto size pixels."""
    at = np.linspace(0, _SYNTH_GRID - 1, size)
    return np.stack([np.interp(at, np.arange(_SYNTH_GRID), e) for e in np.eye(_SYNTH_GRID)], axis=1)


# --- CIFAR from the official archives -----------------------------------------------------

class _Folder:
    """Member files of an extracted archive folder."""

    def __init__(self, path: pathlib.Path, fix: str):
        self.path, self.fix = path, fix

    def where(self, member: str) -> str:
        """The member's path, for messages."""
        return str(self.path / member)

    def read(self, member: str) -> bytes:
        """The member's bytes."""
        try:
            return (self.path / member).read_bytes()
        except OSError as e:
            problem = "missing" if isinstance(e, FileNotFoundError) else f"cannot read ({_one_line(e)})"
            raise DataError(f"{self.where(member)}: {problem}; {self.fix}") from e


class _Tar:
    """Member files of a .tar.gz archive, read in one sequential pass (gzip cannot seek cheaply)."""

    def __init__(self, path: pathlib.Path, fix: str):
        self.path, self.fix = path, fix
        try:
            with tarfile.open(path, "r:*") as tar:
                self.members = {pathlib.PurePosixPath(m.name).name: tar.extractfile(m).read()
                                for m in tar if m.isfile()}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a readable .tar.gz ({_one_line(e)}); {fix}") from e

    def where(self, member: str) -> str:
        """The member's place inside the archive, for messages."""
        return f"{self.path}:{member}"

    def read(self, member: str) -> bytes:
        """The member's bytes."""
        if member not in self.members:
            raise DataError(f"{self.path}: has no member {member}; {self.fix}")
        return self.members[member]


def _read_cifar(name: str, root: pathlib.Path, download: bool) -> Dataset:
    """Reads a CIFAR variant from the first copy found under root, downloading one if allowed."""
    source = _CIFAR[name]
    found = _find_copy(source, root)
    if found is None:
        if not download:
            raise DataError(_missing(name, source, root, "download=False"))
        try:
            path = _download(source, root)
        except (OSError, http.client.HTTPException) as e:
            raise DataError(_missing(name, source, root, f"download failed: {_one_line(e)}")) from e
        found = source.python, _Tar(path, source.fix)
    layout, files = found
    _log.info("reading %s from %s", name, files.path)
    return _read_copy(name, source, layout, files)


def _find_copy(source: _Cifar, root: pathlib.Path) -> tuple[_Layout, _Folder | _Tar] | None:
    """The first copy under root: python layout (folder, root itself, .tar.gz), then binary."""
    for layout in (source.python, source.binary):
        if (root / layout.folder).is_dir():
            return layout, _Folder(root / layout.folder, source.fix)
        if (root / layout.test).is_file():
            return layout, _Folder(root, source.fix)
        if (root / layout.tar).is_file():
            return layout, _Tar(root / layout.tar, source.fix)
    return None


def _missing(name: str, source: _Cifar, root: pathlib.Path, why: str) -> str:
    """One-line message for a dataset found nowhere: where we looked and what to download."""
    looked = ", ".join(f"{layout.folder}/ or {layout.tar}" for layout in (source.python, source.binary))
    return (f"{name}: no copy in {root} (looked for {looked}) and {why}; download {source.url} "
            f"({source.size} bytes, sha256 {source.sha256}) and put it in {root}, "
            f"or point --data_dir (or ${_ENV_VAR}) at a folder holding a copy")


def _download(source: _Cifar, root: pathlib.Path) -> pathlib.Path:
    """Fetches the official python-layout archive into root, checked against its pinned size and sha256."""
    dest = root / source.python.tar
    digest = hashlib.sha256()
    with urllib.request.urlopen(source.url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        with files.atomic_file(dest) as out:  # the folder is made once the server has answered
            size = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            if size != source.size or digest.hexdigest() != source.sha256:
                raise DataError(f"{source.url}: downloaded {size} bytes with sha256 "
                                f"{digest.hexdigest()}, expected {source.size} bytes with sha256 "
                                f"{source.sha256}; the file was removed: try again, or download it "
                                f"by hand and put it in {root}")
    _log.info("downloaded %s to %s", source.url, dest)
    return dest


def _read_copy(name: str, source: _Cifar, layout: _Layout, files: _Folder | _Tar) -> Dataset:
    """Reads and checks one placed copy of a CIFAR variant."""
    read_batch = _python_batch if layout.kind == "python" else _binary_batch
    train = [read_batch(files, member, source) for member in layout.train]
    x_test, y_test = read_batch(files, layout.test, source)
    ds = Dataset(name, np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                 x_test, y_test, _class_names(files, layout, source))
    _check(ds, str(files.path), source.fix, source)
    return ds


def _python_batch(files: _Folder | _Tar, member: str, source: _Cifar) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one pickled batch (dict with data uint8 [N, 3072] and labels)."""
    where = files.where(member)
    batch = _unpickle(files, member, source)
    for key in ("data", source.label_key):
        if key not in batch:
            raise DataError(f"{where}: no key {key!r}; {source.fix}")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
        raise DataError(f"{where}: data is {data.dtype} {list(data.shape)}, expected uint8 "
                        f"[N, {_CIFAR_ROW}]; {source.fix}")
    labels = np.asarray(batch[source.label_key])
    if labels.shape != (len(data),) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{where}: {source.label_key} is {labels.dtype} {list(labels.shape)}, expected "
                        f"{len(data)} integers; {source.fix}")
    _check_labels(labels, source.num_classes, where, source.fix)
    return _to_nhwc(data), labels.astype(np.int32)


def _binary_batch(files: _Folder | _Tar, member: str, source: _Cifar) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one binary batch: records of label byte(s) then 3072 pixel bytes."""
    where = files.where(member)
    raw = np.frombuffer(files.read(member), np.uint8)
    record = source.label_bytes + _CIFAR_ROW
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{where}: {raw.size} bytes is not a whole number of {record}-byte "
                        f"records; {source.fix}")
    rows = raw.reshape(-1, record)
    labels = rows[:, source.label_bytes - 1]
    _check_labels(labels, source.num_classes, where, source.fix)
    return _to_nhwc(rows[:, source.label_bytes:]), labels.astype(np.int32)


def _class_names(files: _Folder | _Tar, layout: _Layout, source: _Cifar) -> tuple[str, ...]:
    """Class names from the meta member (pickled dict, or one name per line for binary)."""
    where = files.where(layout.names)
    if layout.kind == "python":
        names = _unpickle(files, layout.names, source).get(source.names_key, [])
    else:
        names = files.read(layout.names).decode("utf-8", "replace").split()
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(names) != source.num_classes:
        raise DataError(f"{where}: holds {len(names)} class names, expected {source.num_classes}; "
                        f"{source.fix}")
    return names


def _unpickle(files: _Folder | _Tar, member: str, source: _Cifar) -> dict:
    """A pickled dict member (python 2 pickles included), with bytes keys decoded to str."""
    where = files.where(member)
    try:
        obj = pickle.loads(files.read(member), encoding="bytes")
    except DataError:
        raise
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise DataError(f"{where}: not a readable pickle ({_one_line(e)}); {source.fix}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{where}: holds a {type(obj).__name__}, expected a dict; {source.fix}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _to_nhwc(rows: np.ndarray) -> np.ndarray:
    """[N, 3072] channel-major rows to contiguous uint8 [N, 32, 32, 3]."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _check_labels(labels: np.ndarray, num_classes: int, where: str, fix: str) -> None:
    """Labels must lie in [0, num_classes)."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels span {labels.min()}..{labels.max()}, expected "
                        f"0..{num_classes - 1}; {fix}")


# --- checks and the .npz cache --------------------------------------------------------------

def _check(ds: Dataset, where: str, fix: str, source: _Cifar | None = None) -> None:
    """Checks a dataset's structure; with a CIFAR source, also its counts, image shape and classes."""
    def fail(problem: str) -> DataError:
        return DataError(f"{where}: {problem}; {fix}")

    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        if x.dtype != np.uint8 or x.ndim != 4:
            raise fail(f"{split} images are {x.dtype} {list(x.shape)}, expected uint8 [N, H, W, C]")
        if y.dtype != np.int32 or y.shape != (len(x),):
            raise fail(f"{split} labels are {y.dtype} {list(y.shape)}, expected int32 [{len(x)}]")
        _check_labels(y, ds.num_classes, where, fix)
    if ds.x_test.shape[1:] != ds.x_train.shape[1:]:
        raise fail(f"test images are {list(ds.x_test.shape[1:])} but train images are "
                   f"{list(ds.x_train.shape[1:])}")
    if source is None:
        return
    if (len(ds.x_train), len(ds.x_test)) != (source.n_train, source.n_test):
        raise fail(f"holds {len(ds.x_train)} train / {len(ds.x_test)} test images, expected "
                   f"{source.n_train} / {source.n_test}")
    if ds.image_shape != (32, 32, 3) or ds.num_classes != source.num_classes:
        raise fail(f"holds {list(ds.image_shape)} images of {ds.num_classes} classes, expected "
                   f"[32, 32, 3] of {source.num_classes}")


def _read_npz(path: pathlib.Path, name: str) -> Dataset:
    """Reads and checks a cached dataset."""
    fix = "delete it to rebuild the cache"
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: has no {', '.join(missing)}; {fix}")
            ds = Dataset(name, z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                         tuple(str(c) for c in z["classes"]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz cache ({_one_line(e)}); {fix}") from e
    _check(ds, str(path), fix, _CIFAR.get(name))
    return ds


def _write_npz(path: pathlib.Path, ds: Dataset) -> None:
    """Caches a dataset atomically (temp file, then rename); a failure only costs speed later."""
    try:
        with files.atomic_file(path) as f:
            np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                     y_test=ds.y_test, classes=np.array(ds.classes, dtype=str))
    except OSError as e:
        _log.warning("could not write the cache %s (%s); the next load reads the source again",
                     path, _one_line(e))
        return
    _log.info("cached %s as %s", ds.name, path)


# --- other image sets through tensorflow_datasets -----------------------------------------------

def _read_tfds(name: str, root: pathlib.Path) -> Dataset:
    """Train and test splits of a tfds catalogue dataset as numpy (tfds imported only here)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(_no_tfds(name)) from None
    try:
        (train, test), info = tfds.load(name, split=["train", "test"], batch_size=-1,
                                        as_supervised=True, with_info=True, data_dir=str(root))
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown dataset {name!r}: the native ones are {', '.join(DATASETS)}; "
                        f"any other name must be a tfds catalogue name "
                        f"(https://www.tensorflow.org/datasets/catalog)") from None
    except Exception as e:  # tfds reports download and preparation failures in many types
        raise DataError(f"dataset {name!r}: tfds could not load its train and test splits into "
                        f"{root} ({_one_line(e)}); prepare it there with tfds, or pick another "
                        f"--data_dir") from e
    (x_train, y_train), (x_test, y_test) = tfds.as_numpy(train), tfds.as_numpy(test)
    label = info.features[info.supervised_keys[1]]
    ds = Dataset(name, np.asarray(x_train), np.asarray(y_train, np.int32),
                 np.asarray(x_test), np.asarray(y_test, np.int32),
                 tuple(str(n) for n in label.names))
    _check(ds, f"tfds {name!r} in {root}", "check that it is an image classification set")
    return ds


def _one_line(error: BaseException) -> str:
    """An exception's text on one line, for one-line messages."""
    return " ".join(str(error).split()) or type(error).__name__
