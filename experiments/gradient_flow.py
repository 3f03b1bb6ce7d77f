"""seeds/000 §3.1–3.3 and seeds/003's per-layer gradient magnitudes: gradient flow in BaselineNet,
DropoutNet and BatchNormNet. Every run records the mean and std of |gradient| of each parameter
tensor over its first and last --grad_window (5) training steps, and ‖gradient‖ per tensor per
epoch (--grad_stats, always on here); the figures and gradient_stats.md are drawn from those records.

    python -m experiments.gradient_flow --flagfile=experiments/flags/gradient_flow.flags

The three architectures are set here: --norm and --dropout are refused; --compare_dropout sets
DropoutNet's rate on fc1. BaselineNet (rate 0) and DropoutNet share a group (dropout is a per-run
value); BatchNormNet is its own. With several seeds the gradient figures show each model's first.
"""
from __future__ import annotations

from cifar_jax.plots import gradients
from cifar_jax.results import run_record, studydir
from cifar_jax.study import cli, config, prepare, progress, runner
from experiments import model_family

TITLE = "Gradient flow"


def write_gradients(st: studydir.StudyDir, records: dict[str, dict]) -> None:
    """The gradient figures and gradient_stats.md from one record per model (model name → record)."""
    fig = st.figures_dir
    title = lambda rec, what: f"{rec['config_name']} (seed {rec['seed']}): {what}"
    for model in ("BaselineNet", "DropoutNet"):
        gradients.layer_gradients(records[model], fig / f"gradients_{model}.png",
                                  title(records[model], "|gradient| per tensor, first vs last steps"))
    bn = records["BatchNormNet"]
    plain = [t for m in ("BaselineNet", "DropoutNet") for t in records[m]["grad_stats"]["tensors"]]
    shared = gradients.shared_tensors(bn["grad_stats"]["tensors"], plain)
    gradients.layer_gradients(bn, fig / "gradients_BatchNormNet_shared.png",
                              title(bn, "|gradient| of the tensors the other models have"), tensors=shared)
    gradients.layer_gradients(bn, fig / "gradients_BatchNormNet_all.png",
                              title(bn, "|gradient| per tensor, batch-norm scale and shift included"))
    by_label = {rec["config_name"]: rec for rec in records.values()}
    gradients.gradient_comparison(by_label, fig / "gradients_comparison.png",
                                  f"{TITLE}: |gradient| per tensor by metric")
    gradients.gradient_norms(by_label, fig / "gradient_norms.png",
                             f"{TITLE}: gradient norm of each weight tensor per epoch")
    text = gradients.stats_markdown(by_label, f"{TITLE}: |gradient| per parameter tensor")
    st.write_text("gradient_stats.md", text)
    progress.log("\n" + text)


OPTIONS = model_family.OPTIONS


def main(cfg: config.Config) -> None:
    """The three models with --grad_stats, then their gradients (the first seed of each)."""
    rate = model_family.validate(cfg)

    def runs(prepared: prepare.Prepared) -> list[config.Run]:
        by_model = model_family.model_runs(cfg.replace(grad_stats=True), len(prepared.train_idx),
                                           prepared.dataset.num_classes, rate)
        return [r for model in by_model.values() for r in model]

    done = runner.run(cfg, "gradient_flow", TITLE, runs, extra={"compare_dropout": rate})
    if runner.is_lead():  # a configuration's name opens with its model's (DropoutNet p=0.6)
        write_gradients(done.study, {name.split()[0]: recs[0]
                                     for name, recs in run_record.group_by_config(done.finished).items()})


if __name__ == "__main__":
    cli.main(main, OPTIONS)
