"""Faults a long study meets: a damaged record, snapshot, summary, lock or flag file (bytes changed
in the middle, truncated, emptied) at several moments, a full disk and a lost host: each one line,
no traceback, and a rerun that ends with the records of an uninterrupted study (timings aside)."""
import errno
import json
import os
from pathlib import Path
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from cifar_jax.results import run_record
from cifar_jax.study import records
from conftest import free_port, run_experiment, study_records, trained_epochs as _trained

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--dataset=synthetic", "--split=512/128", "--model=mlp", "--hidden=16", "--lr=0.1,0.05", "--seeds=2",
        "--epochs=4", "--batch_size=64", "--snapshot_every=1", "--name=s"]


def _study(root: Path, *extra: str):
    return run_experiment("lr_sweep", *ARGS, f"--results_dir={root}", *extra)


def _records(root: Path) -> dict:
    return study_records(root / "s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    assert _study(root).returncode == 0
    return root


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, reference) -> Path:
    """The study stopped (Ctrl-C) once its third run has recorded epoch 2: two runs finished,
    one mid-run with its snapshot, one not started."""
    root = tmp_path_factory.mktemp("interrupted")
    seen = []
    on_epoch = records.RecordWriter.on_epoch

    def stopping(self, runs, epoch, metrics, seconds):
        on_epoch(self, runs, epoch, metrics, seconds)
        seen.append(epoch)
        if len(seen) == 10:  # 4 + 4 epochs of the first two runs, then 2 of the third
            raise KeyboardInterrupt

    records.RecordWriter.on_epoch = stopping
    try:
        out = _study(root)
    finally:
        records.RecordWriter.on_epoch = on_epoch
    assert out.returncode == 130, out.stderr
    return root


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "middle":  # a byte changed in the middle: a digit stays a digit (still parses), else x
        i = len(data) // 2
        while not chr(data[i]).isdigit() and i < len(data) - 1 and path.suffix == ".json":
            i += 1
        new = b"7" if data[i:i + 1] != b"7" else b"3"
        path.write_bytes(data[:i] + new + data[i + 1:])
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")


def _target(root: Path, which: str) -> Path:
    recs = {p: json.loads(p.read_text()) for p in (root / "s" / "runs").glob("*.json")}
    if which == "snapshot":  # the newest (after epoch 2); the one after epoch 1 is kept beside it
        return max((root / "s" / "resume").glob("*.npz"), key=lambda p: int(p.stem.rpartition("-")[2]))
    finished = which == "finished record"
    return sorted(p for p, r in recs.items() if (r["status"] in run_record.FINISHED) == finished)[0]


@pytest.mark.parametrize("how", ["middle", "truncated", "emptied"])
@pytest.mark.parametrize("which,moment", [("finished record", "mid-study"), ("unfinished record", "mid-study"),
                                          ("snapshot", "mid-study"), ("finished record", "after the study")])
def test_a_damaged_file_is_one_line_and_the_rerun_recovers(tmp_path, reference, interrupted, which, moment, how):
    root = tmp_path / "study"
    shutil.copytree(interrupted if moment == "mid-study" else reference, root)
    before = _records(root)
    path = _target(root, which)
    _damage(path, how)
    out = _study(root)
    assert out.returncode == 0 and "Traceback" not in out.stdout + out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if path.name in line]
    assert len(lines) == 1 and "set aside" in lines[0], out.stdout[-3000:]
    assert path.with_name(path.name + ".damaged").is_file()  # kept beside, never read again
    assert _records(root) == _records(reference)
    if which == "snapshot":  # resumed from the snapshot before the damaged one, not from the start
        assert "trying the one before" in lines[0] and "resuming 1 run(s) after epoch 1" in out.stdout
    retrained = {run for run, _ in _trained(out.stdout)}
    damaged_run = json.loads((root / "s" / "runs" / path.name).read_text())["run_id"] if path.suffix == ".json" else None
    for name, rec in before.items():  # only what was lost is trained again
        if rec["status"] in run_record.FINISHED and rec["run_id"] != damaged_run:
            assert rec["run_id"] not in retrained


def test_snapshots_left_in_a_finished_study_are_removed(tmp_path, reference):
    """A process killed between a run's last record and its snapshots' removal leaves them: the
    next run of the finished study removes the folder (and trains nothing)."""
    root = tmp_path / "study"
    shutil.copytree(reference, root)
    (root / "s" / "resume").mkdir()
    (root / "s" / "resume" / "0123abcd-3.npz").write_bytes(b"left by a killed process")
    out = _study(root)
    assert out.returncode == 0 and not _trained(out.stdout) and not (root / "s" / "resume").exists()


@pytest.mark.parametrize("how", ["middle", "truncated", "emptied"])
def test_a_damaged_summary_is_written_again_from_the_records(tmp_path, reference, how):
    """Summaries, tables and figures are never read back: the rerun writes them again."""
    root = tmp_path / "study"
    shutil.copytree(reference, root)
    _damage(root / "s" / "summary.json", how)
    out = _study(root)
    assert out.returncode == 0 and "Traceback" not in out.stdout + out.stderr, out.stderr[-2000:]
    assert not _trained(out.stdout) and _records(root) == _records(reference)
    assert json.loads((root / "s" / "summary.json").read_text()) == json.loads((reference / "s" / "summary.json").read_text())


@pytest.mark.parametrize("how", ["middle", "truncated", "emptied"])
def test_a_damaged_lock_of_no_live_process_is_taken_over_in_one_line(tmp_path, reference, how):
    root = tmp_path / "study"
    shutil.copytree(reference, root)
    lock = root / "s" / ".lock"
    lock.write_text(json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}))
    _damage(lock, how)
    os.utime(lock, (time.time() - 60, time.time() - 60))  # written a minute ago, by a writer since gone
    out = _study(root)
    assert out.returncode == 0 and "Traceback" not in out.stdout + out.stderr, out.stderr[-2000:]
    assert sum("taking over the lock" in line for line in out.stdout.splitlines()) == 1
    assert not lock.exists() and _records(root) == _records(reference)


@pytest.mark.parametrize("how", ["middle", "truncated", "emptied"])
def test_a_damaged_flag_file_is_one_line_and_changes_nothing(tmp_path, reference, how):
    """The study's protocol.flags given back as --flagfile, damaged (a byte in the middle made
    0xff: not text): one line, exit 2, and the study's records untouched."""
    root = tmp_path / "study"
    shutil.copytree(reference, root)
    flags = tmp_path / "protocol.flags"
    data = (root / "s" / "protocol.flags").read_bytes()
    half = len(data) // 2
    flags.write_bytes({"middle": data[:half] + b"\xff" + data[half + 1:], "truncated": data[:half], "emptied": b""}[how])
    out = run_experiment("lr_sweep", f"--flagfile={flags}", f"--results_dir={root}", "--name=s",
                         f"--data_dir={tmp_path / 'no_data'}", "--nodownload")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.strip().count("\n") == 0, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert _records(root) == _records(reference)


def test_a_full_disk_stops_in_one_line_and_the_rerun_trains_no_epoch_again(tmp_path, reference, monkeypatch):
    """Every file sync after the 30th fails as on a full disk (two per file: its data and its
    folder; the 31st is in the second run's second epoch): exit 2, one line saying what to do,
    every JSON file left parses; once there is space the same command finishes, training no epoch
    a record already holds, with the records of an uninterrupted study."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 30:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = _study(tmp_path)
    monkeypatch.setattr(os, "fsync", real)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "No space left on device; fix that and run the same command again to resume" in out.stderr
    for path in (tmp_path / "s").rglob("*.json"):
        json.loads(path.read_text())
    held = {json.loads(p.read_text())["run_id"]: len(json.loads(p.read_text())["epochs"])
            for p in (tmp_path / "s" / "runs").glob("*.json")}
    assert sorted(held.values()) == [1, 4], held  # the first run finished, the second mid-run
    again = _study(tmp_path)
    assert again.returncode == 0, again.stderr
    assert not [(run, e) for run, e in _trained(again.stdout) if e <= held.get(run, 0)]
    assert _records(tmp_path) == _records(reference)


MULTI = [a for a in ARGS if not a.startswith(("--epochs", "--split"))] + ["--split=2048/128", "--epochs=6"]


def _processes(root: Path, count: int, *extra: str) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return [subprocess.Popen([sys.executable, "-u", "-m", "experiments.lr_sweep", *MULTI, f"--results_dir={root}",
                              f"--num_processes={count}", f"--process_id={i}", f"--coordinator_address={address}",
                              *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("lost,resumed_on", [(1, 1), (0, 2)])
def test_a_lost_host_ends_the_survivor_in_one_line_and_a_rerun_recovers(tmp_path, lost, resumed_on):
    """Two localhost processes; one (the coordinator, process 0, or the other) killed with SIGKILL
    mid-epoch. The survivor trains its own runs, then exits (status 3) within --host_timeout of
    waiting, with one line naming the lost process and no native dump; resumed on one process, or
    again on two, the study ends with the records of an uninterrupted one."""
    whole = run_experiment("lr_sweep", *MULTI, f"--results_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    root = tmp_path / "lost"
    procs = _processes(root, 2, "--host_timeout=5")
    victim, survivor = procs[lost], procs[1 - lost]
    for line in victim.stdout:
        if "epoch 2/" in line:
            break
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    t0 = time.monotonic()
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 3, err[-3000:]
    assert time.monotonic() - t0 < 60  # its own runs, then 5 s of silence (checked every 2 s)
    assert err.strip().count("\n") == 0 and f"process {lost} of 2 stopped" in err and "--num_processes=1" in err, err
    assert "Fatal Python error" not in err and "Aborted" not in err
    for p in _processes(root, resumed_on):
        _, perr = p.communicate(timeout=300)
        assert p.returncode == 0, perr[-3000:]
    _assert_close(_records(root), _records(tmp_path / "whole"))


def _assert_close(a, b, path="records"):
    """Equal JSON values, floats to 1e-5 (processes of a multi-host study train their runs apart:
    test_multihost's tolerance)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-6 + 1e-5 * abs(b), (path, a, b)
    else:
        assert a == b, (path, a, b)
