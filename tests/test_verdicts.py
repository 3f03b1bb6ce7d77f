"""Verdicts: every claim rule on hand-made records (one set where it holds, one where it does not),
the tolerance of a published number, and every published number of reports.toml in a table with
its Δ and verdict."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import claims, reproduce, verdicts  # noqa: E402
from experiments.verdicts import FAILS, HOLDS, NOT_RUN  # noqa: E402


def rec(name: str, seed: int = 0, status: str = "done", *, test=None, test_loss=1.0, val=None, val_loss=None,
        train=None, train_loss=None, seconds=None, noise=None, final_train=None, untrained=None, classes=10,
        model=None, **config) -> dict:
    """A run record: per-epoch curves from lists (a number: the same for two epochs), finals from numbers."""
    curves = dict(val_acc=val, val_loss=val_loss, train_acc=train, train_loss=train_loss, run_seconds=seconds,
                  loss_noise=noise)
    n = max((len(v) for v in curves.values() if isinstance(v, list)), default=2)
    curves["train_loss"] = 1.0 if train_loss is None else train_loss  # below the untrained 2.303: it learned
    epochs = [{"epoch": i + 1, "l2_penalty": 0.0} for i in range(n)]
    for key, values in curves.items():
        if values is not None:
            for entry, v in zip(epochs, values if isinstance(values, list) else [values] * n):
                entry[key] = v
    return {"run_id": f"{name},seed={seed}", "config_name": name, "seed": seed, "status": status,
            "diverged_epoch": 1 if status == "diverged" else None, "epochs": epochs,
            "config": {"model": {"num_classes": classes, **(model or {})}, "lr": 0.1, "l2": 0.0, **config},
            "test": None if test is None else {"loss": test_loss, "acc": test, "top5": 0.9},
            "final_train": None if final_train is None else {"loss": 1.0, "acc": final_train, "top5": 1.0},
            "untrained": {"val": untrained or {"loss": 2.303, "acc": 0.1, "top5": 0.5}}}


def evidence(spec: dict) -> verdicts.Evidence:
    """{study: {config: record keyword arguments}} as Evidence, two seeds each."""
    return verdicts.Evidence({study: [rec(name, seed, **kw) for name, kw in configs.items() for seed in (0, 1)]
                              for study, configs in spec.items()}, margin=1.0)


RANGE_LRS = [float(f"{x:.3g}") for x in np.geomspace(0.5, 1e-6, 12)]


def range_test(unstable_from: float, no_learning_to: float) -> dict:
    """A range test whose LRs ≥ unstable_from blow up and LRs ≤ no_learning_to gain nothing."""
    return {"lr_sweep/range_test": {
        f"lr={lr:g}": dict(lr=lr, train_loss=9.0 if lr >= unstable_from else 1.0,
                           val=0.1 if lr <= no_learning_to else 0.4) for lr in RANGE_LRS}}


def values(study: str, metric: str, numbers: dict) -> dict:
    """One metric per configuration: {study: {config: {metric: value}}}."""
    return {study: {name: {metric: v} for name, v in numbers.items()}}


U, FALLING = [1.0, 0.8, 0.9, 1.0, 1.1, 1.2], [1.2, 1.1, 1.0, 0.9, 0.8, 0.7]
LATE_U = [1.0] * 10 + [0.8] + [0.9] * 4  # lowest at epoch 11 of 15
LR = ("lr=0.1", "lr=0.075", "lr=0.05", "lr=0.025", "lr=0.01")
DROP = ("dropout=0", "dropout=0.2", "dropout=0.4", "dropout=0.6", "dropout=0.8")
SCHED, STATIC = "inverse_time lr0=0.1 k=0.25", "constant lr=0.05"
BL, STD, AUG, FIN = ("seed001_ladder/baseline", "baseline"), ("seed001_ladder/standardised", "standardised"), \
    ("seed001_ladder/augmented", "augmented"), ("seed001_ladder/batch_norm_long", "batch_norm_long")
NINE = "hidden=50-30-20-20-10-10-10-10"
DEPTH = ("hidden=60-50-40", "hidden=80-70-60-50-40-30", "hidden=120-110-100-90-80-70-60-50-40-30-20-10")
BATCH3 = [f"batch_size={b}" for b in (1, 4, 16, 64, 256, 1024)]
GRID = ("hidden=32-32-32-32-32-32", "hidden=" + "-".join(["16"] * 10), "hidden=64")
BN4 = [f"norm=batch,batch_size={b}" for b in (5, 10, 50)]
LN4 = [f"norm=layer,batch_size={b}" for b in (5, 10, 50)]
SCALES = claims.SEED004_SCALES


def rising(names, lo=0.3, hi=0.6):
    return dict(zip(names, np.linspace(lo, hi, len(names))))


def opennet(best_lr=0.001, best_wd=0.0001, worst_kernels=(5, 1)) -> dict:
    configs = {}
    for lr in (0.0003, 0.001, 0.003):
        for wd in (0.0, 0.0001, 0.0005):
            for k in ((3, 1), (5, 3), (5, 1)):
                acc = 0.6 + 0.05 * (lr == best_lr) + 0.03 * (wd == best_wd) - 0.04 * (k == worst_kernels)
                configs[f"lr={lr:g},weight_decay={wd:g},kernels={k}"] = dict(val=acc, lr=lr, weight_decay=wd,
                                                                             model={"kernels": list(k)})
    return {"seed004_opennet_grid": configs}


# claim key → (records where it holds, records where it does not)
CASES = {
    "unstable": (range_test(0.5, 1e-3), range_test(1.0, 1e-3)),
    "no_learning": (range_test(0.5, 0.00108), range_test(0.5, 1e-6)),
    "best_static": (values("lr_sweep", "test", dict(zip(LR, (0.60, 0.62, 0.66, 0.63, 0.58)))),
                    values("lr_sweep", "test", dict(zip(LR, (0.68, 0.62, 0.66, 0.63, 0.58))))),
    "schedule_100": (values("lr_schedule", "train", {SCHED: [0.9, 0.995]}),
                     values("lr_schedule", "train", {SCHED: [0.9, 0.97]})),
    "static_not_100": (values("lr_schedule", "train", {STATIC: [0.9, 0.97]}),
                       values("lr_schedule", "train", {STATIC: [0.9, 0.995]})),
    "schedule_steady": ({"lr_schedule": {STATIC: dict(val=[0.6, 0.7, 0.6, 0.7]), SCHED: dict(val=[0.6, 0.65, 0.65, 0.65])}},
                        {"lr_schedule": {SCHED: dict(val=[0.6, 0.7, 0.6, 0.7]), STATIC: dict(val=[0.6, 0.65, 0.65, 0.65])}}),
    "best_dropout": (values("dropout_sweep", "test", dict(zip(DROP, (0.6, 0.61, 0.62, 0.64, 0.55)))),
                     values("dropout_sweep", "test", dict(zip(DROP, (0.66, 0.61, 0.62, 0.64, 0.55))))),
    "gap_shrinks": ({"dropout_sweep": {n: dict(final_train=0.9, val=0.5 + 0.05 * i) for i, n in enumerate(DROP)}},
                    {"dropout_sweep": {n: dict(final_train=0.9, val=0.7 - 0.05 * i) for i, n in enumerate(DROP)}}),
    "bn_overfits": (values("batchnorm", "val_loss", {"BatchNormNet": U}),
                    values("batchnorm", "val_loss", {"BatchNormNet": FALLING})),
    "lr_extremes": ({"seed001_lr": {"lr=1": dict(status="diverged"), "lr=0.1": dict(test=0.6), "lr=1e-05": dict(test=0.3)}},
                    {"seed001_lr": {"lr=1": dict(test=0.5), "lr=0.1": dict(test=0.6), "lr=1e-05": dict(test=0.3)}}),
    "batch8_time": (values("seed001_batch_size", "seconds", {"batch_size=8": [30, 10], "batch_size=128": [30, 2]}),
                    values("seed001_batch_size", "seconds", {"batch_size=8": [30, 3], "batch_size=128": [30, 2]})),
    "untrained_loss": ({BL[0]: {BL[1]: dict(untrained={"loss": 2.31, "acc": 0.1, "top5": 0.5})}},
                       {BL[0]: {BL[1]: dict(untrained={"loss": 2.5, "acc": 0.1, "top5": 0.5})}}),
    "untrained_acc": ({BL[0]: {BL[1]: dict(untrained={"loss": 2.3, "acc": 0.09, "top5": 0.5})}},
                      {BL[0]: {BL[1]: dict(untrained={"loss": 2.3, "acc": 0.3, "top5": 0.5})}}),
    "baseline_70": ({BL[0]: {BL[1]: dict(test=0.705)}}, {BL[0]: {BL[1]: dict(test=0.60)}}),
    "baseline_u": ({BL[0]: {BL[1]: dict(val_loss=U)}}, {BL[0]: {BL[1]: dict(val_loss=FALLING)}}),
    "standardised_70": ({BL[0]: {BL[1]: dict(test=0.70)}, STD[0]: {STD[1]: dict(test=0.72)}},
                        {BL[0]: {BL[1]: dict(test=0.70)}, STD[0]: {STD[1]: dict(test=0.68)}}),
    "augmented_80": ({AUG[0]: {AUG[1]: dict(test=0.79)}}, {AUG[0]: {AUG[1]: dict(test=0.70)}}),
    "final_80": ({FIN[0]: {FIN[1]: dict(test=0.81)}}, {FIN[0]: {FIN[1]: dict(test=0.75)}}),
    "final_loss": ({FIN[0]: {FIN[1]: dict(test=0.8, test_loss=0.62)}}, {FIN[0]: {FIN[1]: dict(test=0.8, test_loss=0.9)}}),
    "final_no_u": ({FIN[0]: {FIN[1]: dict(val_loss=FALLING)}}, {FIN[0]: {FIN[1]: dict(val_loss=U)}}),
    "bn_2layer": (values("seed002_nets", "test", {"hidden=50-50,norm=batch,init=he": 0.533,
                                                  "hidden=50-50,norm=none,init=he": 0.532}),
                  values("seed002_nets", "test", {"hidden=50-50,norm=batch,init=he": 0.56,
                                                  "hidden=50-50,norm=none,init=he": 0.532})),
    "bn_9layer": (values("seed002_nets", "test", {f"{NINE},norm=batch,init=he": 0.44, f"{NINE},norm=none,init=he": 0.40}),
                  values("seed002_nets", "test", {f"{NINE},norm=batch,init=he": 0.40, f"{NINE},norm=none,init=he": 0.44})),
    "lambda_decade": ({"seed002_lambda/fine": {"l2=0.005": dict(val=0.52, l2=0.005), "l2=0.02": dict(val=0.50, l2=0.02)}},
                      {"seed002_lambda/fine": {"l2=0.005": dict(val=0.50, l2=0.005), "l2=0.02": dict(val=0.52, l2=0.02)}}),
    "small_init_chance": (values("seed002_init", "test", {"norm=none,init_scale=0.001": 0.1,
                                                          "norm=none,init_scale=0.0001": 0.1}),
                          values("seed002_init", "test", {"norm=none,init_scale=0.001": 0.4,
                                                          "norm=none,init_scale=0.0001": 0.1})),
    "small_init_bn": (values("seed002_init", "test", {"norm=batch,init_scale=0.001": 0.48,
                                                      "norm=batch,init_scale=0.0001": 0.47}),
                      values("seed002_init", "test", {"norm=batch,init_scale=0.001": 0.48,
                                                      "norm=batch,init_scale=0.0001": 0.3})),
    "small_init_cost": (values("seed002_init", "val_loss", {"norm=batch,init_scale=0.001": 2.29}),
                        values("seed002_init", "val_loss", {"norm=batch,init_scale=0.001": 1.5})),
    "depth_best": (values("seed002_depth", "test", dict(zip(DEPTH, (0.53, 0.55, 0.45)))),
                   values("seed002_depth", "test", dict(zip(DEPTH, (0.56, 0.55, 0.45))))),
    "depth_worst": (values("seed002_depth", "test", dict(zip(DEPTH, (0.53, 0.55, 0.45)))),
                    values("seed002_depth", "test", dict(zip(DEPTH, (0.43, 0.55, 0.45))))),
    "dropout_bn": (values("seed002_dropout", "test", {"norm=batch": 0.47, "norm=none": 0.32}),
                   values("seed002_dropout", "test", {"norm=batch": 0.40, "norm=none": 0.39})),
    "lr_high": (values("seed003_lr", "test", {"lr=1": 0.1}), values("seed003_lr", "test", {"lr=1": 0.45})),
    "lr_low": (values("seed003_lr", "test", {"lr=0.01": 0.5, "lr=1e-05": 0.3}),
               values("seed003_lr", "test", {"lr=0.01": 0.5, "lr=1e-05": 0.45})),
    "epochs_u": (values("seed003_epochs", "val_loss", {"mlp_256-128": LATE_U}),
                 values("seed003_epochs", "val_loss", {"mlp_256-128": FALLING})),
    "bn_generalises": ({"seed003_bn": {"norm=batch": dict(val=0.55, test=0.54), "norm=none": dict(val=0.52, test=0.51)}},
                       {"seed003_bn": {"norm=batch": dict(val=0.55, test=0.50), "norm=none": dict(val=0.52, test=0.51)}}),
    "bn_train_lower": (values("seed003_bn", "final_train", {"norm=batch": 0.6, "norm=none": 0.7}),
                       values("seed003_bn", "final_train", {"norm=batch": 0.7, "norm=none": 0.6})),
    "batch_accuracy": (values("seed003_batch_size", "test", rising(BATCH3)),
                       values("seed003_batch_size", "test", rising(BATCH3[::-1]))),
    "batch_accuracy_scaled": (values("seed003_batch_size_scaled", "test", rising(claims.SCALED)),
                              values("seed003_batch_size_scaled", "test", rising(claims.SCALED[::-1]))),
    "batch_speed": (values("seed003_batch_size", "seconds", rising(BATCH3[::-1], 1, 60)),
                    values("seed003_batch_size", "seconds", rising(BATCH3, 1, 60))),
    "batch_noise": (values("seed003_batch_size", "noise", rising(BATCH3[::-1], 0.01, 0.5)),
                    values("seed003_batch_size", "noise", rising(BATCH3, 0.01, 0.5))),
    "grid_best": (values("seed003_grid", "val", dict(zip(GRID, (0.55, 0.45, 0.5)))),
                  values("seed003_grid", "val", dict(zip(GRID, (0.55, 0.45, 0.6))))),
    "grid_worst": (values("seed003_grid", "val", dict(zip(GRID, (0.55, 0.45, 0.5)))),
                   values("seed003_grid", "val", dict(zip(GRID, (0.55, 0.52, 0.5))))),
    "fine_tune_best": (values("seed003_cnn/target", "test", dict(zip(claims.FINE_TUNE, (0.7, 0.8, 0.68, 0.5, 0.5)))),
                       values("seed003_cnn/target", "test", dict(zip(claims.FINE_TUNE, (0.7, 0.8, 0.85, 0.5, 0.5))))),
    "fine_tune_collapse": ({"seed003_cnn/target": {c: dict(test=0.5, classes=2) for c in claims.FINE_TUNE[3:]}},
                           {"seed003_cnn/target": {claims.FINE_TUNE[3]: dict(test=0.5, classes=2),
                                                   claims.FINE_TUNE[4]: dict(test=0.7, classes=2)}}),
    "probe_best": (values("seed003_cnn/target", "test", dict(zip(claims.PROBE, (0.5, 0.55, 0.65, 0.72, 0.71)))),
                   values("seed003_cnn/target", "test", dict(zip(claims.PROBE, (0.5, 0.55, 0.65, 0.72, 0.74))))),
    "scratch_flat": (values("seed003_cnn/target", "test", dict(zip(claims.SCRATCH, (0.5, 0.52, 0.55, 0.5, 0.51)))),
                     values("seed003_cnn/target", "test", dict(zip(claims.SCRATCH, (0.5, 0.52, 0.65, 0.5, 0.51))))),
    "overfit_50": (values("seed004_overfit", "train", {"lr=0.002,init_scale=0.05": [0.5, 1.0],
                                                       "lr=0.001,init_scale=0.05": [0.5, 0.96]}),
                   values("seed004_overfit", "train", {"lr=0.002,init_scale=0.05": [0.5, 1.0],
                                                       "lr=0.001,init_scale=0.05": [0.5, 0.8]})),
    "small_scale_slow": (values("seed004_overfit", "final_train", {"lr=0.001,init_scale=0.05": 0.9,
                                                                   "lr=0.001,init_scale=0.01": 0.3}),
                         values("seed004_overfit", "final_train", {"lr=0.001,init_scale=0.05": 0.9,
                                                                   "lr=0.001,init_scale=0.01": 0.85})),
    "bn_helps": (values("seed004_norms", "val", {"norm=batch": 0.5, "norm=none": 0.45}),
                 values("seed004_norms", "val", {"norm=batch": 0.45, "norm=none": 0.5})),
    "bn_batch_size": (values("seed004_batch_size", "val", rising(BN4)), values("seed004_batch_size", "val", rising(BN4[::-1]))),
    "ln_batch_size": (values("seed004_batch_size", "val", {**rising(BN4, 0.3, 0.5), **rising(LN4, 0.45, 0.47)}),
                      values("seed004_batch_size", "val", {**rising(BN4, 0.45, 0.47), **rising(LN4, 0.3, 0.5)})),
    "bn_scale": (values("seed004_weight_scale", "val", {**{f"norm=batch,init_scale={s}": 0.4 for s in SCALES},
                                                        **rising([f"norm=none,init_scale={s}" for s in SCALES], 0.1, 0.4)}),
                 values("seed004_weight_scale", "val", {**rising([f"norm=batch,init_scale={s}" for s in SCALES], 0.1, 0.4),
                                                        **{f"norm=none,init_scale={s}": 0.4 for s in SCALES}})),
    "dropout_train": (values("seed004_dropout", "final_train", {"dropout=0": 1.0, "dropout=0.75": 0.8}),
                      values("seed004_dropout", "final_train", {"dropout=0": 0.8, "dropout=0.75": 1.0})),
    "dropout_val": (values("seed004_dropout", "val", {"dropout=0": 0.25, "dropout=0.75": 0.3}),
                    values("seed004_dropout", "val", {"dropout=0": 0.3, "dropout=0.75": 0.25})),
    "opennet_lr": (opennet(best_lr=0.001), opennet(best_lr=0.003)),
    "opennet_wd": (opennet(best_wd=0.0005), opennet(best_wd=0.0)),
    "opennet_kernels": (opennet(worst_kernels=(5, 1)), opennet(worst_kernels=(3, 1))),
}
ALL = [(report, c) for report, cs in claims.CLAIMS.items() for c in cs]


def test_every_claim_has_its_cases_and_a_unique_key():
    keys = [c.key for _, c in ALL]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(CASES)


@pytest.mark.parametrize("report,claim", ALL, ids=[f"{r}-{c.key}" for r, c in ALL])
def test_claim_rule_holds_on_one_set_and_not_on_the_other(report, claim):
    holding, failing = CASES[claim.key]
    found = claim.rule(evidence(holding))
    assert found.verdict == HOLDS, found.evidence
    found = claim.rule(evidence(failing))
    assert found.verdict == FAILS, found.evidence
    missing = claim.rule(verdicts.Evidence({}))
    assert missing.verdict == NOT_RUN and "no runs of" in missing.evidence


def test_tolerance_adds_the_margin_the_seed_spread_and_the_sources_sampling_error():
    assert verdicts.tolerance(50.0, 0.0, None, 1.0) == 1.0
    assert verdicts.tolerance(50.0, 1.5, None, 0.0) == pytest.approx(3.0)
    assert verdicts.tolerance(50.0, 0.0, 400, 1.0) == pytest.approx(1.0 + 2 * 2.5)  # 400 images: ±2.5 points at 50%
    assert verdicts.tolerance(53.0, 0.5, 10_000, 1.0) == pytest.approx(1.0 + 2 * math.sqrt(0.25 + 53 * 47 / 10_000))


def test_a_published_number_is_within_or_outside_its_tolerance():
    ev = verdicts.Evidence({"s": [rec("a", s, test=t) for s, t in enumerate((0.530, 0.534))]
                            + [rec("b", s, test=0.45) for s in (0, 1)]}, margin=1.0)
    rows = verdicts.published_rows(ev, "s", {"a": (None, None, 53.36), "b": (None, None, 40.0),
                                             "c": (None, None, 50.0)}, (45_000, 5_000, 10_000))
    a, b, c = rows
    assert a["verdict"] == verdicts.WITHIN and a["delta"] == pytest.approx(53.2 - 53.36)
    assert b["verdict"] == verdicts.OUTSIDE and b["delta"] == pytest.approx(5.0) and b["tol"] < 5.0
    assert c["verdict"] == NOT_RUN and c["mean"] is None


def test_every_published_number_appears_with_its_delta_and_verdict():
    for name, report in reproduce.REPORTS.items():
        for section in report.sections:
            studies: dict[str, list] = {}
            for table in section.published:
                study = f"{section.stem}/{table.part}" if table.part else section.stem
                studies.setdefault(study, []).extend(
                    rec(config, seed, test=0.5, val=0.5, final_train=0.6) for config in table.numbers for seed in (0, 1))
            text, rows = reproduce.published_tables(section, verdicts.Evidence(studies, report.margin))
            for table in section.published:
                for config, numbers in table.numbers.items():
                    for split, number in zip(("train", "val", "test"), numbers):
                        if number is None:
                            continue
                        line = next((r for r in text.splitlines() if r.startswith(f"| {config} | {split} |")
                                     and f"| {number:.2f} |" in r), None)
                        assert line, f"{name} §{section.number}: {config} {split} {number} is in no table"
                        delta = (50.0 if split != "train" else 60.0) - number
                        assert f"| {delta:+.2f} |" in line and ("✓ within" in line or "✗ outside" in line), line
            counted = [t for t in section.published if t.counted]  # the tables the summary counts
            assert len(rows) == sum(x is not None for t in counted for v in t.numbers.values() for x in v)
