"""Shared test fixtures: tests run on CPU, offline, on synthetic data or the shared CIFAR copy."""
import os
import pathlib

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED_CIFAR = pathlib.Path(os.environ.get("CIFAR_JAX_SHARED", "~/.cache/cifar10-shared")).expanduser()


@pytest.fixture
def shared_cifar() -> pathlib.Path:
    """The shared CIFAR-10 copy (built by .ci/run from ../shared); skip when absent."""
    if not (SHARED_CIFAR / "cifar-10-batches-py").is_dir():
        pytest.skip(f"no shared CIFAR-10 copy at {SHARED_CIFAR} (build it with ../shared/data/build_cifar10.py)")
    return SHARED_CIFAR


@pytest.fixture
def parse():
    """Parse a command line into a Config (one seed unless given): parse("--model=mlp", ...)."""
    from cifar_jax import config

    return lambda *args: config.parse("--seeds=1", *args)


@pytest.fixture(scope="module")
def noise_data():
    """Uniform-noise 8x8 images: no exact max-pool ties (where a rounding difference between
    batched and single kernels could flip the selected element), and cheap conv steps."""
    import numpy as np

    from cifar_jax import splits, train

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (400, 8, 8, 3), np.uint8), rng.integers(0, 10, 400)
    tr, va = splits.make_split(400, 320, 80, seed=0)
    mean, std = splits.norm_stats(x, tr, "per_channel")
    return train.put_data(x, y, x[:100], y[:100], tr, va, mean, std)
