"""PyTorch reference: the same training as cifar_jax (models, batch sizes, optimiser, steps and
runs) the reports' way and a best-effort way, against cifar_jax's auto layout in the same
process, with a check that all reach a comparable training loss.

    python -m benchmarks.torch_reference [--quick] [--data_dir=...] [--results=...]

Needs PyTorch (`pip install -e .[bench]`); cifar_jax itself never imports it.
"""
from __future__ import annotations

import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from benchmarks import common
from cifar_jax import engine, models

# Two epochs per run, the first untimed (warm-up), the second's mean loss compared.
FULL = {"conv": dict(runs=25, steps_per_epoch=703, epochs=2),
        "mlp": dict(runs=25, steps_per_epoch=450, epochs=2)}
QUICK = {"conv": dict(runs=5, steps_per_epoch=20, epochs=2),
         "mlp": dict(runs=25, steps_per_epoch=50, epochs=3)}
TOLERANCE = 0.10  # the final losses must agree within 10% (relative to torch's)
PROBE_STEPS = 5   # timed steps per memory format when choosing channels_last or not
INSTALL = "PyTorch is needed for this benchmark: pip install -e .[bench]  (torch==2.13.0)"


def require_torch() -> Any:
    """torch, imported only here; exits with how to install it when missing."""
    try:
        import torch
    except ImportError:
        sys.exit(INSTALL)
    return torch


def workloads(quick: bool) -> list[common.Workload]:
    """The LR-sweep and MLP groups at full or --quick size."""
    sizes = QUICK if quick else FULL
    return [common.lr_sweep(**sizes["conv"]), common.mlp_group(**sizes["mlp"])]


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


def _setup(w: common.Workload, seed: int, lr: float, shape: tuple[int, int, int], device: str,
           memory_format: Any) -> tuple[Any, Any, list]:
    """A freshly initialised model from `seed`, its SGD optimiser and its weight tensors."""
    torch = require_torch()
    torch.manual_seed(seed)
    net = build_model(w.model, shape).to(device, memory_format=memory_format)
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    return net, torch.optim.SGD(net.parameters(), lr=lr), weights


def reports_way(w: common.Workload, x: Any, y: Any, shape: tuple[int, int, int], device: str,
                rec: common.Recorder) -> None:
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
            rec.on_epoch(np.array([run]), epoch, {"train_loss": np.array([total / w.steps_per_epoch])},
                         time.perf_counter() - start)


def best_effort(w: common.Workload, x: Any, y: Any, shape: tuple[int, int, int], device: str,
                rec: common.Recorder, memory_format: Any) -> None:
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
            rec.on_epoch(np.array([run]), epoch, {"train_loss": np.array([mean])}, time.perf_counter() - start)


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


def measure_torch(label: str, train: Callable[[common.Recorder], None], w: common.Workload) -> common.Measurement:
    """Time one torch way of training the workload, like cifar_jax's (first epochs untimed)."""
    rec = common.Recorder()
    watch = common.CpuWatch()
    train(rec)
    return rec.measurement(label, w, *watch.stop())


# ----------------------------------------------------------------------------- comparison

def loss_check(ours: common.Measurement, refs: list[common.Measurement], learnable: bool) -> dict[str, Any]:
    """Pass when every final loss is finite, cifar_jax's is within TOLERANCE of each torch one,
    and (on real images) every implementation lowered its loss after the first epoch."""
    everyone = [ours, *refs]
    finite = all(math.isfinite(m.final_loss) for m in everyone)
    gaps = {m.label: abs(ours.final_loss - m.final_loss) / m.final_loss for m in refs}
    learned = all(m.final_loss < m.first_loss for m in everyone) if learnable else None
    passed = finite and all(g <= TOLERANCE for g in gaps.values()) and learned is not False
    return {"passed": passed, "tolerance": TOLERANCE, "relative_gaps": gaps, "finite": finite,
            "learned": learned, "final_losses": {m.label: m.final_loss for m in everyone},
            "first_losses": {m.label: m.first_loss for m in everyone}}


def compare(w: common.Workload, images: common.Images, device: str) -> dict[str, Any]:
    """cifar_jax (auto layout), torch the reports' way and torch best-effort on one workload."""
    split = common.training_split(images, w)
    layout = engine.auto_layout(w.model)
    ours = common.measure_engine(w, common.device_data(images, split), "auto", f"cifar_jax ({layout})")
    x, y = torch_arrays(images, split, w.model)
    shape = tuple(images.x.shape[1:])
    fmt = fastest_memory_format(w, x, y, shape, device)
    reports = measure_torch("torch, reports' way", lambda rec: reports_way(w, x, y, shape, device, rec), w)
    best = measure_torch(f"torch, best effort ({str(fmt).split('.')[-1]})",
                         lambda rec: best_effort(w, x, y, shape, device, rec, fmt), w)
    return {"workload": w.record(), "layout": layout, "cifar_jax": ours.record(),
            "torch_reports_way": reports.record(), "torch_best_effort": best.record(),
            "memory_format": str(fmt), "check": loss_check(ours, [reports, best], images.learnable),
            "ratios": {"vs_reports_way": ours.images_per_s / reports.images_per_s,
                       "vs_best_effort": ours.images_per_s / best.images_per_s,
                       "wall_vs_reports_way": reports.wall_s / ours.wall_s,
                       "wall_vs_best_effort": best.wall_s / ours.wall_s}}


def report(w: common.Workload, result: dict[str, Any]) -> str:
    """The workload's table, the throughput ratios and the loss check's verdict."""
    ours = result["cifar_jax"]
    rows = [[m["label"], m["runs"], m["steps"], m["compile_s"], m["step_s"], m["images_per_s"],
             m["images_per_s_per_run"], m["wall_s"], m["other_cores"], m["first_loss"],
             m["final_loss"], ours["images_per_s"] / m["images_per_s"]]
            for m in (ours, result["torch_reports_way"], result["torch_best_effort"])]
    check = result["check"]
    gaps = ", ".join(f"{k}: {v:.1%}" for k, v in check["relative_gaps"].items())
    learned = {None: "not checked (random images)", True: "yes", False: "NO"}[check["learned"]]
    return "\n".join([
        f"\n{w.title}: {len(w.runs)} runs x {w.steps_per_epoch * w.epochs} steps "
        f"({w.epochs} epochs of {w.steps_per_epoch}; the first epoch untimed)",
        common.table(["implementation", "runs", "timed steps", "compile s", "timed s", "img/s total",
                      "img/s/run", "wall s", "other load", "1st-epoch loss", "last-epoch loss",
                      "cifar_jax x"], rows),
        "other load: cores kept busy by other processes meanwhile (above ~0.2 the timing is suspect)",
        f"cifar_jax / torch img/s: {result['ratios']['vs_reports_way']:.2f}x the reports' way, "
        f"{result['ratios']['vs_best_effort']:.2f}x best effort; end to end (wall, compile "
        f"included): {result['ratios']['wall_vs_reports_way']:.2f}x, {result['ratios']['wall_vs_best_effort']:.2f}x",
        f"loss check: last-epoch loss gaps {gaps} (tolerance {TOLERANCE:.0%}); loss fell after the "
        f"first epoch: {learned} -> {'PASS' if check['passed'] else 'FAIL'}"])


def main(argv: Sequence[str] | None = None) -> None:
    """Run the comparison, print the tables, append the record; exit 1 when a check fails."""
    args = common.parse_args(__doc__.splitlines()[0], argv)
    load_start = os.getloadavg()
    torch = require_torch()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loads = workloads(args.quick)
    images = common.load_images(args.data_dir, max(w.train_size for w in loads))
    print(f"data: {images.source}; cifar_jax on {jax.devices()[0].device_kind}, torch "
          f"{torch.__version__} on {device} ({torch.get_num_threads()} threads)")
    if args.quick:
        print(f"--quick: {loads[0].title} uses {len(loads[0].runs)} runs (5 LRs x seed 0), "
              f"not the full 25; fewer steps than the full size")
    out = []
    for w in loads:
        result = compare(w, images, device)
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
