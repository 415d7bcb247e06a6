import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.optimize import minimize

from implicitvi import objectives
from implicitvi.nets import MLP

RNG = np.random.default_rng(1)
D = 3
MU = np.array([0.5, -1.0, 2.0])
A = RNG.normal(size=(D, D))
P = A @ A.T + D * np.eye(D)  # a precision matrix (symmetric positive definite)
X = RNG.normal(size=(40, D)) * 1.5 + 0.3


def linear_score(x):
    return -(x - MU) @ P.T


def exact_closed_form(x):
    """Hyvärinen (2005), §3 Gaussian example: ½ E‖P(x − μ)‖² − tr P."""
    return 0.5 * np.mean(np.sum(((x - MU) @ P.T) ** 2, axis=1)) - np.trace(P)


NET = MLP((16, 16), activation=jnp.tanh)
NET_PARAMS = NET.init(jax.random.PRNGKey(3), D, D, jnp.float64)


def net_score(x):
    return NET.apply(NET_PARAMS, x)


def test_exact_equals_gaussian_closed_form():
    np.testing.assert_allclose(objectives.exact(linear_score, X), exact_closed_form(X), rtol=1e-12)


def test_exact_trace_matches_full_jacobian_on_a_network():
    jac = jax.vmap(jax.jacfwd(lambda x: net_score(x[None])[0]))(X)
    s = net_score(X)
    expected = np.mean(0.5 * np.sum(s**2, axis=1) + np.trace(jac, axis1=1, axis2=2))
    np.testing.assert_allclose(objectives.exact(net_score, X), expected, rtol=1e-12)


@pytest.mark.parametrize("objective", [objectives.sliced, objectives.sliced_vr])
@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("score_fn", [linear_score, net_score], ids=["linear", "network"])
def test_sliced_objectives_are_unbiased_for_exact(objective, projection, score_fn):
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = jax.jit(jax.vmap(lambda k: objective(score_fn, X, k, projection=projection)))(keys)
    target = objectives.exact(score_fn, X)
    stderr = np.std(draws) / np.sqrt(len(draws))
    assert abs(np.mean(draws) - target) < 4 * stderr


def test_more_projections_average_single_projection_draws():
    key = jax.random.PRNGKey(5)
    many = objectives.sliced_vr(net_score, X, key, num_projections=8)
    assert np.isfinite(many)
    # Variance reduction: the VR estimator's spread over keys is below plain SSM's.
    keys = jax.random.split(key, 500)
    ssm = jax.jit(jax.vmap(lambda k: objectives.sliced(linear_score, X, k)))(keys)
    vr = jax.jit(jax.vmap(lambda k: objectives.sliced_vr(linear_score, X, k)))(keys)
    assert np.std(vr) < np.std(ssm)


def test_fd_sliced_converges_to_sliced_at_rate_eps_squared():
    key = jax.random.PRNGKey(7)
    ssm = objectives.sliced(net_score, X, key, num_projections=3)
    errors = [
        abs(objectives.fd_sliced(net_score, X, key, num_projections=3, eps=eps) - ssm)
        for eps in (1e-1, 1e-2)
    ]
    assert errors[1] < 1e-3 * abs(ssm)
    assert errors[0] / errors[1] > 30  # O(ε²): a factor 100 per decade, up to higher orders


def test_fd_sliced_is_exact_for_linear_scores():
    key = jax.random.PRNGKey(8)
    np.testing.assert_allclose(
        objectives.fd_sliced(linear_score, X, key, eps=0.5),
        objectives.sliced(linear_score, X, key),
        rtol=1e-10,
    )


def test_denoising_matches_its_closed_form_for_linear_scores():
    sigma = 0.3
    # ½ mean‖P(x−μ)‖² + ½σ² tr(PᵀP) − tr P + d/(2σ²); the cross terms vanish in ε-expectation.
    expected = (
        0.5 * np.mean(np.sum(((X - MU) @ P.T) ** 2, axis=1))
        + 0.5 * sigma**2 * np.trace(P.T @ P)
        - np.trace(P)
        + D / (2 * sigma**2)
    )
    keys = jax.random.split(jax.random.PRNGKey(2), 4000)
    draws = jax.vmap(lambda k: objectives.denoising(linear_score, X, k, sigma=sigma))(keys)
    assert abs(np.mean(draws) - expected) < 4 * np.std(draws) / np.sqrt(len(draws))


def test_minimizing_exact_sm_recovers_sample_mean_and_inverse_covariance():
    data = RNG.multivariate_normal(MU, np.linalg.inv(P), size=200)

    # s(x) = −P(x − μ) = −Px + b with b = Pμ: the objective is a convex quadratic in (P, b).
    def loss(theta):
        p, b = theta[: D * D].reshape(D, D), theta[D * D :]
        return objectives.exact(lambda x: -x @ p.T + b, data)

    theta0 = jnp.concatenate([jnp.eye(D).ravel(), jnp.zeros(D)])
    # Jitted: the BFGS loop is compiled once instead of dispatched op by op.
    result = jax.jit(lambda t: minimize(loss, t, method="BFGS", options={"maxiter": 500, "gtol": 1e-8}))(theta0)
    assert result.success
    p_hat = result.x[: D * D].reshape(D, D)
    mu_hat = np.linalg.solve(p_hat, result.x[D * D :])
    np.testing.assert_allclose(mu_hat, data.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(p_hat, np.linalg.inv(np.cov(data.T, bias=True)), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: objectives.sliced(linear_score, X, None), "key is required"),
        (lambda: objectives.denoising(linear_score, X, None), "key is required"),
        (
            lambda: objectives.sliced(linear_score, X, jax.random.PRNGKey(0), projection="sphere"),
            "unknown projection 'sphere'",
        ),
        (
            lambda: objectives.sliced_vr(linear_score, X, jax.random.PRNGKey(0), num_projections=0),
            "num_projections must be >= 1",
        ),
        (
            lambda: objectives.denoising(linear_score, X, jax.random.PRNGKey(0), sigma=0.0),
            "sigma must be finite and > 0",
        ),
        (
            lambda: objectives.fd_sliced(linear_score, X, jax.random.PRNGKey(0), eps=-1.0),
            "eps must be finite and > 0",
        ),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
