"""AutoSemiImplicit and conditional scores through ImplicitELBO."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from helpers import POST_COV, POST_MEAN, X_REG, Y_REG, fit, regression
from numpyro.infer import SVI

from implicitvi.estimators import ScoreNet
from implicitvi.infer import AutoSemiImplicit, ImplicitELBO, implicit_sample


@pytest.fixture(scope="module")
def regression_fit():
    guide = AutoSemiImplicit(regression)
    svi, result = fit(regression, guide, ImplicitELBO(num_particles=32), X_REG, Y_REG, lr=1e-2)
    return guide, result


@pytest.mark.slow
def test_conjugate_gaussian_posterior_matches_closed_form(regression_fit):
    guide, result = regression_fit
    assert np.all(np.isfinite(result.losses))
    draws = guide.sample_posterior(jax.random.PRNGKey(1), result.params, sample_shape=(4000,))["beta"]
    sd = np.sqrt(np.diag(POST_COV))
    # Monte-Carlo error of the mean of 4000 draws is 0.016 sd; the rest is the fit's.
    assert np.all(np.abs(draws.mean(0) - POST_MEAN) < 0.15 * sd)
    cov = np.cov(np.asarray(draws).T)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), sd, rtol=0.15)
    true_corr = POST_COV[0, 1] / (sd[0] * sd[1])
    assert abs(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]) - true_corr) < 0.1


def test_guide_starts_as_the_gaussian_of_its_loc_and_scale():
    guide = AutoSemiImplicit(regression, init_scale=0.3)
    svi = SVI(regression, guide, optax.adam(1e-3), ImplicitELBO(num_particles=4))
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), X_REG, Y_REG))
    draws = np.asarray(guide.sample_posterior(jax.random.PRNGKey(1), params, sample_shape=(20_000,))["beta"])
    loc = np.asarray(params["auto_loc"])
    # Mean error of 20,000 draws: 0.3/141 ≈ 0.002; sd error ≈ 0.3 · 0.5%.
    np.testing.assert_allclose(draws.mean(0), loc, atol=0.01)
    np.testing.assert_allclose(draws.std(0), [0.3, 0.3], rtol=0.03)
    assert abs(np.corrcoef(draws.T)[0, 1]) < 0.03


@pytest.mark.slow
def test_kernel_estimators_ignore_the_conditional_scores():
    guide = AutoSemiImplicit(regression, estimator="stein")
    svi = SVI(regression, guide, optax.adam(1e-2), ImplicitELBO(num_particles=8))
    state = svi.init(jax.random.PRNGKey(0), X_REG, Y_REG)
    state, loss = svi.update(state, X_REG, Y_REG)
    assert np.isfinite(loss)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="min_scale"):
        AutoSemiImplicit(regression, min_scale=0.8)
    with pytest.raises(ValueError, match="network_scale"):
        AutoSemiImplicit(regression, network_scale=0.0)
    with pytest.raises(ValueError, match="no context"):
        AutoSemiImplicit(regression, estimator=ScoreNet(conditional=True))


def one_site_guide(conditional_score=None, estimator=None):
    def guide():
        w = jnp.zeros(2)
        implicit_sample("x", w, support=dist.constraints.real_vector,
                        conditional_score=conditional_score, estimator=estimator)
    return guide


def test_implicit_sample_checks_conditional_scores():
    est = ScoreNet(objective="regression", hidden=(8,))
    with numpyro.handlers.seed(rng_seed=0):
        with pytest.raises(ValueError, match="pass conditional_score"):
            one_site_guide(estimator=est)()
        with pytest.raises(ValueError, match="conditional_score must have the shape of latent"):
            one_site_guide(conditional_score=jnp.zeros(3), estimator=est)()


def test_implicit_elbo_names_a_regression_estimator_on_a_site_without_targets():
    def model():
        numpyro.sample("x", dist.Normal(0, 1).expand([2]).to_event(1))

    def guide():
        w = jax.random.normal(numpyro.prng_key(), (2,))
        implicit_sample("x", w, support=dist.constraints.real_vector, estimator=ScoreNet(hidden=(8,)))

    elbo = ImplicitELBO(num_particles=4, estimator=ScoreNet(objective="regression", hidden=(8,)))
    svi = SVI(model, guide, optax.adam(1e-3), elbo)
    state = svi.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="has none; pass conditional_score"):
        svi.update(state)


def test_improper_uniform_latent_starts():
    def model():
        x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real, (), (2,)))
        numpyro.factor("prior", -0.5 * jnp.sum((x - 1.0) ** 2))

    guide = AutoSemiImplicit(model)
    svi = SVI(model, guide, optax.adam(1e-2), ImplicitELBO(num_particles=4))
    state = svi.init(jax.random.PRNGKey(0))
    assert np.isfinite(svi.evaluate(state))


def test_amortized_site_with_a_conditional_regression_network_fits_its_posterior():
    # Four items z_i ~ N(0, 1) (no data), each drawn by an amortized semi-implicit sampler
    # z = β c + a ε₂ + b ε₁ with context c and b = 0.3 fixed: the posterior is N(0, 1) per item,
    # so the fit must reach β = 0 and a² + b² = 1. The conditional score −ε₁/b alone carries no
    # gradient for a (it would shrink a to 0): only the marginal score fitted from it does.
    from helpers import CONTEXTS, standard_normal_locals

    est = ScoreNet(objective="regression", conditional=True, hidden=(32,), base="normal",
                   steps_per_update=3, optimizer=optax.adam(3e-3))

    def guide(c):
        beta = numpyro.param("beta", 0.5)
        a = numpyro.param("a", 0.3, constraint=dist.constraints.positive)
        b = 0.3
        with numpyro.plate("items", c.shape[0]):
            k2, k1 = jax.random.split(numpyro.prng_key())
            eps2 = jax.random.normal(k2, c.shape + (1,))
            eps1 = jax.random.normal(k1, c.shape + (1,))
            w = beta * c[:, None] + a * eps2 + b * eps1
            implicit_sample("z", w[:, 0], latent=w, context=c[:, None], estimator=est,
                            conditional_score=-eps1 / b)

    svi, result = fit(standard_normal_locals, guide, ImplicitELBO(num_particles=16), CONTEXTS,
                      steps=1500, lr=1e-2)
    p = result.params
    assert np.all(np.isfinite(result.losses))
    assert abs(float(p["beta"])) < 0.1
    # sd of q(z | c): the mixing and the conditional noise together.
    np.testing.assert_allclose(float(p["a"] ** 2 + 0.3**2), 1.0, rtol=0.15)
