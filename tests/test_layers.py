"""Every convolution implementation equals XLA's convolution, and max-pooling equals flax's, in
value and in both gradients (float64; single and vmapped over runs; ties included)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.nn import layers, models
from cifar_jax.training import step
from conftest import init_group  # noqa: E402

SHAPES = [(3, 3, 4), (5, 4, 6)]  # (kernel, cin, cout): BaselineNet's 3x3 pad 1, ConvNet's 5x5 pad 2


def _reference(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _loss(conv):
    """A scalar with a different weight per output element, so every gradient entry is tested."""
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w)) * jnp.arange(w.shape[-1]))


@pytest.mark.parametrize("impl", list(layers.CONVS))
@pytest.mark.parametrize("k,cin,cout", SHAPES)
def test_convolution_and_its_gradients_equal_xla(impl, k, cin, cout):
    rng = np.random.default_rng(k)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(3, 9, 7, cin)))  # odd sizes: padding at every edge
        w = jnp.asarray(rng.normal(size=(k, k, cin, cout)))
        conv = layers.CONVS[impl]
        np.testing.assert_allclose(jax.jit(conv)(x, w), jax.jit(_reference)(x, w), rtol=1e-12, atol=1e-12)
        got = jax.jit(jax.grad(_loss(conv), (0, 1)))(x, w)
        want = jax.jit(jax.grad(_loss(_reference), (0, 1)))(x, w)
        for g, r in zip(got, want):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)
        # vmapped over three runs, each with its own inputs and kernel: a group's layout
        xs, ws = jnp.stack([x, 2 * x, -x]), jnp.stack([w, -w, 0.5 * w])
        np.testing.assert_allclose(jax.jit(jax.vmap(conv))(xs, ws), jax.jit(jax.vmap(_reference))(xs, ws), rtol=1e-12, atol=1e-12)
        got = jax.jit(jax.vmap(jax.grad(_loss(conv), (0, 1))))(xs, ws)
        want = jax.jit(jax.vmap(jax.grad(_loss(_reference), (0, 1))))(xs, ws)
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


def test_unknown_or_unsupported_convolutions_are_refused():
    conv = layers.Conv(4, 3, True, nn.initializers.lecun_normal(), nn.initializers.zeros, impl="winograd")
    with pytest.raises(ValueError, match="--conv_impl='winograd' is unknown; allowed: xla, vjp_taps, im2col"):
        conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="odd square HWIO kernel"):
        layers.conv_im2col(jnp.zeros((1, 4, 4, 3)), jnp.zeros((2, 2, 3, 4)))


def _flax_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _pool_loss(pool):
    return lambda x: jnp.sum(pool(x) * jnp.arange(1, x.shape[-1] + 1))


def test_max_pool_and_its_gradient_equal_flax_including_ties():
    """Small integers make most windows hold tied maxima; flax routes the gradient to the
    first maximum in row-major order, and so must we. Odd sizes drop the ragged edge."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.integers(0, 3, size=(4, 9, 7, 3)).astype(np.float64))
        ours = lambda v: layers.max_pool(v, 2)
        np.testing.assert_array_equal(jax.jit(ours)(x), jax.jit(_flax_pool)(x))
        np.testing.assert_array_equal(jax.jit(jax.grad(_pool_loss(ours)))(x), jax.jit(jax.grad(_pool_loss(_flax_pool)))(x))
        xs = jnp.stack([x, -x, jnp.zeros_like(x)])  # all-tied windows in the last run
        np.testing.assert_array_equal(jax.jit(jax.vmap(jax.grad(_pool_loss(ours))))(xs),
                                      jax.jit(jax.vmap(jax.grad(_pool_loss(_flax_pool))))(xs))
        ties = jax.grad(_pool_loss(ours))(jnp.zeros((1, 2, 2, 1)))[0, :, :, 0]
        np.testing.assert_array_equal(ties, [[1.0, 0.0], [0.0, 0.0]])


def test_conv_layer_has_nn_conv_parameters():
    """Same names, shapes and initial values as flax's nn.Conv, whatever the implementation."""
    x = jnp.ones((1, 8, 8, 3))
    init = nn.initializers.lecun_normal()
    ref = nn.Conv(5, (3, 3), padding=1, kernel_init=init).init(jax.random.PRNGKey(1), x)
    for impl in layers.CONVS:
        ours = layers.Conv(5, 3, True, init, nn.initializers.zeros, impl).init(jax.random.PRNGKey(1), x)
        jax.tree_util.tree_map(np.testing.assert_array_equal, ours, ref)


@pytest.mark.parametrize("init", ["he", "torch", "normal"])
def test_dense_layer_is_nn_dense_with_its_kernel_stored_out_by_in(init):
    """The kernel's values are nn.Dense's transposed ([out, in]); outputs and gradients equal."""
    kinit, binit = models.INITS[init](7)
    ref, ours = nn.Dense(5, kernel_init=kinit, bias_init=binit), layers.Dense(5, True, kinit, binit)
    x = jnp.ones((2, 7))
    a, b = ref.init(jax.random.PRNGKey(3), x), ours.init(jax.random.PRNGKey(3), x)
    assert b["params"]["kernel"].shape == (5, 7)
    np.testing.assert_array_equal(b["params"]["kernel"], a["params"]["kernel"].T)
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 7)))
        a, b = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), (a, b))
        loss = lambda module: lambda v: jnp.sum(jnp.sin(module.apply(v, x)) * jnp.arange(5))
        np.testing.assert_allclose(ours.apply(b, x), ref.apply(a, x), rtol=1e-12)
        ga, gb = jax.grad(loss(ref))(a)["params"], jax.grad(loss(ours))(b)["params"]
        np.testing.assert_allclose(gb["kernel"], ga["kernel"].T, rtol=1e-12)
        np.testing.assert_allclose(gb["bias"], ga["bias"], rtol=1e-12)


def test_batchnorm_dropout_group_trains_the_same_with_every_convolution():
    """Three vmapped steps of a batch-normed, dropout BaselineNet group (float64): parameters and
    BN statistics equal those of the XLA-convolution model."""
    rng = np.random.default_rng(1)
    runs = [dict(seed=0, lr=0.05, dropout=0.3), dict(seed=1, lr=0.1, dropout=0.5)]
    with jax.enable_x64(True):
        x = rng.integers(0, 256, (64, 8, 8, 3), np.uint8)
        data = step.put_data(x, rng.integers(0, 10, 64), x[:8], np.zeros(8), np.arange(64),
                             np.arange(0), np.full(3, 0.5), np.full(3, 0.25))
        data = data._replace(mean=data.mean.astype(jnp.float64), std=data.std.astype(jnp.float64))
        hp = jax.device_put(step.stack_hparams(runs))
        model = models.ModelConfig("baseline", (16,), "batch", channels=(4, 8), kernels=(3, 3), use_dropout=True)

        def three_steps(conv_impl):
            spec = step.GroupSpec(model, "momentum", 16, conv_impl=conv_impl)
            state = init_group(spec, hp)
            f64 = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), t)
            state = state._replace(params=f64(state.params), batch_stats=f64(state.batch_stats),
                                   opt_state=f64(state.opt_state))
            train_step = jax.jit(jax.vmap(functools.partial(step.train_step, spec), in_axes=(0, None, 0)))
            idx = jax.vmap(lambda h: step.epoch_indices(h, 0, data.train_idx, 16))(hp)
            for s in range(3):
                state, _ = train_step(state, data, idx[:, s])
            return state

        ref = three_steps("xla")
        assert ref.params["conv1"]["kernel"].dtype == jnp.float64
        for impl in [i for i in layers.CONVS if i != "xla"]:
            ours = three_steps(impl)
            for a, b in zip(jax.tree_util.tree_leaves((ours.params, ours.batch_stats)),
                            jax.tree_util.tree_leaves((ref.params, ref.batch_stats))):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10, err_msg=impl)


def test_the_forward_mode_pool_routes_tangents_as_the_training_pool_routes_gradients():
    """layers.max_pool(pool="jvp") (forward mode, for Hessian-vector products) is the transpose of
    the training pool's VJP, ties included: <g, J t> by its JVP equals <Jᵀ g, t> by the VJP."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 3, (2, 6, 6, 3)), jnp.float32)  # many ties in each window
    t, g = jnp.asarray(rng.normal(size=x.shape)), jnp.asarray(rng.normal(size=(2, 3, 3, 3)))
    y, jt = jax.jvp(lambda v: layers.max_pool(v, 2, "jvp"), (x,), (t,))
    y_vjp, back = jax.vjp(lambda v: layers.max_pool(v, 2), x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_vjp))
    np.testing.assert_allclose(float(jnp.vdot(g, jt)), float(jnp.vdot(back(g)[0], t)), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(jax.grad(lambda v: jnp.vdot(g, layers.max_pool(v, 2, "jvp")))(x)),
                                  np.asarray(back(g)[0]))
