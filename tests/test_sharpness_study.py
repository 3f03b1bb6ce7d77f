"""The edge-of-stability study: its thresholds and edge rule on hand-made records, and the study end
to end on synthetic data (records, sharpness.md, the figure, TensorBoard and DataFrame columns)."""
import json
import math

import numpy as np
import pytest
from tests.test_experiments_seed000 import run

from cifar_jax.results import frames, tensorboard
from experiments import sharpness


def _record(optimizer: str, values: list[float], lr: float = 0.1, momentum: float = 0.9, **extra) -> dict:
    return {"run_id": "r,seed=0", "config_name": "r", "seed": 0, "status": "done",
            "config": {"optimizer": optimizer, "momentum": momentum, "epochs": len(values), "total_steps": 10 * len(values),
                       "sharpness_every": 1, **extra},
            "epochs": [{"epoch": e + 1, "lr": lr, "sharpness": v, "sharpness_min": -1.0, "train_loss": 1.0}
                       for e, v in enumerate(values)]}


def test_the_threshold_is_two_over_eta_and_with_momentum_two_one_plus_beta_over_eta():
    assert sharpness.threshold(_record("sgd", [1.0]))[0] == pytest.approx(20.0)
    assert sharpness.threshold(_record("momentum", [1.0]))[0] == pytest.approx(38.0)
    assert sharpness.threshold(_record("nesterov", [1.0], momentum=0.5))[0] == pytest.approx(30.0)
    assert math.isnan(sharpness.threshold(_record("adam", [1.0]))[0])


def test_the_edge_is_the_first_evaluation_at_ninety_percent_of_the_threshold():
    assert sharpness.edge_epoch(_record("sgd", [2.0, 10.0, 17.9, 18.0, 25.0])) == 4.0
    assert sharpness.edge_epoch(_record("sgd", [2.0, 10.0, 17.0])) is None
    step = _record("sgd", [0.0, 0.0])
    for entry, trace in zip(step["epochs"], ([5.0, 19.0, 20.0, 21.0], [22.0, 23.0, 24.0, 25.0])):
        entry["sharpness_trace"] = trace
    step["config"]["sharpness_every"] = 3  # 10 steps an epoch: evaluations before steps 0, 3, 6, 9
    x, values, limits = sharpness.sharpness_series(step)
    assert x.tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0, 1.3, 1.6, 1.9])
    assert values[:4].tolist() == [5.0, 19.0, 20.0, 21.0] and limits.tolist() == [20.0] * 8
    assert sharpness.edge_epoch(step) == pytest.approx(0.3)


def test_the_study_records_sharpness_and_writes_its_table_and_figure(tmp_path):
    args = ["--dataset=synthetic", "--split=512/128", "--batch_size=64", "--epochs=2", "--seeds=2", "--model=mlp",
            "--hidden=16", "--init=he", "--lr=0.5,0.05", "--sharpness_examples=64", "--noise_scale", "--tensorboard",
            f"--results_dir={tmp_path}"]
    done = run("sharpness", *args)
    assert done.returncode == 0, done.stderr
    study = tmp_path / "sharpness"
    records = [json.loads(p.read_text()) for p in sorted((study / "runs").glob("*.json"))]
    assert len(records) == 4
    for rec in records:
        assert rec["config"]["sharpness_every"] == 1 and rec["config"]["sharpness_iters"] == 6
        for entry in rec["epochs"]:
            assert entry["sharpness"] > 0 > entry["sharpness_min"] or entry["sharpness_min"] <= entry["sharpness"]
            assert np.isfinite(entry["b_simple_trace"]) and entry["b_simple_trace"] > 0
    table = (study / "sharpness.md").read_text()
    assert "| lr=0.5 | 4 |" in table and "| lr=0.05 | 40 |" in table
    assert (study / "figures" / "sharpness.png").stat().st_size > 10_000
    rows = frames.epoch_rows(study)
    assert {"sharpness", "sharpness_min", "b_simple", "b_simple_g2", "b_simple_trace"} <= set(rows[0])
    run_folder = tensorboard.StudyWriter(study / tensorboard.FOLDER).run_folder(records[0]["run_id"])
    assert any(run_folder.glob("events.out.tfevents.*"))
