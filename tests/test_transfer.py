"""The transfer study end to end: checkpoints with their provenance in the study's folder, strict
restore, frozen convs, comparison, resume; another study's checkpoint refused, a damaged one one
line, --repair pretraining it again."""
import json
import os
from pathlib import Path
import shutil

from conftest import Finished, run_experiment  # noqa: E402
import pytest

from cifar_jax.io import checkpoint

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--dataset=synthetic", "--split=256/256", "--epochs=1", "--seeds=1", "--batch_size=64", "--lr=0.05",
        "--transfer_dropout=0.5"]
BASELINE = "BaselineNet,seed=0"
DROPOUT = "DropoutNet_p=0.5,seed=0-b1c48a5c"  # its checkpoint's folder


def run(*args: str) -> Finished:
    return run_experiment("transfer", *args)


def study(results: Path, *more: str) -> Finished:
    """The tiny transfer study into `results`."""
    return run(*ARGS, f"--results_dir={results}", *more)


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> tuple[Path, Finished]:
    """One finished study, checkpoints in their default place; tests copy it before changing it."""
    results = tmp_path_factory.mktemp("transfer") / "results"
    return results, study(results)


def test_transfer_pretrains_checkpoints_restores_and_retrains(done):
    results, out = done
    assert out.returncode == 0, out.stderr
    root = results / "transfer"
    ckpts = sorted((root / "checkpoints").iterdir())
    assert len(ckpts) == 2
    meta = json.loads((ckpts[0] / "metadata.json").read_text())
    assert {"metrics", "config", "manifest", "files"} <= set(meta) and meta["metrics"]["status"] == "done"
    assert (meta["study"], meta["run_id"]) == (str(root), BASELINE) and meta["code"]["git"]["commit"]
    assert out.stdout.count("(strict); frozen conv1, conv2, conv3; fc1, fc2 re-initialised from seed 100") == 2
    retrained = [json.loads(p.read_text()) for p in (root / "retrain" / "runs").glob("*.json")]
    assert len(retrained) == 2 and all(r["config"]["frozen"] == ["conv1", "conv2", "conv3"] for r in retrained)
    assert all(r["config"]["split"] == [256, 256, True] for r in retrained)
    assert (root / "figures" / "transfer_val_comparison.png").exists()
    assert "BaselineNet retrained" in (root / "transfer_comparison.md").read_text()
    again = study(results)
    assert again.returncode == 0 and again.stdout.count("already finished") == 2 and "epoch 1/1" not in again.stdout


def test_a_checkpoint_of_another_study_is_refused_naming_the_study(done, tmp_path):
    """The reproduced bug: studies of the same name share --checkpoint_dir/<name>; this one finds
    the other's checkpoints (same architecture, same shapes) and must not train on them."""
    results, _ = done
    shutil.copytree(results / "transfer" / "checkpoints", tmp_path / "shared" / "transfer")
    mine = tmp_path / "results"
    shutil.copytree(results, mine)
    out = study(mine, f"--checkpoint_dir={tmp_path / 'shared'}")
    ckpt = tmp_path / "shared" / "transfer" / BASELINE
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr == (f"error: checkpoint {ckpt} is of another run: study is '{results / 'transfer'}' in the "
                          f"checkpoint, '{mine / 'transfer'}' expected (pass --repair to pretrain {BASELINE} again)\n")
    assert "epoch 1/1" not in out.stdout


@pytest.mark.slow  # three invocations, two of them training: ~50 s on 2 CPU cores
def test_a_damaged_checkpoint_stops_the_study_in_one_line_and_repair_pretrains_it_again(tmp_path):
    results = tmp_path / "results"
    assert study(results).returncode == 0
    ckpt = results / "transfer" / "checkpoints" / BASELINE
    data = max((f for f in (ckpt / "arrays").rglob("d/*") if f.is_file()), key=lambda f: f.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])
    (ckpt.parent / f".{BASELINE}.tmp-killed").mkdir()  # a save killed earlier
    os.utime(ckpt.parent / f".{BASELINE}.tmp-killed", (0, 0))
    shutil.rmtree(ckpt.parent / DROPOUT)  # a run killed after its record, before its checkpoint
    out = study(results)
    assert out.returncode == 2 and out.stderr == (
        f"error: checkpoint {ckpt} is damaged: {data} differs from its checksum in metadata.json "
        f"(pass --repair to pretrain {BASELINE} again)\n")
    assert "epoch 1/1" not in out.stdout and not (ckpt.parent / f".{BASELINE}.tmp-killed").exists()
    repaired = study(results, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert f"{BASELINE}: finished but checkpoint {ckpt} is damaged" in repaired.stdout
    assert f"finished but its checkpoint {ckpt.parent / DROPOUT} is missing: training it again" in repaired.stdout
    assert repaired.stdout.count("already finished") == 1  # both pretrained again, no retraining
    assert f"{results / 'transfer' / 'retrain'}: 2 of 2 runs already finished" in repaired.stdout
    checkpoint.verify(ckpt, {"study": results / "transfer", "run_id": BASELINE})
    assert sorted(p.name for p in ckpt.parent.iterdir()) == sorted([BASELINE, DROPOUT])


def test_transfer_refuses_a_model_without_convolutions(tmp_path):
    out = run("--dataset=synthetic", "--model=mlp", f"--results_dir={tmp_path}")
    assert out.returncode == 2 and "--model=mlp" in out.stderr and not any(tmp_path.iterdir())


@pytest.mark.parametrize("rate", ["nan", "1", "-0.5"])
def test_a_bad_dropout_rate_is_one_line(tmp_path, rate):
    out = run(*ARGS, f"--transfer_dropout={rate}", f"--results_dir={tmp_path}")
    assert out.returncode == 2 and out.stderr.splitlines() == [
        f"error: --transfer_dropout={rate}: must be in [0, 1), or -1 for the dropout study's best rate"]
    assert not (tmp_path / "transfer" / "runs").exists()
