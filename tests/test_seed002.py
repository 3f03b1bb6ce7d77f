"""The seeds/002 studies: the gradient check can pass and fail, the λ search picks its fine decade
by validation accuracy, and the report's sections run end to end (synthetic data)."""
import json
from pathlib import Path
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.training import gradcheck

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import lambda_search  # noqa: E402
from conftest import reproduce_in_process  # noqa: E402


def _mlp_cost(scale_grad: float = 1.0):
    """A 2-layer MLP cost in float64; with scale_grad != 1 its autodiff gradient is wrong."""
    @jax.custom_vjp
    def relu(x):
        return jnp.maximum(x, 0.0)

    relu.defvjp(lambda x: (relu(x), x), lambda x, g: (scale_grad * g * (x > 0),))
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(20, 10))), jnp.asarray(rng.integers(0, 4, 20))

    def cost(p):
        h = relu(x @ p["w1"] + p["b1"])
        logits = h @ p["w2"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(20), y]) + 0.005 * jnp.sum(p["w1"] ** 2)

    params = {"w1": jnp.asarray(rng.normal(size=(10, 8)) / 3), "b1": jnp.zeros(8), "w2": jnp.asarray(rng.normal(size=(8, 4)) / 3)}
    return cost, params


def test_gradient_check_passes_a_correct_gradient_and_catches_a_wrong_one():
    with jax.enable_x64(True):
        cost, params = _mlp_cost()
        errors = gradcheck.relative_errors(cost, params)
        assert set(errors) == {"w1", "b1", "w2"} and max(errors.values()) < 1e-7
        wrong, params = _mlp_cost(scale_grad=2.0)  # the first layer's gradients doubled
        errors = gradcheck.relative_errors(wrong, params)
        assert 0.3 < errors["w1"] <= 1 / 3 and errors["w2"] < 1e-7  # 1/3 for a doubled gradient, λ·W part aside


def _row(l2, val):
    stat = {"mean": val, "std": 0.0, "n": 2}
    return {"config": f"l2={l2:g}", "values": {"l2": l2}, "val_acc": stat}


def test_fine_search_spans_the_decade_between_the_best_and_its_better_neighbour():
    rows = [_row(0.1, 0.49), _row(0.01, 0.52), _row(0.001, 0.51), _row(1e-4, 0.50)]
    fine = lambda_search.fine_lambdas(rows, 5)
    np.testing.assert_allclose(fine, [0.01, 0.005623, 0.003162, 0.001778, 0.001], rtol=1e-3)
    rows[0]["val_acc"]["mean"] = 0.515  # now the neighbour above is better
    np.testing.assert_allclose(lambda_search.fine_lambdas(rows, 3), [0.1, 0.031623, 0.01], rtol=1e-4)
    end = [_row(0.1, 0.6), _row(0.01, 0.5)]  # the best at an end of the grid has one neighbour
    np.testing.assert_allclose(lambda_search.fine_lambdas(end, 2), [0.1, 0.01])
    assert lambda_search.best_lambda(rows) == 0.01


@pytest.mark.slow
def test_seed002_smoke_sections_run_and_report_beside_the_published_numbers(tmp_path):
    """The gradient check, the λ search and the init study at smoke size on synthetic data, then
    the report (that a second invocation trains nothing is runner.run's, tested in test_experiments)."""
    reproduce_in_process("seed002", ["1", "3", "4"], tmp_path, "--dataset=synthetic", "--split=1000/200",
                         "--half_cycle=50")  # smaller than the smoke presets: the same parts, a quarter of the steps
    report = (tmp_path / "seed002_report_smoke" / "report.md").read_text()
    assert "Largest relative error over every net and tensor" in report
    check = json.loads((tmp_path / "seed002_gradient_check_smoke" / "gradient_check.json").read_text())
    assert len(check["nets"]) == 6 and max(e for n in check["nets"] for e in n["errors"].values()) < 1e-6
    search = json.loads((tmp_path / "seed002_lambda_smoke" / "lambda_search.json").read_text())
    assert len(search["coarse"]) == 3 and len(search["fine"]) == 3 and len(search["final"]) == 2
    assert search["best_lambda"] in [r["values"]["l2"] for r in search["coarse"] + search["fine"]]
    assert "| norm=batch,init_scale=0.001 |" in report and "| 52.16 |" in report  # the report's train accuracy
    assert "accuracy_vs_init_scale.png" in report and "lambda_search.png" in report
    assert "§2, §5.1, §5.2, §5.3, §5.4, §6.1, §6.2, §6.3 have not run here" in report
    assert report.index("## Verdicts") < report.index("## §1 ") and "| 4 | Without batch norm, σ ≤ 1e-3" in report
