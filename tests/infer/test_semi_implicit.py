"""AutoSemiImplicit and conditional scores through ImplicitELBO."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from helpers import POST_COV, POST_MEAN, X_REG, Y_REG, fit, regression, rel_err
from numpyro import handlers
from numpyro.infer import SVI

from implicitvi.estimators import ScoreNet
from implicitvi.infer import (
    AutoSemiImplicit,
    ImplicitELBO,
    implicit_sample,
    mixture_score,
    score_check,
)


@pytest.fixture(scope="module", params=["regression", "mixture"])
def regression_fit(request):
    guide = AutoSemiImplicit(regression, score=request.param)
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


@pytest.fixture(scope="module")
def initialised():
    """An AutoSemiImplicit guide with its defaults (L = 0.3 I) at svi.init, under Adam 1e-3."""
    guide = AutoSemiImplicit(regression, init_scale=0.3)
    svi = SVI(regression, guide, optax.adam(1e-3), ImplicitELBO(num_particles=4))
    return guide, svi, svi.init(jax.random.PRNGKey(0), X_REG, Y_REG)


def test_guide_starts_as_the_gaussian_of_its_loc_and_scale(initialised):
    guide, svi, state = initialised
    params = svi.get_params(state)
    draws = np.asarray(guide.sample_posterior(jax.random.PRNGKey(1), params, sample_shape=(20_000,))["beta"])
    loc = np.asarray(params["auto_loc"])
    # Mean error of 20,000 draws: 0.3/141 ≈ 0.002; sd error ≈ 0.3 · 0.5%.
    np.testing.assert_allclose(draws.mean(0), loc, atol=0.01)
    np.testing.assert_allclose(draws.std(0), [0.3, 0.3], rtol=0.03)
    assert abs(np.corrcoef(draws.T)[0, 1]) < 0.03
    # Its score network starts at the exact score −w: no gap to the moment-matched Gaussian,
    # and the regression loss is C = ½ E||t + w||² = D/2 (t + w = (ε₂ − ε₁)/√2 per coordinate).
    check = score_check(jax.random.PRNGKey(2), guide, params, state.mutable_state, X_REG, Y_REG,
                        num_draws=4096)["_auto_latent"]
    assert abs(check.gap) < 0.01
    np.testing.assert_allclose(check.loss, 1.0, atol=0.06)


def test_network_rate_is_the_mixing_networks_step_size_under_adam(initialised):
    # Adam's first step moves every parameter with a non-zero gradient by lr (its update is
    # lr · g / |g|): μ by lr, the network's weights as applied by network_rate · lr.
    guide, svi, state = initialised
    lr, rate = 1e-3, guide.network_rate
    assert rate == 0.1
    before = svi.get_params(state)
    after = svi.get_params(jax.jit(svi.update)(state, X_REG, Y_REG)[0])
    moved = [rate * (a - b) for a, b in zip(jax.tree.leaves(after["auto_sampler"]),
                                            jax.tree.leaves(before["auto_sampler"]))]
    np.testing.assert_allclose(np.abs(after["auto_loc"] - before["auto_loc"]), lr, rtol=1e-3)
    moved = np.abs(np.concatenate([np.ravel(m) for m in moved]))
    np.testing.assert_allclose(moved.max(), rate * lr, rtol=1e-3)
    # At the start only the output layer (which starts at zero) has a gradient: all of it moves.
    _, out_b = (rate * (a - b) for a, b in zip(after["auto_sampler"][-1], before["auto_sampler"][-1]))
    np.testing.assert_allclose(np.abs(out_b), rate * lr, rtol=1e-3)


def test_network_rate_applies_to_the_parameters_a_factory_registers():
    seen = {}

    def factory(name, noise_dim, out_dim):
        weights = numpyro.param(name, jnp.full((noise_dim, out_dim), 0.5))
        seen["weights"] = weights
        return lambda eps: eps @ weights

    guide = AutoSemiImplicit(regression, network=factory, network_rate=0.1)
    with handlers.trace() as tr, handlers.seed(rng_seed=0):
        guide(X_REG, Y_REG)
    # The optimizer holds θ / 0.1; the factory's network runs at θ.
    np.testing.assert_allclose(tr["auto_sampler"]["value"], 5.0)
    np.testing.assert_allclose(seen["weights"], 0.5)


def test_posterior_draws_skip_the_averaged_score():
    # Training draws average the conditional score over 8 fresh mixing components, one more
    # mixing pass over (.., 8, K) noise; posterior draws record no site and make no such pass.
    shapes = []

    def factory(name, noise_dim, out_dim):
        weights = numpyro.param(name, jnp.zeros((noise_dim, out_dim)))
        return lambda eps: shapes.append(eps.shape) or eps @ weights

    guide = AutoSemiImplicit(regression, network=factory, score="mixture", num_components=8)
    with handlers.seed(rng_seed=0):
        guide(X_REG, Y_REG)
    d = guide.latent_dim
    assert shapes == [(d,), (8, d)]
    params = {"auto_loc": jnp.zeros(d), "auto_scale_tril": jnp.eye(d), "auto_sampler": jnp.zeros((d, 2 * d))}
    shapes.clear()
    draws = guide.sample_posterior(jax.random.PRNGKey(1), params, sample_shape=(5,))
    assert shapes == [(5, d)]
    assert draws["beta"].shape[0] == 5


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
    with pytest.raises(ValueError, match="network_rate"):
        AutoSemiImplicit(regression, network_rate=0.0)
    with pytest.raises(ValueError, match="no context"):
        AutoSemiImplicit(regression, estimator=ScoreNet(conditional=True))
    with pytest.raises(ValueError, match="unknown flow 'maf'"):
        AutoSemiImplicit(regression, flow="maf")
    with pytest.raises(ValueError, match="unknown score 'exact'"):
        AutoSemiImplicit(regression, score="exact")
    with pytest.raises(ValueError, match="with score='mixture' the averaged conditional scores are the score"):
        AutoSemiImplicit(regression, score="mixture", estimator="stein")
    with pytest.raises(ValueError, match="num_components must be >= 1, got 0"):
        AutoSemiImplicit(regression, score="mixture", num_components=0)


def test_mixture_score_approaches_the_score_as_components_grow():
    # At the start w ~ N(0, I) (score −w) is drawn as a mixture of N(ε₂/√2, I/2): the conditional
    # scores averaged over C mixing draws near w estimate −w, the closer the larger C (relative
    # squared error 0.13 at C = 16, 0.012-0.013 at C = 256 on 1000 draws, over three seeds).
    errors = {}
    for c in (16, 256):
        guide = AutoSemiImplicit(regression, score="mixture", num_components=c)
        svi = SVI(regression, guide, optax.adam(1e-3), ImplicitELBO(num_particles=2))
        params = svi.get_params(svi.init(jax.random.PRNGKey(0), X_REG, Y_REG))

        @jax.jit  # one program, not one per operation
        def draw(params, guide=guide):
            with numpyro.handlers.seed(rng_seed=1), numpyro.handlers.substitute(data=params):
                return guide._draw_latent((1000,))

        w, kwargs = draw(params)
        assert set(kwargs) == {"score"}  # no estimator is fitted
        errors[c] = rel_err(kwargs["score"], -np.asarray(w))
    assert errors[256] < 0.03 < 0.1 < errors[16]


def test_mixture_score_is_the_gradient_of_the_mixtures_log_density():
    # A three-component mixture of diagonal Gaussians (different weights through unnormalized
    # log-densities): against autodiff of log Σₖ N(w; mₖ, diag sₖ²).
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    w = jax.random.normal(keys[0], (5, 4))
    locs = jax.random.normal(keys[1], (3, 4))
    scales = jnp.exp(0.5 * jax.random.normal(keys[2], (3, 4)))

    def log_q(x):
        return jax.nn.logsumexp(dist.Normal(locs, scales).log_prob(x).sum(-1))

    @jax.jit  # one program, not one per operation
    def both(w):
        z = (w[:, None] - locs) / scales
        return mixture_score(jnp.sum(-0.5 * z**2 - jnp.log(scales), -1), -z / scales), jax.vmap(jax.grad(log_q))(w)

    np.testing.assert_allclose(*both(w), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"log_densities must have shape scores.shape\[:-1\] = \(\.\.\., K\) for scores of shape \(\.\.\., K, D\); got log_densities \(5, 2\) and scores \(5, 3, 4\)"):
        mixture_score(jnp.zeros((5, 2)), jnp.zeros((5, 3, 4)))


def test_a_flow_needs_two_latent_dimensions():
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    svi = SVI(model, AutoSemiImplicit(model, flow="iaf"), optax.adam(1e-3), ImplicitELBO(num_particles=2))
    with pytest.raises(ValueError, match="flow='iaf' needs a latent dimension of at least 2"):
        svi.init(jax.random.PRNGKey(0))


@pytest.mark.parametrize("flow", ["iaf", "bnaf"])
def test_flow_frame_carries_the_log_determinant_of_its_draws(flow):
    # u = μ + L T(w): the site's per-draw log|det ∂u/∂w| against the Jacobian of the map
    # w ↦ u computed by autodiff.
    guide = AutoSemiImplicit(regression, flow=flow)
    svi = SVI(regression, guide, optax.adam(1e-3), ImplicitELBO(num_particles=2))
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), X_REG, Y_REG))
    key = jax.random.PRNGKey(3)
    tr = numpyro.handlers.trace(numpyro.handlers.seed(
        numpyro.handlers.substitute(guide, data=params), key)).get_trace(X_REG, Y_REG)
    site = tr["_auto_latent"]
    w = site["infer"]["implicit_latent"]

    def frame(w):
        with numpyro.handlers.substitute(data=params):
            v, _ = guide._frame(w)
        return params["auto_loc"] + params["auto_scale_tril"] @ v

    np.testing.assert_allclose(frame(w), site["value"], rtol=1e-5, atol=1e-5)
    _, expected = jnp.linalg.slogdet(jax.jacobian(frame)(w))
    # The Delta's log density is −log|det ∂u/∂w| (u is unconstrained: no support term).
    np.testing.assert_allclose(-site["fn"].log_density, expected, rtol=1e-4, atol=1e-4)


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


@pytest.mark.slow
def test_averaged_conditional_score_is_unbiased_with_less_variance():
    # At the start the mixing network outputs zero: w = (ε₂ + ε₁)/√2 ~ N(0, I), whose score is
    # −w. The conditional score −ε₁/σ = −√2 ε₁ errs by (ε₂ − ε₁)/√2, variance 1 per coordinate;
    # averaged over the draw's own and 32 fresh components (weighted by their densities at w),
    # its conditional mean given w is still −w, with far less variance.
    guide = AutoSemiImplicit(regression, num_components=32)
    svi = SVI(regression, guide, optax.adam(1e-3), ImplicitELBO(num_particles=2))
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), X_REG, Y_REG))
    n = 20_000
    with numpyro.handlers.seed(rng_seed=1), numpyro.handlers.substitute(data=params):
        w, kwargs = guide._draw_latent((n,))
    err = np.asarray(kwargs["conditional_score"] + w)
    w = np.asarray(w)
    # Unbiased: E[(t − s(w)) h(w)] = 0 for h = 1, w (standard errors ≈ 0.4/√n ≈ 0.003).
    np.testing.assert_allclose(err.mean(0), 0.0, atol=0.015)
    np.testing.assert_allclose((err * w).mean(0), 0.0, atol=0.02)
    assert np.all((err**2).mean(0) < 0.3)
