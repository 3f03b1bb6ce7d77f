"""The transfer study end to end: checkpoints, strict restore, frozen convs, comparison, resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "experiments.transfer", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_transfer_pretrains_checkpoints_restores_and_retrains(tmp_path):
    args = ["--dataset=synthetic", "--split=256/256", "--epochs=1", "--seeds=1", "--batch_size=64", "--lr=0.05",
            "--transfer_dropout=0.5", f"--results_dir={tmp_path}/results", f"--checkpoint_dir={tmp_path}/ckpt"]
    out = run(*args)
    assert out.returncode == 0, out.stderr
    ckpts = sorted((tmp_path / "ckpt" / "transfer").iterdir())
    assert len(ckpts) == 2
    meta = json.loads((ckpts[0] / "metadata.json").read_text())
    assert {"metrics", "config", "manifest"} <= set(meta) and meta["metrics"]["status"] == "done"
    assert out.stdout.count("(strict); frozen conv1, conv2, conv3; fc1, fc2 re-initialised from seed 100") == 2
    root = tmp_path / "results" / "transfer"
    retrained = [json.loads(p.read_text()) for p in (root / "retrain" / "runs").glob("*.json")]
    assert len(retrained) == 2 and all(r["config"]["frozen"] == ["conv1", "conv2", "conv3"] for r in retrained)
    assert all(r["config"]["split"] == [256, 256, True] for r in retrained)
    assert (root / "figures" / "transfer_val_comparison.png").exists()
    assert "BaselineNet retrained" in (root / "transfer_comparison.md").read_text()
    again = run(*args)
    assert again.returncode == 0 and again.stdout.count("already finished") == 2 and "epoch 1/1" not in again.stdout


def test_transfer_refuses_a_model_without_convolutions(tmp_path):
    out = run("--dataset=synthetic", "--model=mlp", f"--results_dir={tmp_path}")
    assert out.returncode == 2 and "--model=mlp" in out.stderr and not any(tmp_path.iterdir())
