"""Tests for io.files and results.studydir: atomic writes, lazy study directories, resume, statistics, tables."""

import json
import re

import numpy as np
import pytest
from scipy import stats

from cifar_jax.io import environment, files
from cifar_jax.io.files import ResultsError
from cifar_jax.results import studydir, summary
from cifar_jax.results.studydir import StudyDir


def make_record(config_name="lr=0.1", seed=0, status="done", test_acc=0.6, test_loss=1.0, n_epochs=3, **config):
    """A synthetic run record with simple, predictable numbers."""
    config = {"lr": 0.1, **config, "seed": seed}
    epochs = [{"epoch": e, "lr": config["lr"], "train_loss": 2.0 / e, "train_acc": 0.2 * e,
               "train_top5": 0.5, "val_loss": 2.1 / e, "val_acc": 0.19 * e, "val_top5": 0.5, "seconds": 1.0}
              for e in range(1, n_epochs + 1)]
    return {"run_id": f"{config_name},seed={seed}", "config_name": config_name, "seed": seed, "config": config,
            "status": status, "diverged_epoch": 2 if status == "diverged" else None,
            "untrained": {"val": {"loss": 2.3, "acc": 0.1, "top5": 0.5},
                          "test": {"loss": 2.3, "acc": 0.1, "top5": 0.5}},
            "epochs": epochs,
            "test": None if status != "done" else {"loss": test_loss, "acc": test_acc, "top5": 0.9},
            "final_train": None}


def strict_json(text: str):
    """json.loads that refuses the NaN/Infinity tokens Python's json accepts but JSON does not."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_atomic_json_round_trip_with_nan_and_numpy(tmp_path):
    path = tmp_path / "sub" / "x.json"
    obj = {"nan": float("nan"), "f32": np.float32(0.5), "i": np.int64(3), "arr": np.arange(3), "t": (1, 2),
           "inf": np.float32("-inf"), "arr_nan": np.array([1.5, np.nan, np.inf])}
    files.atomic_write_json(path, obj)
    back = strict_json(path.read_text())  # non-finite numbers are JSON's null
    assert back["nan"] is None and back["inf"] is None and back["arr_nan"] == [1.5, None, None]
    assert back["f32"] == 0.5 and back["i"] == 3
    assert back["arr"] == [0, 1, 2] and back["t"] == [1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "x.json"
    files.atomic_write_json(path, {"a": 1})
    with pytest.raises(ResultsError):
        files.atomic_write_json(path, {"bad": object()})
    files.atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "x.json"]
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"


def test_study_is_lazy_and_cleans_up(tmp_path):
    study = StudyDir(tmp_path / "study")
    assert study.runs_dir == study.root / "runs" and study.figures_dir == study.root / "figures"
    assert study.records() == [] and study.record("x") is None
    assert study.pending([("a", {"lr": 1})]) == ["a"]
    assert not study.root.exists()
    study.write_json("config.json", {"a": 1})
    study.write_text("flags.txt", "--lr=0.1\n")
    assert (study.root / "flags.txt").read_text() == "--lr=0.1\n"
    with pytest.raises(ResultsError, match="plain file name"):
        study.write_text("../escape.txt", "x")
    (study.root / "config.json").unlink()
    (study.root / "flags.txt").unlink()
    study.runs_dir.mkdir()
    assert study.remove_if_empty() and not study.root.exists()


def test_records_order_and_round_trip(tmp_path):
    study = StudyDir(tmp_path)
    for name, seed in (("b", 1), ("a", 2), ("b", 0), ("a", 0)):
        study.write_record(make_record(name, seed))
    order = [(r["config_name"], r["seed"]) for r in study.records()]
    assert order == [("a", 0), ("a", 2), ("b", 0), ("b", 1)]
    assert study.record("a,seed=2") == make_record("a", 2)
    assert not [p for p in study.runs_dir.iterdir() if p.name.startswith(".")]


def test_run_file_names_are_safe_and_distinct():
    names = {studydir.run_file_stem(r) for r in ("a/b", "a:b", "a b", "a_b", "..", "x" * 500)}
    assert len(names) == 6
    assert all(re.fullmatch(r"[A-Za-z0-9._=,+-]+", n) and len(n) < 140 and not n.startswith(".") for n in names)


def test_pending_resume_rules(tmp_path):
    study = StudyDir(tmp_path)
    for seed, status in ((0, "done"), (1, "diverged"), (2, "incomplete")):
        study.write_record(make_record(seed=seed, status=status, layers=[1, 2]))
    requested = [(f"lr=0.1,seed={s}", {"lr": 0.1, "layers": (1, 2), "seed": s}) for s in range(4)]
    assert study.pending(requested) == ["lr=0.1,seed=2", "lr=0.1,seed=3"]


def test_pending_changed_config_names_the_key(tmp_path):
    study = StudyDir(tmp_path)
    study.write_record(make_record(seed=0, opt={"momentum": 0.0}))
    with pytest.raises(ResultsError, match=r"'lr=0.1,seed=0'.*'opt.momentum'.*--name or --results_dir"):
        study.pending([("lr=0.1,seed=0", {"lr": 0.1, "opt": {"momentum": 0.9}, "seed": 0})])
    with pytest.raises(ResultsError, match=r"'extra'"):
        study.pending([("lr=0.1,seed=0", {"lr": 0.1, "opt": {"momentum": 0.0}, "seed": 0, "extra": 1})])
    with pytest.raises(ResultsError, match="duplicate"):
        study.pending([("a", {}), ("a", {})])


def test_an_invalid_record_is_not_written_and_a_damaged_one_is_set_aside_in_one_line(tmp_path, capsys):
    study = StudyDir(tmp_path)
    with pytest.raises(ResultsError, match="status"):
        study.write_record({**make_record(), "status": "weird"})
    good = study.write_record(make_record(seed=1))
    changed = study.write_record(make_record(seed=2))
    text = changed.read_text()
    assert '"acc": 0.6' in text
    changed.write_text(text.replace('"acc": 0.6', '"acc": 0.7'))  # still parses: only its checksum tells
    (study.runs_dir / "broken.json").write_text("{")
    (study.runs_dir / "other.json").write_text('{"run_id": 1}')  # JSON, but no run record
    assert [r["seed"] for r in study.records()] == [1]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("set aside" in line for line in lines)
    assert any(changed.name in line and "checksum differs" in line for line in lines)
    assert sorted(p.name for p in study.runs_dir.iterdir()) == sorted(
        [good.name, changed.name + ".damaged", "broken.json.damaged", "other.json.damaged"])
    assert study.record("lr=0.1,seed=2") is None  # its run is trained again


def test_summarize_statistics_and_counts():
    accs = [0.5, 0.6, 0.75]
    records = [make_record("A", s, test_acc=a, test_loss=1.0 + s) for s, a in enumerate(accs)]
    records += [make_record("A", 3, status="diverged"), make_record("A", 4, status="incomplete"),
                make_record("B", 0, test_acc=0.4)]
    got = summary.summarize(records)
    assert list(got["configs"]) == ["A", "B"]
    a = got["configs"]["A"]
    assert (a["n_runs"], a["n_done"], a["n_diverged"], a["n_incomplete"]) == (5, 3, 1, 1)
    acc = a["metrics"]["test_acc"]
    mean, std = np.mean(accs), np.std(accs, ddof=1)
    lo, hi = stats.t.interval(0.95, len(accs) - 1, loc=mean, scale=std / np.sqrt(len(accs)))
    assert acc["n"] == 3 and acc["values"] == accs
    assert acc["mean"] == pytest.approx(mean) and acc["std"] == pytest.approx(std)
    assert acc["ci95"] == pytest.approx([lo, hi])
    assert a["metrics"]["train_loss"]["mean"] == pytest.approx(2.0 / 3)
    assert a["metrics"]["untrained_val_acc"]["mean"] == pytest.approx(0.1)
    b = got["configs"]["B"]["metrics"]["test_acc"]
    assert (b["mean"], b["std"], b["ci95"], b["n"]) == (0.4, 0.0, [0.4, 0.4], 1)


def test_summarize_skips_missing_validation():
    rec = make_record()
    for epoch in rec["epochs"]:
        epoch["val_loss"] = float("nan")
        del epoch["val_acc"]
    stat = summary.summarize([rec])["configs"]["lr=0.1"]["metrics"]
    assert stat["val_acc"] == {"mean": None, "std": None, "ci95": None, "n": 0, "values": []}
    assert stat["val_loss"]["n"] == 0 and stat["test_acc"]["n"] == 1


def test_markdown_table_bolds_best_cells():
    records = [make_record("A", s, test_acc=0.7, test_loss=1.5) for s in range(2)]
    records += [make_record("B", 0, test_acc=0.6, test_loss=1.2), make_record("B", 1, status="diverged")]
    table = summary.test_table_markdown(summary.summarize(records))
    lines = table.strip().splitlines()
    assert lines[0] == "| config | test loss | test acc (%) | test top-5 (%) | n |"
    row_a = [c.strip() for c in lines[2].strip("|").split("|")]
    row_b = [c.strip() for c in lines[3].strip("|").split("|")]
    assert row_a[:3] == ["A", "1.500 ± 0.000", "**70.00 ± 0.00**"]
    assert row_b[:3] == ["B", "**1.200 ± 0.000**", "60.00 ± 0.00"]
    assert row_a[3] == row_b[3] == "**90.00 ± 0.00**"  # a tie: both are best
    assert row_a[4] == "2/2" and row_b[4] == "1/2, 1 diverged at epoch 2"


def test_the_cpu_is_named_with_the_extensions_that_set_its_speed(tmp_path):
    info = tmp_path / "cpuinfo"
    core = "processor\t: {}\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16{}\n\n"
    info.write_text(core.format(0, "") + core.format(1, " amx_tile"))  # the first processor's entry counts
    assert environment.cpu(info) == {"model": "AMD EPYC", "features": ["avx2", "fma", "avx512f", "avx512_bf16"]}
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2\n")
    assert environment.cpu(info) == {"model": "Some CPU", "features": []}
    assert environment.cpu(tmp_path / "missing")["features"] is None


def test_environment_keys_and_git(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    env = environment.environment()
    assert set(env) == {"versions", "backend", "devices", "hostname", "platform", "cpu", "timestamp_utc", "git"}
    assert env["cpu"]["features"] is None or set(env["cpu"]["features"]) <= set(environment.CPU_FEATURES)
    assert set(env["versions"]) == {"python", "jax", "jaxlib", "flax", "optax", "numpy"}
    assert env["backend"] and env["devices"]
    git = env["git"]
    assert git is None or (re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool))
    json.loads(files.to_json(env))
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert environment.environment()["git"] is None
