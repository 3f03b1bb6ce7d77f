"""Discoverability: `./launch.sh list` names every experiment with its purpose and flagfiles, and
an experiment's --help lists the project's flags beside its own."""
import importlib
import os
from pathlib import Path
import subprocess
import sys
import tomllib

from absl import flags

from cifar_jax.study import cli, config

ROOT = Path(__file__).resolve().parents[1]
catalog = importlib.import_module("experiments.__main__")


def test_the_catalogue_has_every_experiment_and_every_flagfile():
    experiments, unassigned = catalog.catalog()
    by_name = {e.name: e for e in experiments}
    programs = sorted(p.stem for p in (ROOT / "experiments").glob("[a-z]*.py")
                      if 'if __name__ == "__main__":' in p.read_text())
    assert list(by_name) == programs and {"lr_sweep", "reproduce", "transfer"} <= set(programs)
    assert not {"model_family", "pretraining", "__main__"} & set(by_name)  # helpers, not programs

    assert unassigned == []
    listed = {f for e in experiments for f in e.flagfiles + e.shared}
    assert listed == {p.stem for p in (ROOT / "experiments" / "flags").glob("*.flags")}
    assert not {f for e in experiments for f in e.flagfiles} & {f for e in experiments for f in e.shared}
    reports = tomllib.loads((ROOT / "experiments" / "reports.toml").read_text())
    for section in (s for r in reports.values() for s in r["sections"]):
        assert section["stem"] in by_name[section["module"]].flagfiles, section
    assert by_name["lr_sweep"].flagfiles == ["lr_sweep", "lr_sweep_smoke"]
    assert "seed003_cnn_long" in by_name["cnn_transfer"].flagfiles
    assert {"seed004_opennet_grid", "seed001_lr"} <= set(by_name["grid_study"].flagfiles)
    assert by_name["ladder"].flagfiles == ["seed001_ladder", "seed001_ladder_smoke"]
    assert by_name["ladder"].shared == ["seed001_convnet"]  # the ConvNet protocol its presets include
    assert "seed003_mlp" in by_name["mlp_grid"].shared and by_name["reproduce"].flagfiles == []

    assert by_name["ladder"].purpose == "seeds/001 §3: a model improved step by step."
    assert by_name["lr_sweep"].purpose.startswith("seeds/000 §1.1: learning-rate sweep of BaselineNet (5 LRs")
    assert catalog.purpose("A thing, e.g. this one. More.\n\nLater.") == "A thing, e.g. this one."


def test_launch_sh_list():
    out = subprocess.run(["bash", "launch.sh", "list"], cwd=ROOT, env={**os.environ, "PYTHON": sys.executable},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines)
    starts = [line.split()[0] for line in lines if line and not line.startswith((" ", "(", "Experiments"))]
    assert starts == [e.name for e in catalog.catalog()[0]]
    assert any(line.startswith("lr_sweep        seeds/000 §1.1: learning-rate sweep") for line in lines)
    assert "                flagfiles: lr_sweep[_smoke]" in lines


def test_short_help_lists_the_project_flags():
    fl = flags.FlagValues()
    config.define_flags(fl, {})
    flags.DEFINE_bool("own_flag", False, "The experiment's own.", flag_values=fl, module_name="experiment.py")
    assert "--epochs" not in fl.module_help("experiment.py")  # absl's --help: the main module's flags only
    cli.show_project_flags(fl, "experiment.py")
    short = fl.module_help("experiment.py")
    for name in ("--[no]own_flag", "--epochs", "--lr:", "--seeds", "--dataset", "--results_dir"):
        assert name in short, name
    assert "cifar_jax.study.config:" in fl.get_help()  # --helpfull: still by defining module


def test_full_help_puts_the_project_flags_apart_from_absl(monkeypatch):
    fl = flags.FlagValues()
    config.define_flags(fl, {})
    flags.DEFINE_bool("own_flag", False, "The experiment's own.", flag_values=fl, module_name="experiment.py")
    flags.DEFINE_bool("verbosity_like", False, "A library's.", flag_values=fl, module_name="absl.logging")
    flags.DEFINE_bool("shared_flag", False, "A shared module's.", flag_values=fl, module_name="experiments.pretraining")
    monkeypatch.setattr("sys.argv", ["experiment.py"])
    cli.show_project_flags(fl, "experiment.py")
    text = cli.full_help(fl)
    headings = [line for line in text.splitlines() if line and not line[0].isspace()]
    assert headings == ["Project flags (the experiment's own, then the core and shared ones):", "experiment.py:",
                        "cifar_jax.study.config:", "experiments.pretraining:",
                        "Library flags (absl's own: flag files, logging, debugging):", "absl.logging:", "absl.flags:"]
    own = text[text.index("experiment.py:"):text.index("cifar_jax.study.config:")]
    assert "--[no]own_flag" in own and "--epochs" not in own  # each flag once, under its own module
    assert text.count("--epochs:") == 1 and text.index("--[no]verbosity_like") > text.index("Library flags")
