import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitvi import kernels

RNG = np.random.default_rng(0)
X = RNG.normal(size=(7, 3))
Y = RNG.normal(size=(5, 3))
H = 1.3


def _dense_sqdist(x, y):
    return np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)


def test_rbf_and_imq_match_their_formulas():
    r2 = _dense_sqdist(X, Y)
    np.testing.assert_allclose(kernels.rbf(X, Y, H), np.exp(-r2 / (2 * H**2)), rtol=1e-12)
    np.testing.assert_allclose(kernels.imq(X, Y, H), (1 + r2 / H**2) ** -0.5, rtol=1e-12)


SCALAR = {
    "rbf": lambda x, y: jnp.exp(-jnp.sum((x - y) ** 2) / (2 * H**2)),
    "imq": lambda x, y: (1 + jnp.sum((x - y) ** 2) / H**2) ** -0.5,
}


def _autodiff_grads(name):  # (n, m, d): ∇_x k(x_i, y_j) by autodiff of the closed form
    return jax.vmap(lambda x: jax.vmap(lambda y: jax.grad(SCALAR[name])(x, y))(Y))(X)


@pytest.mark.parametrize("name", ["rbf", "imq"])
def test_slope_gives_the_first_argument_gradient(name):
    _, slope = kernels.gram_and_slope(name, X, Y, H)
    grads = 2.0 * (X[:, None, :] - Y[None, :, :]) * np.asarray(slope)[:, :, None]
    np.testing.assert_allclose(grads, _autodiff_grads(name), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["rbf", "imq"])
def test_grad_sum_is_sum_of_first_argument_gradients(name):
    _, slope = kernels.gram_and_slope(name, X, Y, H)
    np.testing.assert_allclose(
        kernels.grad_sum(X, Y, slope), _autodiff_grads(name).sum(axis=0), rtol=1e-10
    )


# Jitted (one program per shape) instead of dispatched op by op: its search loops are many ops.
median_bandwidth = jax.jit(kernels.median_bandwidth)


def test_median_bandwidth_matches_numpy():
    i, j = np.triu_indices(len(X), k=1)
    expected = np.median(np.sqrt(_dense_sqdist(X, X)[i, j]))
    np.testing.assert_allclose(median_bandwidth(X), expected, rtol=1e-10)


def test_median_bandwidth_on_degenerate_sets_is_defined():
    same = np.ones((6, 2))
    assert float(median_bandwidth(same)) == 1.0
    # Five of six points coincide: the median distance is 0, so the mean distance is used.
    mostly = np.vstack([np.zeros((5, 2)), [[3.0, 4.0]]])
    np.testing.assert_allclose(median_bandwidth(mostly), 5.0 * 5 / 15, rtol=1e-12)


def test_squared_distances_far_from_origin_stay_accurate():
    x = 1e4 + RNG.normal(size=(4, 2)).astype(np.float32)
    got = kernels.squared_distances(jnp.asarray(x), jnp.asarray(x))
    np.testing.assert_allclose(got, _dense_sqdist(x.astype(np.float64), x), rtol=1e-3, atol=1e-3)


def test_unknown_kernel_is_rejected():
    with pytest.raises(ValueError, match="unknown kernel 'gauss'"):
        kernels.gram_and_slope("gauss", X, Y, H)
