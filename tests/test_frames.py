"""The tidy loader (`frames.load`, `epoch_rows`, `final_rows`): a finished smoke study with a
diverged configuration, two unfinished runs and a part in a sub-folder, as plain rows and as
pandas DataFrames."""
import json
import math
from pathlib import Path
import sys

from conftest import run_experiment  # noqa: E402
import pytest

from cifar_jax.io import files
from cifar_jax.results import frames, run_record, studydir

ROOT = Path(__file__).resolve().parents[1]
STUDY = ["--dataset=synthetic", "--split=300/100", "--test_size=100", "--model=mlp", "--hidden=8",
         "--batch_size=100", "--epochs=2", "--seeds=2", "--lr=0.1,1e30", "--layout=vmap_loop", "--compile_cache="]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """lr_sweep at toy size (lr 1e30 diverges in its first epoch), plus two unfinished runs as an
    interrupted study leaves them (one epoch recorded; none yet) and a copy of one run in a part."""
    out = tmp_path_factory.mktemp("frames")
    done = run_experiment("lr_sweep", *STUDY, f"--results_dir={out}")
    assert done.returncode == 0, done.stderr
    st = studydir.StudyDir(out / "lr_sweep")
    first = st.record("lr=0.1,seed=0")
    for seed, epochs in ((2, 1), (3, 0)):
        unfinished = {**run_record.truncate(first, epochs), "run_id": f"lr=0.1,seed={seed}", "seed": seed,
                      "test": None, "config": {**first["config"], "seed": seed}}
        st.write_record(unfinished)
    studydir.StudyDir(st.root / "retrain").write_record(first)
    return st.root


def _records(root: Path) -> list[tuple[str, dict]]:
    return ([("", r) for r in studydir.StudyDir(root).records()]
            + [("retrain", r) for r in studydir.StudyDir(root / "retrain").records()])


def test_a_finished_smoke_study_as_dataframes(study):
    pd = pytest.importorskip("pandas")
    epochs, finals = frames.load(study)
    recs = _records(study)
    statuses = [r["status"] for _, r in recs]
    assert statuses.count("done") == 3 and statuses.count("diverged") == 2 and statuses.count("incomplete") == 2

    # one row per run × recorded epoch (a run with none yet: one row, epoch null)
    assert len(epochs) == sum(max(1, len(r["epochs"])) for _, r in recs) == 2 + 2 + 2 + 2 + 1 + 1 + 2
    assert list(epochs.columns[:8]) == [*frames.ID_COLUMNS, "epoch"]
    for col in ("lr", "train_loss", "train_acc", "train_top5", "val_loss", "val_acc", "val_top5", "l2_penalty",
                "seconds", "config.lr", "config.epochs", "config.model.hidden", "config.model.name", "config.split"):
        assert col in epochs.columns, col
    assert epochs["config.model.hidden"].unique().tolist() == [(8,)]  # lists as tuples: hashable
    assert epochs.groupby("config.lr").size().to_dict() == {0.1: 8, 1e30: 4}
    diverged = epochs[epochs.status == "diverged"]
    assert len(diverged) == 4 and diverged.train_loss.isna().all() and (diverged.diverged_epoch == 1).all()
    assert epochs[epochs.run_id == "lr=0.1,seed=3"].epoch.isna().all()
    mine = epochs[(epochs.part == "") & (epochs.run_id == "lr=0.1,seed=0")]
    assert mine.val_acc.tolist() == run_record.curve(recs[0][1], "val_acc").tolist()

    # one row per run × split; test accuracy exactly the records', null for diverged and unfinished runs
    assert len(finals) == 2 * len(recs) and set(finals.split) == {"val", "test"}
    assert list(finals.columns[:12]) == [*frames.ID_COLUMNS, *frames.FINAL_COLUMNS]
    test = finals[finals.split == "test"].set_index(["part", "run_id"])
    for part, rec in recs:
        row = test.loc[(part, rec["run_id"])]
        assert row.status == rec["status"] and row.epochs_done == len(rec["epochs"])
        if rec["status"] == "done":
            assert row.acc == rec["test"]["acc"] and row.top5 == rec["test"]["top5"]
        else:
            assert math.isnan(row.acc) and math.isnan(row.loss)
    assert finals[finals.split == "test"].groupby("config_name").acc.count().to_dict() == {"lr=0.1": 3, "lr=1e+30": 0}

    parts_only = frames.load(study, recursive=False)
    assert set(parts_only.epochs.part) == {""} and len(parts_only.finals) == 2 * 6
    empty = frames.load(study / "figures")
    assert len(empty.epochs) == 0 and list(empty.finals.columns) == [*frames.ID_COLUMNS, *frames.FINAL_COLUMNS]
    assert isinstance(epochs, pd.DataFrame)


def test_plain_rows_without_pandas(study, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install pandas \(or the \[frames\] extra\)"):
        frames.load(study)
    rows = frames.final_rows(study)
    json.dumps(rows, allow_nan=False)  # null values are None, never NaN
    diverged = [r for r in rows if r["status"] == "diverged"]
    assert diverged and all(r["acc"] is None and r["diverged_epoch"] == 1 for r in diverged)
    assert len({tuple(r) for r in rows}) == 1  # every row has the same keys
    assert {r["part"] for r in frames.epoch_rows(study)} == {"", "retrain"}
    with pytest.raises(files.ResultsError, match="no such study directory"):
        frames.epoch_rows(study / "missing")
