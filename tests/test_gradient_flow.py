"""Gradient flow (seeds/000 §3.1–3.3): the experiment end to end on synthetic data, and the figure
and table functions of cifar_jax.plots.gradients on synthetic records."""
import json
from pathlib import Path

from conftest import Finished, run_experiment  # noqa: E402
import matplotlib.image
import numpy as np
import pytest

from cifar_jax.io.files import ResultsError
from cifar_jax.nn import models
from cifar_jax.plots import gradients
from cifar_jax.training import step

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("gradients_BaselineNet", "gradients_DropoutNet", "gradients_BatchNormNet_shared",
           "gradients_BatchNormNet_all", "gradients_comparison", "gradient_norms")
BN_SHARED = ["conv1/kernel", "conv2/kernel", "conv3/kernel", "fc1/kernel", "fc2/kernel", "fc2/bias"]


def tensor_names(norm: str) -> list[str]:
    """The engine's tensor names (leaf order) of BaselineNet with `norm`."""
    spec = step.GroupSpec(models.ModelConfig(norm=norm))
    return step.param_names(step.param_shapes(spec, (32, 32, 3)))


def assert_png(path: Path, min_bytes: int = 10_000) -> tuple[int, int]:
    """A readable, non-trivial PNG; returns its (height, width) in pixels."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > min_bytes, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # not a blank canvas
    return image.shape[:2]


def run_study(results_dir: Path) -> Finished:
    return run_experiment("gradient_flow", "--dataset=synthetic", "--split=256/128", "--epochs=2", "--batch_size=64",
                          "--seeds=1", f"--results_dir={results_dir}")


def test_experiment_writes_figures_records_and_table_then_resumes(tmp_path):
    first = run_study(tmp_path)
    assert first.returncode == 0, first.stderr
    study = tmp_path / "gradient_flow"
    for name in FIGURES:
        assert_png(study / "figures" / f"{name}.png")
    recs = {r["config_name"]: r for r in (json.loads(p.read_text()) for p in (study / "runs").glob("*.json"))}
    assert set(recs) == {"BaselineNet", "DropoutNet p=0.6", "BatchNormNet"}
    assert recs["DropoutNet p=0.6"]["config"]["dropout"] == 0.6 and recs["BaselineNet"]["config"]["dropout"] == 0
    for name, rec in recs.items():
        stats = rec["grad_stats"]
        assert stats["tensors"] == tensor_names("batch" if name == "BatchNormNet" else "none")
        assert np.array(stats["first"]).shape == np.array(stats["last"]).shape == (len(stats["tensors"]), 3)
        assert [len(e["grad_norm"]) for e in rec["epochs"]] == [len(stats["tensors"])] * 2
    bn = recs["BatchNormNet"]["grad_stats"]["tensors"]
    assert "bn_conv1/scale" in bn and "bn_fc1/bias" in bn and not {"conv1/bias", "conv2/bias", "conv3/bias"} & set(bn)
    assert "conv1/bias" in recs["BaselineNet"]["grad_stats"]["tensors"]
    table = (study / "gradient_stats.md").read_text()
    for heading in ("## BaselineNet", "## DropoutNet p=0.6", "## BatchNormNet"):
        assert heading in table
    assert "| bn_conv1/scale |" in table and (study / "test_table.md").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*.json")}

    second = run_study(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "3 of 3 runs already finished" in second.stdout and "epoch 1/2" not in second.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*.json")}


# ----------------------------------------------------------------------------- figure functions

def make_record(config_name: str, norm: str = "none", epochs: int = 6, seed: int = 0) -> dict:
    """A run record with plausible gradient statistics for BaselineNet with `norm`."""
    rng = np.random.default_rng(seed)
    names = tensor_names(norm)
    first = rng.uniform(1e-4, 1e-2, len(names))
    window = lambda mean: np.stack([mean, 0.8 * mean, 50 * mean], -1).tolist()
    return {"run_id": f"{config_name},seed={seed}", "config_name": config_name, "seed": seed, "status": "done",
            "config": {}, "grad_stats": {"tensors": names, "columns": ["mean_abs", "std_abs", "norm"],
                                         "window": 5, "first": window(first), "last": window(first * 3)},
            "epochs": [{"epoch": e + 1, "grad_norm": (first * 50 * 1.2 ** e).tolist()} for e in range(epochs)]}


@pytest.fixture
def records() -> dict[str, dict]:
    return {"BaselineNet": make_record("BaselineNet"), "DropoutNet p=0.6": make_record("DropoutNet p=0.6", seed=1),
            "BatchNormNet": make_record("BatchNormNet", "batch", seed=2)}


def test_tensors_in_depth_order_and_shared_selection():
    bn = tensor_names("batch")
    assert gradients.ordered(bn)[:4] == ["conv1/kernel", "bn_conv1/scale", "bn_conv1/bias", "conv2/kernel"]
    assert gradients.ordered(tensor_names("none"))[:3] == ["conv1/kernel", "conv1/bias", "conv2/kernel"]
    assert gradients.ordered(bn)[-2:] == ["fc2/kernel", "fc2/bias"]
    assert gradients.shared_tensors(bn, tensor_names("none")) == BN_SHARED
    assert gradients.tensor_label("bn_conv2/bias") == "BN conv2\nβ (shift)" and gradients.tensor_label("fc1/kernel") == "fc1\nweight"
    assert [gradients.is_norm(t) for t in ("bn_fc1/scale", "fc1/bias")] == [True, False]


def test_gradients_reads_a_record_by_tensor_name(records):
    rec = records["BatchNormNet"]
    g = gradients.gradients(rec)
    i = rec["grad_stats"]["tensors"].index("conv2/kernel")
    assert g.mean["first"]["conv2/kernel"] == rec["grad_stats"]["first"][i][0]
    assert g.std["last"]["conv2/kernel"] == rec["grad_stats"]["last"][i][1]
    assert g.norms["conv2/kernel"].shape == (6,) and g.tensors == gradients.ordered(rec["grad_stats"]["tensors"])
    with pytest.raises(ResultsError, match="no grad_stats"):
        gradients.gradients({"run_id": "x", "epochs": []})


def test_layer_gradients_all_and_shared(tmp_path, records):
    bn = records["BatchNormNet"]
    everything = gradients.layer_gradients(bn, tmp_path / "all.png", "BatchNormNet: all")
    shared = gradients.layer_gradients(bn, tmp_path / "shared.png", "BatchNormNet: shared",
                                       tensors=gradients.shared_tensors(bn["grad_stats"]["tensors"], tensor_names("none")))
    assert everything == tmp_path / "all.png" and shared == tmp_path / "shared.png"
    assert assert_png(shared)[1] < assert_png(everything)[1]  # 6 tensors drawn, not 14
    with pytest.raises(ResultsError, match="conv1/bias"):
        gradients.layer_gradients(bn, tmp_path / "bad.png", "x", tensors=["conv1/bias"])


def test_layer_gradients_with_zero_and_nan_statistics(tmp_path):
    rec = make_record("BaselineNet")
    rec["grad_stats"]["first"][0] = [0.0, 0.0, 0.0]  # e.g. a dead layer
    rec["grad_stats"]["last"][1] = [float("nan")] * 3  # e.g. a diverged run
    rec["grad_stats"]["last"][2][1] = 10.0  # std far above the mean: whisker clipped at the axis
    assert_png(gradients.layer_gradients(rec, tmp_path / "g.png", "BaselineNet"))


def test_comparison_norms_and_table(tmp_path, records):
    assert_png(gradients.gradient_comparison(records, tmp_path / "cmp.png", "comparison"))
    assert_png(gradients.gradient_norms(records, tmp_path / "norms.png", "norms"))
    text = gradients.stats_markdown(records, "Gradient flow")
    for label, rec in records.items():
        assert f"## {label} (run {rec['run_id']}" in text
    assert text.count("| conv1/bias |") == 2 and "| bn_fc1/scale |" in text
    with pytest.raises(ResultsError):
        gradients.gradient_norms({}, tmp_path / "none.png", "x")
