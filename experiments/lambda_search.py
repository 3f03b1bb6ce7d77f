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
from absl import flags

from cifar_jax import config, options, plots, results, study, summary
from experiments import grid_study

flags.DEFINE_list("coarse_lambdas", ["0.1", "0.01", "0.001", "0.0001", "0.00001"], "λ of the coarse search.")
flags.DEFINE_integer("fine_points", 5, "λ of the fine search, log-spaced over one decade (ends included).")
flags.DEFINE_integer("search_cycles", 1, "Cyclic-LR cycles of every search run.")
flags.DEFINE_integer("final_cycles", 3, "Cyclic-LR cycles of the final runs with the chosen λ.")
flags.DEFINE_list("final_norm", ["none", "batch"], "Normalisation of the final runs (one group each).")
flags.DEFINE_float("published_lambda", 0.0, "Also train the final runs at this λ (part final_published), e.g. the "
                   "report's own choice 0.005623 beside ours; 0: no.")
FLAGS = flags.FLAGS
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
        raise results.ResultsError("λ search: no run has a validation accuracy (is the validation split empty?)")
    return max(scored, key=lambda r: r["val_acc"]["mean"])["values"]["l2"]


def part(cfg: config.Config, name: str, title: str, cycles: int, done: dict) -> None:
    """Train one part; its configuration rows go to done[name]."""
    def analysis(st: results.StudyDir, records: list[dict]) -> None:
        done[name] = grid_study.config_rows(records)
        grid_study.analyse(st, records, cycles, title)

    study.run(cfg, "lambda_search", title, lambda p: grid_study.grid_runs(cfg, p, cycles), part=name,
              report=analysis, extra={"cycles": cycles}, figures=False)
    if name not in done:  # another process of a multi-host study wrote the analysis
        st = results.StudyDir(Path(cfg.results_dir).expanduser() / (cfg.name or "lambda_search") / name)
        done[name] = grid_study.config_rows(st.records())


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


def _lambdas(values: list[str]) -> tuple[float, ...]:
    """--coarse_lambdas as floats > 0 (at least two)."""
    try:
        out = tuple(float(v) for v in values)
    except ValueError:
        raise config.ConfigError(f"--coarse_lambdas={','.join(values)}: give numbers") from None
    if len(out) < 2 or min(out) <= 0 or not all(np.isfinite(out)):
        raise config.ConfigError(f"--coarse_lambdas={','.join(values)}: give two or more finite values > 0")
    return out


def main(cfg: config.Config) -> None:
    coarse = _lambdas(FLAGS.coarse_lambdas)
    if FLAGS.fine_points < 2 or FLAGS.search_cycles < 1 or FLAGS.final_cycles < 1 or not 0 <= FLAGS.published_lambda < np.inf:
        raise config.ConfigError(f"--fine_points={FLAGS.fine_points} --search_cycles={FLAGS.search_cycles} "
                                 f"--final_cycles={FLAGS.final_cycles} --published_lambda={FLAGS.published_lambda}: "
                                 "need >= 2, >= 1, >= 1 and a finite λ >= 0")
    norms = options.GROUP_OPTIONS["norm"].parse(FLAGS.final_norm)
    cfg.single_group("the search trains the flags' one network (the final part varies --final_norm)")
    done: dict[str, list[dict]] = {}
    part(cfg.replace(l2=coarse), "coarse", f"{TITLE}: coarse", FLAGS.search_cycles, done)
    part(cfg.replace(l2=fine_lambdas(done["coarse"], FLAGS.fine_points)), "fine", f"{TITLE}: fine",
         FLAGS.search_cycles, done)
    best = best_lambda(done["coarse"] + done["fine"])
    nets = [dataclasses.replace(cfg.model, norm=n) for n in norms]
    part(cfg.replace(l2=(best,)).vary("model", nets), "final", f"{TITLE}: final, λ = {best:.4g}", FLAGS.final_cycles, done)
    if FLAGS.published_lambda:
        part(cfg.replace(l2=(FLAGS.published_lambda,)).vary("model", nets), "final_published",
             f"{TITLE}: final at the report's λ = {FLAGS.published_lambda:.4g}", FLAGS.final_cycles, done)
    if not study.is_lead():
        return
    st = results.StudyDir(Path(cfg.results_dir).expanduser() / (cfg.name or "lambda_search"))
    text = markdown(done, best)
    st.write_text("lambda_search.md", text)
    st.write_json("lambda_search.json", {"best_lambda": best, **done})
    plots.accuracy_against(done["coarse"] + done["fine"], "l2", st.figures_dir / "lambda_search.png",
                           f"{TITLE}: final accuracy against λ ({FLAGS.search_cycles} cycle(s), coarse and fine)")
    study.log("\n" + text + f"\nresults: {st.root}")


if __name__ == "__main__":
    study.main(main)
