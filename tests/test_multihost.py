"""Many hosts: a study split over 2 localhost processes (jax.distributed) gives the results of
one process; each process writes only its own runs, and the summary is written once."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--dataset=synthetic", "--split=512/256", "--model=mlp", "--hidden=16", "--init=he",
        "--lr=0.1,0.05", "--seeds=2", "--epochs=2", "--batch_size=64"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments.lr_sweep", *ARGS, f"--results_dir={results}", *extra]


def _env() -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _metrics(study: Path) -> dict:
    out = {}
    for p in (study / "runs").glob("*.json"):
        r = json.loads(p.read_text())
        out[r["run_id"]] = [[e["train_loss"], e["val_acc"]] for e in r["epochs"]] + [[r["test"]["loss"], r["test"]["acc"]]]
    return out


def test_two_processes_equal_one(tmp_path):
    single = subprocess.run(_command(tmp_path / "one"), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    port = _free_port()
    procs = [subprocess.Popen(_command(tmp_path / "two", "--num_processes=2", f"--process_id={i}",
                                       f"--coordinator_address=127.0.0.1:{port}"),
                              env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    one, two = _metrics(tmp_path / "one" / "lr_sweep"), _metrics(tmp_path / "two" / "lr_sweep")
    assert one.keys() == two.keys() and len(one) == 4
    for k in one:
        np.testing.assert_allclose(np.asarray(two[k]), np.asarray(one[k]), rtol=1e-5, atol=1e-6)
    # Each process trained (and wrote) only its own half of the group; process 0 wrote the summary.
    headers = [[line for line in out.splitlines() if "2 runs, model mlp" in line] for out, _ in outs]
    assert [len(h) for h in headers] == [1, 1]
    assert "lr=0.1,seed=0, lr=0.1,seed=1" in headers[0][0] and "lr=0.05" not in headers[0][0]
    assert "lr=0.05,seed=0, lr=0.05,seed=1" in headers[1][0] and "lr=0.1," not in headers[1][0]
    assert "results and figures" in outs[0][0] and "results and figures" not in outs[1][0]
    assert "process 0 writes the summary" in outs[1][0]
    summary = json.loads((tmp_path / "two" / "lr_sweep" / "summary.json").read_text())
    assert summary["configs"]["lr=0.1"]["n_done"] == 2
