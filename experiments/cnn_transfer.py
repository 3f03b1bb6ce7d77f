"""seeds/003 §7: a CNN on a small target task three ways, with Adam over a range of learning rates:
trained from scratch; as a linear probe (a backbone pretrained by this lab on a source task,
restored from its orbax checkpoint and frozen, parameters and BN statistics, under a new head);
and fine-tuned (the same backbone restored, every layer trained).

Only CIFAR-10 is offline, so the source task is 8 CIFAR-10 classes (--source_classes) and the
target two others, cat vs dog, at the report's sizes (--classes=cat,dog --split=1400/200
--test_size=400). The study has two parts:

  pretrain  the source task (--source_split, --source_epochs, Adam at --source_lr, --seeds);
            each run's final params and BN statistics are saved with `checkpoint.save`, with
            their provenance, in the study's checkpoints/ folder (or --checkpoint_dir/<study>/;
            a finished run without its checkpoint is trained again, one with a damaged or
            another run's checkpoint too with --repair: see experiments.pretraining). With
            --pretrained_study this part is another study's, shared: its finished runs are
            reused when their configuration is this study's source protocol, else refused
  target    the target task from the core flags × --baselines × --lr × --seeds. A transfer run
            of seed s restores every layer but the classifier from the pretraining run of seed
            s (`checkpoint.restore_partial`, checking the checkpoint is that run's: the head
            has the target's class count and keeps its fresh initialisation); a linear probe
            freezes them (`GroupSpec.frozen`: zero updates, BN on its running statistics). A
            scratch run starts from the engine's own fresh initialisation, so it can share a
            compiled group with the fine-tuning runs.

Every target run leaves its per-example test predictions (target/predictions/<run>.npy, the
labels in labels.npy) and, for the transfer runs, how far its backbone moved from the restored
weights (target/backbone/<run>.json); a finished run missing them is trained again. The
analysis writes baselines.md (every LR per baseline, the two best and the worst model per
baseline, the backbone check, the best and the worst run, the report's numbers beside ours),
configs.json, figures/accuracy_vs_lr.png and figures/best_vs_worst.png.

    python -m experiments.cnn_transfer --flagfile=experiments/flags/seed003_cnn.flags
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure
import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.data import datasets, splits
from cifar_jax.io import checkpoint, files
from cifar_jax.nn import models
from cifar_jax.plots import charts
from cifar_jax.results import run_record, studydir, summary
from cifar_jax.study import cli, config, prepare, progress, runner
from cifar_jax.training import step
from experiments import pretraining, reproduce

BASELINES = ("scratch", "linear_probe", "fine_tune")
TITLE = "CNN transfer"

OPTIONS = table(
    *pretraining.OPTIONS.values(),
    Option("source_classes", "airplane,automobile,bird,deer,frog,horse,ship,truck", "The source task's classes (the "
           "--classes syntax); default: the 8 CIFAR-10 classes other than cat and dog.", kind="str"),
    Option("source_split", "36000/4000", "train/validation sizes of the source task.", kind="str",
           convert=splits.parse_split),
    Option("source_epochs", 10, "Epochs of the source-task pretraining.", kind="int", low=1),
    Option("source_lr", 1e-3, "Learning rate of the source-task pretraining (--optimizer's).", low=0.0, low_open=True),
    Option("baselines", BASELINES, "Which target baselines to train.", kind="choice", many=True, choices=BASELINES),
    Option("pretrained_study", "", "Share the pretraining of another cnn_transfer study of the same source protocol "
           "(its name in --results_dir, or its path): its finished pretraining runs and their checkpoints are reused, "
           "any missing ones trained there; default: this study's own.", kind="str"),
)


# ----------------------------------------------------------------------------- the runs

def chosen_baselines(cfg: config.Config) -> tuple[str, ...]:
    """--baselines in the study's order (one or more)."""
    if not cfg.own.baselines:
        raise config.ConfigError(f"--baselines: give one or more of {', '.join(BASELINES)}")
    return tuple(b for b in BASELINES if b in cfg.own.baselines)


def source_config(cfg: config.Config) -> config.Config:
    """The pretraining's flags: the target's, with the source task's classes, split, epochs and LR."""
    own = cfg.own
    return cfg.replace(classes=own.source_classes, split=own.source_split, test_size=0, epochs=own.source_epochs,
                       lrs=(own.source_lr,))


def pretraining_study(cfg: config.Config, parent: studydir.StudyDir) -> studydir.StudyDir:
    """The study whose pretrain/ part and checkpoints this one uses: --pretrained_study, else itself."""
    name = cfg.own.pretrained_study.strip()
    if not name:
        return parent
    other = prepare.named_study(cfg, name)
    if not other.root.is_dir():
        raise config.ConfigError(f"--pretrained_study={name}: no study at {other.root}")
    return other


def source_description(cfg: config.Config) -> dict:
    """What the pretrained backbone depends on (part of every transfer run's identity)."""
    own = cfg.own
    return {"classes": own.source_classes, "split": "/".join(map(str, own.source_split[:2])) +
            (":swap" if own.source_split[2] else ""), "epochs": own.source_epochs, "lr": own.source_lr}


def head_name(model: models.ModelConfig) -> str:
    """The classifier layer: the dense layer the model appends after its stack."""
    return f"fc{sum(layer[0] == 'dense' for layer in models.layer_stack(model)) + 1}"


def as_baseline(run: config.Run, baseline: str, backbone: tuple[str, ...], pre: config.Run | None,
                source: dict) -> config.Run:
    """A target run of the grid as one baseline: scratch as it is; a transfer run names its
    pretraining run and source; a linear probe also freezes the backbone."""
    if baseline == "scratch":
        return run
    spec = dataclasses.replace(run.spec, frozen=backbone) if baseline == "linear_probe" else run.spec
    inputs = {**run.inputs, "pretrained": pre.run_id, "source": source, "restored": list(backbone)}
    return dataclasses.replace(run, spec=spec, inputs=inputs)


def _layers(tree: dict, keep=lambda name: True) -> dict:
    """{layer: {name: array}} as plain dicts of numpy arrays (the layers `keep` selects)."""
    return {k: {n: np.asarray(a) for n, a in v.items()} for k, v in tree.items() if keep(k)}


def fresh_backbone(run: config.Run, image_shape: tuple[int, ...], head: str) -> dict:
    """The run's own fresh initialisation of every layer but the head: what the engine would
    draw from its seed (train.init_run), so scratch runs can share a group with transfer runs."""
    hp = {k: v[0] for k, v in step.stack_hparams([run.hp]).items()}
    state = step.init_run(run.spec, hp, tuple(image_shape))
    return {"params": _layers(state.params, lambda k: k != head), "batch_stats": _layers(state.batch_stats)}


def restored_backbone(path: Path, spec: step.GroupSpec, image_shape: tuple[int, ...], head: str,
                      expected: dict) -> dict:
    """Every layer but the head from a pretraining checkpoint of the `expected` run (whose head may
    have another class count)."""
    params, stats, _ = checkpoint.restore_partial(
        path, step.param_shapes(spec, image_shape), step.batch_stats_shapes(spec, image_shape),
        expected=expected, keep=lambda leaf: leaf.split("/")[:2] != ["params", head])
    return {"params": _layers(params, lambda k: k != head), "batch_stats": _layers(stats)}


# ----------------------------------------------------------------------------- per-run outputs

@functools.lru_cache(maxsize=None)
def _predictor(spec: step.GroupSpec):
    return jax.jit(functools.partial(step.predict, spec))


def predict(spec: step.GroupSpec, params, batch_stats, data: step.Data) -> np.ndarray:
    """The predicted class of every test image (eval mode, in batches of --eval_batch_size)."""
    idx = jnp.arange(data.y_test.shape[0], dtype=jnp.int32)
    return np.asarray(_predictor(spec)({"params": params, "batch_stats": batch_stats}, data.x_test, idx,
                                       data.mean, data.std))


def backbone_change(restored: dict, params: dict, batch_stats: dict) -> dict:
    """How far a transfer run's backbone moved from the restored weights: bit-identity and the
    largest |Δ| of its parameters and of its BN statistics, and the layers that changed."""
    out, changed = {}, []
    for kind, before, after in (("params", restored["params"], params), ("batch_stats", restored["batch_stats"], batch_stats)):
        same, largest = True, 0.0
        for layer, leaves in before.items():
            for name, value in leaves.items():
                new = np.asarray(after[layer][name])
                if not np.array_equal(value, new):
                    same = False
                    changed.append(f"{kind}/{layer}/{name}")
                    largest = max(largest, float(np.max(np.abs(new.astype(np.float64) - value))))
        out[f"{kind}_identical"], out[f"{kind}_max_abs_change"] = same, largest
    return {**out, "changed": changed}


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    files.atomic_write_bytes(path, buffer.getvalue())


def _predictions_path(st: studydir.StudyDir, run_id: str) -> Path:
    return st.root / "predictions" / f"{studydir.run_file_stem(run_id)}.npy"


def _backbone_path(st: studydir.StudyDir, run_id: str) -> Path:
    return st.root / "backbone" / f"{studydir.run_file_stem(run_id)}.json"


# ----------------------------------------------------------------------------- the study

@dataclasses.dataclass(frozen=True)
class Backbones:
    """The pretraining a target task restores from: the study that holds it, and its run and
    checkpoint per seed (none for a study of scratch runs only)."""

    owner: studydir.StudyDir
    runs: dict[int, config.Run] = dataclasses.field(default_factory=dict)
    checkpoints: dict[int, Path] = dataclasses.field(default_factory=dict)


def main(cfg: config.Config) -> None:
    """The pretraining (unless only scratch runs are asked for), then the target task."""
    cfg.single_group("the CNN transfer study makes its own groups (the baselines)")
    baselines = chosen_baselines(cfg)
    parent = prepare.study_dir(cfg, "cnn_transfer")
    owner = pretraining_study(cfg, parent)  # the study that holds the pretraining: this one or another
    backbones = Backbones(owner)
    if baselines != ("scratch",):
        try:
            backbones = pretrain(cfg, owner)
        except files.ResultsError as err:
            if owner is parent:
                raise
            raise files.ResultsError(f"--pretrained_study={cfg.own.pretrained_study}: {err}") from None
    target(cfg, baselines, parent, backbones)


def pretrain(cfg: config.Config, owner: studydir.StudyDir) -> Backbones:
    """The source task in study `owner` (this one, or the one given by --pretrained_study), one
    checkpoint per seed."""
    source = source_config(cfg).replace(results_dir=str(owner.root.parent), name=owner.root.name)
    root = pretraining.checkpoint_root(cfg, owner)
    path = lambda run: root / studydir.run_file_stem(run.run_id)
    pre_study = studydir.StudyDir(owner.root / "pretrain")
    try:
        prepared = prepare.data(source)
    except (config.ConfigError, datasets.DataError) as err:  # name the source task's own flags
        text = str(err)
        for core, own in (("--classes=", "--source_classes="), ("--split=", "--source_split=")):
            if text.startswith(core):
                raise type(err)(own + text[len(core):]) from None
        raise
    runs = config.grid(source, len(prepared.train_idx), prepared.dataset.num_classes, "source")
    if len(runs) != len(source.seeds):
        raise config.ConfigError("the pretraining takes one value of each per-run option (a list would "
                                 f"make {len(runs) // len(source.seeds)} source models per seed)")

    def save(run: config.Run, variables: tuple) -> None:
        if pre_study.record(run.run_id)["status"] != "done":
            progress.log(f"warning: {run.run_id} diverged; its last finite weights are the backbone of seed {run.seed}")
        pretraining.save(owner, pre_study, path(run), run, variables)

    runner.run(source, "cnn_transfer", f"{TITLE}: pretraining on the source task", lambda p: runs, part="pretrain",
               prepared=prepared, on_state=save, figures=source.epochs > 1, extra={"source": source_description(cfg)},
               before=lambda st, p, planned: pretraining.check(cfg, owner, st, [(r, path(r)) for r in planned]))
    return Backbones(owner, {r.seed: r for r in runs}, {r.seed: path(r) for r in runs})


def target(cfg: config.Config, baselines: tuple[str, ...], parent: studydir.StudyDir,
           backbones: Backbones) -> runner.Outcome:
    """The target task: every baseline × LR × seed, with per-example predictions."""
    st = studydir.StudyDir(parent.root / "target")
    prepared = prepare.data(cfg)
    shape = prepared.dataset.image_shape
    grid = {b: config.grid(cfg, len(prepared.train_idx), prepared.dataset.num_classes, b) for b in baselines}
    spec = next(iter(grid.values()))[0].spec
    head = head_name(spec.model)
    backbone = tuple(k for k in step.param_shapes(spec, shape) if k != head)
    source = source_description(cfg)
    planned = [as_baseline(r, b, backbone, backbones.runs.get(r.seed), source) for b, rs in grid.items() for r in rs]
    restored: dict[int, dict] = {}  # per seed, restored once

    def missing_outputs(st: studydir.StudyDir, prepared: prepare.Prepared, runs: list[config.Run]) -> None:
        labels = st.root / "predictions" / "labels.npy"
        if runner.is_lead() and not labels.exists():
            _save_npy(labels, np.asarray(prepared.dataset.y_test, np.int32))
        for r in pretraining.finished(st, runs):
            if not _predictions_path(st, r.run_id).exists():
                runner.train_again(st, r.run_id, "its test predictions are missing")
            elif "pretrained" in r.inputs and not _backbone_path(st, r.run_id).exists():
                runner.train_again(st, r.run_id, "its backbone check is missing")

    def initial(run: config.Run) -> dict:
        if "pretrained" not in run.inputs:
            return fresh_backbone(run, shape, head)
        pre = backbones.runs[run.seed]
        if run.seed not in restored:
            restored[run.seed] = restored_backbone(backbones.checkpoints[run.seed], run.spec, shape, head,
                                                   runner.provenance(backbones.owner, pre))
        progress.log(f"{run.run_id}: {', '.join(restored[run.seed]['params'])} restored from {pre.run_id}"
                     + (" and frozen" if run.spec.frozen else "") + f"; {head} initialised from seed {run.seed}")
        return restored[run.seed]

    def outputs(run: config.Run, variables: tuple) -> None:
        params, batch_stats = variables
        if "pretrained" in run.inputs:
            change = backbone_change(restored[run.seed], params, batch_stats)
            files.atomic_write_json(_backbone_path(st, run.run_id), change)
        _save_npy(_predictions_path(st, run.run_id), predict(run.spec, params, batch_stats, prepared.data))

    return runner.run(cfg, "cnn_transfer", f"{TITLE}: the target task", lambda p: planned, part="target",
                      prepared=prepared, before=missing_outputs, initial_for=initial, on_state=outputs,
                      figures=cfg.epochs > 1,
                      extra={"source": source, "baselines": list(baselines), "head": head, "backbone": list(backbone)},
                      analysis=lambda s, records: analyse(parent, s, records, prepared, backbones.owner, source))


# ----------------------------------------------------------------------------- analysis

def baseline_of(config_name: str) -> str:
    return config_name.split(",")[0]


def config_rows(records: list[dict]) -> list[dict]:
    """Per configuration: baseline, LR and train (eval mode where recorded) / val / test accuracy
    statistics over its done seeds."""
    rows = []
    for name, group in run_record.group_by_config(records).items():
        done = [r for r in group if r["status"] == "done"]
        split_acc = lambda r, s: (run_record.final(r, s) or {}).get("acc")
        train_acc = [split_acc(r, "train") if r.get("final_train") else run_record.last(r, "train_acc") for r in done]
        lr = float(group[0]["config"]["lr"])
        rows.append({"config": name, "baseline": baseline_of(name), "lr": lr, "values": {"lr": lr},
                     "n_runs": len(group), "n_done": len(done),
                     "train_acc": summary.finite_statistics(train_acc),
                     **{f"{s}_acc": summary.finite_statistics(split_acc(r, s) for r in done) for s in ("val", "test")}})
    return rows


def published() -> dict[tuple[str, float], tuple[float | None, ...]]:
    """The report's (train, val, test) accuracy (fractions) per (baseline, LR), from reports.toml."""
    sections = [s for report in reproduce.REPORTS.values() for s in report.sections if s.module == "cnn_transfer"]
    numbers = {k: v for table in (sections[0].published if sections else ()) for k, v in table.numbers.items()}
    return {(baseline_of(k), float(k.split("lr=")[1].split(",")[0])): tuple(None if x is None else x / 100 for x in v)
            for k, v in numbers.items() if "lr=" in k}


def _reported(ref: dict, baseline: str, lr: float) -> tuple[float | None, ...]:
    return next((v for (b, x), v in ref.items() if b == baseline and math.isclose(x, lr)), (None, None, None))


def _stat(s: dict) -> str:
    return summary.format_stat("acc", s)


def ranked(rows: list[dict]) -> list[dict]:
    """Rows with a mean test accuracy, best first."""
    return sorted((r for r in rows if r["test_acc"]["mean"] is not None), key=lambda r: -r["test_acc"]["mean"])


PICKS = (("best", 0), ("second best", 1), ("worst", -1))


def baselines_markdown(rows: list[dict], ref: dict, checks: dict[str, list[dict]], extremes: dict,
                       header: str) -> str:
    """The study's table: every LR per baseline, the two best and the worst per baseline, the
    backbone check and the best and the worst single run, with the report's numbers beside ours."""
    lines = [f"# {TITLE}: scratch, linear probe, fine-tuning", "", header, "",
             "## Every learning rate (accuracy %, mean ± std over seeds; the report: one run)", "",
             "| baseline | lr | train | val | test | train (report) | val (report) | test (report) | runs |",
             "|:---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rep = _reported(ref, r["baseline"], r["lr"])
        lines.append(f"| {r['baseline']} | {r['lr']:g} | {_stat(r['train_acc'])} | {_stat(r['val_acc'])} | "
                     f"{_stat(r['test_acc'])} | {' | '.join(summary.percent(x) for x in rep)} | {r['n_done']}/{r['n_runs']} |")
    lines += ["", "## Two best and the worst model per baseline (by mean test accuracy)", "",
              "| baseline | model | lr (ours) | test (ours) | lr (report) | test (report) |", "|:---|:---|---:|---:|---:|---:|"]
    for baseline, group in run_record.group_by(rows, "baseline").items():
        ours = ranked(group)
        theirs = sorted(((lr, v[2]) for (b, lr), v in ref.items() if b == baseline and v[2] is not None),
                        key=lambda t: -t[1])
        for label, i in PICKS:
            ours_cells = (f"{ours[i]['lr']:g}", _stat(ours[i]["test_acc"])) if -len(ours) <= i < len(ours) else ("–", "–")
            their_cells = (f"{theirs[i][0]:g}", summary.percent(theirs[i][1])) if -len(theirs) <= i < len(theirs) else ("–", "–")
            lines.append(f"| {baseline} | {label} | {' | '.join(ours_cells + their_cells)} |")
    if checks:
        lines += ["", "## The backbone after training, against the restored pretrained weights", "",
                  "| baseline | runs | parameters bit-identical | BN statistics bit-identical | largest \\|Δ\\| parameter | "
                  "largest \\|Δ\\| BN statistic |", "|:---|---:|---:|---:|---:|---:|"]
        for baseline, group in checks.items():
            lines.append(f"| {baseline} | {len(group)} | {sum(c['params_identical'] for c in group)}/{len(group)} | "
                         f"{sum(c['batch_stats_identical'] for c in group)}/{len(group)} | "
                         f"{max(c['params_max_abs_change'] for c in group):.3g} | "
                         f"{max(c['batch_stats_max_abs_change'] for c in group):.3g} |")
    if extremes:
        lines += ["", "## The best and the worst model (single runs, by test accuracy)", "",
                  "| | run | train loss | train | val | test |", "|:---|:---|---:|---:|---:|---:|"]
        for label in ("best", "worst"):
            rec = extremes[label]
            train_acc = (rec.get("final_train") or {}).get("acc", run_record.last(rec, "train_acc"))
            val = (run_record.final(rec, "val") or {}).get("acc")
            lines.append(f"| {label} | {rec['run_id']} | {run_record.last(rec, 'train_loss'):.4f} | {summary.percent(train_acc)} | "
                         f"{summary.percent(val)} | {summary.percent(rec['test']['acc'])} |")
        lines += ["", f"{extremes['shown_text']}"]
    return "\n".join(lines) + "\n"


def best_and_worst(records: list[dict]) -> tuple[dict, dict] | None:
    """The done runs with the highest and the lowest test accuracy (the first of ties)."""
    done = [r for r in records if r["status"] == "done" and math.isfinite((run_record.final(r, "test") or {}).get("acc", math.nan))]
    if not done:
        return None
    return max(done, key=lambda r: r["test"]["acc"]), min(done, key=lambda r: r["test"]["acc"])


def right_and_wrong(best: np.ndarray, worst: np.ndarray, labels: np.ndarray, n: int = 5) -> np.ndarray:
    """Indices of the first `n` test images the best model gets right and the worst gets wrong."""
    return np.flatnonzero((best == labels) & (worst != labels))[:n]


def analyse(parent: studydir.StudyDir, st: studydir.StudyDir, records: list[dict], prepared: prepare.Prepared,
            owner: studydir.StudyDir, source_task: dict) -> None:
    """baselines.md, configs.json, accuracy against LR, and the best/worst image figure."""
    rows = config_rows(records)
    parent.write_json("configs.json", rows)
    ds, labels = prepared.dataset, np.load(st.root / "predictions" / "labels.npy")
    checks: dict[str, list[dict]] = {}
    for rec in records:
        path = _backbone_path(st, rec["run_id"])
        if path.exists():
            checks.setdefault(baseline_of(rec["config_name"]), []).append(json.loads(path.read_text()))
    extremes: dict = {}
    pair = best_and_worst(records)
    figure = parent.figures_dir / "best_vs_worst.png"
    if pair:
        best, worst = pair
        pb, pw = (np.load(_predictions_path(st, r["run_id"])) for r in pair)
        shown = right_and_wrong(pb, pw, labels)
        n_all = int(((pb == labels) & (pw != labels)).sum())
        captions = [f"test image {i}\ntrue: {ds.classes[labels[i]]}\nbest: {ds.classes[pb[i]]} ✓\n"
                    f"worst: {ds.classes[pw[i]]} ✗" for i in shown]
        image_examples(ds.x_test[shown], captions, figure,
                       f"Right by the best model, wrong by the worst\nbest {best['run_id']} "
                       f"(test {100 * best['test']['acc']:.2f}%), worst {worst['run_id']} "
                       f"(test {100 * worst['test']['acc']:.2f}%)",
                       note="no test image is right by the best model and wrong by the worst")
        extremes = {"best": best, "worst": worst,
                    "shown_text": f"{n_all} of {len(labels)} test images are classified right by the best model and "
                                  f"wrong by the worst; figures/best_vs_worst.png shows test images "
                                  f"{', '.join(map(str, shown)) or 'none'}."}
        parent.write_json("best_vs_worst.json", {"best": best["run_id"], "worst": worst["run_id"],
                                                 "right_by_best_wrong_by_worst": n_all, "shown": shown.tolist()})
    source = studydir.StudyDir(owner.root / "pretrain").records()
    source_acc = summary.finite_statistics((r.get("test") or {}).get("acc") for r in source if r["status"] == "done")
    cfg0 = records[0]["config"]
    header = (f"Target: {ds.name}, {cfg0['split'][0]:,} train / {cfg0['split'][1]:,} val / {len(labels):,} test images, "
              f"{cfg0['epochs']} epoch(s), {cfg0['optimizer']}, batch {cfg0['batch_size']}, model {cfg0['model']['name']} "
              f"(norm {cfg0['model']['norm']}). Backbone: pretrained on {source_task['classes']} "
              + (f"(source test accuracy {_stat(source_acc)}%, {source_acc['n']} runs)." if source else "(not used)."))
    parent.write_text("baselines.md", baselines_markdown(rows, published(), checks, extremes, header))
    charts.accuracy_against(rows, "lr", parent.figures_dir / "accuracy_vs_lr.png",
                            f"{TITLE}: accuracy against the learning rate per baseline (mean ± std over seeds)")
    progress.log("\n" + (parent.root / "baselines.md").read_text())


# ----------------------------------------------------------------------------- figures

@charts.styled
def image_examples(images: np.ndarray, captions: Sequence[str], path: Path | str, title: str,
                   note: str = "no images") -> Path:
    """Images (uint8 [n, H, W, C]) in one row, each titled by its caption (e.g. its true label and
    two models' predictions); with no image, a panel saying `note`."""
    images = np.asarray(images)
    fig = Figure(figsize=(2.5 * max(len(images), 2), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(images), 1)))
    for ax, image, caption in zip(axes, images, captions):
        gray = image.shape[-1] == 1
        ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, interpolation="nearest")
        ax.set_title(caption, fontsize=10)
    for ax in axes:
        ax.axis("off")
    if not len(images):
        axes[0].text(0.5, 0.5, note, transform=axes[0].transAxes, ha="center", va="center", color="0.4")
    return charts.save(fig, path, title=title)


if __name__ == "__main__":
    cli.main(main, OPTIONS)
