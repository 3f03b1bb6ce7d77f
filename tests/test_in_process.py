"""A study is a function of a typed config: each of these experiments runs in this process from a
Config built in Python (`config.build`: values by option name, checked like the flags), at toy
size on synthetic data, and leaves its results."""
import json

from cifar_jax.study import config
from experiments import cnn_transfer, grid_study, ladder, lr_sweep, transfer

TINY = dict(dataset="synthetic", split="256/64", test_size=64, epochs=1, seeds=1, batch_size=32)
TINY_CONV = dict(TINY, model="baseline", channels=[[4]], kernels=[[3]], hidden=[[8]])


def test_five_studies_run_in_process_from_configs_built_in_python(tmp_path):
    root = tmp_path / "results"
    lr_sweep.main(config.build(lr_sweep.OPTIONS, **TINY, model="mlp", hidden=[[16]], lr=[0.1, 0.02],
                               results_dir=str(root)))
    assert list(json.loads((root / "lr_sweep" / "summary.json").read_text())["configs"]) == ["lr=0.1", "lr=0.02"]

    grid_study.main(config.build(grid_study.OPTIONS, **TINY, model="mlp", hidden=[[8], [8, 8]], results_dir=str(root),
                                 title="In process"))
    assert "# In process: accuracy per configuration" in (root / "grid_study" / "configs.md").read_text()

    ladder.main(config.build(ladder.OPTIONS, **TINY, model="mlp", hidden=[[8]], normalization="none",
                             stages=["baseline", "standardised"], long_stages=["standardised"], long_epochs=2,
                             results_dir=str(root)))
    rows = json.loads((root / "ladder" / "ladder.json").read_text())
    assert [r["stage"] for r in rows] == ["baseline", "standardised", "standardised_long"]
    assert all(r["n"] == 1 for r in rows)
    assert {p.name for p in (root / "ladder" / "figures").glob("*.png")} == {
        "standardised_vs_baseline.png", "standardised_long_vs_standardised.png"}
    assert "total parameters" in (root / "ladder" / "model.md").read_text()

    transfer.main(config.build(transfer.OPTIONS, **TINY_CONV, transfer_dropout=0.5, results_dir=str(root)))
    assert "BaselineNet retrained" in (root / "transfer" / "transfer_comparison.md").read_text()

    cnn_transfer.main(config.build(cnn_transfer.OPTIONS, **dict(TINY_CONV, split="128/64"), norm="batch",
                                   optimizer="adam", lr=[0.001], source_classes="class0,class1,class2",
                                   source_split="256/64", source_epochs=1, classes="class3,class4",
                                   results_dir=str(root)))
    assert "## Every learning rate" in (root / "cnn_transfer" / "baselines.md").read_text()
