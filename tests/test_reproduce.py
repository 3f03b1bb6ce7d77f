"""The seeds/000 report driver: sections assembled from study directories, and one real section."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import reproduce_seed000 as rep  # noqa: E402


def test_section_collects_protocol_tables_and_figures(tmp_path):
    study = tmp_path / "transfer"
    (study / "figures").mkdir(parents=True)
    (study / "pretrain" / "figures").mkdir(parents=True)
    (study / "protocol.flags").write_text("--lr=0.05\n--epochs=50\n")
    (study / "transfer_comparison.md").write_text("# Transfer\n\n| config | acc |\n|---|---|\n| a | 1 |\n")
    (study / "figures" / "a.png").write_bytes(b"png")
    (study / "pretrain" / "figures" / "b.png").write_bytes(b"png")
    text = rep.section_markdown("2.2", "Transfer", study, tmp_path / "report", 12.0)
    assert "## §2.2 Transfer" in text and "this invocation took 12 s" in text
    assert "```\n--lr=0.05\n--epochs=50\n```" in text
    assert "#### Transfer" in text and "| a | 1 |" in text
    assert "(figures/transfer__figures__a.png)" in text and "(figures/transfer__pretrain__figures__b.png)" in text
    assert (tmp_path / "report" / "figures" / "transfer__pretrain__figures__b.png").read_bytes() == b"png"
    assert "*Not run.*" in rep.section_markdown("3.4", "BN", tmp_path / "missing", tmp_path / "report", None)


@pytest.mark.slow
def test_one_smoke_section_runs_and_writes_the_report(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "experiments.reproduce_seed000", "--smoke", "--dataset=synthetic", "--only=1.2",
           f"--results_dir={tmp_path}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "seed000_report_smoke" / "report.md").read_text()
    assert "## §1.2 Learning-rate schedule" in report and "decay_shapes.png" in report
    assert report.count("*Not run.*") == 5
    bad = subprocess.run([*cmd[:-2], "--only=9.9"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "--only=9.9" in bad.stderr
