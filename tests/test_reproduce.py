"""The report driver: sections assembled from study directories, ours beside the published numbers,
and one real section of each report."""
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import reproduce as rep  # noqa: E402
from experiments import verdicts  # noqa: E402


def test_section_collects_protocol_tables_and_figures(tmp_path):
    study = tmp_path / "transfer"
    (study / "figures").mkdir(parents=True)
    (study / "pretrain" / "figures").mkdir(parents=True)
    (study / "protocol.flags").write_text("--data_dir=/root/.cache/x\n--results_dir=/tmp/r\n--lr=0.05\n--epochs=50\n")
    (study / "transfer_comparison.md").write_text("# Transfer\n\n| config | acc |\n|---|---|\n| a | 1 |\n")
    (study / "figures" / "a.png").write_bytes(b"png")
    (study / "figures" / "curves_a.png").write_bytes(b"png")
    (study / "pretrain" / "figures" / "b.png").write_bytes(b"png")
    section = rep.Section("2.2", "Transfer", "transfer", "transfer", choices="- **Swapped** sets.")
    text = rep.section_markdown(section, study, tmp_path / "report", 12.0, verdicts.Evidence({}))
    assert "## §2.2 Transfer" in text and "this invocation took 12 s" in text
    assert "```\n--lr=0.05\n--epochs=50\n```" in text  # where this machine keeps things is no protocol
    assert "/tmp" not in text and "/root" not in text and "`<results_dir>/transfer`" in text
    assert "### Protocol choices\n\n- **Swapped** sets." in text
    assert "#### Transfer" in text and "| a | 1 |" in text
    assert "(figures/transfer__figures__a.png)" in text and "(figures/transfer__pretrain__figures__b.png)" in text
    assert (tmp_path / "report" / "figures" / "transfer__pretrain__figures__b.png").read_bytes() == b"png"
    assert "curves_a" not in text.replace("(curves_*, cost_*)", "") and "1 per-configuration figures" in text
    everything = rep.section_markdown(section, study, tmp_path / "all", None, verdicts.Evidence({}), config_figures=True)
    assert "(figures/transfer__figures__curves_a.png)" in everything


def test_report_opens_with_verdicts_and_leaves_out_sections_that_did_not_run(tmp_path):
    sections = (rep.Section("1", "Nets", "grid_study", "nets", (rep.Published("The report's runs", "", {
        "a": (60.0, 50.0, 53.36), "b": (None, None, 40.0)}),), choices="- chosen"),
                rep.Section("2", "Never run", "grid_study", "never"))
    claim = verdicts.Claim("k", "1", "a beats b", verdicts.greater(("nets", "a"), ("nets", "b"), "test_acc"))
    report = rep.Report("Seed X", sections, 1.0, "1 point for the copy.", (claim,))
    runs = tmp_path / "nets" / "runs"
    runs.mkdir(parents=True)
    for name, acc in (("a", 0.53), ("b", 0.45)):
        for seed in (0, 1):
            record = {"run_id": f"{name},seed={seed}", "config_name": name, "seed": seed, "status": "done",
                      "config": {"model": {"num_classes": 10}, "l2": 0.0}, "diverged_epoch": None,
                      "epochs": [{"epoch": 1, "val_acc": 0.5, "val_loss": 1.0, "train_loss": 1.0}],
                      "test": {"loss": 1.0, "acc": acc, "top5": 0.9}, "final_train": None, "untrained": {}}
            (runs / f"{name},seed={seed}.json").write_text(json.dumps(record))
    (tmp_path / "nets" / "protocol.flags").write_text("--results_dir=/tmp/r\n--lr=0.1\n")
    path = rep.write_report(report, tmp_path, tmp_path / "out", {})
    text = path.read_text()
    assert text.index("## Verdicts") < text.index("## §1 Nets")
    assert "§2 has not run here and is left out" in text and "## §2" not in text and "Not run" not in text
    assert "**Published numbers: 2 of 4 within tolerance**, 1 outside, 1 not run" in text  # b's test: 45 vs 40
    assert "**Claims of the report's text: 1 hold, 0 do not, 0 not run.**" in text
    assert "| 1 | a beats b | ✓ holds | test_acc: a 53.00% against b 45.00% (Δ +8.00 points) |" in text
    assert "| b | test | 45.00 ± 0.00 (2) | 40.00 | +5.00 | ±1.98 | ✗ outside |" in text
    assert "/tmp" not in text and "\n\n\n\n" not in text


@pytest.mark.slow
def test_one_smoke_section_runs_and_writes_the_report(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "experiments.reproduce", "--report=seed000", "--smoke", "--dataset=synthetic", "--only=1.2",
           f"--results_dir={tmp_path}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "seed000_report_smoke" / "report.md").read_text()
    assert "## §1.2 Learning-rate schedule" in report and "decay_shapes.png" in report
    assert "## Verdicts" in report and "§1.1, §2.1, §2.2, §3.1-3.3, §3.4 have not run here" in report
    bad = subprocess.run([*cmd[:-2], "--only=9.9"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "--only=9.9" in bad.stderr


def _report_folders() -> list[Path]:
    reports = ROOT / "reports"
    return sorted(p for p in [*reports.iterdir(), *(reports / "earlier").iterdir()] if p.is_dir() and p.name != "earlier")


def test_committed_reports_link_every_figure_and_name_no_machine_paths():
    machine = re.compile(r"/tmp/|/root\b|/home/|\$HOME")
    for folder in _report_folders():
        docs = {md: md.read_text() for md in folder.rglob("*.md")}
        linked = "\n".join(docs.values())
        for png in folder.rglob("*.png"):
            assert f"({png.relative_to(folder).as_posix()})" in linked, f"{png} is linked from no .md in {folder.name}"
        for path in [*docs, *folder.rglob("*.log")]:
            text = docs.get(path) or path.read_text()
            assert not machine.search(text), f"{path}: a machine path ({machine.search(text).group()})"
        for md, text in docs.items():
            assert "\n\n\n" not in text and "*Not run.*" not in text, md
    readme = (ROOT / "reports" / "README.md").read_text()
    assert not machine.search(readme) and "experiments.mlp_baseline" not in readme


def test_every_current_report_opens_with_its_verdicts():
    current = [f / "report.md" for f in _report_folders() if "earlier" not in f.parts and (f / "report.md").exists()]
    assert current
    for path in current:
        text = path.read_text()
        assert text.index("## Verdicts") < text.index("\n## §"), path
