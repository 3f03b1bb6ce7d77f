"""The benchmarks' measurement functions at toy size: complete records, positive throughputs,
and a torch reference that matches cifar_jax's models and schedule."""
import dataclasses
import io
import json
import pathlib
import subprocess
import sys
import tarfile

from conftest import count_params  # noqa: E402
import jax
import matplotlib.image
import numpy as np
from PIL import Image
import pytest

from benchmarks import common
from benchmarks import compile_options
from benchmarks import engine as engine_bench
from cifar_jax.nn import models
from cifar_jax.training import engine, schedules, step

RECORD_KEYS = {"benchmark", "date_utc", "git_commit", "args", "device", "versions", "environment", "loadavg"}
ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_TORCH = "torch is not installed (optional: pip install -e .[bench]); the torch reference is not tested"


def toy_mlp() -> common.Workload:
    """The seeds/002 workload shrunk: 2 runs, 2 epochs of 3 steps, one hidden layer of 8."""
    w = common.mlp_group(runs=2, steps_per_epoch=3, epochs=2)
    return dataclasses.replace(w, model=models.ModelConfig("mlp", hidden=(8,), init="he"))


def toy_conv() -> common.Workload:
    """The seeds/000 LR sweep shrunk: 2 runs (two LRs, seed 0), 2 epochs of 3 steps."""
    return common.lr_sweep(runs=2, steps_per_epoch=3, epochs=2)


@pytest.fixture(scope="module")
def images() -> common.Images:
    """The random images the benchmarks fall back to, so both tests share compiled programs."""
    return common.random_images(toy_mlp().train_size, (32, 32, 3))


def positive_rates(measurements: list[dict]) -> bool:
    return all(m["images_per_s"] > 0 and m["images_per_s_per_run"] > 0 and m["steps"] > 0
               for m in measurements)


def test_engine_benchmark_measures_layouts_and_writes_a_record(images, tmp_path):
    layouts = (engine.auto_layout(toy_mlp().model), "seq_loop")
    result = engine_bench.bench_workload(toy_mlp(), images, quick=True, layouts=layouts)
    assert [m["label"] for m in result["group"]] == list(layouts)
    assert all(m["runs"] == 2 for m in result["group"])
    assert positive_rates(result["group"] + result["one_run"])
    assert result["grouping_gain"] > 0 and result["peak_memory"]["source"]
    path = tmp_path / "engine.jsonl"
    args = common.parse_args("test", ["--quick"])
    for _ in range(2):
        common.append_jsonl(path, common.make_record("engine", args, {"workloads": [result]}, (0.0, 0.0, 0.0)))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[-1])
    assert RECORD_KEYS <= set(record) and record["args"]["quick"] is True
    assert {"jax", "jaxlib", "flax", "optax", "numpy", "torch"} <= set(record["versions"])
    assert {"platform", "device_kind", "cpu_model", "cpu_features", "cores"} <= set(record["device"])
    assert "img/s total" in engine_bench.report(toy_mlp(), result)


def test_compile_options_train_to_the_losses_of_xla_defaults(images):
    """The engine's CPU compile options change compile and run time, not the numbers: the toy MLP
    group trains to the same losses both ways (each compiled afresh), and the options are back after."""
    w = toy_mlp()
    dev = common.device_data(images, common.training_split(images, w))
    hp = {k: v[0] for k, v in w.hparams().items()}
    try:
        default, ours = (compile_options.measure(w, dev, flag) for flag in (False, True))
        compile_options.use({})
        drawn_default = step.init_run(w.spec, hp, dev.x.shape[1:])
    finally:
        compile_options.use(compile_options.OURS)
    drawn_ours = step.init_run(w.spec, hp, dev.x.shape[1:])  # the initialisation too: bit-identical
    for a, b in zip(jax.tree_util.tree_leaves(drawn_default), jax.tree_util.tree_leaves(drawn_ours)):
        np.testing.assert_array_equal(a, b)
    assert ours.label == "ours" and default.label == "XLA default" and positive_rates([default.record(), ours.record()])
    assert ours.first_loss == pytest.approx(default.first_loss, rel=1e-5)
    assert ours.final_loss == pytest.approx(default.final_loss, rel=1e-5)
    assert compile_options.OURS["cpu"] == {"xla_backend_optimization_level": 1}


def test_torch_reference_writes_its_record_and_exits_1_on_a_failed_check(monkeypatch, tmp_path):
    pytest.importorskip("torch", reason=NO_TORCH)
    from benchmarks import torch_reference

    real_step = torch_reference.functional_step

    def bf16_breaks(base, weight_names, l2, autocast, device_type):
        if autocast is not None:
            raise RuntimeError("planted bf16 failure")
        return real_step(base, weight_names, l2, autocast, device_type)

    monkeypatch.setattr(torch_reference, "workloads", lambda quick, conv_runs=None, steps=None: [toy_mlp()])
    monkeypatch.setattr(torch_reference, "functional_step", bf16_breaks)
    monkeypatch.setattr(torch_reference, "TOLERANCE", -1.0)  # no gap is small enough: FAIL
    path = tmp_path / "torch_reference.jsonl"
    with pytest.raises(SystemExit) as exit_:
        torch_reference.main(["--quick", f"--data_dir={tmp_path / 'none'}", f"--results={path}"])
    assert exit_.value.code == 1
    record = json.loads(path.read_text())
    assert RECORD_KEYS <= set(record) and record["data"] == "random" and record["passed"] is False
    assert record["args"]["variants"] == list(torch_reference.VARIANTS)
    result = record["workloads"][0]
    keys = ("cifar_jax", "torch_reports_way", "torch_best_effort", "torch_func_compile_fp32")
    runs = [result[k] for k in keys]
    assert positive_rates(runs) and all(m["runs"] == 2 and m["steps"] == 3 for m in runs)
    # the failed variant is recorded, and left out of the ratios and the check
    assert result["torch_func_compile_bf16"] == {"label": "torch, func.vmap + compile (bf16)",
                                                 "error": "RuntimeError: planted bf16 failure"}
    assert positive_rates([result["cifar_jax_warm"]]) and result["cifar_jax_warm"]["final_loss"] == pytest.approx(
        result["cifar_jax"]["final_loss"], rel=1e-6)
    assert set(result["ratios"]) == {f"{kind}{name}" for kind in ("vs_", "wall_vs_", "wall_warm_vs_")
                                     for name in ("reports_way", "best_effort", "func_compile_fp32")}
    assert all(r > 0 for r in result["ratios"].values())
    assert len(result["check"]["relative_gaps"]) == 3
    assert result["check"]["learned"] is None  # random images: only agreement is checked
    # the compiled functional step trains every run as best effort does (same init and batches)
    func, best = result["torch_func_compile_fp32"], result["torch_best_effort"]
    assert func["torch_compile"]["compiled"] and func["compile_s"] > 0
    for loss in ("first_loss", "final_loss"):
        assert func[loss] == pytest.approx(best[loss], rel=1e-4)


@pytest.mark.parametrize("workload", [toy_mlp, toy_conv], ids=["mlp", "conv"])
def test_functional_step_trains_each_run_as_alone(images, workload):
    pytest.importorskip("torch", reason=NO_TORCH)
    import torch
    from benchmarks import torch_reference

    w = workload()
    x, y = torch_reference.torch_arrays(images, common.training_split(images, w), w.model)
    shape = tuple(images.x.shape[1:])
    alone, fp32, bf16 = common.Timings(), common.Timings(), common.Timings()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine can take 20x longer
    try:
        torch_reference.best_effort(w, x, y, shape, "cpu", alone, torch.contiguous_format)
        info = torch_reference.func_vmap(w, x, y, shape, "cpu", fp32, "fp32", compile=False)
        torch_reference.func_vmap(w, x, y, shape, "cpu", bf16, "bf16", compile=False)
    finally:
        torch.set_num_threads(threads)
    assert info == {"precision": "fp32", "tf32": False, "torch_compile": {"compiled": False}}
    for epoch in range(1, w.epochs + 1):  # per run, in run order
        np.testing.assert_allclose(fp32.losses[epoch], alone.losses[epoch], rtol=1e-5)
        np.testing.assert_allclose(bf16.losses[epoch], fp32.losses[epoch], rtol=2e-2)


def test_torch_reference_names_the_cpu_and_whether_its_bf16_is_native():
    from benchmarks import torch_reference
    line = torch_reference.cpu_line({"model": "AMD EPYC", "features": ["avx2", "fma", "avx512f", "avx512_bf16"]})
    assert line == "CPU: AMD EPYC (avx2, fma, avx512f, avx512_bf16); bf16 arithmetic: avx512_bf16"
    line = torch_reference.cpu_line({"model": "AMD EPYC", "features": ["avx2", "fma"]})
    assert line.endswith("no bf16 arithmetic: torch's bf16 variant is emulated here, compare fp32 with fp32")
    assert torch_reference.cpu_line({"model": "M1", "features": None}) == "CPU: M1 (extensions unknown)"


def test_torch_reference_flags_choose_variants_and_conv_run_counts():
    pytest.importorskip("torch", reason=NO_TORCH)
    import torch
    from benchmarks import torch_reference

    args = torch_reference.parse_args(["--quick", "--variants=func_bf16,best", "--conv_runs=25,100", "--steps=7"])
    assert args.quick and args.variants == ["func_bf16", "best"] and args.conv_runs == [25, 100]
    assert args.steps == 7
    defaults = torch_reference.parse_args([])
    assert defaults.variants == list(torch_reference.VARIANTS) and defaults.conv_runs is defaults.steps is None
    for bad in ("--variants=best,fastest", "--conv_runs=0", "--conv_runs=a", "--steps=2,3"):
        with pytest.raises(SystemExit):
            torch_reference.parse_args([bad])
    loads = torch_reference.workloads(quick=False, conv_runs=[25, 100], steps=7)
    assert [(w.name, len(w.runs), w.steps_per_epoch) for w in loads] == [
        ("baseline_lr_sweep", 25, 7), ("baseline_lr_sweep", 100, 7), ("mlp_seed002", 25, 7)]
    assert sorted(set(loads[1].runs)) == sorted((s, lr) for s in range(20) for lr in common.LRS)
    assert [len(w.runs) for w in torch_reference.workloads(quick=True)] == [5, 25]
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with torch_reference.allow_tf32(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags


def test_loss_check_fails_a_program_that_does_not_learn():
    pytest.importorskip("torch", reason=NO_TORCH)
    from benchmarks import torch_reference

    def m(label, first, final):
        return common.Measurement(label, 1, 1, 1, 0.0, 1.0, None, 1.0, first, final)

    torch_ref = [m("torch", 2.3, 1.6)]
    assert torch_reference.loss_check(m("jax", 2.3, 1.65), torch_ref, learnable=True)["passed"]
    assert not torch_reference.loss_check(m("jax", 2.3, 2.3), torch_ref, learnable=True)["passed"]
    assert not torch_reference.loss_check(m("jax", 1.6, 1.7), [m("torch", 1.6, 1.65)], learnable=True)["passed"]
    assert not torch_reference.loss_check(m("jax", 2.3, float("nan")), torch_ref, learnable=False)["passed"]
    assert not torch_reference.loss_check(m("jax", 2.3, 1.6), [], learnable=True)["passed"]  # nothing to compare


def test_torch_models_have_cifar_jax_sizes():
    pytest.importorskip("torch", reason=NO_TORCH)
    from benchmarks import torch_reference

    for cfg in (models.ModelConfig("baseline"), models.ModelConfig("mlp", hidden=(50, 50), init="he")):
        variables = jax.eval_shape(lambda: models.build(cfg).init(
            jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
        net = torch_reference.build_model(cfg, (32, 32, 3))
        assert sum(p.numel() for p in net.parameters()) == count_params(variables["params"])


def test_reference_learning_rate_matches_cifar_jax_schedule():
    w = common.mlp_group(runs=1, steps_per_epoch=10, epochs=3)
    steps = np.arange(2 * w.half_cycle + 5)
    ours = schedules.lr_at("cyclic", steps, lr=0.1, lr_min=w.lr_min, half_cycle=w.half_cycle)
    np.testing.assert_allclose([w.learning_rate(0.1, int(s)) for s in steps], ours, rtol=1e-5, atol=1e-8)


def test_torch_stays_optional(monkeypatch):
    code = ("import sys, benchmarks.engine, cifar_jax.study.cli; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    from benchmarks import torch_reference

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(SystemExit, match=r"pip install -e \.\[bench\]"):
        torch_reference.require_torch()


def test_a_report_part_runs_reproduce_and_packs_its_studies_without_snapshots(tmp_path):
    from benchmarks import gpu

    o = type("Options", (), {"data_dir": tmp_path / "data", "results_dir": tmp_path / "r", "smoke": True})()
    assert gpu.PARTS["report_seed001"][0](o)[1:] == ["-m", "experiments.reproduce", "--report=seed001",
                                                     f"--data_dir={o.data_dir}", f"--results_dir={o.results_dir}",
                                                     "--smoke"]
    assert not set(gpu.DEFAULT_PARTS) & {p for p in gpu.PARTS if p.startswith("report_")}
    assert gpu.pack_results(o.results_dir, tmp_path / "none.tar.gz") is None
    for path in ("study/runs/a.json", "study/figures/f.png", "study/resume/group0/state.npz",
                 "study/pretrain/checkpoints/a/metadata.json", "seed001_report/report.md"):
        (o.results_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (o.results_dir / path).write_text(path)
    figure = o.results_dir / "seed001_report" / "figures" / "study__f.png"
    figure.parent.mkdir()
    matplotlib.image.imsave(figure, np.random.default_rng(0).random((64, 64, 3)))  # 16M colours: noise
    with tarfile.open(gpu.pack_results(o.results_dir, tmp_path / "r.tar.gz")) as tar:
        files = sorted(m.name for m in tar.getmembers() if m.isfile())
        assert files == ["r/seed001_report/figures/study__f.png", "r/seed001_report/report.md", "r/study/runs/a.json"]
        assert tar.extractfile("r/study/runs/a.json").read() == b"study/runs/a.json"
        small = Image.open(io.BytesIO(tar.extractfile("r/seed001_report/figures/study__f.png").read()))
        assert small.size == (64, 64) and len(small.convert("RGB").getcolors(2**16)) <= 128


def test_an_instrument_part_runs_its_preset_and_packs_its_figures_without_checkpoints_or_spawned_states(tmp_path):
    from benchmarks import gpu

    o = type("Options", (), {"data_dir": tmp_path / "data", "results_dir": tmp_path / "r", "smoke": False})()
    for part, module in (("sharpness", "sharpness"), ("sharpness_gd", "sharpness"), ("connectivity", "connectivity"),
                         ("connectivity_convnet", "connectivity")):
        command = gpu.PARTS[part][0](o)
        assert command[1:3] == ["-m", f"experiments.{module}"] and command[3] == f"--flagfile=experiments/flags/{part}.flags"
        assert (ROOT / command[3].split("=", 1)[1]).exists()
    o.smoke = True
    for part in gpu.INSTRUMENT_PARTS:
        flagfile = gpu.PARTS[part][0](o)[3].split("=", 1)[1]
        assert flagfile.endswith("_smoke.flags") and (ROOT / flagfile).exists()
    assert not set(gpu.DEFAULT_PARTS) & set(gpu.INSTRUMENT_PARTS)
    for path in ("connectivity/parent/runs/a.json", "connectivity/parent/spawn/k1.npz",
                 "connectivity/children/checkpoints/c/metadata.json", "connectivity/connectivity.md"):
        (o.results_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (o.results_dir / path).write_text(path)
    figure = o.results_dir / "connectivity" / "figures" / "connectivity.png"
    figure.parent.mkdir()
    matplotlib.image.imsave(figure, np.random.default_rng(0).random((64, 64, 3)))
    with tarfile.open(gpu.pack_results(o.results_dir, tmp_path / "c.tar.gz", figures=True)) as tar:
        files = sorted(m.name for m in tar.getmembers() if m.isfile())
        assert files == ["r/connectivity/connectivity.md", "r/connectivity/figures/connectivity.png",
                         "r/connectivity/parent/runs/a.json"]
        small = Image.open(io.BytesIO(tar.extractfile("r/connectivity/figures/connectivity.png").read()))
        assert len(small.convert("RGB").getcolors(2**16)) <= 128


def test_halving_segments_add_the_seconds_of_the_runs_still_training():
    """benchmarks.halving: a segment's group step is the sum over the runs training in it of their
    epoch seconds per run, over the steps; a run pruned at epoch 1 counts in the first only."""
    from benchmarks import halving as halving_bench

    rec = lambda name, epochs: {"config_name": name, "epochs": [{"epoch": e, "run_seconds": 0.5} for e in range(1, epochs + 1)]}
    segments = halving_bench._segments([rec("a", 1), rec("b", 1), rec("c", 3), rec("d", 3)], [1], 3, steps=10)
    assert [(s["epochs"], s["configs"], s["runs"]) for s in segments] == [("1", 4, 4), ("2-3", 2, 2)]
    assert [s["group_ms_per_step"] for s in segments] == pytest.approx([200.0, 100.0])


def _fake_experiment(root: pathlib.Path, body: str) -> pathlib.Path:
    """A tree whose experiments/fake.py runs `body`, with an empty preset flagfile."""
    (root / "experiments" / "flags").mkdir(parents=True)
    (root / "experiments" / "__init__.py").write_text("")
    (root / "experiments" / "fake.py").write_text(body)
    (root / "experiments" / "flags" / "fake_smoke.flags").write_text("")
    return root


def test_startup_times_the_first_compiled_program_and_the_end_and_names_a_failure(tmp_path):
    from benchmarks import startup
    ok = _fake_experiment(tmp_path / "ok", "import sys, time\nprint(sys.argv[1:])\nprint('[g 1/1]: compiled "
                          "in 0.1 s', flush=True)\ntime.sleep(0.5)\nprint('done')\n")
    t = startup.time_command(ok, "fake", "fake_smoke", "DATA", tmp_path / "xla", tmp_path / "out")
    assert 0 < t["first_program_s"] < t["total_s"] and t["total_s"] - t["first_program_s"] >= 0.45
    silent = _fake_experiment(tmp_path / "silent", "print('trained')\n")
    with pytest.raises(RuntimeError, match="exit 0, no 'compiled in' line\ntrained"):
        startup.time_command(silent, "fake", "fake_smoke", "DATA", tmp_path / "xla", tmp_path / "out")
    failed = _fake_experiment(tmp_path / "failed", "import sys\nprint('compiled in 1 s')\nsys.exit('bad flag')\n")
    with pytest.raises(RuntimeError, match="(?s)exit 1\n.*bad flag"):
        startup.time_command(failed, "fake", "fake_smoke", "DATA", tmp_path / "xla", tmp_path / "out")


def test_an_epochs_seconds_are_the_time_its_runs_covered():
    """Runs one after another add their seconds; runs side by side (par layouts) count once."""
    assert common._covered([(0.0, 2.0), (5.0, 6.0)]) == 3.0  # one after another
    assert common._covered([(0.0, 2.0), (1.0, 3.0), (1.5, 2.5)]) == 3.0  # side by side
    assert common._covered([(4.0, 5.0), (0.0, 1.0), (0.5, 1.5)]) == 2.5
