"""Models: parameter counts, layer tables, dropout semantics, train/eval mode."""
import dataclasses

from conftest import count_params  # noqa: E402
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.nn import models


def _init(cfg, shape=(32, 32, 3)):
    net = models.build(cfg)
    variables = jax.jit(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False))()
    return net, variables


def _shapes(cfg, shape=(32, 32, 3)):
    """The variables' shapes and dtypes, traced without drawing (nothing compiled)."""
    net = models.build(cfg)
    return jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False))


def test_baseline_net_has_89834_parameters():
    variables = _shapes(models.ModelConfig("baseline"))
    assert count_params(variables["params"]) == 89_834
    assert variables["params"]["fc1"]["kernel"].shape == (64, 1024)  # [out, in]


def test_convnet_parameter_count():
    variables = _shapes(models.ModelConfig("convnet"))
    assert count_params(variables["params"]) == 1_191_170


@pytest.mark.parametrize("cfg", [models.ModelConfig("baseline"), models.ModelConfig("baseline", norm="batch"),
                                 models.ModelConfig("mlp", hidden=(50, 30), norm="layer", init="he")])
def test_layer_table_matches_parameters(cfg):
    rows = models.layer_table(cfg, (32, 32, 3))
    variables = _shapes(cfg)
    assert sum(r["weights"] + r["biases"] + r["norm"] for r in rows) == count_params(variables["params"])
    assert rows[-1]["output"] == (10,)
    assert "total parameters" in models.format_layer_table(rows)


def test_baseline_layer_table_shapes_and_receptive_fields():
    rows = {r["layer"]: r for r in models.layer_table(models.ModelConfig("baseline"), (32, 32, 3))}
    assert rows["conv1"]["output"] == (32, 32, 16) and rows["conv1"]["receptive_field"] == 3
    assert rows["pool3"]["output"] == (4, 4, 64) and rows["pool3"]["receptive_field"] == 22
    assert rows["fc1"]["weights"] == 65_536


def test_batchnorm_net_drops_biases_that_feed_bn():
    variables = _shapes(models.ModelConfig("baseline", norm="batch"))
    p = variables["params"]
    assert all("bias" not in p[f"conv{i}"] for i in (1, 2, 3)) and "bias" not in p["fc1"]
    assert "bias" in p["fc2"]  # the classifier feeds no BN
    assert set(variables["batch_stats"]) == {"bn_conv1", "bn_conv2", "bn_conv3", "bn_fc1"}


def test_dropout_rate_zero_is_exactly_the_model_without_dropout():
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
    net, variables = _init(models.ModelConfig("baseline"))
    plain = net.apply(variables, x, train=True)
    drop = models.build(models.ModelConfig("baseline", use_dropout=True))
    out = drop.apply(variables, x, train=True, dropout_rate=jnp.float32(0.0), rngs={"dropout": jax.random.PRNGKey(2)})
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(out))


def test_dropout_is_inverted_and_off_in_eval():
    x = jnp.ones((200_000,))
    out = models.dropout(x, jnp.float32(0.6), jax.random.PRNGKey(0))
    assert abs(float(out.mean()) - 1.0) < 0.01  # expected activation unchanged in train mode
    assert abs(float((out == 0).mean()) - 0.6) < 0.01
    np.testing.assert_allclose(np.unique(np.asarray(out)), [0.0, 2.5], rtol=1e-6)
    net = models.build(models.ModelConfig("mlp", hidden=(20,), use_dropout=True))
    xs = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
    variables = net.init(jax.random.PRNGKey(0), xs, train=False)
    a = net.apply(variables, xs, train=False, dropout_rate=0.9)
    b = net.apply(variables, xs, train=False, dropout_rate=0.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # identity in eval mode


def test_batchnorm_eval_uses_running_averages():
    cfg = models.ModelConfig("mlp", hidden=(16,), norm="batch")
    net, variables = _init(cfg, (4, 4, 3))
    x = jax.random.normal(jax.random.PRNGKey(3), (32, 4, 4, 3)) * 5 + 2
    _, upd = net.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(upd["batch_stats"]["bn_fc1"]["mean"], 0.0)
    one = net.apply(variables, x[:1], train=False)
    many = net.apply(variables, x, train=False)[:1]
    np.testing.assert_allclose(np.asarray(one), np.asarray(many), rtol=1e-5, atol=1e-6)  # no batch dependence


def test_normal_init_scale_multiplies_only_weights():
    cfg = models.ModelConfig("mlp", hidden=(30,), init="normal")
    _, variables = _init(cfg)
    scaled = models.scale_kernels(variables["params"], 1e-3)
    assert abs(float(jnp.std(scaled["fc1"]["kernel"])) - 1e-3) < 1e-4
    np.testing.assert_array_equal(scaled["fc1"]["bias"], variables["params"]["fc1"]["bias"])


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="--model='nope'.*allowed"):
        models.build(models.ModelConfig("nope"))


def test_convnet_layer_table_reports_weights_and_receptive_fields():
    rows = {r["layer"]: r for r in models.layer_table(models.ModelConfig("convnet"), (32, 32, 3))}
    assert rows["conv1"]["receptive_field"] == 5 and rows["conv2"]["receptive_field"] == 14
    assert sum(r["weights"] for r in rows.values()) == 1_190_000
    table = models.format_layer_table(list(rows.values()))
    assert "total parameters: 1,191,170 (1,190,000 weights)" in table


@pytest.mark.parametrize("cfg,count", [
    # OpenNet: conv5x5(64)-BN, conv3x3(32)-BN (no conv biases: BN absorbs them), dense 256, 128, 10
    (models.ModelConfig("opennet", norm="batch"), 4800 + 128 + 18432 + 64 + 2048 * 256 + 256 + 256 * 128 + 128 + 1290),
    # its tuning grid's kernels (3, 1) and widths 128 → 64
    (models.ModelConfig("opennet", norm="batch", kernels=(3, 1), hidden=(128, 64)),
     3 * 3 * 3 * 64 + 128 + 64 * 32 + 64 + 2048 * 128 + 128 + 128 * 64 + 64 + 650),
    # CS231n three-layer conv net with spatial BN on the conv only; hidden 500
    (models.ModelConfig("threelayer", norm="batch", hidden=(500,)), 7 * 7 * 3 * 32 + 64 + 8192 * 500 + 500 + 5010),
])
def test_model_options_set_kernels_widths_and_where_norm_goes(cfg, count):
    variables = _shapes(cfg)
    assert count_params(variables["params"]) == count
    assert sum(r["weights"] + r["biases"] + r["norm"] for r in models.layer_table(cfg, (32, 32, 3))) == count
    assert not any(k.startswith("bn_fc") for k in variables["params"])  # no norm on the dense layers


def test_convnet_dropout_acts_on_the_flattened_conv_features_too():
    """fc1's output depends on the dropout mask only if dropout acts on fc1's input."""
    cfg = models.ModelConfig("convnet", use_dropout=True)
    net, variables = _init(cfg)
    assert [layer[0] for layer in models.layer_stack(cfg)][-4:] == ["pool", "dropout", "dense", "dropout"]
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))

    def fc1(rate, key):
        _, inter = net.apply(variables, x, train=True, dropout_rate=rate, rngs={"dropout": jax.random.PRNGKey(key)},
                             capture_intermediates=lambda mdl, name: mdl.name == "fc1")
        return inter["intermediates"]["fc1"]["__call__"][0]

    assert not np.allclose(fc1(0.5, 2), fc1(0.5, 3))
    np.testing.assert_array_equal(fc1(0.0, 2), fc1(0.0, 3))


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="mlp", kernels=(3,)), "--kernels=3: --model=mlp has no such layers"),
    (dict(name="opennet", kernels=(5,)), "give one kernel size per conv layer"),
    (dict(name="opennet", kernels=(4, 3)), "kernel sizes must be odd"),
])
def test_model_options_refuse_what_the_model_cannot_take(kwargs, message):
    with pytest.raises(models.ConfigError, match=message):
        models.ModelConfig(**kwargs)


def _train_logits(cfg, variables, x, rate, seed=1):
    out, _ = models.build(cfg).apply(variables, x, train=True, dropout_rate=rate, rngs={"dropout": jax.random.PRNGKey(seed)},
                                     mutable=["batch_stats"])
    return out


def test_unscaled_dropout_zeroes_without_rescaling_in_training_or_at_test():
    x = jnp.ones((4, 1000))
    kept = models.dropout(x, 0.5, jax.random.PRNGKey(0), "unscaled")
    inverted = models.dropout(x, 0.5, jax.random.PRNGKey(0))
    assert set(np.unique(kept).tolist()) == {0.0, 1.0} and set(np.unique(inverted).tolist()) == {0.0, 2.0}
    assert np.array_equal(np.asarray(kept) > 0, np.asarray(inverted) > 0)  # the same mask


def test_dropout_before_the_norm_is_the_same_net_without_a_norm_and_a_different_one_with_it():
    """ReLU commutes with the mask (and its 1/(1 - p)), so without a normalisation the two places
    give the same outputs for the same key; with batch norm the statistics see the dropped units."""
    x = jax.random.normal(jax.random.PRNGKey(3), (16, 8, 8, 3))
    for norm, same in (("none", True), ("batch", False)):
        cfgs = [models.ModelConfig("mlp", hidden=(20, 10), norm=norm, init="he", use_dropout=True, dropout_place=p)
                for p in models.DROPOUT_PLACES]
        _, variables = _init(cfgs[0], (8, 8, 3))
        a, b = (_train_logits(c, variables, x, 0.5) for c in cfgs)
        assert np.allclose(a, b, atol=1e-5) == same, norm
        eval_a, eval_b = (models.build(c).apply(variables, x, train=False) for c in cfgs)
        assert np.allclose(eval_a, eval_b)  # no dropout at test time either way


def test_norm_init_weight_scale_draws_gamma_beta_like_the_weights_and_norm_l2_penalises_them():
    from cifar_jax.training import optim
    cfg = models.ModelConfig("mlp", hidden=(400,), norm="batch", init="normal", norm_init="weight_scale")
    _, variables = _init(cfg, (8, 8, 3))
    params = models.scale_kernels(variables["params"], 1e-3, norm_too=True)
    gamma, beta = params["bn_fc1"]["scale"], params["bn_fc1"]["bias"]
    assert 0.7e-3 < float(jnp.std(gamma)) < 1.3e-3 and 0.7e-3 < float(jnp.std(beta)) < 1.3e-3
    assert float(jnp.std(params["fc1"]["kernel"])) == pytest.approx(1e-3, rel=0.1)
    weights = optim.l2_penalty(params)
    assert float(optim.l2_penalty(params, norm_too=True)) == pytest.approx(
        float(weights + jnp.sum(gamma ** 2) + jnp.sum(beta ** 2)), rel=1e-6)
    _, variables = _init(dataclasses.replace(cfg, norm_init="sigma"), (8, 8, 3))
    params = models.scale_kernels(variables["params"], 1e-3, norm_too=True)
    assert np.allclose(params["bn_fc1"]["scale"], 1e-3) and np.allclose(params["bn_fc1"]["bias"], 0.0)
    with pytest.raises(models.ConfigError, match="norm_init=weight_scale"):
        models.ModelConfig("mlp", norm="batch", init="he", norm_init="weight_scale")
    with pytest.raises(models.ConfigError, match="dropout_kind"):
        models.ModelConfig("mlp", dropout_kind="gaussian")
