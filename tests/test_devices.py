"""Many devices: the run axis sharded over 4 forced CPU devices gives the metrics of 1 device.

The four cases run in one subprocess with 4 forced devices (`on_four_devices`, one start-up and
one set of compiles); each is compared with the same group trained in this process, on 1 device."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name: (runs, layout, model, instruments)
    "eight_runs": (8, "vmap_scan", "mlp", False),
    "fewer_runs_than_devices": (2, "vmap_scan", "mlp", False),
    "sequential": (5, "seq_loop", "baseline", False),
    "instruments": (3, "vmap_scan", "mlp", True),
}


class _Collect:
    """Engine callbacks that keep each run's per-epoch (train loss, val acc[, λ_max, B_simple]) and final test row."""

    def __init__(self):
        self.out = {}

    def on_compiled(self, seconds):
        pass

    def on_start(self, runs, epoch):
        pass

    def on_epoch(self, runs, epoch, m, seconds):
        for j, i in enumerate(runs):
            extra = [float(m.sharpness[j, 0]), float(m.noise_scale[j, 2])] if m.sharpness is not None else []
            self.out.setdefault(str(i), []).append([float(m.train.loss[j]), float(m.val.acc[j]), *extra])

    def on_end(self, runs, final):
        for j, i in enumerate(runs):
            self.out[str(i)].append([float(final.test.loss[j]), float(final.test.acc[j])])


def group_metrics(n_runs: int, layout: str, model: str, instruments: bool) -> dict:
    """A small group trained for 2 epochs on synthetic 8x8 images, on every device this process has."""
    from cifar_jax.data import datasets, splits
    from cifar_jax.nn import models
    from cifar_jax.training import engine, step

    ds = datasets.synthetic(n_train=600, n_test=100, image_shape=(8, 8, 3))
    tr, va = splits.make_split(600, 512, 88, seed=0)
    mean, std = splits.norm_stats(ds.x_train, tr, "per_channel")
    data = step.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test, tr, va, mean, std)
    net = models.ModelConfig(model, hidden=(32,) if model == "mlp" else (), norm="batch", init="he", use_dropout=True)
    extra = dict(sharpness_every=4, sharpness_unit="step", sharpness_iters=4, sharpness_examples=64,
                 noise_scale=True) if instruments else {}
    spec = step.GroupSpec(net, batch_size=32, **extra)
    runs = [dict(seed=i, lr=0.02 * (1 + i % 3), dropout=0.1 * (i % 2)) for i in range(n_runs)]
    collect = _Collect()
    engine.train_group(spec, step.stack_hparams(runs), data, 2, collect, layout=layout)
    return collect.out


def every_case() -> dict:
    """Every case's metrics and this process's device count (run in the subprocess)."""
    import jax

    return {"devices": len(jax.devices()), "cases": {name: group_metrics(*case) for name, case in CASES.items()}}


@pytest.fixture(scope="module")
def on_four_devices() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    code = "import json, test_devices; print(json.dumps(test_devices.every_case()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    return result["cases"]


def _same_as_one_device(four: dict, case: str) -> None:
    import jax

    assert jax.device_count() == 1
    one = group_metrics(*CASES[case])
    assert four.keys() == one.keys()
    for k in one:
        assert len(four[k]) == len(one[k])
        for row_four, row_one in zip(four[k], one[k]):  # per epoch, then the final row
            np.testing.assert_allclose(np.asarray(row_four), np.asarray(row_one), rtol=1e-5, atol=1e-5)


def test_eight_runs_on_four_devices_equal_one_device(on_four_devices):
    _same_as_one_device(on_four_devices["eight_runs"], "eight_runs")


def test_fewer_runs_than_devices_split_the_batch(on_four_devices):
    """2 runs on 4 devices: a (runs 2, batch 2) mesh, data parallel within each run, BN per run."""
    _same_as_one_device(on_four_devices["fewer_runs_than_devices"], "fewer_runs_than_devices")


def test_sequential_layout_puts_one_run_per_device(on_four_devices):
    _same_as_one_device(on_four_devices["sequential"], "sequential")


def test_instruments_on_four_devices_equal_one_device(on_four_devices):
    """Sharpness before every 4th step and the noise scale, 3 runs padded to 4 devices: the values of 1 device."""
    four = on_four_devices["instruments"]
    assert all(len(epoch) == 4 for run in four.values() for epoch in run[:-1])  # loss, acc, λ_max, B_simple
    _same_as_one_device(four, "instruments")
