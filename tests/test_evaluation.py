"""AIS and IWAE log-likelihoods against closed forms (linear-Gaussian decoder) and quadrature.

References are computed in NumPy from the model itself: the marginal N(x; b, W Wᵀ + σ² I) and
the posterior of the linear-Gaussian decoder, and a fine 1-D grid for a Bernoulli decoder.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitvi.evaluation import (
    ais_log_likelihood,
    gaussian_proposal,
    iwae_log_likelihood,
    sigmoid_schedule,
)

# Linear-Gaussian decoder p(x|z) = N(x; W z + b, σ² I), p(z) = N(0, I): posterior standard
# deviations about 0.4 and 0.5, so the data move the latent well away from the prior.
RNG = np.random.default_rng(0)
DZ, DX, SIGMA = 2, 4, 0.5
W = RNG.normal(size=(DX, DZ))
B = RNG.normal(size=DX)
X = RNG.normal(size=(3, DZ)) @ W.T + B + SIGMA * RNG.normal(size=(3, DX))


def gaussian_log_likelihood(z, x):
    r = x - W @ z - B
    return -0.5 * jnp.sum(r**2) / SIGMA**2 - DX * np.log(SIGMA) - 0.5 * DX * np.log(2 * np.pi)


def exact_log_marginal(x):
    cov = W @ W.T + SIGMA**2 * np.eye(DX)
    r = x - B
    _, logdet = np.linalg.slogdet(cov)
    mahalanobis = np.einsum("ni,ni->n", r, np.linalg.solve(cov, r.T).T)
    return -0.5 * (mahalanobis + logdet + DX * np.log(2 * np.pi))


def exact_posterior(x):
    """Means (n, DZ) and the shared covariance (DZ, DZ) of p(z | x)."""
    cov = np.linalg.inv(np.eye(DZ) + W.T @ W / SIGMA**2)
    return (x - B) @ W @ cov / SIGMA**2, cov


def test_sigmoid_schedule_runs_from_0_to_1_symmetric_with_small_end_steps():
    betas = np.asarray(sigmoid_schedule(101))
    assert betas.shape == (101,)
    assert betas[0] == 0.0 and betas[-1] == 1.0
    steps = np.diff(betas)
    assert np.all(steps > 0)
    np.testing.assert_allclose(betas + betas[::-1], 1.0, atol=1e-12)
    assert betas[50] == pytest.approx(0.5, abs=1e-12)
    # Steps grow towards the middle (logistic density), by σ'(0)/σ'(4) ≈ 14 for rad = 4.
    assert np.all(np.diff(steps[:50]) > 0)
    assert steps[49] / steps[0] == pytest.approx(14, rel=0.1)
    # A nearly flat sigmoid is the linear schedule, to second order in rad.
    np.testing.assert_allclose(sigmoid_schedule(11, rad=1e-3), np.linspace(0, 1, 11), atol=1e-6)
    np.testing.assert_array_equal(sigmoid_schedule(2), [0.0, 1.0])


def test_ais_weights_are_unbiased_for_the_gaussian_marginal():
    """With a fixed step size E[w] = p(x) exactly (Neal 2001), for any number of temperatures.

    Few temperatures make the weights vary widely, so a wrong weight update (e.g. the
    likelihood after instead of before each transition) would show as a ratio far from 1.
    The tolerance is 4 standard errors of the mean ratio w / p(x) over the chains.
    """
    num_chains = 4096
    exact = exact_log_marginal(X[:2])
    result = ais_log_likelihood(
        jax.random.PRNGKey(1),
        gaussian_log_likelihood,
        X[:2],
        DZ,
        schedule=4,
        num_chains=num_chains,
        step_size=0.2,
        adapt_step_size=False,
    )
    assert result.log_weights.shape == (2, num_chains)
    assert result.log_likelihood.shape == result.acceptance.shape[:1] == (2,)
    ratio = np.exp(np.asarray(result.log_weights) - exact[:, None])
    standard_error = ratio.std(axis=1) / np.sqrt(num_chains)
    assert np.all(np.abs(ratio.mean(axis=1) - 1) < 4 * standard_error)
    assert np.all(standard_error < 0.05)


def bernoulli_setting():
    rng = np.random.default_rng(5)
    w, b = 1.5 * rng.normal(size=20), rng.normal(size=20)
    z = rng.normal(size=(3, 1))
    x = (rng.uniform(size=(3, 20)) < 1 / (1 + np.exp(-(z * w + b)))).astype(np.float64)
    return w, b, x


@pytest.mark.slow
def test_ais_matches_quadrature_for_a_bernoulli_decoder():
    """Sigmoid schedule and adapted step size as in the paper, on a 1-D latent, against a
    20001-point grid. The tolerance is 4 delta-method standard errors from the chains' spread
    (plus 0.01 nats of slack for the step-size adaptation's bias, measured below 0.01 with 256
    chains); the step-size cap is raised because HMC on a single latent accepts ≈ 0.94 of
    proposals even at the paper's cap of 0.5."""
    w, b, x = bernoulli_setting()

    def log_likelihood(z, x_row):
        logits = w * z[0] + b
        return jnp.sum(x_row * logits - jnp.logaddexp(0.0, logits))

    grid = np.linspace(-10, 10, 20001)
    logits = grid[:, None, None] * w + b  # (grid, row, pixel)
    log_joint = np.sum(x * logits - np.logaddexp(0, logits), axis=-1) - 0.5 * grid[:, None] ** 2
    # Riemann sum: the integrand is smooth and negligible at ±10 (posterior sd ≈ 0.4).
    m = log_joint.max(axis=0)
    integral = np.sum(np.exp(log_joint - m), axis=0) * (grid[1] - grid[0])
    exact = m + np.log(integral) - 0.5 * np.log(2 * np.pi)

    num_chains = 64
    result = ais_log_likelihood(
        jax.random.PRNGKey(2),
        log_likelihood,
        x,
        1,
        schedule=1000,
        num_chains=num_chains,
        step_size_bounds=(1e-4, 2.0),
    )
    weights = np.exp(np.asarray(result.log_weights) - exact[:, None])
    standard_error = weights.std(axis=1) / weights.mean(axis=1) / np.sqrt(num_chains)
    err = np.asarray(result.log_likelihood) - exact
    assert np.all(np.abs(err) < 4 * standard_error + 0.01), (err, standard_error)
    assert np.all(standard_error < 0.03)
    # The adaptation moves the acceptance rate from ≈ 1 (initial step 0.05) to the target 0.65.
    assert 0.6 < float(np.mean(result.acceptance)) < 0.8


def test_iwae_with_the_exact_posterior_has_zero_variance():
    loc, cov = exact_posterior(X)
    scale_tril = np.broadcast_to(np.linalg.cholesky(cov), (3, DZ, DZ))
    result = iwae_log_likelihood(
        jax.random.PRNGKey(3), gaussian_log_likelihood, X, loc, scale_tril, num_samples=5
    )
    exact = exact_log_marginal(X)
    np.testing.assert_allclose(result.log_weights, np.repeat(exact[:, None], 5, 1), atol=1e-10)
    np.testing.assert_allclose(result.log_likelihood, exact, atol=1e-10)


def test_iwae_with_a_poor_proposal_is_below_the_marginal():
    """E[log p̂] < log p(x) (Jensen): a proposal shifted off the posterior, 5 draws, 20 repeats
    of each row (each row of the call draws independently)."""
    loc, cov = exact_posterior(X)
    scale = np.broadcast_to(np.sqrt(np.diag(cov)), loc.shape)
    x, loc, scale = (np.repeat(a, 20, axis=0) for a in (X, loc + 1.0, scale))
    estimates = iwae_log_likelihood(
        jax.random.PRNGKey(4), gaussian_log_likelihood, x, loc, scale, num_samples=5, batch_size=3
    ).log_likelihood.reshape(3, 20)
    standard_error = estimates.std(axis=1) / np.sqrt(20)
    assert np.all(estimates.mean(axis=1) + 4 * standard_error < exact_log_marginal(X))


def test_rows_use_their_own_keys_whatever_the_batch_size():
    loc, _ = exact_posterior(X)
    args = (jax.random.PRNGKey(6), gaussian_log_likelihood, X, loc + 0.3, np.full((3, DZ), 0.5))
    whole = iwae_log_likelihood(*args, num_samples=5)
    # Batches of 2 rows: the second holds row 2 and a padding copy of it.
    part = iwae_log_likelihood(*args, num_samples=5, batch_size=2)
    assert part.log_weights.shape == (3, 5)
    np.testing.assert_allclose(part.log_weights, whole.log_weights, rtol=1e-12)


def test_a_data_set_scored_in_pieces_matches_it_scored_whole():
    loc, _ = exact_posterior(X)
    key, scale = jax.random.PRNGKey(6), np.full((3, DZ), 0.5)
    whole = iwae_log_likelihood(key, gaussian_log_likelihood, X, loc, scale, num_samples=5)
    tail = iwae_log_likelihood(key, gaussian_log_likelihood, X[1:], loc[1:], scale[1:], num_samples=5,
                               first_row=1)
    np.testing.assert_allclose(tail.log_weights, whole.log_weights[1:], rtol=1e-12)
    settings = dict(schedule=5, num_chains=2, num_leapfrog=2)
    whole = _ais(**settings)
    pieces = [_ais(x=X[:2], **settings), _ais(x=X[2:], first_row=2, **settings)]
    np.testing.assert_allclose(np.concatenate([p.log_weights for p in pieces]), whole.log_weights,
                               rtol=1e-12)
    # The offset moves the draws: the tail scored as if it began the data set differs.
    assert not np.allclose(_ais(x=X[2:], **settings).log_weights, whole.log_weights[2:])


def test_gaussian_proposal_matches_numpy_moments():
    draws = RNG.normal(size=(2, 40, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
    loc, scale_tril = gaussian_proposal(draws, widen=1.5)
    for i in range(2):
        np.testing.assert_allclose(loc[i], draws[i].mean(axis=0), rtol=1e-12)
        cov = np.asarray(scale_tril[i] @ scale_tril[i].T)
        np.testing.assert_allclose(cov, 1.5**2 * np.cov(draws[i].T), rtol=1e-10)
        assert np.allclose(np.triu(scale_tril[i], 1), 0)
    with pytest.raises(ValueError, match="singular"):
        gaussian_proposal(np.repeat(draws[:, :, :1], 3, axis=2))


def _ais(x=X, latent_dim=DZ, **kwargs):
    return ais_log_likelihood(
        jax.random.PRNGKey(0), gaussian_log_likelihood, x, latent_dim, **kwargs
    )


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(x=X[0]), ValueError, "x must have shape"),
        (dict(x=np.where(X > 10, X, np.nan)), ValueError, "x contains NaN"),
        (dict(x="data"), TypeError, "x must be an array"),
        (dict(latent_dim=0), ValueError, "latent_dim must be >= 1"),
        (dict(latent_dim=2.0), TypeError, "latent_dim must be an int"),
        (dict(schedule=1), ValueError, "schedule must be a number of temperatures >= 2"),
        (dict(schedule=np.array([0.0, 0.7, 0.5, 1.0])), ValueError, "schedule must increase"),
        (dict(step_size=0.0), ValueError, "step_size must be finite and > 0"),
        (dict(step_size=-0.1), ValueError, "step_size must be finite and > 0"),
        (dict(step_size=0.8), ValueError, "step_size must lie within step_size_bounds"),
        (dict(num_chains=0), ValueError, "num_chains must be >= 1"),
        (dict(num_leapfrog=0), ValueError, "num_leapfrog must be >= 1"),
        (dict(target_acceptance=1.0), ValueError, "target_acceptance must be in"),
        (dict(first_row=-1), ValueError, "first_row must be >= 0"),
        (dict(first_row=1.0), TypeError, "first_row must be an int"),
    ],
)
def test_ais_rejects_bad_arguments(overrides, error, match):
    with pytest.raises(error, match=match):
        _ais(**overrides)


def test_bad_likelihood_functions_and_proposals_are_named():
    with pytest.raises(ValueError, match="log_likelihood_fn.*must return a scalar"):
        ais_log_likelihood(jax.random.PRNGKey(0), lambda z, x: x - W @ z, X, DZ)
    with pytest.raises(ValueError, match="num_temperatures must be >= 2"):
        sigmoid_schedule(1)
    loc = np.zeros((3, DZ))
    bad_scales = [np.ones((3, DZ + 1)), -np.ones((3, DZ)), np.ones((3, DZ, DZ))]
    for scale, match in zip(bad_scales, ["scale must have shape", "positive", "lower-triangular"]):
        with pytest.raises(ValueError, match=match):
            iwae_log_likelihood(jax.random.PRNGKey(0), gaussian_log_likelihood, X, loc, scale)
    with pytest.raises(ValueError, match="loc must have shape"):
        iwae_log_likelihood(jax.random.PRNGKey(0), gaussian_log_likelihood, X, loc[:2], loc[:2])
