"""ZCA whitening (--normalization=zca, seeds/001 bonus): statistics from the training split only,
an identity covariance on it at ε = 0, the in-step transform, and the --zca_epsilon flag."""
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.config.registry import ConfigError
from cifar_jax.data import preprocess, splits
from cifar_jax.study import config


@pytest.fixture(scope="module")
def correlated():
    """uint8 4×4×3 images whose pixels and channels are strongly correlated, and a training split."""
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(4000, 48)) @ rng.normal(size=(48, 48)) + 0.3 * rng.normal(size=(4000, 1))
    x = np.clip(128 + 12 * latent, 0, 255).astype(np.uint8).reshape(4000, 4, 4, 3)
    train, _ = splits.make_split(len(x), 3000, 1000, seed=0)
    return x, train


def whiten(x, mean, w):
    """The explicit float64 transform: (x/255 - mean), flattened per image, @ W."""
    return (x / 255.0 - mean).reshape(len(x), -1) @ w


def test_zca_whitens_the_training_split_to_identity(correlated, monkeypatch):
    x, train = correlated
    monkeypatch.setattr(splits, "_CHUNK", 700)  # several chunks, the last one partial
    mean, w = splits.zca(x, train, epsilon=0.0)
    white = whiten(x[train], mean, w)
    assert mean.shape == (4, 4, 3) and w.shape == (48, 48)
    np.testing.assert_allclose(w, w.T, rtol=0, atol=1e-12)  # symmetric up to rounding
    np.testing.assert_allclose(white.mean(0), 0.0, atol=1e-9)
    assert np.abs(white.T @ white / len(train) - np.eye(48)).max() < 1e-3
    assert np.abs(np.corrcoef((x[train] / 255.0).reshape(len(train), -1).T) - np.eye(48)).max() > 0.5


def test_zca_statistics_use_the_train_split_only(correlated, monkeypatch):
    x, train = correlated
    other = np.setdiff1d(np.arange(len(x)), train)
    changed = x.copy()
    changed[other] = 255 - changed[other]
    reference = splits.zca(x, train)
    for stats in (splits.zca(changed, train), splits.norm_stats(changed, train, "zca")):
        np.testing.assert_array_equal(stats[0], reference[0].astype(stats[0].dtype))
        np.testing.assert_array_equal(stats[1], reference[1].astype(stats[1].dtype))
    monkeypatch.setattr(splits, "_CHUNK", 999)  # exact integer sums: chunking changes no bit
    np.testing.assert_array_equal(splits.zca(x, train)[1], reference[1])


def test_zca_epsilon_shrinks_the_whitened_variances(correlated):
    x, train = correlated
    mean, w = splits.norm_stats(x, train, "zca", zca_epsilon=1e-2)
    assert mean.dtype == w.dtype == np.float32
    variances = np.linalg.eigvalsh(np.cov(whiten(x[train], mean, w.astype(np.float64)).T, bias=True))
    assert variances.max() < 1 and variances.min() > 0


def test_normalize_applies_a_zca_matrix(correlated):
    x, train = correlated
    mean, w = splits.norm_stats(x, train, "zca")
    got = preprocess.normalize(jnp.asarray(x[:5]), jnp.asarray(mean), jnp.asarray(w))
    assert got.shape == (5, 4, 4, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, whiten(x[:5], mean, w).reshape(5, 4, 4, 3), rtol=1e-5, atol=1e-5)


def test_zca_epsilon_flag(parse):
    for bad in ("0", "-0.1"):
        with pytest.raises(ConfigError, match=f"--zca_epsilon={bad}: must be > 0"):
            parse("--normalization=zca", f"--zca_epsilon={bad}")
    assert config.data_config(parse("--normalization=zca", "--zca_epsilon=0.05"))["zca_epsilon"] == 0.05
    assert config.data_config(parse("--normalization=zca"))["zca_epsilon"] == splits.ZCA_EPSILON
    assert "zca_epsilon" not in config.data_config(parse("--zca_epsilon=0.05"))
