"""ArviZ conversion and KSD; run under ArviZ 0.x (Python 3.11) and 1.x (Python 3.12+)."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

from implicitvi.diagnostics import kernel_stein_discrepancy, to_inference_data, unconstrained_score
from implicitvi.infer import AutoImplicit, ImplicitELBO
import implicitvi.diagnostics

RNG = np.random.default_rng(3)
Y = RNG.normal(2.0, 1.5, size=25)


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0, 10))
    sigma = numpyro.sample("sigma", dist.HalfNormal(5))
    with numpyro.plate("obs", 25):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


@pytest.fixture(scope="module")
def fitted():
    guide = AutoImplicit(model, estimator="stein")
    svi = SVI(model, guide, optax.adam(1e-2), ImplicitELBO(num_particles=16, estimator="stein"))
    result = svi.run(jax.random.PRNGKey(0), 1500, Y, progress_bar=False)
    return guide, result.params


def test_inference_data_has_the_four_groups_with_dims(fitted):
    guide, params = fitted
    data = to_inference_data(
        model, guide, params, key=jax.random.PRNGKey(1), model_args=(Y,), num_samples=300
    )
    for name in ("posterior", "posterior_predictive", "log_likelihood", "observed_data"):
        assert name in data  # InferenceData (ArviZ 0.x) and DataTree (1.x) alike
    post = data["posterior"]
    assert dict(post["mu"].sizes) == {"chain": 1, "draw": 300}
    assert post["sigma"].values.min() > 0
    assert data["posterior_predictive"]["y"].shape == (1, 300, 25)
    assert data["log_likelihood"]["y"].shape == (1, 300, 25)
    np.testing.assert_allclose(data["observed_data"]["y"].values, Y)
    # Pointwise log-likelihood agrees with an independent evaluation at the same draws.
    mu = post["mu"].values[0][:, None]
    sigma = post["sigma"].values[0][:, None]
    expected = -0.5 * ((Y - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(data["log_likelihood"]["y"].values[0], expected, rtol=1e-5)
    summary = az.summary(data, var_names=["mu", "sigma"])
    assert abs(float(summary.loc["mu", "mean"]) - Y.mean()) < 0.5
    loo = az.loo(data)
    elpd = loo.elpd if hasattr(loo, "elpd") else loo["elpd_loo"]  # ArviZ 1.x / 0.x
    assert np.isfinite(float(elpd))


def test_ksd_is_small_for_exact_samples_and_grows_when_shifted():
    x = jax.random.normal(jax.random.PRNGKey(0), (800, 3))
    exact = kernel_stein_discrepancy(x, lambda z: -z)
    shifted = kernel_stein_discrepancy(x + 0.5, lambda z: -z)
    wider = kernel_stein_discrepancy(1.5 * x, lambda z: -z)
    assert exact < 0.1
    assert shifted > 4 * exact and wider > 3 * exact


def test_ksd_matches_autodiff_stein_kernel():
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 2)) * 1.3

    def k(a, b):
        return (1 + jnp.sum((a - b) ** 2) / 0.7**2) ** -0.5

    def stein(a, b):
        score_a, score_b = -a, -b
        trace = jnp.trace(jax.jacfwd(jax.grad(k, 0), 1)(a, b))
        return score_a @ score_b * k(a, b) + score_a @ jax.grad(k, 1)(a, b) + score_b @ jax.grad(k, 0)(a, b) + trace

    # Jitted: the nested autodiff is compiled once instead of dispatched op by op.
    expected = jax.jit(lambda x: jnp.sqrt(jnp.mean(jax.vmap(lambda a: jax.vmap(lambda b: stein(a, b))(x))(x))))(x)
    np.testing.assert_allclose(kernel_stein_discrepancy(x, -x, bandwidth=0.7), expected, rtol=1e-10)


def test_ksd_against_a_numpyro_model_ranks_posteriors():
    # Conjugate model: μ ~ N(0, 10²), y ~ N(μ, 1.5²) with σ fixed; the posterior is Gaussian.
    def conjugate(y):
        mu = numpyro.sample("mu", dist.Normal(0, 10))
        numpyro.sample("y", dist.Normal(mu, 1.5), obs=y)

    prec = 1 / 100 + len(Y) / 2.25
    mean, sd = Y.sum() / 2.25 / prec, prec**-0.5
    score_fn, to_u = unconstrained_score(conjugate, (Y,))
    exact = {"mu": mean + sd * RNG.normal(size=600)}
    off = {"mu": mean + 3 * sd + sd * RNG.normal(size=600)}
    ksd_exact = kernel_stein_discrepancy(to_u(exact), score_fn, bandwidth=float(sd))
    ksd_off = kernel_stein_discrepancy(to_u(off), score_fn, bandwidth=float(sd))
    assert ksd_off > 5 * ksd_exact


def test_unconstrained_score_is_the_log_density_gradient():
    score_fn, to_u = unconstrained_score(model, (Y,))
    u = to_u({"mu": np.array([1.0, 2.0]), "sigma": np.array([1.0, 2.0])})
    # log p(μ, σ = e^v) + v, differentiated by hand.
    mu, v = np.asarray(u[:, 0]), np.asarray(u[:, 1])
    sigma = np.exp(v)
    d_mu = -mu / 100 + np.sum(Y[None] - mu[:, None], axis=1) / sigma**2
    d_v = -(sigma**2) / 25 - len(Y) + np.sum((Y[None] - mu[:, None]) ** 2, axis=1) / sigma**2 + 1
    np.testing.assert_allclose(score_fn(u), np.stack([d_mu, d_v], 1), rtol=1e-6)


@pytest.mark.slow
def test_guides_are_comparable_by_ksd(fitted):
    guide, params = fitted
    score_fn, to_u = unconstrained_score(model, (Y,))
    draws = guide.sample_posterior(jax.random.PRNGKey(2), params, sample_shape=(500,))
    prior_like = {"mu": RNG.normal(0, 3, size=500), "sigma": np.abs(RNG.normal(0, 3, size=500)) + 0.1}
    assert kernel_stein_discrepancy(to_u(draws), score_fn) < kernel_stein_discrepancy(to_u(prior_like), score_fn)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kernel_stein_discrepancy(np.ones(4), lambda z: -z), "samples must be 2-D"),
        (lambda: kernel_stein_discrepancy(np.ones((4, 2)), np.ones((4, 3))), "score must have the samples' shape"),
        (lambda: kernel_stein_discrepancy(np.eye(3), lambda z: -z, bandwidth=0.0), "bandwidth must be finite and > 0"),
        (lambda: kernel_stein_discrepancy(np.eye(3), lambda z: -z, beta=-1.5), r"beta must be in \(-1, 0\)"),
        (lambda: kernel_stein_discrepancy(np.eye(3), lambda z: z * np.nan), "score contains NaN or inf"),
    ],
)
def test_ksd_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_moment_errors_against_known_shifts():
    ref = RNG.normal(size=(20000, 3))
    q = RNG.normal(size=(20000, 3)) * np.array([1.0, 2.0, 1.0]) + np.array([0.5, 0.0, 0.0])
    errors = implicitvi.diagnostics.moment_errors(q, ref)
    assert abs(errors["mean_z_max"] - 0.5) < 0.05
    assert abs(errors["log_sd_max"] - np.log(2.0)) < 0.05
    assert errors["mean_z"] < 0.05 and errors["log_sd"] < 0.05
    with pytest.raises(ValueError, match="samples and reference must have the same number of columns"):
        implicitvi.diagnostics.moment_errors(q[:, :2], ref)
