"""Shared test fixtures: tests run on CPU, offline, on synthetic data or the shared CIFAR copy.

Studies run in this process (`run_experiment`) unless the behaviour under test is the process
itself (the command line, signals, kill -9, locks between processes, multi-host); one persistent
compilation cache serves the whole suite, its workers and the subprocesses they start."""
import contextlib
import dataclasses
import importlib
import io
import os
import pathlib
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path("~/.cache/cifar_jax/xla-tests").expanduser()))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclasses.dataclass
class Finished:
    """What a study run in-process left: its exit status (0, or a SystemExit's code) and output."""

    returncode: int
    stdout: str
    stderr: str


def run_experiment(module: str, *args: str) -> Finished:
    """experiments.<module> run in this process from its flags (as `python -m experiments.<module>
    ARGS` would, without absl's app or global flags): bad input is exit status 2 and one line."""
    from cifar_jax.study import cli

    experiment = importlib.import_module(f"experiments.{module}")
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run_args(experiment, args)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if not isinstance(stop.code, (int, type(None))):
                print(stop.code, file=sys.stderr)
    return Finished(code, out.getvalue(), err.getvalue())

SHARED_CIFAR = pathlib.Path(os.environ.get("CIFAR_JAX_SHARED", "~/.cache/cifar10-shared")).expanduser()


@pytest.fixture
def shared_cifar() -> pathlib.Path:
    """The shared CIFAR-10 copy (built by .ci/run from ../shared); skip when absent."""
    if not (SHARED_CIFAR / "cifar-10-batches-py").is_dir():
        pytest.skip(f"no shared CIFAR-10 copy at {SHARED_CIFAR} (build it with ../shared/data/build_cifar10.py)")
    return SHARED_CIFAR


def reproduce_in_process(report: str, sections: list[str], results_dir: pathlib.Path, *more: str) -> None:
    """experiments.reproduce --smoke --only=SECTIONS, each study run in this process with the
    command line the driver gives it (`more` added), then the report (the driver's own process
    and its signals: test_reproduce, test_bad_inputs)."""
    import types

    from experiments import reproduce

    opts = types.SimpleNamespace(report=report, smoke=True, results_dir=str(results_dir), data_dir=None, dataset=None)
    chosen = [s for s in reproduce.REPORTS[report].sections if s.number in sections]
    assert len(chosen) == len(sections), sections
    for section in chosen:
        out = run_experiment(section.module, *reproduce.command(section, opts)[3:], *more)
        assert out.returncode == 0, out.stderr[-3000:]
    reproduce.write_report(reproduce.REPORTS[report], results_dir, results_dir / f"{report}_report_smoke", {}, smoke=True)


def init_group(spec, hp, image_shape=(8, 8, 3)):
    """The runs of `hp` initialised in one compiled program (as the engine's, with the engine's
    compiler options), not operation by operation under vmap."""
    import jax

    from cifar_jax.training import step

    init = lambda h: step.init_run(spec, h, image_shape)
    return jax.jit(jax.vmap(init), compiler_options=step.COMPILER_OPTIONS.get(jax.default_backend()))(hp)


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    import jax

    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


@pytest.fixture
def parse():
    """Parse a command line into a Config (one seed unless given): parse("--model=mlp", ...)."""
    from cifar_jax.study import config

    return lambda *args: config.parse("--seeds=1", *args)


@pytest.fixture(scope="module")
def noise_data():
    """Uniform-noise 8x8 images: no exact max-pool ties (where a rounding difference between
    batched and single kernels could flip the selected element), and cheap conv steps."""
    import numpy as np

    from cifar_jax.data import splits
    from cifar_jax.training import step

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (400, 8, 8, 3), np.uint8), rng.integers(0, 10, 400)
    tr, va = splits.make_split(400, 320, 80, seed=0)
    mean, std = splits.norm_stats(x, tr, "per_channel")
    return step.put_data(x, y, x[:100], y[:100], tr, va, mean, std)


def study_records(study: pathlib.Path) -> dict:
    """Every run record of a study directory by file stem, without its timings and checksum (the
    only parts that differ between two runs of the same study)."""
    import json

    out = {}
    for path in sorted((study / "runs").glob("*.json")):
        rec = json.loads(path.read_text())
        rec.pop("checksum", None)  # of the whole record, timings included
        rec["epochs"] = [{k: v for k, v in e.items() if "seconds" not in k} for e in rec["epochs"]]
        out[path.stem] = rec
    return out


def trained_epochs(out: str) -> list[tuple[str, int]]:
    """(run, epoch) of every epoch a study's progress output says it trained."""
    found = []
    for line in out.splitlines():
        if "] epoch " in line and line.count("[") >= 2:
            found.append((line.split("[")[2].split("]")[0], int(line.split("] epoch ")[1].split("/")[0])))
    return found


def free_port() -> int:
    """A TCP port free on this host now (a multi-host test's coordinator)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
