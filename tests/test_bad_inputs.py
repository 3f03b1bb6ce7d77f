"""Nothing lost, nothing mixed up (issue 11): every bad input is one line, exit 2 and nothing
written; Ctrl-C and SIGTERM are one line too; run records are strict JSON; interrupted writes
leave nothing behind on the next start.

The table of bad inputs runs in-process through the entry point's own code path
(`cli.run_args`: `cli.parse_flags` + `cli.run_checked` with the real lr_sweep experiment: absl parsing, flag
validation, output and dataset checks, and the experiment itself where a check needs the data);
a few cases run as real subprocesses, as a user would start them."""
import json
import math
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

from cifar_jax.data import datasets
from cifar_jax.io import files
from cifar_jax.results import run_record
from cifar_jax.study import cli, config, runner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import lr_sweep  # noqa: E402

BASE = ["--dataset=synthetic", "--split=200/100", "--epochs=1", "--seeds=1", "--compile_cache="]
DEAD_PID = 999_999_999  # above any pid_max: never a live process

BAD = [  # (flags, what the one line must name); {tmp} is the test's folder, {file} a file in it
    # per-run options (cifar_jax/config/options.py) and the learning rate
    ("--lr=inf", "--lr"), ("--lr=nan", "--lr"), ("--lr=-1", "--lr"), ("--lr=1e400", "--lr"),
    ("--optimizer=sgd,adam --lr=sgd:0.1,adam:inf", "--lr"), ("--lr=adam:0.1", "--lr"),
    ("--l2=inf", "--l2"), ("--l2=nan", "--l2"), ("--l2=abc", "--l2"),
    ("--init_scale=inf", "--init_scale"), ("--init_scale=0", "--init_scale"),
    ("--weight_decay=nan", "--weight_decay"), ("--weight_decay=inf", "--weight_decay"),
    ("--noise_std=nan", "--noise_std"), ("--noise_std=inf", "--noise_std"),
    ("--decay_rate=inf", "--decay_rate"), ("--decay_rate=nan", "--decay_rate"),
    ("--dropout=1.0", "--dropout"), ("--dropout=nan", "--dropout"), ("--momentum=inf", "--momentum"),
    ("--adam_b2=1", "--adam_b2"), ("--adam_eps=inf", "--adam_eps"), ("--rmsprop_eps=nan", "--rmsprop_eps"),
    ("--label_smoothing=nan", "--label_smoothing"), ("--salt_pepper=inf", "--salt_pepper"),
    # group options
    ("--clip_norm=nan", "--clip_norm"), ("--clip_norm=inf", "--clip_norm"), ("--clip_norm=-1", "--clip_norm"),
    ("--batch_size=0", "--batch_size"), ("--epochs=0", "--epochs"), ("--model=nope", "--model"),
    ("--hidden=0", "--hidden"),
    # scalar floats and integers of config.from_flags
    ("--decay_every=nan", "--decay_every"), ("--decay_every=inf", "--decay_every"), ("--decay_every=0", "--decay_every"),
    ("--lr_min=nan", "--lr_min"), ("--lr_min=inf", "--lr_min"),
    ("--schedule=cyclic --lr=0.05 --lr_min=0.1", "--lr_min"),
    ("--memory_limit_gb=inf", "--memory_limit_gb"), ("--memory_limit_gb=nan", "--memory_limit_gb"),
    ("--zca_epsilon=inf", "--zca_epsilon"), ("--zca_epsilon=nan", "--zca_epsilon"),
    ("--half_cycle=-1", "--half_cycle"), ("--eval_batch_size=0", "--eval_batch_size"),
    ("--num_processes=2", "--num_processes"),
    # seeds
    ("--seeds=", "--seeds"), ("--seeds=0", "--seeds"), ("--seeds=1,1", "--seeds"), ("--seeds=a", "--seeds"),
    # what absl itself refuses, and stray arguments
    ("--split_seed=abc", "--split_seed"), ("--nope=1", "nope"), ("--eval_train=nope", "--eval_train"),
    ("stray", "stray"),
    # names from a registry
    ("--schedule=nope", "--schedule"), ("--layout=nope", "--layout"), ("--precision=fp8", "--precision"),
    # output locations
    ("--name=..", "--name"), ("--name=/abs", "--name"), ("--name=a/b", "--name"), ("--name=.", "--name"),
    ("--results_dir={file}", "{file}"), ("--results_dir={file}/sub", "{file}"), ("--results_dir={tmp} --name=taken", "--name"),
    # the data (some found only once it is loaded)
    ("--dataset=nope", "--dataset=nope"), ("--split=abc", "--split"), ("--split=60000/5000", "--split"),
    ("--batch_size=500", "--batch_size"), ("--classes=class0,nope", "--classes"), ("--test_size=5000", "--test_size"),
    ("--dataset=cifar10 --data_dir={tmp}/empty --nodownload", "cifar-10-python.tar.gz"),
    # the experiment's own flags
    ("--lr_range --range_max=inf", "--range_max"), ("--lr_range --range_min=nan", "--range_min"),
]


def tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.fixture
def start(tmp_path, capsys):
    """Run lr_sweep's entry point in-process on `args`; returns (exit status, stderr lines), or
    fails when the input was accepted (the experiment ran to its end)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "taken").write_text("not a folder")

    def start(*args: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            cli.run_args(lr_sweep, [*BASE, f"--results_dir={tmp_path}/results", *args])
        return stopped.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]

    return start


def test_the_table_has_forty_bad_inputs_or_more():
    assert len(BAD) >= 40 and len({args for args, _ in BAD}) == len(BAD)


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, start, args, needle):
    before = tree(tmp_path)
    fill = dict(tmp=tmp_path, file=tmp_path / "file")
    code, lines = start(*args.format(**fill).split())
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and needle.format(**fill) in lines[0], lines[0]
    assert tree(tmp_path) == before  # no study folder, no results folder, no cache


def test_a_read_only_results_dir_is_refused_before_any_work(tmp_path, start):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod does not stop root's writes, so no folder is read-only here")
        code, lines = start(f"--results_dir={folder}/results")
    finally:
        folder.chmod(0o755)
    assert code == 2 and len(lines) == 1 and f"{folder} is not writable" in lines[0], lines
    assert not any(folder.iterdir())


def test_unwritable_output_folders_are_named(tmp_path):
    assert files.unwritable(tmp_path / "new" / "deeper") is None  # made when first written
    assert not (tmp_path / "new").exists()
    assert files.unwritable(__file__) == f"{__file__} is a file, not a folder"
    assert files.unwritable(f"{__file__}/a/b") == f"{__file__} is a file, not a folder"


# ----------------------------------------------------------------------------- strict JSON and leftovers

def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity, as the parsers of other languages do."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def plant_leftovers(root: Path) -> dict[str, Path]:
    """Temp files and folders as interrupted writes leave them (old enough to be removed), a
    live process's temp file and a fresh one of unknown owner (kept), and files of our own."""
    old = time.time() - 60
    planted = {
        "dead": root / "runs" / f".default,seed=0.json.{DEAD_PID}.abcd1234.tmp",
        "old_format": root / "figures" / ".val_comparison.png.k2j4h5g6.tmp",
        "checkpoint": root / "checkpoints" / ".default,seed=0.tmp-x1y2z3",
        "live": root / "runs" / f".other.json.{os.getpid()}.abcd1234.tmp",
        "fresh": root / "figures" / ".curves.png.q1w2e3r4.tmp",
        "ours": root / "notes.tmp",
        "hidden": root / ".keep",
    }
    for name, path in planted.items():
        if name == "checkpoint":
            (path / "arrays").mkdir(parents=True)
            (path / "arrays" / "x").write_bytes(b"partial")
            os.utime(path / "arrays" / "x", (old, old))
            os.utime(path / "arrays", (old, old))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("partial")
        if name != "fresh":
            os.utime(path, (old, old))
    return planted


def test_remove_leftovers_keeps_what_may_still_be_written(tmp_path):
    planted = plant_leftovers(tmp_path)
    removed = files.remove_leftovers(tmp_path)
    assert set(removed) == {planted["dead"], planted["old_format"], planted["checkpoint"]}
    assert {name for name, path in planted.items() if path.exists()} == {"live", "fresh", "ours", "hidden"}


def test_the_data_folder_is_tidied_on_load_top_level_only(tmp_path):
    cache_temp = tmp_path / f".cifar10.npz.{DEAD_PID}.tmp"  # a killed cache write
    deeper = tmp_path / "xla" / f".entry.{DEAD_PID}.abcd.tmp"  # not ours to judge
    for path in (cache_temp, deeper):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")
        os.utime(path, (time.time() - 60,) * 2)
    with pytest.raises(datasets.DataError, match="no copy"):
        datasets.load("cifar10", str(tmp_path), download=False)
    assert not cache_temp.exists() and deeper.exists()


def test_diverged_records_are_strict_json_and_leftovers_go_at_start(tmp_path, parse):
    cfg = parse("--dataset=synthetic", "--split=256/64", "--model=mlp", "--hidden=16", "--batch_size=64",
                "--epochs=2", "--lr=1000,0.05", f"--results_dir={tmp_path}", "--compile_cache=")
    planted = plant_leftovers(tmp_path / "diverge")
    st = runner.run(cfg, "diverge", "Diverging", lambda p: config.grid(cfg, len(p.train_idx), p.dataset.num_classes)).study
    assert not planted["dead"].exists() and not planted["checkpoint"].exists() and planted["ours"].exists()
    paths = [*st.runs_dir.glob("*.json"), *(st.root / name for name in ("summary.json", "config.json", "env.json"))]
    parsed = {p.name: strict_loads(p.read_text()) for p in paths}  # no NaN/Infinity tokens anywhere
    assert len(parsed) == 5
    diverged, done = (parsed[f"lr={lr},seed=0.json"] for lr in (1000, 0.05))
    assert diverged["status"] == "diverged" and diverged["diverged_epoch"] in (1, 2) and done["status"] == "done"
    assert diverged["test"]["loss"] is None and diverged["epochs"][-1]["val_loss"] is None
    assert math.isnan(run_record.final(diverged, "test")["loss"]) and math.isnan(run_record.last(diverged, "val_loss"))
    assert f"1 diverged at epoch {diverged['diverged_epoch']}" in (st.root / "test_table.md").read_text()


# ----------------------------------------------------------------------------- real subprocesses

def command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"experiments.{module}", *args]


ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("args,needle", [
    ("--lr=inf", "--lr"), ("--split_seed=abc", "--split_seed"), ("--results_dir={tmp}/file", "/file"),
])
def test_bad_input_from_the_command_line(tmp_path, args, needle):
    (tmp_path / "file").write_text("not a folder")
    out = subprocess.run(command("lr_sweep", *BASE, f"--results_dir={tmp_path}/results",
                                 *args.format(tmp=tmp_path).split()),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and needle in lines[0], out.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig,status,word", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupted_study_says_what_is_kept_in_one_line(tmp_path, sig, status, word):
    proc = subprocess.Popen(command("lr_sweep", "--dataset=synthetic", "--split=512/128", "--model=mlp",
                                    "--hidden=16", "--epochs=200", "--seeds=1", f"--results_dir={tmp_path}"),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "epoch 1/200" in line:
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == status and len(lines) == 1, err
    assert word in lines[0] and "run the same command again to resume" in lines[0] and str(tmp_path) in lines[0]
    record = strict_loads((tmp_path / "lr_sweep" / "runs" / "default,seed=0.json").read_text())
    assert record["status"] == "incomplete" and len(record["epochs"]) >= 1
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("group,sig,status,word", [(True, signal.SIGINT, 130, "Ctrl-C"),
                                                   (False, signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupted_report_stops_its_study_cleanly(tmp_path, group, sig, status, word):
    """reproduce runs each study as a child: Ctrl-C (at the terminal: the whole process group) and a
    SIGTERM to reproduce alone (passed on) both end in the study's line and reproduce's, no traceback."""
    proc = subprocess.Popen(command("reproduce", "--report=seed002", "--smoke", "--only=2", "--dataset=synthetic",
                                    f"--results_dir={tmp_path}"),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("data: "):  # the study's process is up, its signal handlers set
                break
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == status and len(lines) == 2, err
    assert lines[0].startswith(f"{'interrupted' if group else 'terminated'} ({word}): every finished epoch is saved")
    assert lines[1] == "reproduce --report=seed002: stopped in §2; run the same command again to resume"
    assert not (tmp_path / "seed002_report_smoke").exists()
