"""seeds/002's coarse-to-fine search for the L2 strength λ, in three parts of one study:

1. coarse: λ from --coarse_lambdas (log grid 1e-1 … 1e-5), --search_cycles cyclic-LR cycles,
   the flags' network (batch norm in the report);
2. fine: --fine_points λ log-spaced over the decade between the best coarse λ and its better
   neighbour, both chosen by mean final *validation* accuracy;
3. final: the best λ of both searches, --final_cycles cycles, for every --final_norm; with
   --published_lambda also the same runs at that λ (part final_published: the source's choice
   beside ours).

    python -m experiments.lambda_search --flagfile=experiments/flags/seed002_lambda.flags

Writes lambda_search.md/.json (eval-mode train, validation and test accuracy per λ, the chosen
λ) and lambda_search.png (validation accuracy against λ, coarse and fine).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cifar_jax.config.options import Option, table
from cifar_jax.io import files
from cifar_jax.nn import models
from cifar_jax.plots import charts
from cifar_jax.results import studydir, summary
from cifar_jax.study import cli, config, progress, runner
from experiments import grid_study

OPTIONS = table(
    *grid_study.OPTIONS.values(),  # the shared MLP protocols set --cycles and --title
    Option("coarse_lambdas", (0.1, 0.01, 0.001, 0.0001, 0.00001), "λ of the coarse search (two or more).", many=True,
           low=0.0, low_open=True),
    Option("fine_points", 5, "λ of the fine search, log-spaced over one decade (ends included).", kind="int", low=2),
    Option("search_cycles", 1, "Cyclic-LR cycles of every search run.", kind="int", low=1),
    Option("final_cycles", 3, "Cyclic-LR cycles of the final runs with the chosen λ.", kind="int", low=1),
    Option("final_norm", ("none", "batch"), "Normalisation of the final runs (one group each).", kind="choice",
           many=True, choices=models.OPTIONS["norm"].choices),
    Option("published_lambda", 0.0, "Also train the final runs at this λ (part final_published), e.g. the report's own "
           "choice 0.005623 beside ours; 0: no.", low=0.0),
)
TITLE = "λ search (seeds/002)"


def fine_lambdas(rows: list[dict], points: int) -> tuple[float, ...]:
    """`points` λ log-spaced between the best coarse λ and its neighbour with the higher
    validation accuracy (the only neighbour at an end of the grid), largest first."""
    rows = sorted(rows, key=lambda r: r["values"]["l2"])
    score = [r["val_acc"]["mean"] if r["val_acc"]["mean"] is not None else -np.inf for r in rows]
    best = int(np.argmax(score))
    neighbours = [i for i in (best - 1, best + 1) if 0 <= i < len(rows)]
    other = max(neighbours, key=lambda i: score[i])
    lo, hi = sorted((rows[best]["values"]["l2"], rows[other]["values"]["l2"]))
    return tuple(float(x) for x in np.geomspace(hi, lo, points))


def best_lambda(rows: list[dict]) -> float:
    """The λ with the highest mean final validation accuracy."""
    scored = [r for r in rows if r["val_acc"]["mean"] is not None]
    if not scored:
        raise files.ResultsError("λ search: no run has a validation accuracy (is the validation split empty?)")
    return max(scored, key=lambda r: r["val_acc"]["mean"])["values"]["l2"]


def part(cfg: config.Config, name: str, title: str, cycles: int) -> list[dict]:
    """Train one part and analyse it; its configuration rows."""
    done = runner.run(cfg, "lambda_search", title, lambda p: grid_study.grid_runs(cfg, p, cycles), part=name,
                      analysis=lambda st, records: grid_study.analyse(st, records, cycles, title, cfg.own.at_epochs),
                      extra={"cycles": cycles}, figures=False)
    return grid_study.config_rows(done.finished)


def markdown(done: dict, best: float) -> str:
    """One table per part (λ, eval-mode train, validation and test accuracy), the chosen λ in bold."""
    out = [f"# {TITLE}", "", f"Chosen λ (highest mean final validation accuracy, coarse and fine): **{best:.4g}**", ""]
    for name, rows in done.items():
        out += [f"## {name}", "", "| config | λ | train acc (%) | val acc (%) | test acc (%) | n |",
                "|:---|---:|---:|---:|---:|:---|"]
        for r in sorted(rows, key=lambda r: (r["config"].split(",")[0], -r["values"]["l2"])):
            lam = f"{r['values']['l2']:.4g}"
            cells = [summary.format_stat(k, r[k]) for k in ("train_acc", "val_acc", "test_acc")]
            if not name.startswith("final") and r["values"]["l2"] == best:
                lam, cells = f"**{lam}**", [f"**{c}**" for c in cells]
            out.append(f"| {r['config']} | {lam} | " + " | ".join(cells) + f" | {r['test_acc']['n']}/{r['n_runs']} |")
        out.append("")
    return "\n".join(out)


def main(cfg: config.Config) -> None:
    """The coarse and the fine search, then the final runs at the chosen λ."""
    own = cfg.own
    if len(own.coarse_lambdas) < 2 or not own.final_norm:
        raise config.ConfigError("--coarse_lambdas/--final_norm: give two or more λ and one or more norms")
    cfg.single_group("the search trains the flags' one network (the final part varies --final_norm)")
    done = {"coarse": part(cfg.replace(l2=own.coarse_lambdas), "coarse", f"{TITLE}: coarse", own.search_cycles)}
    done["fine"] = part(cfg.replace(l2=fine_lambdas(done["coarse"], own.fine_points)), "fine", f"{TITLE}: fine",
                        own.search_cycles)
    best = best_lambda(done["coarse"] + done["fine"])
    nets = [dataclasses.replace(cfg.model, norm=n) for n in own.final_norm]
    done["final"] = part(cfg.replace(l2=(best,)).vary("model", nets), "final", f"{TITLE}: final, λ = {best:.4g}",
                         own.final_cycles)
    if own.published_lambda:
        done["final_published"] = part(cfg.replace(l2=(own.published_lambda,)).vary("model", nets), "final_published",
                                       f"{TITLE}: final at the report's λ = {own.published_lambda:.4g}", own.final_cycles)
    if not runner.is_lead():
        return
    st = studydir.StudyDir(Path(cfg.results_dir).expanduser() / (cfg.name or "lambda_search"))
    text = markdown(done, best)
    st.write_text("lambda_search.md", text)
    st.write_json("lambda_search.json", {"best_lambda": best, **done})
    charts.accuracy_against(done["coarse"] + done["fine"], "l2", st.figures_dir / "lambda_search.png",
                            f"{TITLE}: final accuracy against λ ({own.search_cycles} cycle(s), coarse and fine)")
    progress.log("\n" + text + f"\nresults: {st.root}")


if __name__ == "__main__":
    cli.main(main, OPTIONS)
