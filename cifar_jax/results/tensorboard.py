"""TensorBoard scalar event files, written with the standard library only (no TensorFlow, no
tensorboard package): live curves of a study while it trains (`--tensorboard`).

Every run of a study gets a folder `<study>/tensorboard/<run file stem>/` (the stem of its record,
`studydir.run_file_stem`), and after every epoch its record's numbers go there as scalars with
step = epoch (`epoch_scalars` names them), so `tensorboard --logdir <study>/tensorboard` shows the
study's runs side by side, live. A value that is not finite (a diverged run's NaN or ±inf; its
record stores null) is left out, so a diverged run's curve ends at its last finite epoch. A resumed
run continues in a new events file of its folder; the epochs it trains again after its snapshot
are written again with the same steps, and TensorBoard keeps the newer points (its event
reader discards a run's points from a step on when a later file restarts at that step).

The format, written here from its specification:

- An events file is a sequence of TFRecords: the data's length as uint64 little-endian, the masked
  CRC-32C of those 8 bytes (uint32 LE), the data, and the masked CRC-32C of the data (uint32 LE).
  CRC-32C is the Castagnoli CRC (reflected polynomial 0x82F63B78), not zlib's CRC-32; masked:
  ((crc >> 15) | (crc << 17)) + 0xa282ead8 modulo 2^32.
- Each record is a serialised `tensorflow.Event` protocol buffer: wall_time (double, field 1),
  step (int64, field 2), file_version (string, field 3; "brain.Event:2" in the first record of a
  file) or summary (message, field 5). A `Summary` holds repeated `value` (field 1), each a
  `Summary.Value` with tag (string, field 1) and simple_value (float, field 2).
- Protocol-buffer wire format: every field is a key varint (field number << 3 | wire type) and its
  payload; wire type 0 is a varint (7 bits per byte, low groups first, high bit set on every byte
  but the last; a negative int64 is its 64-bit two's complement), 1 is 8 little-endian bytes
  (double), 2 is a varint length and that many bytes (strings, sub-messages), 5 is 4 little-endian
  bytes (float).
"""
from __future__ import annotations

from pathlib import Path
import socket
import struct
import time
from typing import Any, Iterable, Mapping, Sequence

from cifar_jax.results import run_record
from cifar_jax.results.studydir import run_file_stem

FILE_VERSION = "brain.Event:2"
FOLDER = "tensorboard"  # under the study directory

# ----------------------------------------------------------------------------- CRC-32C


def _crc_table() -> tuple[int, ...]:
    """The 256 CRC-32C remainders of one byte, reflected (LSB-first) form."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`: crc32c(b"123456789") == 0xE3069283."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC-32C as TFRecord framing stores it (rotated right by 15 bits, plus a constant)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# ----------------------------------------------------------------------------- protocol buffers

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    """Base-128 varint of an unsigned value (a negative one as its 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, _LENGTH) + _varint(len(payload)) + payload


def summary_value(tag: str, value: float) -> bytes:
    """A serialised `Summary.Value` {tag, simple_value} (the value rounded to float32)."""
    return _bytes_field(1, tag.encode("utf-8")) + _key(2, _FIXED32) + struct.pack("<f", value)


def event(wall_time: float, step: int = 0, *, file_version: str | None = None,
          scalars: Mapping[str, float] | None = None) -> bytes:
    """A serialised `Event`: its time and step with either the file-version header or a summary of
    `scalars` (tag → value)."""
    out = _key(1, _FIXED64) + struct.pack("<d", wall_time)
    if step:  # proto3 leaves a zero out
        out += _key(2, _VARINT) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode("utf-8"))
    if scalars is not None:
        out += _bytes_field(5, b"".join(_bytes_field(1, summary_value(t, v)) for t, v in scalars.items()))
    return out


# ----------------------------------------------------------------------------- writers


class EventWriter:
    """One new events file in `folder` (created when missing), named
    events.out.tfevents.<unix time>.<host>; the time is moved on by a second where a file of that
    name exists, so a folder's files sort in the order they were started (TensorBoard reads them
    in name order)."""

    def __init__(self, folder: Path | str, wall_time: float | None = None):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time() if wall_time is None else wall_time
        stamp, host = int(now), socket.gethostname() or "localhost"
        while True:
            self.path = folder / f"events.out.tfevents.{stamp:010d}.{host}"
            try:
                self._file = open(self.path, "xb")
                break
            except FileExistsError:
                stamp += 1
        self._file.write(tfrecord(event(now, file_version=FILE_VERSION)))
        self.flush()

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None) -> None:
        """One event holding every value of `values` (tag → number) at `step`; none for no values."""
        if values:
            wall_time = time.time() if wall_time is None else wall_time
            self._file.write(tfrecord(event(wall_time, step, scalars=values)))

    def flush(self) -> None:
        """Hand what was written to the operating system (where TensorBoard reads it)."""
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_SPLITS = ("train", "val", "train_eval", "test")
_METRICS = ("loss", "acc", "top5")
_INSTRUMENTS = {"sharpness/max": "sharpness", "sharpness/min": "sharpness_min", "noise_scale/b_simple": "b_simple",
                "noise_scale/g2": "b_simple_g2", "noise_scale/trace": "b_simple_trace"}  # tag → record key


def epoch_scalars(entry: Mapping[str, Any], tensor_names: Sequence[str] = ()) -> dict[str, float]:
    """TensorBoard tags and values of one epoch entry of a run record (`run_record.add_epoch`):
    <metric>/<split> for the loss, acc and top5 of train (running averages, train mode), val,
    train_eval and test (eval mode, where recorded); lr, l2_penalty and loss_noise; the
    instruments' sharpness/max, sharpness/min (--sharpness_every) and noise_scale/b_simple,
    noise_scale/g2, noise_scale/trace (--noise_scale); and grad_norm/<tensor name> per parameter
    tensor (with --grad_stats). Values that are not finite numbers (NaN, ±inf, null) are left out."""
    out: dict[str, Any] = {f"{m}/{s}": entry.get(f"{s}_{m}") for m in _METRICS for s in _SPLITS}
    out.update((k, entry.get(k)) for k in ("lr", "l2_penalty", "loss_noise"))
    out.update((tag, entry.get(key)) for tag, key in _INSTRUMENTS.items())
    norms = entry.get("grad_norm") or []
    out.update((f"grad_norm/{tensor_names[i] if i < len(tensor_names) else i}", v) for i, v in enumerate(norms))
    finite = {tag: run_record.finite_or_none(v) for tag, v in out.items()}
    return {tag: v for tag, v in finite.items() if v is not None}


class StudyWriter:
    """The events files of a study's runs: one folder per run under `folder`
    (`<study>/tensorboard`), a file opened at a run's first epoch written by this writer."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self._writers: dict[str, EventWriter] = {}

    def run_folder(self, run_id: str) -> Path:
        return self.folder / run_file_stem(run_id)

    def add_epoch(self, run_id: str, entry: Mapping[str, Any], tensor_names: Sequence[str] = ()) -> None:
        """Write one epoch entry of the run's record (step = its epoch) and flush it to disk."""
        writer = self._writers.get(run_id)
        if writer is None:
            writer = self._writers[run_id] = EventWriter(self.run_folder(run_id))
        writer.scalars(int(entry["epoch"]), epoch_scalars(entry, tensor_names))
        writer.flush()

    def close(self, run_ids: Iterable[str] | None = None) -> None:
        """Close the files of `run_ids` (every open one by default)."""
        for run_id in list(self._writers) if run_ids is None else run_ids:
            writer = self._writers.pop(run_id, None)
            if writer is not None:
                writer.close()
