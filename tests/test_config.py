"""Flags → validated config → run grid, in process: configuration names from the values that
vary (group and per-run options alike), Config.vary, and one-line errors from the options table."""
import dataclasses

import pytest

from cifar_jax.config import options
from cifar_jax.study import config


def names(cfg):
    return [r.run_id for r in config.grid(cfg, 1000, 10)]


def test_every_group_option_names_its_configurations(parse):
    cfg = parse("--model=mlp", "--hidden=16;8,8", "--init=he,xavier", "--l2=0,0.01")
    assert len(cfg.variants) == 4
    assert names(cfg) == ["hidden=16,init=he,l2=0,seed=0", "hidden=16,init=he,l2=0.01,seed=0",
                          "hidden=16,init=xavier,l2=0,seed=0", "hidden=16,init=xavier,l2=0.01,seed=0",
                          "hidden=8-8,init=he,l2=0,seed=0", "hidden=8-8,init=he,l2=0.01,seed=0",
                          "hidden=8-8,init=xavier,l2=0,seed=0", "hidden=8-8,init=xavier,l2=0.01,seed=0"]
    assert {r.spec.model.init for r in config.grid(cfg, 1000, 10)} == {"he", "xavier"}


def test_probe_options_name_their_configurations_and_stay_out_of_run_configs_when_off(parse):
    cfg = parse("--model=mlp", "--norm=batch", "--dropout=0.5", "--dropout_kind=inverted,unscaled", "--norm_l2=false,true")
    runs = config.grid(cfg, 1000, 10)
    assert [r.config_name for r in runs] == ["dropout_kind=inverted,norm_l2=false", "dropout_kind=inverted,norm_l2=true",
                                             "dropout_kind=unscaled,norm_l2=false", "dropout_kind=unscaled,norm_l2=true"]
    stored = [r.config["model"] for r in runs]
    assert "dropout_kind" not in stored[0] and "norm_l2" not in stored[0]  # records of studies before the probes keep their form
    assert stored[3]["dropout_kind"] == "unscaled" and stored[3]["norm_l2"] is True
    assert runs[3].spec.model.dropout_kind == "unscaled" and runs[3].spec.model.norm_l2


def test_lr_batch_scale_scales_each_batch_sizes_learning_rate(parse):
    cfg = parse("--model=mlp", "--lr=0.01", "--batch_size=16,64,1024", "--lr_batch_scale=64")
    assert [(r.config_name, r.hp["lr"]) for r in config.grid(cfg, 4096, 10)] == [
        ("batch_size=16,lr=0.0025", 0.0025), ("batch_size=64,lr=0.01", 0.01), ("batch_size=1024,lr=0.16", 0.16)]


def test_vary_adds_a_group_axis(parse):
    cfg = parse("--model=mlp", "--hidden=16", "--batch_size=50,100")
    norms = [dataclasses.replace(cfg.model, norm=n) for n in ("none", "batch")]
    varied = cfg.vary("model", norms)
    assert len(varied.variants) == 4
    assert names(varied) == ["norm=none,batch_size=50,seed=0", "norm=batch,batch_size=50,seed=0",
                             "norm=none,batch_size=100,seed=0", "norm=batch,batch_size=100,seed=0"]


@pytest.mark.parametrize("flag,message", [
    ("--init=uniform", "--init=uniform: 'uniform' is unknown; allowed: torch, he, xavier, normal"),
    ("--batch_size=0", "--batch_size=0: must be >= 1"),
    ("--hidden=16;x", "--hidden=16;x: invalid literal"),
    ("--clip_norm=-1", "--clip_norm=-1: must be >= 0"),
    ("--norm=group", "allowed: none, batch, layer"),
    ("--norm_l2=maybe", "--norm_l2=maybe: 'maybe' is not true or false"),
    ("--dropout_place=before_relu", "allowed: after_relu, before_norm"),
])
def test_group_options_refuse_bad_values_in_one_line(parse, flag, message):
    with pytest.raises(options.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse("--model=mlp", flag)


def test_an_option_of_each_level_is_one_table_entry_and_its_use(parse):
    """--activation (model), --clip_value (group) and --warmup_steps (an integer per-run option),
    each declared once in its table: grid axes named in the configurations, fields of
    ModelConfig / GroupSpec / the int32 per-run arrays, left out of a run's config at their
    defaults; and each acts: the nonlinearity, the clipped gradient, the ramped-up LR."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cifar_jax.nn import models
    from cifar_jax.training import optim, schedules, step

    cfg = parse("--model=mlp", "--hidden=8", "--activation=relu,tanh", "--clip_value=0,0.5", "--warmup_steps=0,10")
    runs = config.grid(cfg, 640, 10)
    assert [r.config_name for r in runs[:4]] == [
        "activation=relu,clip_value=0,warmup_steps=0", "activation=relu,clip_value=0,warmup_steps=10",
        "activation=relu,clip_value=0.5,warmup_steps=0", "activation=relu,clip_value=0.5,warmup_steps=10"]
    assert len(runs) == 8 and len({r.spec for r in runs}) == 4  # warmup_steps is per run, not per group
    plain, tanh = runs[0], runs[-1]
    assert "activation" not in plain.config["model"] and "clip_value" not in plain.config and "warmup_steps" not in plain.config
    assert tanh.config["model"]["activation"] == "tanh" and tanh.config["clip_value"] == 0.5
    assert tanh.config["warmup_steps"] == 10 and step.stack_hparams([tanh.hp])["warmup_steps"].dtype == np.int32

    x = jnp.linspace(-3, 3, 24).reshape(2, 12)
    outputs = {}
    for activation in models.ACTIVATIONS:
        model = models.ModelConfig("mlp", hidden=(8,), activation=activation)
        net = models.build(model)
        params = net.init(jax.random.PRNGKey(0), x, train=False)  # the same weights: the init draws no differently
        outputs[activation] = np.asarray(net.apply(params, x, train=False))
    assert len({o.tobytes() for o in outputs.values()}) == 3

    grads = {"w": jnp.array([3.0, -0.2, -4.0])}
    hp = {k: jnp.asarray(v) for k, v in step.HP_DEFAULTS.items()}
    tx = optim.make("sgd", 1.0, hp, clip_value=0.5)
    updates, _ = tx.update(grads, tx.init(grads), grads)
    np.testing.assert_allclose(updates["w"], [-0.5, 0.2, 0.5])

    p = {**hp, "lr": jnp.float32(0.1), "warmup_steps": jnp.int32(10)}
    np.testing.assert_allclose([schedules.learning_rate(p, s) for s in (0, 4, 9, 50)], [0.01, 0.05, 0.1, 0.1], rtol=1e-6)
    assert schedules.learning_rate({**p, "warmup_steps": jnp.int32(0)}, 0) == jnp.float32(0.1)
