"""Experiments end to end from the command line: results, figures, resume, and bad input."""
import json
from pathlib import Path

import pytest
from conftest import Finished, run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ["--dataset=synthetic", "--split=512/256", "--batch_size=64", "--epochs=1", "--seeds=2"]


def run(module: str, *args: str) -> Finished:
    return run_experiment(module, *args)


def records(study: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((study / "runs").glob("*.json"))}


def test_lr_sweep_writes_results_and_resumes_without_retraining(tmp_path):
    args = [*SYNTH, "--lr=0.1,0.02", "--lr_range", "--range_points=3", "--range_epochs=1", f"--results_dir={tmp_path}"]
    first = run("lr_sweep", *args)
    assert first.returncode == 0, first.stderr
    study = tmp_path / "lr_sweep"
    recs = records(study)
    assert len(recs) == 4 and all(r["status"] == "done" for r in recs.values())
    rec = recs["lr=0.1_seed=0.json"] if "lr=0.1_seed=0.json" in recs else next(iter(recs.values()))
    assert len(rec["epochs"]) == 1 and set(rec["untrained"]) == {"val", "test"}
    assert 0.0 <= rec["test"]["acc"] <= rec["test"]["top5"] <= 1.0
    summary = json.loads((study / "summary.json").read_text())
    assert list(summary["configs"]) == ["lr=0.1", "lr=0.02"]
    for name in ("class_distribution", "val_comparison", "test_table", "lr_curves", "lr_range_test",
                 "curves_lr=0.1", "curves_lr=0.02"):
        assert (study / "figures" / f"{name}.png").stat().st_size > 10_000, name
    assert "| lr=0.1 |" in (study / "test_table.md").read_text()
    assert "unstable from" in (study / "range_test.md").read_text()
    for f in ("flags.txt", "config.json", "env.json"):
        assert (study / f).exists()
    stamps = {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*.json")}

    second = run("lr_sweep", *args)
    assert second.returncode == 0, second.stderr
    assert "4 of 4 runs already finished" in second.stdout and "epoch 1/1" not in second.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*.json")}


def test_incomplete_runs_are_retrained_and_changed_config_is_refused(tmp_path):
    args = [*SYNTH, "--model=mlp", "--hidden=16", "--init=he", "--lr=0.05", f"--results_dir={tmp_path}", "--name=s"]
    assert run("lr_sweep", *args).returncode == 0
    path = sorted((tmp_path / "s" / "runs").glob("*.json"))[0]
    rec = json.loads(path.read_text())
    rec["status"], rec["test"] = "incomplete", None  # as an interrupted run leaves it
    path.write_text(json.dumps(rec))
    again = run("lr_sweep", *args)
    assert again.returncode == 0 and "1 of 2 runs already finished" in again.stdout
    assert json.loads(path.read_text())["status"] == "done"
    changed = run("lr_sweep", *[a for a in args if a != "--epochs=1"], "--epochs=2")
    assert changed.returncode == 2
    assert changed.stderr.strip().count("\n") == 0 and "epochs" in changed.stderr and "--name" in changed.stderr


def test_grid_study_prints_the_report_format(tmp_path):
    out = run("grid_study", "--dataset=synthetic", "--split=800/200", "--model=mlp", "--hidden=32,16",
              "--init=he", "--l2=0.005", "--schedule=cyclic", "--lr=0.1", "--lr_min=1e-5", "--half_cycle=8",
              "--cycles=1", "--batch_size=100", "--seeds=2", "--normalization=per_dim", "--eval_train=final",
              f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    for text in ("Model parameters:", "hidden layers:       (32, 16)", "lambda:              0.005",
                 "n_s:                 8", "Training data:", "Validation data:", "Test data:",
                 "accuracy (untrained):", "cost (final):", "mean test accuracy"):
        assert text in out.stdout, text
    rec = next(iter(records(tmp_path / "grid_study").values()))
    assert len(rec["epochs"]) == 2  # 1 cycle = 2 * n_s = 16 steps = 2 epochs of 8 steps
    assert rec["final_train"] is not None and rec["untrained"]["train"]["acc"] < rec["final_train"]["acc"]


def test_lr_schedule_trains_both_schedules_in_one_group(tmp_path):
    out = run("lr_schedule", *SYNTH, "--model=mlp", "--hidden=16", "--init=he", "--schedule=inverse_time",
              "--lr=0.1", "--decay_rate=0.25", "--compare_lr=0.05", "--epochs=2", f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "group 1/1] 4 runs" in out.stdout
    study = tmp_path / "lr_schedule"
    assert (study / "figures" / "decay_shapes.png").stat().st_size > 10_000
    recs = list(records(study).values())
    decayed = [r for r in recs if r["config"]["schedule"] == "inverse_time"][0]
    assert [e["lr"] for e in decayed["epochs"]] == pytest.approx([0.1, 0.1 / 1.25])
    static = [r for r in recs if r["config"]["schedule"] == "constant"][0]
    assert [e["lr"] for e in static["epochs"]] == pytest.approx([0.05, 0.05])


def test_flags_that_change_the_program_are_grid_axes_one_group_each(tmp_path):
    """Hidden widths × norm: 4 groups (4 programs), one summary and one comparison figure,
    configurations named by the values that vary."""
    out = run("grid_study", *SYNTH, "--model=mlp", "--hidden=16;8,8", "--norm=none,batch", "--init=he",
              "--lr=0.05", f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("2 runs, model mlp") == 4 and "group 4/4]" in out.stdout
    study = tmp_path / "grid_study"
    names = ["hidden=16,norm=none", "hidden=16,norm=batch", "hidden=8-8,norm=none", "hidden=8-8,norm=batch"]
    assert list(json.loads((study / "summary.json").read_text())["configs"]) == names
    assert (study / "figures" / "val_comparison.png").exists()
    models = {r["config_name"]: r["config"]["model"] for r in records(study).values()}
    assert models["hidden=8-8,norm=batch"]["hidden"] == [8, 8] and models["hidden=8-8,norm=batch"]["norm"] == "batch"
    # configs.md: the options always shown (the table's `shown`), none that does not vary
    header = next(line for line in (study / "configs.md").read_text().splitlines() if line.startswith("| config |"))
    assert header.startswith("| config | hidden layers | norm | init | dropout | λ | noise σ | s&p | train acc (%) |")


def test_a_new_option_reaches_the_run_names_and_the_configuration_table(tmp_path):
    """An option that varies is a column of configs.md beside the always-shown ones, in its
    table's order: model (--activation), group (--clip_value), per-run (--warmup_steps)."""
    out = run("grid_study", *SYNTH, "--seeds=1", "--model=mlp", "--hidden=8", "--activation=relu,tanh",
              "--clip_value=0,0.5", "--warmup_steps=0,4", f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "grid_study" / "configs.md").read_text()
    assert "| config | hidden layers | norm | init | activation | clip_value | dropout | λ | noise σ | s&p | warmup_steps |" in text
    assert "| activation=tanh,clip_value=0.5,warmup_steps=4 | (8) | none | torch | tanh | 0.5 | 0 | 0 | 0 | 0 | 4 |" in text


def test_a_learning_rate_per_optimizer_and_optimizer_options_as_axes(tmp_path):
    """Two optimisers (two groups), each with its own LRs; Adam's β2 (an entry of the options
    table) is a per-run axis like any other."""
    out = run("lr_sweep", *SYNTH, "--model=mlp", "--hidden=16", "--init=he", "--optimizer=sgd,adam",
              "--lr=sgd:0.1,sgd:0.05,adam:0.001", "--adam_b2=0.99,0.999", "--seeds=1", f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    recs = records(tmp_path / "lr_sweep").values()
    names = sorted((r["config_name"], r["config"]["optimizer"], r["config"]["lr"], r["config"]["adam_b2"]) for r in recs)
    assert names == [("optimizer=adam,lr=0.001,adam_b2=0.99", "adam", 0.001, 0.99),
                     ("optimizer=adam,lr=0.001,adam_b2=0.999", "adam", 0.001, 0.999),
                     ("optimizer=sgd,lr=0.05,adam_b2=0.99", "sgd", 0.05, 0.99),
                     ("optimizer=sgd,lr=0.05,adam_b2=0.999", "sgd", 0.05, 0.999),
                     ("optimizer=sgd,lr=0.1,adam_b2=0.99", "sgd", 0.1, 0.99),
                     ("optimizer=sgd,lr=0.1,adam_b2=0.999", "sgd", 0.1, 0.999)]
    assert out.stdout.count("runs, model mlp") == 2
    adam = {r["config"]["adam_b2"]: r["epochs"][-1]["train_loss"] for r in recs if r["config"]["optimizer"] == "adam"}
    assert adam[0.99] != adam[0.999]  # β2 reached the optimiser


@pytest.mark.parametrize("flag,needle", [
    ("--lr=-1", "--lr"), ("--dropout=1.0", "--dropout"), ("--model=nope", "--model"),
    ("--batch_size=0", "--batch_size"), ("--split=60000/5000", "--split"),
    ("--dataset=cifar10 --data_dir={tmp}/empty", "cifar-10-python.tar.gz"), ("--lr=adam:0.1", "--lr"),
    ("--l2=inf", "--l2"), ("--adam_b2=1", "--adam_b2"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, flag, needle):
    args = flag.format(tmp=tmp_path).split()
    out = run("lr_sweep", "--dataset=synthetic", "--epochs=1", f"--results_dir={tmp_path}/results", *args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], out.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_seed002_mlp_on_real_cifar(tmp_path, shared_cifar):
    """The seeds/002 MLP at reduced length on the shared CIFAR-10 copy learns well past chance."""
    out = run("grid_study", "--flagfile=experiments/flags/seed002_mlp.flags", f"--data_dir={shared_cifar}",
              "--half_cycle=450", "--cycles=1", "--seeds=2", f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "seed002_mlp" / "summary.json").read_text())
    acc = next(iter(summary["configs"].values()))["metrics"]["test_acc"]
    assert acc["n"] == 2 and 0.40 < acc["mean"] < 0.60
