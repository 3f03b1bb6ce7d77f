"""PyTorch reference: the same training as cifar_jax (models, batch sizes, optimiser, steps and
runs) the reports' way, a best-effort way and all runs at once (torch.func.vmap + torch.compile,
fp32/TF32 and bf16), against cifar_jax's auto layout in the same process, with a check that all
reach a comparable training loss.

    python -m benchmarks.torch_reference [--quick] [--data_dir=...] [--results=...]
        [--variants=reports,best,func_fp32,func_bf16] [--conv_runs=25,100] [--steps=N]

Needs PyTorch (`pip install -e .[bench]`); cifar_jax itself never imports it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from benchmarks import common
from cifar_jax.io import environment
from cifar_jax.nn import models
from cifar_jax.training import engine

# Two epochs per run, the first untimed (warm-up), the second's mean loss compared.
FULL = {"conv": dict(runs=25, steps_per_epoch=703, epochs=2),
        "mlp": dict(runs=25, steps_per_epoch=450, epochs=2)}
QUICK = {"conv": dict(runs=5, steps_per_epoch=20, epochs=2),
         "mlp": dict(runs=25, steps_per_epoch=50, epochs=3)}
TOLERANCE = 0.10  # the final losses must agree within 10% (relative to torch's)
PROBE_STEPS = 5   # timed steps per memory format when choosing channels_last or not
# --variants name -> record key; ratios are `vs_<key without "torch_">` and `wall_vs_<same>`.
VARIANTS = {"reports": "torch_reports_way", "best": "torch_best_effort",
            "func_fp32": "torch_func_compile_fp32", "func_bf16": "torch_func_compile_bf16"}
INSTALL = "PyTorch is needed for this benchmark: pip install -e .[bench]  (torch==2.13.0)"


def require_torch() -> Any:
    """torch, imported only here; exits with how to install it when missing."""
    try:
        import torch
    except ImportError:
        sys.exit(INSTALL)
    return torch


def workloads(quick: bool, conv_runs: Sequence[int] | None = None,
              steps: int | None = None) -> list[common.Workload]:
    """The LR-sweep group (one per count in `conv_runs`, default the size's) and the MLP group at
    full or --quick size, with `steps` per epoch if given."""
    sizes = QUICK if quick else FULL
    counts = conv_runs or [sizes["conv"]["runs"]]
    per_epoch = {"steps_per_epoch": steps} if steps else {}
    return [*(common.lr_sweep(**{**sizes["conv"], **per_epoch, "runs": n}) for n in counts),
            common.mlp_group(**{**sizes["mlp"], **per_epoch})]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """common's flags plus --variants, --conv_runs and --steps (parsed first, the rest left to common)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--variants", type=_variant_list, default=list(VARIANTS))
    own.add_argument("--conv_runs", type=_int_list, default=None)
    own.add_argument("--steps", type=_positive_int, default=None)
    mine, rest = own.parse_known_args(argv)
    args = common.parse_args(
        "The same training as cifar_jax in PyTorch, several ways, timed against cifar_jax, with a "
        f"loss check. Torch reference flags: --variants=NAME[,NAME..] chooses the torch "
        f"variants from {', '.join(VARIANTS)} (default all); --conv_runs=N[,N..] makes one "
        f"BaselineNet LR-sweep workload per run count (default {FULL['conv']['runs']}, "
        f"--quick {QUICK['conv']['runs']}); --steps=N steps per epoch of every workload (default "
        "the size's).", rest)
    return argparse.Namespace(**vars(args), **vars(mine))


def _variant_list(text: str) -> list[str]:
    """A comma list of VARIANTS names, in the order given."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown or no variants {unknown}; choose from {', '.join(VARIANTS)}")
    return names


def _int_list(text: str) -> list[int]:
    """A comma list of positive integers."""
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, not {text!r}")
    return counts


def _positive_int(text: str) -> int:
    """One positive integer."""
    values = _int_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, not {text!r}")
    return values[0]


# ----------------------------------------------------------------------------- models

def build_model(model: models.ModelConfig, image_shape: tuple[int, int, int]) -> Any:
    """BaselineNet or the MLP as torch modules, initialised as cifar_jax does."""
    nn = require_torch().nn
    if model.name == "mlp":
        return _mlp(nn, math.prod(image_shape), model.hidden, model.num_classes, model.init)
    if model.name != "baseline" or model.norm != "none":
        raise ValueError(f"the torch reference has BaselineNet and the MLP only, not {model}")
    height, width, channels = image_shape
    layers, features = [], channels
    for out in (16, 32, 64):
        layers += [nn.Conv2d(features, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        features = out
    flat = features * (height // 8) * (width // 8)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(),
                         nn.Linear(64, model.num_classes))


def _mlp(nn: Any, inputs: int, hidden: tuple[int, ...], classes: int, init: str) -> Any:
    """Dense-ReLU layers and a dense classifier; "he" is flax's he_normal (truncated at 2σ)."""
    widths = (inputs, *hidden, classes)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if init == "he":
            std = math.sqrt(2.0 / a) / 0.87962566103423978  # flax's truncated-normal correction
            nn.init.trunc_normal_(layers[-1].weight, 0.0, std, -2 * std, 2 * std)
            nn.init.zeros_(layers[-1].bias)
        if i < len(hidden):
            layers.append(nn.ReLU())
    return nn.Sequential(nn.Flatten(), *layers)


def torch_arrays(images: common.Images, split: common.Split, model: models.ModelConfig) -> tuple[Any, Any]:
    """The training split normalised as cifar_jax does, NCHW for convolutions, on the host."""
    torch = require_torch()
    train_idx, mean, std = split
    x = torch.from_numpy((images.x[train_idx].astype(np.float32) / 255.0 - mean) / std)
    if model.name != "mlp":
        x = x.permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(images.y[train_idx].astype(np.int64))


# ----------------------------------------------------------------------------- training

def sgd_step(net: Any, opt: Any, weights: list, x: Any, y: Any, lr: float, l2: float) -> Any:
    """One plain-SGD step on mean cross-entropy + λ·ΣW² (weights only); returns the CE, unsynced."""
    torch = require_torch()
    for group in opt.param_groups:
        group["lr"] = lr
    ce = torch.nn.functional.cross_entropy(net(x), y)
    loss = ce + l2 * sum(w.square().sum() for w in weights) if l2 else ce
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return ce.detach()


def init_model(w: common.Workload, seed: int, shape: tuple[int, int, int], device: str,
               memory_format: Any = None) -> Any:
    """The workload's model freshly initialised from `seed`, on the device."""
    torch = require_torch()
    torch.manual_seed(seed)
    return build_model(w.model, shape).to(device, memory_format=memory_format or torch.contiguous_format)


def _setup(w: common.Workload, seed: int, lr: float, shape: tuple[int, int, int], device: str,
           memory_format: Any) -> tuple[Any, Any, list]:
    """A freshly initialised model from `seed`, its SGD optimiser and its weight tensors."""
    torch = require_torch()
    net = init_model(w, seed, shape, device, memory_format)
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    return net, torch.optim.SGD(net.parameters(), lr=lr), weights


def reports_way(w: common.Workload, x: Any, y: Any, shape: tuple[int, int, int], device: str,
                rec: common.Timings) -> None:
    """One run after another; a shuffling DataLoader over a TensorDataset, each batch copied to
    the device, the loss read back every step (as the reports' code did)."""
    torch = require_torch()
    for run, (seed, lr) in enumerate(w.runs):
        net, opt, weights = _setup(w, seed, lr, shape, device, torch.contiguous_format)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=w.batch_size, shuffle=True,
            drop_last=True, generator=torch.Generator().manual_seed(seed))
        step = 0
        for epoch in range(1, w.epochs + 1):
            start, total = time.perf_counter(), 0.0
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                total += sgd_step(net, opt, weights, xb, yb, w.learning_rate(lr, step), w.l2).item()
                step += 1
            rec.add_epoch(epoch, total / w.steps_per_epoch, time.perf_counter() - start)


def best_effort(w: common.Workload, x: Any, y: Any, shape: tuple[int, int, int], device: str,
                rec: common.Timings, memory_format: Any) -> None:
    """One run after another with the data on the device as one tensor, batches from a
    per-epoch randperm, the loss summed on the device and read once per epoch."""
    torch = require_torch()
    x, y = x.to(device).contiguous(memory_format=memory_format), y.to(device)
    for run, (seed, lr) in enumerate(w.runs):
        net, opt, weights = _setup(w, seed, lr, shape, device, memory_format)
        gen = torch.Generator(device=device).manual_seed(seed)
        step = 0
        for epoch in range(1, w.epochs + 1):
            start, total = time.perf_counter(), torch.zeros((), device=device)
            perm = torch.randperm(len(y), device=device, generator=gen)
            for s in range(w.steps_per_epoch):
                idx = perm[s * w.batch_size:(s + 1) * w.batch_size]
                total += sgd_step(net, opt, weights, x[idx], y[idx], w.learning_rate(lr, step), w.l2)
                step += 1
            mean = total.item() / w.steps_per_epoch
            rec.add_epoch(epoch, mean, time.perf_counter() - start)


def fastest_memory_format(w: common.Workload, x: Any, y: Any, shape: tuple[int, int, int],
                          device: str) -> Any:
    """channels_last when it trains the conv model faster here (a few timed steps), else contiguous."""
    torch = require_torch()
    if w.model.name == "mlp":
        return torch.contiguous_format
    seconds = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        net, opt, weights = _setup(w, 0, 0.01, shape, device, fmt)
        xb = x[:w.batch_size].to(device).contiguous(memory_format=fmt)
        yb = y[:w.batch_size].to(device)
        for i in range(2 * PROBE_STEPS):
            if i == PROBE_STEPS:
                start = time.perf_counter()
            sgd_step(net, opt, weights, xb, yb, 0.01, 0.0).item()
        seconds[fmt] = time.perf_counter() - start
    return min(seconds, key=seconds.get)


# ----------------------------------------------------------------------------- all runs at once

def stacked_models(w: common.Workload, shape: tuple[int, int, int], device: str) -> tuple[Any, dict[str, Any]]:
    """Every run's model initialised from its seed as `_setup` does, as one stateless module (on
    the meta device) and the runs' parameters stacked along a leading run axis, outside autograd."""
    torch = require_torch()
    nets = [init_model(w, seed, shape, device) for seed, _ in w.runs]
    params, buffers = torch.func.stack_module_state(nets)
    if buffers:
        raise ValueError(f"the functional step assumes models without buffers, not {list(buffers)}")
    return copy.deepcopy(nets[0]).to("meta"), {k: v.detach() for k, v in params.items()}


def functional_step(base: Any, weight_names: Sequence[str], l2: float, autocast: Any | None,
                    device_type: str) -> Callable[..., tuple[dict[str, Any], Any]]:
    """step(params, total, x, y, idx, lr) -> (params, total): one plain-SGD step of every run at
    once. idx [runs, batch] gathers each run's batch from the data on the device, lr [runs] is each
    run's LR for this step, total [runs] accumulates each run's cross-entropy. Each run's loss is
    its mean CE + l2·ΣW² over weights (as `sgd_step`); with `autocast` (a dtype) the forward runs
    under torch.autocast while the parameters, the CE and the update stay float32."""
    torch = require_torch()
    func = torch.func

    def run_loss(params: dict[str, Any], x: Any, y: Any) -> tuple[Any, Any]:
        cast = torch.autocast(device_type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with cast:
            logits = func.functional_call(base, params, (x,))
        ce = torch.nn.functional.cross_entropy(logits.float(), y)
        if not l2:
            return ce, ce
        return ce + l2 * sum(params[name].square().sum() for name in weight_names), ce

    grads_and_ce = func.vmap(func.grad(run_loss, has_aux=True))

    def step(params: dict[str, Any], total: Any, x: Any, y: Any, idx: Any, lr: Any) -> tuple[dict[str, Any], Any]:
        grads, ce = grads_and_ce(params, x[idx], y[idx])
        new = {k: p - lr.view(-1, *[1] * (p.dim() - 1)) * grads[k] for k, p in params.items()}
        return new, total + ce

    return step


def lr_table(w: common.Workload, device: str) -> list[Any]:
    """Every run's LR (`w.learning_rate`) at every step of the workload: a [runs] tensor per step."""
    torch = require_torch()
    table = torch.tensor([[w.learning_rate(lr, step) for _, lr in w.runs]
                          for step in range(w.steps_per_epoch * w.epochs)], dtype=torch.float32)
    return list(table.to(device).unbind(0))


def epoch_batches(gens: Sequence[Any], n: int, w: common.Workload, device: str) -> list[Any]:
    """One epoch's batch indices, a [runs, batch] tensor per step: each run's own randperm from its
    own generator, so each run sees the batches `best_effort` gives it."""
    torch = require_torch()
    order = torch.stack([torch.randperm(n, device=device, generator=g) for g in gens])
    steps = order[:, :w.train_size].reshape(len(gens), w.steps_per_epoch, w.batch_size)
    return list(steps.transpose(0, 1).contiguous().unbind(0))


def compile_first(step: Callable, args: tuple, device: str) -> tuple[Callable, Any, dict[str, Any], float]:
    """torch.compile(step) run on `args`: fullgraph=True, else torch.compile's default (graph
    breaks allowed) when that fails. Returns the compiled step, its first result, how it was
    compiled and the seconds of compilation and first call (a failed fullgraph try included)."""
    torch = require_torch()
    start, error = time.perf_counter(), None
    for fullgraph in (True, False):
        torch._dynamo.reset()  # a fresh cache per variant: no recompile limit, compile time apart
        compiled = torch.compile(step, fullgraph=fullgraph)
        try:
            out = compiled(*args)
            _sync(device)
        except Exception as err:  # noqa: BLE001 - any compiler failure: retry without fullgraph
            if not fullgraph:
                raise
            error = _one_line(err)
            print(f"  torch.compile(fullgraph=True) failed ({error}); retrying with the default", flush=True)
            continue
        return compiled, out, {"fullgraph": fullgraph, "fullgraph_error": error}, time.perf_counter() - start
    raise AssertionError("unreachable")


def func_vmap(w: common.Workload, x: Any, y: Any, shape: tuple[int, int, int], device: str,
              rec: common.Timings, precision: str, compile: bool = True) -> dict[str, Any]:
    """All runs at once: their stacked parameters, vmap(grad) of functional_call, plain SGD with
    each run's LR done functionally, the data on the device and each run's batches from its own
    per-epoch randperm (the orders `best_effort` uses). The step is torch.compile'd on its first
    call (in the untimed first epoch; its seconds go to compile_s); the losses are summed on the
    device and read once per epoch. "fp32" allows TF32 on CUDA meanwhile, "bf16" autocasts the
    forward to bfloat16. Returns how the step was compiled."""
    torch = require_torch()
    base, params = stacked_models(w, shape, device)
    weights = [name for name in params if name.endswith("weight")]
    device_type = torch.device(device).type
    autocast = {"fp32": None, "bf16": torch.bfloat16}[precision]
    step = functional_step(base, weights, w.l2, autocast, device_type)
    x, y = x.to(device), y.to(device)
    lrs = lr_table(w, device)
    gens = [torch.Generator(device=device).manual_seed(seed) for seed, _ in w.runs]
    tf32 = precision == "fp32" and device_type == "cuda"
    run, info, i = (None if compile else step), {"compiled": compile}, 0
    with allow_tf32(tf32):
        for epoch in range(1, w.epochs + 1):
            _sync(device)
            start, compile_s = time.perf_counter(), 0.0
            total = torch.zeros(len(w.runs), device=device)
            for idx in epoch_batches(gens, len(y), w, device):
                args = (params, total, x, y, idx, lrs[i])
                if run is None:
                    run, (params, total), how, compile_s = compile_first(step, args, device)
                    info.update(how)
                    rec.on_compiled(compile_s)
                else:
                    params, total = run(*args)
                i += 1
            losses = total.cpu().numpy() / w.steps_per_epoch
            _sync(device)
            rec.add_epoch(epoch, losses, time.perf_counter() - start - compile_s)
    return {"precision": precision, "tf32": tf32, "torch_compile": info}


@contextlib.contextmanager
def allow_tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions allowed meanwhile when `enabled`; the settings restored after."""
    torch = require_torch()
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    torch = require_torch()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _one_line(err: BaseException, limit: int = 500) -> str:
    """An exception as "Type: first line of its message", at most `limit` characters."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def measure_torch(label: str, train: Callable[[common.Timings], dict[str, Any] | None],
                  w: common.Workload) -> tuple[common.Measurement, dict[str, Any]]:
    """Time one torch way of training the workload, like cifar_jax's (first epochs untimed), and
    keep what the trainer returns about itself (how torch.compile ran, say)."""
    rec = common.Timings()
    watch = common.CpuWatch()
    extra = train(rec) or {}
    return rec.measurement(label, w, *watch.stop()), extra


def torch_trainers(w: common.Workload, x: Any, y: Any, shape: tuple[int, int, int], device: str,
                   memory_format: Any) -> dict[str, tuple[str, Callable[[common.Timings], Any]]]:
    """Every torch variant by its --variants name: its label and its training function."""
    fp32 = "fp32/TF32" if device.startswith("cuda") else "fp32"
    fmt = str(memory_format).split(".")[-1]
    return {
        "reports": ("torch, reports' way", lambda rec: reports_way(w, x, y, shape, device, rec)),
        "best": (f"torch, best effort ({fmt})", lambda rec: best_effort(w, x, y, shape, device, rec, memory_format)),
        "func_fp32": (f"torch, func.vmap + compile ({fp32})",
                      lambda rec: func_vmap(w, x, y, shape, device, rec, "fp32")),
        "func_bf16": ("torch, func.vmap + compile (bf16)", lambda rec: func_vmap(w, x, y, shape, device, rec, "bf16")),
    }


def run_variant(label: str, train: Callable[[common.Timings], Any], w: common.Workload,
                device: str) -> tuple[common.Measurement | None, dict[str, Any]]:
    """The variant's measurement and record; a failure is printed in one line and recorded as
    {"label", "error"} (no measurement), so that the other variants still run."""
    torch = require_torch()
    try:
        m, extra = measure_torch(label, train, w)
    except Exception as err:  # noqa: BLE001 - one variant's failure (compiler, memory) must not lose the rest
        error = _one_line(err)
        print(f"{label}: FAILED, left out of the ratios and the loss check ({error})", flush=True)
        torch._dynamo.reset()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        return None, {"label": label, "error": error}
    return m, {**m.record(), **extra}


# ----------------------------------------------------------------------------- comparison

def loss_check(ours: common.Measurement, refs: list[common.Measurement], learnable: bool) -> dict[str, Any]:
    """Pass when there is a torch measurement to compare with, every final loss is finite,
    cifar_jax's is within TOLERANCE of each torch one, and (on real images) every implementation
    lowered its loss after the first epoch."""
    everyone = [ours, *refs]
    finite = all(math.isfinite(m.final_loss) for m in everyone)
    gaps = {m.label: abs(ours.final_loss - m.final_loss) / m.final_loss for m in refs}
    learned = all(m.final_loss < m.first_loss for m in everyone) if learnable else None
    passed = bool(refs) and finite and all(g <= TOLERANCE for g in gaps.values()) and learned is not False
    return {"passed": passed, "tolerance": TOLERANCE, "relative_gaps": gaps, "finite": finite,
            "learned": learned, "final_losses": {m.label: m.final_loss for m in everyone},
            "first_losses": {m.label: m.first_loss for m in everyone}}


def ratios(ours: common.Measurement, measured: dict[str, common.Measurement],
           warm: common.Measurement) -> dict[str, float]:
    """cifar_jax's img/s over each torch variant's (`vs_<key>`), then each variant's wall time over
    cifar_jax's, compiling (`wall_vs_<key>`) and with its programs from the compile cache
    (`wall_warm_vs_<key>`), the key being the record key without "torch_"."""
    names = {key.removeprefix("torch_"): m for key, m in measured.items()}
    return {**{f"vs_{name}": ours.images_per_s / m.images_per_s for name, m in names.items()},
            **{f"wall_vs_{name}": m.wall_s / ours.wall_s for name, m in names.items()},
            **{f"wall_warm_vs_{name}": m.wall_s / warm.wall_s for name, m in names.items()}}


def compare(w: common.Workload, images: common.Images, device: str,
            variants: Sequence[str] = tuple(VARIANTS)) -> dict[str, Any]:
    """cifar_jax (auto layout) and the chosen torch variants (VARIANTS names) on one workload."""
    split = common.training_split(images, w)
    layout = engine.auto_layout(w.model)
    dev = common.device_data(images, split)
    ours = common.measure_engine(w, dev, "auto", f"cifar_jax ({layout})")
    common.forget_programs()  # the same call again, its programs loaded from the persistent cache
    warm = common.measure_engine(w, dev, "auto", f"cifar_jax ({layout}), compile cache warm")
    x, y = torch_arrays(images, split, w.model)
    shape = tuple(images.x.shape[1:])
    result: dict[str, Any] = {"workload": w.record(), "layout": layout, "cifar_jax": ours.record(),
                              "cifar_jax_warm": warm.record()}
    fmt = None
    if "best" in variants:
        fmt = fastest_memory_format(w, x, y, shape, device)
        result["memory_format"] = str(fmt)
    trainers = torch_trainers(w, x, y, shape, device, fmt)
    measured = {}
    for name in variants:
        m, result[VARIANTS[name]] = run_variant(*trainers[name], w, device)
        if m is not None:
            measured[VARIANTS[name]] = m
    result["check"] = loss_check(ours, list(measured.values()), images.learnable)
    result["ratios"] = ratios(ours, measured, warm)
    return result


def report(w: common.Workload, result: dict[str, Any]) -> str:
    """The workload's table, failed variants, how torch.compile ran, the throughput ratios and
    the loss check's verdict."""
    ours = result["cifar_jax"]
    entries = {key.removeprefix("torch_"): result[key] for key in VARIANTS.values() if key in result}
    measured = {name: m for name, m in entries.items() if "error" not in m}
    rows = [[m["label"], m["runs"], m["steps"], m["compile_s"], m["step_s"], m["images_per_s"],
             m["images_per_s_per_run"], m["wall_s"], m["other_cores"], m["first_loss"],
             m["final_loss"], ours["images_per_s"] / m["images_per_s"]]
            for m in (ours, result["cifar_jax_warm"], *measured.values())]
    lines = [
        f"\n{w.title}: {len(w.runs)} runs x {w.steps_per_epoch * w.epochs} steps "
        f"({w.epochs} epochs of {w.steps_per_epoch}; the first epoch untimed)",
        common.table(["implementation", "runs", "timed steps", "compile s", "timed s", "img/s total",
                      "img/s/run", "wall s", "other load", "1st-epoch loss", "last-epoch loss",
                      "cifar_jax x"], rows),
        "other load: cores kept busy by other processes meanwhile (above ~0.2 the timing is suspect)"]
    lines += [f"{m['label']}: FAILED ({m['error']})" for m in entries.values() if "error" in m]
    lines += [f"{m['label']}: {_compiled_how(m['torch_compile'])}" for m in measured.values() if "torch_compile" in m]
    if measured:
        r = result["ratios"]
        each = lambda kind: ", ".join(f"{r[kind + name]:.2f}x {m['label'].removeprefix('torch, ')}"
                                      for name, m in measured.items())
        lines += [f"cifar_jax / torch img/s: {each('vs_')}",
                  f"end to end (torch wall / cifar_jax wall, compile included): {each('wall_vs_')}",
                  f"end to end, cifar_jax's programs from its compile cache (a study's second run): "
                  f"{each('wall_warm_vs_')}"]
    check = result["check"]
    gaps = ", ".join(f"{k}: {v:.1%}" for k, v in check["relative_gaps"].items()) or "no torch variant to compare with"
    learned = {None: "not checked (random images)", True: "yes", False: "NO"}[check["learned"]]
    lines.append(f"loss check: last-epoch loss gaps {gaps} (tolerance {TOLERANCE:.0%}); loss fell after the "
                 f"first epoch: {learned} -> {'PASS' if check['passed'] else 'FAIL'}")
    return "\n".join(lines)


def cpu_line(cpu: dict[str, Any]) -> str:
    """The CPU, its vector extensions and whether it has bf16 arithmetic, which decides what
    torch's bf16 variant measures: without it, PyTorch emulates bf16."""
    features = cpu["features"]
    if features is None:
        return f"CPU: {cpu['model']} (extensions unknown)"
    native = sorted(set(features) & {"avx512_bf16", "amx_bf16"})
    bf16 = f"bf16 arithmetic: {', '.join(native)}" if native else \
        "no bf16 arithmetic: torch's bf16 variant is emulated here, compare fp32 with fp32"
    return f"CPU: {cpu['model']} ({', '.join(features) or 'none of ' + ', '.join(environment.CPU_FEATURES)}); {bf16}"


@contextlib.contextmanager
def compile_cache() -> Iterator[str]:
    """JAX's persistent compile cache for every program (studies keep one by default): the one
    already set ($JAX_COMPILATION_CACHE_DIR), else an empty temporary one, removed afterwards."""
    if jax.config.jax_compilation_cache_dir:
        yield f"{jax.config.jax_compilation_cache_dir} (set already: it may hold these programs)"
        return
    with tempfile.TemporaryDirectory(prefix="torch-reference-xla-") as tmp:
        jax.config.update("jax_compilation_cache_dir", tmp)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        try:
            yield f"{tmp} (empty)"
        finally:
            jax.config.update("jax_compilation_cache_dir", None)


def _compiled_how(info: dict[str, Any]) -> str:
    """How the functional step was compiled, in words."""
    if not info.get("compiled"):
        return "not compiled (eager)"
    if info["fullgraph"]:
        return "torch.compile(fullgraph=True)"
    return f"torch.compile default (fullgraph=True failed: {info['fullgraph_error']})"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the comparison, print the tables, append the record; exit 1 when a check fails."""
    args = parse_args(argv)
    load_start = os.getloadavg()
    torch = require_torch()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loads = workloads(args.quick, args.conv_runs, args.steps)
    images = common.load_images(args.data_dir, max(w.train_size for w in loads))
    print(f"data: {images.source}; cifar_jax on {jax.devices()[0].device_kind}, torch "
          f"{torch.__version__} on {device} ({torch.get_num_threads()} threads); torch variants: "
          f"{', '.join(args.variants)}")
    if device == "cpu":
        print(cpu_line(environment.cpu()))
    if args.quick and not args.conv_runs:
        print(f"--quick: {loads[0].title} uses {len(loads[0].runs)} runs (5 LRs x seed 0), "
              f"not the full 25; fewer steps than the full size")
    out = []
    with compile_cache() as where:
        print(f"cifar_jax's compile cache: {where} (each workload compiles, then runs again with its "
              f"programs loaded from there, as a study run again does)")
        for w in loads:
            result = compare(w, images, device, args.variants)
            print(report(w, result), flush=True)
            out.append(result)
    passed = all(r["check"]["passed"] for r in out)
    path = pathlib.Path(args.results) if args.results else common.RESULTS_DIR / "torch_reference.jsonl"
    common.append_jsonl(path, common.make_record("torch_reference", args, {
        "data": images.source, "torch_device": device, "torch_threads": torch.get_num_threads(),
        "passed": passed, "workloads": out}, load_start))
    print(f"\n{common.load_line(load_start)}\nappended to {path}; loss checks: {'PASS' if passed else 'FAIL'}")
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
