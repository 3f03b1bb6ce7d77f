"""Tests for cifar_jax.data: datasets (readers, cache, download, synthetic) and splits."""
import dataclasses
import hashlib
import pathlib
import pickle
import shutil
import sys
import tarfile
import time
import types

import numpy as np
import pytest

from cifar_jax.data import datasets, splits

N_TRAIN, N_TEST = 50, 10  # small official-layout copies: five python batches of 10 for CIFAR-10
SHARED_COPY = pathlib.Path("~/.cache/cifar10-shared/cifar-10-batches-py").expanduser()


# --- fake official archives -------------------------------------------------------------------

@pytest.fixture
def small_counts(monkeypatch):
    """Makes the validators expect N_TRAIN / N_TEST images instead of 50000 / 10000."""
    for name, spec in datasets._CIFAR.items():
        monkeypatch.setitem(datasets._CIFAR, name,
                            dataclasses.replace(spec, n_train=N_TRAIN, n_test=N_TEST))


def fake_images(name: str, seed: int = 0) -> dict:
    """Random NHWC images, labels and class names shaped like a small CIFAR copy."""
    rng = np.random.default_rng(seed)
    k = datasets._CIFAR[name].num_classes
    return dict(x_train=rng.integers(0, 256, (N_TRAIN, 32, 32, 3), dtype=np.uint8),
                y_train=rng.integers(0, k, N_TRAIN).astype(np.int32),
                x_test=rng.integers(0, 256, (N_TEST, 32, 32, 3), dtype=np.uint8),
                y_test=rng.integers(0, k, N_TEST).astype(np.int32),
                classes=tuple(f"name{i}" for i in range(k)))


def rows(x: np.ndarray) -> np.ndarray:
    """NHWC images to the official channel-major [N, 3072] rows."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))


def dump(path: pathlib.Path, obj) -> None:
    """Pickles obj to path, with bytes keys like the official (python 2) files."""
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_python(folder: pathlib.Path, name: str, imgs: dict) -> pathlib.Path:
    """Writes imgs in the official python layout (pickled dicts) into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    layout, spec = datasets._CIFAR[name].python, datasets._CIFAR[name]
    key = spec.label_key.encode()
    parts = np.array_split(np.arange(N_TRAIN), len(layout.train))
    for member, part in zip(layout.train, parts):
        dump(folder / member, {b"data": rows(imgs["x_train"][part]),
                               key: imgs["y_train"][part].tolist()})
    dump(folder / layout.test, {b"data": rows(imgs["x_test"]), key: imgs["y_test"].tolist()})
    dump(folder / layout.names, {spec.names_key.encode(): [c.encode() for c in imgs["classes"]]})
    return folder


def write_binary(folder: pathlib.Path, name: str, imgs: dict) -> pathlib.Path:
    """Writes imgs in the official binary layout (label byte(s) + 3072 pixel bytes) into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    layout, spec = datasets._CIFAR[name].binary, datasets._CIFAR[name]

    def records(x, y):
        labels = np.repeat(y[:, None], spec.label_bytes, axis=1).astype(np.uint8)  # coarse = fine
        return np.concatenate([labels, rows(x)], axis=1).tobytes()

    parts = np.array_split(np.arange(N_TRAIN), len(layout.train))
    for member, part in zip(layout.train, parts):
        (folder / member).write_bytes(records(imgs["x_train"][part], imgs["y_train"][part]))
    (folder / layout.test).write_bytes(records(imgs["x_test"], imgs["y_test"]))
    (folder / layout.names).write_text("\n".join(imgs["classes"]) + "\n\n")
    return folder


def tar_folder(folder: pathlib.Path, tar_path: pathlib.Path) -> pathlib.Path:
    """Packs folder as tar_path (a .tar.gz holding folder/...), like the official archives."""
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return tar_path


def place(root: pathlib.Path, name: str, layout: str, imgs: dict) -> None:
    """Puts a fake copy under root in one of the accepted layouts."""
    spec = datasets._CIFAR[name]
    kind, form = layout.split("-")
    write, lay = (write_python, spec.python) if kind == "python" else (write_binary, spec.binary)
    if form == "root":
        write(root, name, imgs)
    elif form == "dir":
        write(root / lay.folder, name, imgs)
    else:
        staging = root.parent / f"{root.name}-staging"
        tar_folder(write(staging / lay.folder, name, imgs), root / lay.tar)


def assert_same(ds: datasets.Dataset, imgs: dict) -> None:
    """The loaded dataset equals the images it was written from, exactly."""
    for key in ("x_train", "y_train", "x_test", "y_test"):
        got = getattr(ds, key)
        assert got.dtype == imgs[key].dtype and np.array_equal(got, imgs[key]), key
    assert ds.classes == imgs["classes"]


LAYOUTS = ["python-dir", "python-tar", "binary-dir", "binary-tar", "python-root", "binary-root"]


# --- readers and cache -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_every_layout_exactly_and_caches(tmp_path, small_counts, name, layout):
    root = tmp_path / "data"
    root.mkdir()
    imgs = fake_images(name)
    place(root, name, layout, imgs)
    ds = datasets.load(name, str(root), download=False)
    assert ds.name == name and ds.image_shape == (32, 32, 3)
    assert ds.num_classes == datasets._CIFAR[name].num_classes
    assert_same(ds, imgs)
    assert (root / f"{name}.npz").is_file()
    assert not [p for p in root.iterdir() if ".tmp" in p.name]
    for path in root.iterdir():  # the cache alone must now be enough
        if path.is_dir():
            shutil.rmtree(path)
        elif path.suffix != ".npz":
            path.unlink()
    assert_same(datasets.load(name, str(root), download=False), imgs)


def test_python_layout_wins_over_binary(tmp_path, small_counts):
    place(tmp_path, "cifar10", "binary-dir", fake_images("cifar10", seed=1))
    imgs = fake_images("cifar10", seed=2)
    place(tmp_path, "cifar10", "python-tar", imgs)
    assert_same(datasets.load("cifar10", str(tmp_path), download=False), imgs)


def corrupt_shape(folder: pathlib.Path) -> str:
    """Gives data_batch_3 rows of the wrong width."""
    dump(folder / "data_batch_3", {b"data": np.zeros((10, 3000), np.uint8), b"labels": [0] * 10})
    return "data_batch_3"


def corrupt_label(folder: pathlib.Path) -> str:
    """Puts label 10 in a 10-class test batch."""
    dump(folder / "test_batch", {b"data": np.zeros((N_TEST, 3072), np.uint8),
                                 b"labels": [10] * N_TEST})
    return "test_batch"


def corrupt_pickle(folder: pathlib.Path) -> str:
    """Truncates data_batch_1."""
    (folder / "data_batch_1").write_bytes(b"\x80\x02}q")
    return "data_batch_1"


def corrupt_count(folder: pathlib.Path) -> str:
    """Drops half of the last training batch."""
    dump(folder / "data_batch_5", {b"data": np.zeros((5, 3072), np.uint8), b"labels": [0] * 5})
    return "cifar-10-batches-py"


def corrupt_missing(folder: pathlib.Path) -> str:
    """Removes the meta file."""
    (folder / "batches.meta").unlink()
    return "batches.meta"


@pytest.mark.parametrize("corrupt", [corrupt_shape, corrupt_label, corrupt_pickle, corrupt_count,
                                     corrupt_missing])
def test_broken_python_copy_names_the_file(tmp_path, small_counts, corrupt):
    folder = write_python(tmp_path / "cifar-10-batches-py", "cifar10", fake_images("cifar10"))
    culprit = corrupt(folder)
    with pytest.raises(datasets.DataError, match=culprit) as err:
        datasets.load("cifar10", str(tmp_path), download=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cifar10.npz").exists()


def test_broken_binary_copy_names_the_file(tmp_path, small_counts):
    folder = write_binary(tmp_path / "cifar-100-binary", "cifar100", fake_images("cifar100"))
    (folder / "test.bin").write_bytes((folder / "test.bin").read_bytes()[:-5])
    with pytest.raises(datasets.DataError, match=r"test\.bin.*records"):
        datasets.load("cifar100", str(tmp_path), download=False)


def test_broken_tar_and_npz_name_the_file(tmp_path, small_counts):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(datasets.DataError, match=r"cifar-10-python\.tar\.gz"):
        datasets.load("cifar10", str(tmp_path), download=False)
    (tmp_path / "cifar100.npz").write_bytes(b"not an npz")
    with pytest.raises(datasets.DataError, match=r"cifar100\.npz.*delete it"):
        datasets.load("cifar100", str(tmp_path), download=False)


def test_npz_cache_is_validated(tmp_path, small_counts):
    imgs = fake_images("cifar10")
    np.savez(tmp_path / "cifar10.npz", **{**imgs, "y_train": imgs["y_train"] + 10,
                                          "classes": np.array(imgs["classes"])})
    with pytest.raises(datasets.DataError, match=r"cifar10\.npz.*labels span"):
        datasets.load("cifar10", str(tmp_path), download=False)


# --- missing data and download ---------------------------------------------------------------

def test_missing_without_download_says_what_to_fetch(tmp_path):
    with pytest.raises(datasets.DataError) as err:
        datasets.load("cifar10", str(tmp_path / "empty"), download=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "empty") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def test_missing_with_failed_download_fails_fast(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/cifar-100-python.tar.gz"  # nothing listens there: no network used
    monkeypatch.setitem(datasets._CIFAR, "cifar100", dataclasses.replace(datasets._CIFAR["cifar100"], url=url))
    start = time.monotonic()
    with pytest.raises(datasets.DataError) as err:
        datasets.load("cifar100", str(tmp_path))
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and url in message
    assert "download failed" in message
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def pin_archive(monkeypatch, tar_path: pathlib.Path, *, sha256: str | None = None) -> None:
    """Points the CIFAR-10 download at a local file, pinned to its size and (given) sha256."""
    blob = tar_path.read_bytes()
    spec = dataclasses.replace(datasets._CIFAR["cifar10"], url=tar_path.as_uri(), size=len(blob),
                               sha256=sha256 or hashlib.sha256(blob).hexdigest())
    monkeypatch.setitem(datasets._CIFAR, "cifar10", spec)


def test_download_checks_pins_and_places_archive(tmp_path, small_counts, monkeypatch):
    imgs = fake_images("cifar10")
    src = tar_folder(write_python(tmp_path / "src" / "cifar-10-batches-py", "cifar10", imgs),
                     tmp_path / "src.tar.gz")
    pin_archive(monkeypatch, src)
    root = tmp_path / "data"
    assert_same(datasets.load("cifar10", str(root)), imgs)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz", "cifar10.npz"]


def test_download_with_wrong_checksum_is_removed(tmp_path, small_counts, monkeypatch):
    src = tar_folder(write_python(tmp_path / "src" / "cifar-10-batches-py", "cifar10",
                                  fake_images("cifar10")), tmp_path / "src.tar.gz")
    pin_archive(monkeypatch, src, sha256="0" * 64)
    root = tmp_path / "data"
    with pytest.raises(datasets.DataError, match="sha256") as err:
        datasets.load("cifar10", str(root))
    assert "\n" not in str(err.value)
    assert list(root.iterdir()) == []


# --- data directory ---------------------------------------------------------------------------

def test_data_dir_flag_then_env_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR_JAX_DATA_DIR", raising=False)
    assert datasets.resolve_data_dir(None) == pathlib.Path("~/.cache/cifar_jax").expanduser()
    monkeypatch.setenv("CIFAR_JAX_DATA_DIR", str(tmp_path))
    assert datasets.resolve_data_dir(None) == tmp_path
    assert datasets.resolve_data_dir("~/elsewhere") == pathlib.Path("~/elsewhere").expanduser()


def test_env_var_is_where_load_looks(tmp_path, small_counts, monkeypatch):
    imgs = fake_images("cifar10")
    place(tmp_path, "cifar10", "python-dir", imgs)
    monkeypatch.setenv("CIFAR_JAX_DATA_DIR", str(tmp_path))
    assert_same(datasets.load("cifar10", download=False), imgs)


# --- tfds names --------------------------------------------------------------------------------

def test_tfds_name_without_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    message = r"unknown dataset 'mnist': not cifar10/cifar100/synthetic, and tfds .*pip install -e \.\[tfds\]"
    with pytest.raises(datasets.DataError, match=message):
        datasets.load("mnist", str(tmp_path))
    with pytest.raises(datasets.DataError, match=message):  # the same, before anything is loaded
        datasets.check_name("mnist", str(tmp_path))
    datasets.check_name("cifar10", str(tmp_path))


def fake_tfds(known: dict) -> types.ModuleType:
    """A stand-in for tensorflow_datasets serving in-memory splits of the `known` datasets."""
    class DatasetNotFoundError(ValueError):
        pass

    def load(name, split, batch_size, as_supervised, with_info, data_dir):
        assert batch_size == -1 and as_supervised and with_info and split == ["train", "test"]
        if name not in known:
            raise DatasetNotFoundError(name)
        (xtr, ytr), (xte, yte), names = known[name]
        info = types.SimpleNamespace(supervised_keys=("image", "label"),
                                     features={"label": types.SimpleNamespace(names=names)})
        return ((xtr, ytr), (xte, yte)), info

    module = types.ModuleType("tensorflow_datasets")
    module.load, module.as_numpy = load, lambda tree: tree
    module.core = types.SimpleNamespace(
        registered=types.SimpleNamespace(DatasetNotFoundError=DatasetNotFoundError))
    return module


def test_tfds_names_load_grayscale_and_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    xtr, xte = (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8) for n in (30, 8))
    ytr, yte = rng.integers(0, 10, 30), rng.integers(0, 10, 8)  # int64, as tfds gives
    names = [str(i) for i in range(10)]
    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        fake_tfds({"mnist": ((xtr, ytr), (xte, yte), names)}))
    ds = datasets.load("mnist", str(tmp_path))
    assert ds.image_shape == (28, 28, 1) and ds.y_train.dtype == np.int32
    assert np.array_equal(ds.x_test, xte) and np.array_equal(ds.y_train, ytr)
    with pytest.raises(datasets.DataError, match=r"unknown dataset 'nope'.*cifar10, cifar100, synthetic"):
        datasets.load("nope", str(tmp_path))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # the cache needs no tfds
    assert np.array_equal(datasets.load("mnist", str(tmp_path)).x_train, xtr)


# --- synthetic ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth():
    return datasets.synthetic()


def test_synthetic_shapes_and_determinism(synth):
    assert synth.x_train.shape == (5000, 32, 32, 3) and synth.x_train.dtype == np.uint8
    assert synth.x_test.shape == (1000, 32, 32, 3) and synth.y_test.dtype == np.int32
    assert synth.classes == tuple(f"class{i}" for i in range(10))
    assert np.bincount(synth.y_train).tolist() == [500] * 10
    small = datasets.synthetic(40, 20, num_classes=4, image_shape=(28, 28, 1), seed=3)
    again = datasets.synthetic(40, 20, num_classes=4, image_shape=(28, 28, 1), seed=3)
    other = datasets.synthetic(40, 20, num_classes=4, image_shape=(28, 28, 1), seed=4)
    assert small.image_shape == (28, 28, 1) and small.num_classes == 4
    assert np.array_equal(small.x_train, again.x_train) and np.array_equal(small.y_test, again.y_test)
    assert not np.array_equal(small.x_train, other.x_train)
    assert datasets.load("synthetic").x_train.shape == synth.x_train.shape


def test_synthetic_is_learnable_but_not_trivial(synth):
    def flat(x):
        return x.reshape(len(x), -1) / 255.0

    xtr, xte = flat(synth.x_train), flat(synth.x_test)
    means = np.stack([xtr[synth.y_train == c].mean(0) for c in range(synth.num_classes)])
    dist = (xte ** 2).sum(1)[:, None] - 2 * xte @ means.T + (means ** 2).sum(1)
    accuracy = (dist.argmin(1) == synth.y_test).mean()
    assert 0.6 < accuracy < 0.95  # nearest class mean: well above chance (0.1), far from perfect


# --- splits ------------------------------------------------------------------------------------

def test_make_split_sizes_disjoint_deterministic():
    train, val = splits.make_split(50_000, 45_000, 5_000, seed=1)
    assert (len(train), len(val)) == (45_000, 5_000)
    assert train.dtype == val.dtype == np.int32
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert not np.intersect1d(train, val).size
    again, _ = splits.make_split(50_000, 45_000, 5_000, seed=1)
    other, _ = splits.make_split(50_000, 45_000, 5_000, seed=2)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    train, val = splits.make_split(100, 60, 0)
    assert len(train) == 60 and len(val) == 0


def test_swapped_split_exchanges_the_sets():
    a_train, a_val = splits.make_split(50_000, 25_000, 20_000, seed=0)
    b_train, b_val = splits.make_split(50_000, 25_000, 20_000, seed=0, swap=True)
    assert (len(b_train), len(b_val)) == (20_000, 25_000)
    assert np.array_equal(b_train, a_val) and np.array_equal(b_val, a_train)
    assert not np.intersect1d(b_train, b_val).size


@pytest.mark.parametrize("args, message", [
    ((50_000, 45_000, 10_000), "split 45000/10000 needs 55000 images but the training set has 50000"),
    ((50_000, 0, 100), "train size must be >= 1"),
    ((50_000, 100, -1), "validation size >= 0"),
])
def test_make_split_rejects_bad_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        splits.make_split(*args)


def test_swapped_split_needs_a_validation_set():
    with pytest.raises(ValueError, match="swap"):
        splits.make_split(100, 50, 0, swap=True)


def test_parse_split():
    assert splits.parse_split("45000/5000") == (45_000, 5_000, False)
    assert splits.parse_split("25000/25000:swap") == (25_000, 25_000, True)
    assert splits.parse_split(" 100/0 ") == (100, 0, False)
    for bad in ("", "45000", "45000/", "a/b", "45000/5000:swapped", "-1/5", "45000-5000"):
        with pytest.raises(ValueError, match="not of the form TRAIN/VAL"):
            splits.parse_split(bad)


# --- normalisation statistics ------------------------------------------------------------------

@pytest.fixture(scope="module")
def skewed():
    """Images whose validation rows are wildly different from the training rows."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, (3000, 8, 8, 3), dtype=np.uint8)
    train, val = splits.make_split(len(x), 2000, 1000, seed=0)
    x[val] = 255
    return x, train


@pytest.mark.parametrize("mode, axes", [("per_channel", (0, 1, 2)), ("per_dim", (0,))])
def test_norm_stats_use_the_train_split_only(skewed, mode, axes, monkeypatch):
    x, train = skewed
    monkeypatch.setattr(splits, "_CHUNK", 300)  # several chunks, the last one partial
    mean, std = splits.norm_stats(x, train, mode)
    ref = x[train] / 255.0
    assert mean.dtype == std.dtype == np.float32
    assert mean.shape == std.shape == ref.mean(axis=axes).shape
    np.testing.assert_allclose(mean, ref.mean(axis=axes), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=axes), rtol=1e-5)
    assert mean.max() < 0.5  # the all-255 validation rows would pull it up


def test_norm_stats_other_modes(skewed):
    x, train = skewed
    mean, std = splits.norm_stats(x, train, "mean_image")
    assert mean.shape == (8, 8, 3) and np.all(std == 1)
    np.testing.assert_allclose(mean, (x[train] / 255.0).mean(0), rtol=1e-6)
    raw_mean, raw_std = splits.norm_stats(x, train, "mean_image_raw")
    np.testing.assert_allclose(raw_mean, mean, rtol=1e-6)
    np.testing.assert_allclose((x[train[:1]] / 255.0 - raw_mean) / raw_std, x[train[:1]] - 255 * mean, rtol=1e-4, atol=1e-3)
    mean, std = splits.norm_stats(x, train, "none")
    assert mean.shape == std.shape == (3,) and np.all(mean == 0) and np.all(std == 1)
    with pytest.raises(ValueError, match="--normalization.*per_channel, per_dim, mean_image, mean_image_raw, none, zca"):
        splits.norm_stats(x, train, "pca")


def test_norm_stats_guard_constant_dimensions():
    x = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    x[:, 0, 0, :] = 77
    x[:, :, :, 2] = 200
    mean, std = splits.norm_stats(x, np.arange(50), "per_dim")
    assert np.all(std[0, 0] == 1) and np.all(std[..., 2] == 1) and np.all(std[1:, 1:, :2] < 1)
    np.testing.assert_allclose(mean[0, 0, 0], 77 / 255, rtol=1e-6)
    _, std = splits.norm_stats(x, np.arange(50), "per_channel")
    assert std[2] == 1 and np.all(std[:2] < 1)


# --- the real shared copy ----------------------------------------------------------------------

@pytest.mark.slow
def test_shared_cifar10_copy(tmp_path):
    if not (SHARED_COPY / "test_batch").is_file():
        pytest.skip(f"no CIFAR-10 copy at {SHARED_COPY}; build it with "
                    f"python ../shared/data/build_cifar10.py --out ~/.cache/cifar10-shared")
    (tmp_path / SHARED_COPY.name).symlink_to(SHARED_COPY)  # read it, but cache in tmp_path
    ds = datasets.load("cifar10", str(tmp_path), download=False)
    assert ds.x_train.shape == (50_000, 32, 32, 3) and ds.x_test.shape == (10_000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert np.bincount(ds.y_train).tolist() == [5000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.classes[:2] == ("airplane", "automobile")
    assert ds.x_train.flags.c_contiguous and 0 < ds.x_train.mean() < 255
