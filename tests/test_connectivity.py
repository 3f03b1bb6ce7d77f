"""Linear mode connectivity (experiments.connectivity) end to end on synthetic data: children with
the same order seed end bit-identical with barrier 0 (and, with the parent's own order seed, equal
the parent), a path's end points are the children's own recorded metrics, and bad flags are one line."""
import json
from pathlib import Path

from conftest import Finished, run_experiment  # noqa: E402
import jax
import numpy as np
import pytest

from cifar_jax.io import checkpoint
from cifar_jax.results import studydir

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ["--dataset=synthetic", "--split=512/256", "--epochs=3", "--seeds=1", "--model=mlp", "--hidden=16",
         "--norm=batch", "--interp_points=5", "--interp_examples=128", "--spawn_epochs=0,2"]


def run(*args: str) -> Finished:
    return run_experiment("connectivity", *args)


def _variables(study: Path, run_id: str):
    path = study / "children" / "checkpoints" / studydir.run_file_stem(run_id)
    stored = checkpoint.verify(path, {"run_id": run_id})  # the tree orbax recorded: shapes and dtypes
    return checkpoint.restore(path, stored["params"], stored["batch_stats"], expected={"run_id": run_id})


def test_same_order_seed_children_are_identical_with_barrier_zero_and_ends_are_their_records(tmp_path):
    # order seed 0 is the parent's own (its run seed): the children continue exactly as the parent did
    out = run(*SYNTH, "--child_order_seeds=0,0", f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    study = tmp_path / "connectivity"
    conn = json.loads((study / "connectivity.json").read_text())
    assert [p["k"] for p in conn["pairs"]] == [0, 2] and conn["spawn_epochs"] == [0, 2]
    parent = json.loads((study / "parent" / "runs" / "default,seed=0.json").read_text())
    for p in conn["pairs"]:
        a, b = (_variables(study, c) for c in p["children"])
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        for split in ("test", "train"):
            assert p[split]["error_barrier"] == 0.0 and p[split]["loss_barrier"] == 0.0
        for end, child in zip((0, -1), p["children"]):
            rec = json.loads((study / "children" / "runs" / f"{studydir.run_file_stem(child)}.json").read_text())
            assert rec["epochs"][0]["epoch"] == p["k"] + 1 and len(rec["epochs"]) == 3 - p["k"]
            for m in ("loss", "acc", "top5"):
                assert p["test"][m][end] == pytest.approx(rec["test"][m], abs=1e-6)
                assert rec["test"][m] == pytest.approx(parent["test"][m], abs=1e-6)
    assert conn["end_point_check"] < 1e-6
    table = (study / "connectivity.md").read_text()
    assert "| 0 | 1 | 0.00 ± 0.00 |" in table and "| 2 | 1 | 0.00 ± 0.00 |" in table
    for name in ("connectivity", "connectivity_train"):
        assert (study / "figures" / f"{name}.png").stat().st_size > 10_000
    assert sorted(p.name for p in (study / "parent" / "spawn").iterdir()) == ["default,seed=0-k2.npz"]

    again = run(*SYNTH, "--child_order_seeds=0,0", f"--results_dir={tmp_path}")
    assert again.returncode == 0 and "epoch 1/3" not in again.stdout


@pytest.mark.parametrize("flag, needle", [
    ("--spawn_epochs=0,3", "--spawn_epochs=0,3: give distinct epochs in [0, --epochs=3)"),
    ("--children=1", "--children=1: must be >= 2"),
    ("--child_order_seeds=1,2,3", "give 2 seeds >= 0, one per child"),
    ("--interp_points=1", "--interp_points=1: must be >= 2"),
])
def test_bad_flags_are_one_line(tmp_path, flag, needle):
    out = run(*SYNTH, flag, f"--results_dir={tmp_path}")
    assert out.returncode == 2 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "connectivity").exists()
