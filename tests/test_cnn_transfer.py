"""The seeds/003 CNN transfer study (experiments/cnn_transfer.py): a backbone pretrained on a
3-class source task, restored under a 2-class head; the linear probe leaves it bit-identical
(parameters and BN statistics), fine-tuning changes it; per-example predictions, a rerun that
trains nothing, and the analysis' table and figures; another study's backbone refused, a damaged
one one line and pretrained again with --repair. One small study on synthetic data, run
in-process so the final variables of every run can be compared with the checkpoints."""
import json
from pathlib import Path
import shutil
import sys

import jax
import numpy as np
import pytest

from cifar_jax.io import checkpoint, files
from cifar_jax.nn import models
from cifar_jax.results import studydir
from cifar_jax.study import config, runner
from cifar_jax.training import step

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import cnn_transfer  # noqa: E402

TINY = ["--dataset=synthetic", "--model=baseline", "--norm=batch", "--channels=4,8", "--kernels=3,3", "--hidden=8",
        "--optimizer=adam", "--batch_size=32", "--epochs=1", "--seeds=1", "--eval_train=final",
        "--source_classes=class0,class1,class2", "--source_split=256/64", "--source_epochs=1",
        "--classes=class3,class4", "--split=128/64", "--test_size=100", "--lr=0.001,0.01"]
BACKBONE = ("bn_conv1", "bn_conv2", "bn_fc1", "conv1", "conv2", "fc1")  # every layer but the head, sorted


def run_study(tmp: Path, *more: str) -> dict:
    """Run the study in-process with TINY (and `more` flags); returns every run's final (params, batch_stats)."""
    captured = {}
    original = runner.run

    def capturing(*args, on_state=None, **kwargs):
        def both(run, variables):
            captured[run.run_id] = jax.tree_util.tree_map(np.asarray, variables)
            on_state(run, variables)
        return original(*args, on_state=both, **kwargs)

    cfg = config.parse(*TINY, f"--results_dir={tmp}/results", f"--checkpoint_dir={tmp}/ckpt", *more,
                       own=cnn_transfer.OPTIONS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run", capturing)
        cnn_transfer.main(cfg)
    return captured


@pytest.mark.parametrize("lr", ["inf", "nan", "0"])
def test_a_bad_source_lr_is_refused(tmp_path, lr):
    with pytest.raises(config.ConfigError, match=rf"^--source_lr={lr}: must be > 0 and finite$"):
        config.parse(*TINY, f"--source_lr={lr}", f"--results_dir={tmp_path}", own=cnn_transfer.OPTIONS)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cnn_transfer")
    return tmp, run_study(tmp)


SOURCE = "source,seed=0"


def of_source(tmp: Path) -> dict:
    """The provenance of the pretraining run of seed 0 of the study in `tmp`."""
    return {"study": tmp / "results" / "cnn_transfer", "run_id": SOURCE}


def stored(tmp: Path, variables: tuple) -> tuple:
    """The pretraining checkpoint of seed 0, read strictly in the source model's structure."""
    return checkpoint.restore(tmp / "ckpt" / "cnn_transfer" / SOURCE, *variables, expected=of_source(tmp))


@pytest.mark.slow  # the study's setup trains 7 tiny runs in-process: ~40 s on 2 CPU cores
def test_linear_probe_keeps_the_backbone_bit_identical_and_fine_tuning_changes_it(done):
    tmp, final = done
    params, stats = stored(tmp, final["source,seed=0"])
    assert np.array_equal(params["conv1"]["kernel"], final["source,seed=0"][0]["conv1"]["kernel"])
    for lr in ("0.001", "0.01"):
        probe_params, probe_stats = final[f"linear_probe,lr={lr},seed=0"]
        assert set(probe_stats) == {"bn_conv1", "bn_conv2", "bn_fc1"}
        for layer in BACKBONE:
            for name, value in params[layer].items():
                assert np.array_equal(probe_params[layer][name], value), (lr, layer, name)
        for layer, leaves in stats.items():
            for name, value in leaves.items():
                assert np.array_equal(probe_stats[layer][name], value), (lr, layer, name)
        tuned_params, tuned_stats = final[f"fine_tune,lr={lr},seed=0"]
        assert not all(np.array_equal(tuned_params[k][n], v) for k in BACKBONE for n, v in params[k].items())
        assert not all(np.array_equal(tuned_stats[k][n], v) for k in stats for n, v in stats[k].items())
        check = json.loads((tmp / "results/cnn_transfer/target/backbone" / f"linear_probe,lr={lr},seed=0.json").read_text())
        assert check["params_identical"] and check["batch_stats_identical"] and check["changed"] == []
    record = json.loads((tmp / "results/cnn_transfer/target/runs/linear_probe,lr=0.01,seed=0.json").read_text())
    assert record["config"]["frozen"] == list(BACKBONE) and record["config"]["pretrained"] == "source,seed=0"


@pytest.mark.slow
def test_a_study_can_share_another_ones_pretraining(done, tmp_path):
    tmp, first = done
    shutil.copytree(tmp, tmp_path, dirs_exist_ok=True)  # the first study with its checkpoints
    final = run_study(tmp_path, "--name=second", "--pretrained_study=cnn_transfer", "--baselines=linear_probe")
    assert SOURCE not in final and not (tmp_path / "results/second/pretrain").exists()  # nothing pretrained again
    params, stats = stored(tmp_path, first[SOURCE])
    probe_params, probe_stats = final["linear_probe,lr=0.01,seed=0"]
    for layer in BACKBONE:
        for name, value in params[layer].items():
            assert np.array_equal(probe_params[layer][name], value), (layer, name)
    assert "source test accuracy" in (tmp_path / "results/second/baselines.md").read_text()
    with pytest.raises(files.ResultsError, match=r"^--pretrained_study=cnn_transfer: run 'source,seed=0' .*"
                       r"finished with a different config: 'lr' is 0.001 there, 0.01 now"):
        run_study(tmp_path, "--name=third", "--pretrained_study=cnn_transfer", "--source_lr=0.01")
    with pytest.raises(config.ConfigError, match=f"^--pretrained_study=nope: no study at {tmp_path}/results/nope$"):
        run_study(tmp_path, "--name=fourth", "--pretrained_study=nope")


@pytest.mark.slow
def test_a_two_class_head_is_initialised_around_the_three_class_backbone(done):
    tmp, final = done
    params, _ = stored(tmp, final["source,seed=0"])
    assert params["fc2"]["kernel"].shape == (3, 8)  # [out, in]
    for run_id in ("linear_probe,lr=0.01,seed=0", "fine_tune,lr=0.01,seed=0", "scratch,lr=0.01,seed=0"):
        assert final[run_id][0]["fc2"]["kernel"].shape == (2, 8)
    # a strict restore refuses the 2-class model; restore_partial fills every layer but the head
    spec = step.GroupSpec(models.ModelConfig("baseline", (8,), "batch", channels=(4, 8), kernels=(3, 3), num_classes=2))
    shape = (32, 32, 3)
    with pytest.raises(checkpoint.CheckpointError, match=r"params/fc2/(bias|kernel) has shape"):
        checkpoint.restore(tmp / "ckpt/cnn_transfer/source,seed=0", step.param_shapes(spec, shape),
                           step.batch_stats_shapes(spec, shape), expected={})
    restored = cnn_transfer.restored_backbone(tmp / "ckpt/cnn_transfer/source,seed=0", spec, shape, "fc2",
                                              of_source(tmp))
    assert set(restored["params"]) == set(BACKBONE) and set(restored["batch_stats"]) == {"bn_conv1", "bn_conv2", "bn_fc1"}
    assert np.array_equal(restored["params"]["fc1"]["kernel"], params["fc1"]["kernel"])
    assert not np.array_equal(final["scratch,lr=0.01,seed=0"][0]["conv1"]["kernel"], params["conv1"]["kernel"])


@pytest.mark.slow
def test_predictions_are_saved_per_run_and_a_rerun_trains_nothing(done, capsys):
    tmp, _ = done
    target = tmp / "results/cnn_transfer/target"
    labels = np.load(target / "predictions/labels.npy")
    assert labels.shape == (100,) and set(labels.tolist()) <= {0, 1}
    records = studydir.StudyDir(target).records()
    assert len(records) == 6
    for rec in records:
        pred = np.load(target / "predictions" / f"{studydir.run_file_stem(rec['run_id'])}.npy")
        assert pred.dtype == np.int32 and pred.shape == labels.shape
        assert abs((pred == labels).mean() - rec["test"]["acc"]) < 1e-6, rec["run_id"]
    files = [*target.glob("runs/*.json"), *target.glob("predictions/*.npy"), *target.glob("backbone/*.json"),
             *(tmp / "results/cnn_transfer/pretrain").glob("runs/*.json")]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    capsys.readouterr()
    again = run_study(tmp)
    out = capsys.readouterr().out
    assert again == {} and "epoch 1/1" not in out
    assert "1 of 1 runs already finished" in out and "6 of 6 runs already finished" in out
    assert stamps == {p: p.stat().st_mtime_ns for p in files}


@pytest.mark.slow
def test_the_analysis_writes_its_table_and_figures(done):
    tmp, _ = done
    root = tmp / "results/cnn_transfer"
    for name in ("best_vs_worst", "accuracy_vs_lr"):
        assert (root / "figures" / f"{name}.png").stat().st_size > 10_000, name
    table = (root / "baselines.md").read_text()
    assert "## Two best and the worst model per baseline" in table and "| linear_probe | 2 | 2/2 | 2/2 | 0 | 0 |" in table
    assert table.count("| scratch | ") == 2 + 3  # two learning rates, then best, second best, worst
    pair = json.loads((root / "best_vs_worst.json").read_text())
    final = {r["run_id"]: r["test"]["acc"] for r in studydir.StudyDir(root / "target").records()}
    assert final[pair["best"]] == max(final.values()) and final[pair["worst"]] == min(final.values())
    assert len(pair["shown"]) == min(5, pair["right_by_best_wrong_by_worst"])
    rows = {r["config"]: r for r in json.loads((root / "configs.json").read_text())}
    assert rows["fine_tune,lr=0.01"]["values"] == {"lr": 0.01} and rows["fine_tune,lr=0.01"]["test_acc"]["n"] == 1


@pytest.mark.slow
def test_a_backbone_of_another_run_or_study_is_refused_naming_the_field(done, tmp_path):
    tmp, _ = done
    spec = step.GroupSpec(models.ModelConfig("baseline", (8,), "batch", channels=(4, 8), kernels=(3, 3), num_classes=2))
    path = tmp / "ckpt/cnn_transfer" / SOURCE
    with pytest.raises(checkpoint.CheckpointError, match=f"^checkpoint {path} is of another run: run_id is "
                                                         f"'{SOURCE}' in the checkpoint, 'source,seed=1' expected$"):
        cnn_transfer.restored_backbone(path, spec, (32, 32, 3), "fc2", {**of_source(tmp), "run_id": "source,seed=1"})
    shutil.copytree(tmp / "results", tmp_path / "results")  # another study, pointed at the first one's checkpoints
    with pytest.raises(checkpoint.CheckpointError) as err:
        run_study(tmp_path, f"--checkpoint_dir={tmp}/ckpt")
    assert str(err.value) == (f"checkpoint {path} is of another run: study is '{tmp}/results/cnn_transfer' in the "
                              f"checkpoint, '{tmp_path}/results/cnn_transfer' expected (pass --repair to pretrain {SOURCE} again)")


@pytest.mark.slow
def test_a_damaged_backbone_is_one_line_and_repair_pretrains_it_again(done, tmp_path):
    tmp, _ = done
    shutil.copytree(tmp, tmp_path, dirs_exist_ok=True)  # moved with its checkpoints: still the same study
    path = tmp_path / "ckpt/cnn_transfer" / SOURCE
    (path / "metadata.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError) as err:
        run_study(tmp_path)
    assert str(err.value).startswith(f"checkpoint {path} is damaged: {path}/metadata.json is not readable JSON (")
    assert "\n" not in str(err.value) and str(err.value).endswith(f"(pass --repair to pretrain {SOURCE} again)")
    again = run_study(tmp_path, "--repair")
    assert list(again) == [SOURCE]  # the target runs are finished: only the backbone is trained again
    checkpoint.verify(path, of_source(tmp_path))
    params, _ = stored(tmp_path, again[SOURCE])
    assert np.array_equal(params["conv1"]["kernel"], again[SOURCE][0]["conv1"]["kernel"])


def test_picks_and_published_numbers():
    labels = np.array([0, 1, 1, 0, 1, 0, 1])
    best, worst = np.array([0, 1, 1, 0, 0, 0, 1]), np.array([1, 1, 0, 1, 1, 1, 0])
    assert cnn_transfer.right_and_wrong(best, worst, labels, n=3).tolist() == [0, 2, 3]
    ref = cnn_transfer.published()
    assert len(ref) == 15 and ref[("fine_tune", 1e-4)][2] == pytest.approx(0.8375)
    assert ref[("scratch", 1e-5)] == pytest.approx((0.5064, 0.505, 0.52))
    assert cnn_transfer.head_name(models.ModelConfig("baseline")) == "fc2"
    assert cnn_transfer.head_name(models.ModelConfig("mlp", (50, 50, 50))) == "fc4"
