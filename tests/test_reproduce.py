"""The report driver: sections assembled from study directories, ours beside the published numbers,
and one real section of each report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import reproduce as rep  # noqa: E402


def test_section_collects_protocol_tables_and_figures(tmp_path):
    study = tmp_path / "transfer"
    (study / "figures").mkdir(parents=True)
    (study / "pretrain" / "figures").mkdir(parents=True)
    (study / "protocol.flags").write_text("--lr=0.05\n--epochs=50\n")
    (study / "transfer_comparison.md").write_text("# Transfer\n\n| config | acc |\n|---|---|\n| a | 1 |\n")
    (study / "figures" / "a.png").write_bytes(b"png")
    (study / "pretrain" / "figures" / "b.png").write_bytes(b"png")
    text = rep.section_markdown(rep.Section("2.2", "Transfer", "transfer", "transfer"), study, tmp_path / "report", 12.0)
    assert "## §2.2 Transfer" in text and "this invocation took 12 s" in text
    assert "```\n--lr=0.05\n--epochs=50\n```" in text
    assert "#### Transfer" in text and "| a | 1 |" in text
    assert "(figures/transfer__figures__a.png)" in text and "(figures/transfer__pretrain__figures__b.png)" in text
    assert (tmp_path / "report" / "figures" / "transfer__pretrain__figures__b.png").read_bytes() == b"png"
    missing = rep.Section("3.4", "BN", "batchnorm", "batchnorm")
    assert "*Not run.*" in rep.section_markdown(missing, tmp_path / "missing", tmp_path / "report", None)


def test_published_numbers_stand_beside_ours(tmp_path):
    study = tmp_path / "nets"
    study.mkdir()
    stat = lambda m, s: {"mean": m, "std": s}
    (study / "configs.json").write_text(json.dumps([{"config": "a", "train_acc": stat(0.6, 0.01),
                                                     "val_acc": stat(0.5, 0.02), "test_acc": stat(0.5312, 0.0025)}]))
    section = rep.Section("2", "Nets", "grid_study", "nets", {"a": (58.72, 53.16, 53.36), "b": (1.0, None, 3.0)})
    table = rep.published_table(section, study)
    assert "| a | 60.00 ± 1.00 | 58.72 | 50.00 ± 2.00 | 53.16 | 53.12 ± 0.25 | 53.36 |" in table
    assert "| b | – | 1.00 | – | – | – | 3.00 |" in table


@pytest.mark.slow
def test_one_smoke_section_runs_and_writes_the_report(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "experiments.reproduce", "--report=seed000", "--smoke", "--dataset=synthetic", "--only=1.2",
           f"--results_dir={tmp_path}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "seed000_report_smoke" / "report.md").read_text()
    assert "## §1.2 Learning-rate schedule" in report and "decay_shapes.png" in report
    assert report.count("*Not run.*") == 5
    bad = subprocess.run([*cmd[:-2], "--only=9.9"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "--only=9.9" in bad.stderr
