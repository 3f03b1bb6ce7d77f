"""Many devices: the run axis sharded over 4 forced CPU devices gives the metrics of 1 device."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
import jax, numpy as np
from cifar_jax.data import datasets, splits
from cifar_jax.nn import models
from cifar_jax.training import engine, step
n_runs, layout = int(sys.argv[1]), sys.argv[2]
ds = datasets.synthetic(n_train=600, n_test=100, image_shape=(8, 8, 3))
tr, va = splits.make_split(600, 512, 88, seed=0)
mean, std = splits.norm_stats(ds.x_train, tr, "per_channel")
d = step.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test, tr, va, mean, std)
model = models.ModelConfig(sys.argv[3], hidden=(32,) if sys.argv[3] == "mlp" else (), norm="batch", init="he", use_dropout=True)
instruments = dict(sharpness_every=4, sharpness_unit="step", sharpness_iters=4, sharpness_examples=64,
                   noise_scale=True) if len(sys.argv) > 4 else {}
spec = step.GroupSpec(model, batch_size=32, **instruments)
runs = [dict(seed=i, lr=0.02 * (1 + i % 3), dropout=0.1 * (i % 2)) for i in range(n_runs)]
out = {}
class CB:
    def on_compiled(self, s): pass
    def on_start(self, runs, u): pass
    def on_epoch(self, runs, e, m, s):
        for j, i in enumerate(runs):
            extra = [float(m.sharpness[j, 0]), float(m.noise_scale[j, 2])] if m.sharpness is not None else []
            out.setdefault(str(i), []).append([float(m.train.loss[j]), float(m.val.acc[j]), *extra])
    def on_end(self, runs, f):
        for j, i in enumerate(runs):
            out[str(i)].append([float(f.test.loss[j]), float(f.test.acc[j])])
engine.train_group(spec, step.stack_hparams(runs), d, 2, CB(), layout=layout)
print(json.dumps({"devices": len(jax.devices()), "metrics": out}))
"""


def run_group(devices: int, n_runs: int, layout: str, model: str = "mlp", instruments: bool = False) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    args = [str(n_runs), layout, model] + (["instruments"] if instruments else [])
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env,
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == devices
    return result["metrics"]


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert len(a[k]) == len(b[k])
        for row_a, row_b in zip(a[k], b[k]):  # per epoch, then the final row
            np.testing.assert_allclose(np.asarray(row_a), np.asarray(row_b), rtol=1e-5, atol=1e-5)


def test_eight_runs_on_four_devices_equal_one_device():
    _same(run_group(4, 8, "vmap_scan"), run_group(1, 8, "vmap_scan"))


def test_fewer_runs_than_devices_split_the_batch():
    """2 runs on 4 devices: a (runs 2, batch 2) mesh, data parallel within each run, BN per run."""
    _same(run_group(4, 2, "vmap_scan"), run_group(1, 2, "vmap_scan"))


def test_sequential_layout_puts_one_run_per_device():
    _same(run_group(4, 5, "seq_loop", "baseline"), run_group(1, 5, "seq_loop", "baseline"))


def test_instruments_on_four_devices_equal_one_device():
    """Sharpness before every 4th step and the noise scale, 3 runs padded to 4 devices: the values of 1 device."""
    four, one = run_group(4, 3, "vmap_scan", instruments=True), run_group(1, 3, "vmap_scan", instruments=True)
    assert all(len(epoch) == 4 for run in four.values() for epoch in run[:-1])  # loss, acc, λ_max, B_simple
    _same(four, one)
