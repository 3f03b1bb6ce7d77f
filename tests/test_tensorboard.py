"""--tensorboard: the stdlib-only event writer (CRC-32C, TFRecord framing, Event protobuf) read
back by TensorBoard's own reader, and a real 2-run, 2-epoch study whose events equal its records."""
import json
import math
from pathlib import Path
import struct

import pytest

from cifar_jax.results import tensorboard
from cifar_jax.results.studydir import run_file_stem

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import event_accumulator, event_file_loader  # noqa: E402
from tensorboard.compat.proto import event_pb2  # noqa: E402
from conftest import run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path) -> list:
    """Every Event of one events file, through TensorBoard's reader (which checks both CRCs)."""
    return list(event_file_loader.LegacyEventFileLoader(str(path)).Load())


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag → {step: value} of a run folder, as TensorBoard's EventAccumulator sees it."""
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_crc32c_known_values():
    # the check value of CRC-32C, and RFC 3720's (iSCSI) test vectors
    assert tensorboard.crc32c(b"123456789") == 0xE3069283
    assert tensorboard.crc32c(b"") == 0
    assert tensorboard.crc32c(bytes(32)) == 0x8A9136AA
    assert tensorboard.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tensorboard.crc32c(bytes(range(32))) == 0x46DD794E
    assert tensorboard.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    crc = tensorboard.crc32c(b"123456789")
    assert tensorboard.masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def test_event_encoding_equals_protobuf():
    """The hand-written wire format serialises exactly as the protobuf library does."""
    header = event_pb2.Event(wall_time=1.7e9 + 0.25, file_version="brain.Event:2")
    assert tensorboard.event(1.7e9 + 0.25, file_version="brain.Event:2") == header.SerializeToString()
    for step in (1, 127, 128, 300, 2**40, -1):
        ours = tensorboard.event(12.5, step, scalars={"loss/train": 0.1, "grad_norm/Dense_0/kernel": -3e-8, "é": 1e30})
        ref = event_pb2.Event(wall_time=12.5, step=step)
        for tag, value in (("loss/train", 0.1), ("grad_norm/Dense_0/kernel", -3e-8), ("é", 1e30)):
            ref.summary.value.add(tag=tag, simple_value=value)
        assert ours == ref.SerializeToString(), step
        assert event_pb2.Event.FromString(ours).step == step


def test_empty_and_one_event_files_round_trip(tmp_path):
    with tensorboard.EventWriter(tmp_path / "empty", wall_time=1000.5) as empty:
        empty.scalars(3, {})  # nothing to write
    events = load(empty.path)
    assert len(events) == 1 and events[0].file_version == "brain.Event:2" and events[0].wall_time == 1000.5
    assert empty.path.name.startswith("events.out.tfevents.0000001000.")

    with tensorboard.EventWriter(tmp_path / "one") as one:
        one.scalars(7, {"loss/val": 1.0 / 3, "lr": 0.1}, wall_time=2000.0)
    header, event = load(one.path)
    assert header.file_version == "brain.Event:2" and (event.step, event.wall_time) == (7, 2000.0)
    assert [(v.tag, v.simple_value) for v in event.summary.value] == [("loss/val", f32(1 / 3)), ("lr", f32(0.1))]
    assert scalars(tmp_path / "one") == {"loss/val": {7: f32(1 / 3)}, "lr": {7: f32(0.1)}}


def test_epoch_scalars_names_and_non_finite_values():
    entry = {"epoch": 3, "lr": 0.05, "l2_penalty": 12.0, "train_loss": 0.5, "train_acc": 0.8, "train_top5": 1.0,
             "val_loss": math.nan, "val_acc": None, "val_top5": math.inf, "test_acc": 0.7,
             "grad_norm": [1.5, math.nan, 2.5], "loss_trace": [0.4, 0.6], "seconds": 9.0, "run_seconds": 4.5,
             "sharpness": 30.5, "sharpness_min": -2.0, "sharpness_trace": [20.0, 30.5], "b_simple": 812.0,
             "b_simple_g2": 0.25, "b_simple_trace": None}
    assert tensorboard.epoch_scalars(entry, ["a/kernel", "a/bias"]) == {
        "loss/train": 0.5, "acc/train": 0.8, "top5/train": 1.0, "acc/test": 0.7, "lr": 0.05, "l2_penalty": 12.0,
        "grad_norm/a/kernel": 1.5, "grad_norm/2": 2.5, "sharpness/max": 30.5, "sharpness/min": -2.0,
        "noise_scale/b_simple": 812.0, "noise_scale/g2": 0.25}


def test_a_resumed_run_appends_a_new_file_whose_points_win(tmp_path):
    """A resumed run writes a second file (sorting after the first, even within one second); epochs
    trained again after the snapshot replace the first file's in TensorBoard's reader."""
    writer = tensorboard.StudyWriter(tmp_path)
    for epoch, loss in ((1, 3.0), (2, 2.0), (3, 1.5)):
        writer.add_epoch("lr=0.1,seed=0", {"epoch": epoch, "train_loss": loss})
    writer.close()
    again = tensorboard.StudyWriter(tmp_path)  # resumed from the snapshot after epoch 1
    for epoch, loss in ((2, 2.5), (3, 1.25), (4, 1.0)):
        again.add_epoch("lr=0.1,seed=0", {"epoch": epoch, "train_loss": loss})
    again.close()
    folder = tmp_path / run_file_stem("lr=0.1,seed=0")
    files = sorted(folder.iterdir())
    assert len(files) == 2 and [len(load(f)) for f in files] == [4, 4]
    assert scalars(folder) == {"loss/train": {1: 3.0, 2: 2.5, 3: 1.25, 4: 1.0}}


def test_study_events_equal_the_records(tmp_path):
    """A 2-run, 2-epoch study with --tensorboard: every scalar of every epoch entry (with the
    eval-mode train and test metrics and per-tensor gradient norms) reads back through
    TensorBoard's EventAccumulator equal to the run records, and nothing else is there."""
    out = run_experiment("lr_sweep", "--dataset=synthetic", "--split=300/100", "--batch_size=50", "--model=mlp",
                         "--hidden=16", "--init=he", "--epochs=2", "--seeds=2", "--lr=0.1", "--eval_train=epoch",
                         "--eval_test", "--grad_stats", "--tensorboard", f"--results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    study = tmp_path / "lr_sweep"
    records = [json.loads(p.read_text()) for p in sorted((study / "runs").glob("*.json"))]
    assert len(records) == 2 and sorted(p.name for p in (study / "tensorboard").iterdir()) == sorted(
        run_file_stem(r["run_id"]) for r in records)
    for rec in records:
        tensors = rec["grad_stats"]["tensors"]
        expected: dict[str, dict[int, float]] = {}
        for entry in rec["epochs"]:
            for tag, value in tensorboard.epoch_scalars(entry, tensors).items():
                expected.setdefault(tag, {})[entry["epoch"]] = value
        assert {"loss/train", "acc/val", "top5/val", "lr", "acc/train_eval", "loss/test"} <= set(expected)
        assert len([t for t in expected if t.startswith("grad_norm/")]) == len(tensors) > 0
        got = scalars(study / "tensorboard" / run_file_stem(rec["run_id"]))
        assert set(got) == set(expected)
        for tag, points in expected.items():
            assert set(got[tag]) == {1, 2}, tag
            for step, value in points.items():
                assert got[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-30), (tag, step)
        assert got["acc/test"][2] == pytest.approx(rec["epochs"][-1]["test_acc"], rel=1e-6)
