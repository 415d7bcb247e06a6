import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from implicitvi.nets import MLP
from implicitvi.score_model import fit_score_model, langevin_sample, model_score

RNG = np.random.default_rng(4)
D = 3
CHOL = np.array([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.4, 0.6]])
X = RNG.normal(size=(200, D)) @ CHOL.T + np.array([1.0, -2.0, 0.5])
KEY = jax.random.PRNGKey(0)


def quadratic_energy(params, x):
    """E(x) = ½ xᵀPx − bᵀx with P = sym(W): the Gaussian N(P⁻¹b, P⁻¹) up to its normalizer."""
    p = 0.5 * (params["W"] + params["W"].T)
    return 0.5 * jnp.einsum("ni,ij,nj->n", x, p, x) - x @ params["b"]


def linear_score(params, x):
    """The same model given by its score −Px + b."""
    p = 0.5 * (params["W"] + params["W"].T)
    return -x @ p + params["b"]


def gaussian_params(d=D):
    return {"W": jnp.eye(d), "b": jnp.zeros(d)}


def mean_and_precision(params):
    p = np.asarray(0.5 * (params["W"] + params["W"].T))
    return np.linalg.solve(p, np.asarray(params["b"])), p


# --- Gaussian closed form (Hyvärinen 2005, §3) --------------------------------------------


@pytest.mark.parametrize(
    "kind, model", [("energy", quadratic_energy), ("score", linear_score)], ids=["energy", "score"]
)
def test_exact_sm_on_a_gaussian_recovers_sample_mean_and_inverse_covariance(kind, model):
    params, losses = fit_score_model(
        KEY, model, gaussian_params(), X, kind=kind, objective="exact",
        optimizer=optax.adam(0.05), num_steps=3000,
    )
    mean, precision = mean_and_precision(params)
    # Independent reference: numpy's mean and the inverse of the biased (1/n) covariance.
    np.testing.assert_allclose(mean, X.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(precision, np.linalg.inv(np.cov(X.T, bias=True)), atol=1e-9)
    # At the optimum the objective is ½ tr P − tr P = −½ tr P.
    np.testing.assert_allclose(losses[-1], -0.5 * np.trace(precision), rtol=1e-9)
    assert losses.shape == (3000,)


@pytest.mark.parametrize(
    "objective, options",
    [("ssm", {}), ("ssm_vr", {"num_projections": 2}), ("fd_ssm", {"eps": 1e-2}),
     ("dsm", {"sigma": 0.2})],
)
def test_stochastic_objectives_reach_their_gaussian_minimizer(objective, options):
    schedule = optax.exponential_decay(0.1, 3000, 1e-3)
    params, _ = fit_score_model(
        KEY, quadratic_energy, gaussian_params(), X, objective=objective,
        optimizer=optax.adam(schedule), num_steps=3000, batch_size=100, **options,
    )
    mean, precision = mean_and_precision(params)
    # The sliced objectives share exact SM's minimizer; DSM's is the precision of the data
    # smoothed by its noise, (S + σ²I)⁻¹ (a linear regression of −ε/σ on x + σε).
    sigma = options.get("sigma", 0.0)
    target = np.linalg.inv(np.cov(X.T, bias=True) + sigma**2 * np.eye(D))
    # Minibatches and random projections or noise leave a small error.
    assert np.linalg.norm(precision - target) / np.linalg.norm(target) < 0.1
    assert np.max(np.abs(mean - X.mean(axis=0))) < 0.1


# --- an MLP energy on a toy set ------------------------------------------------------------


def test_mlp_energy_fit_lowers_the_loss_and_its_score_points_to_the_data():
    center = np.array([1.5, -1.0])
    data = center + 0.1 * RNG.normal(size=(256, 2))
    net = MLP((32, 32))
    energy = lambda p, x: net.apply(p, x)[:, 0]  # noqa: E731
    params, losses = fit_score_model(
        jax.random.PRNGKey(1), energy, net.init(KEY, 2, 1, jnp.float64), data,
        optimizer=optax.adam(3e-3), num_steps=400, batch_size=64,
    )
    assert np.mean(losses[-40:]) < np.mean(losses[:40]) - 1.0
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for radius in (0.3, 0.6):
        queries = center + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        scores = np.asarray(model_score(energy, params)(queries))
        assert np.all(np.sum(scores * (center - queries), axis=1) > 0)


# --- Langevin dynamics on a known score ---------------------------------------------------


MU = np.array([1.0, -0.5])
TAU2 = 0.5


def ula_variance(tau2, eps):
    """Stationary variance of x ← (1 − ε/(2τ²)) x + √ε ξ: v = ε / (1 − (1 − ε/(2τ²))²)."""
    return eps / (1 - (1 - eps / (2 * tau2)) ** 2)


def check_moments(samples, var):
    n = samples.shape[0]
    # Five standard errors: of the mean √(v/n), of the variance v √(2/(n − 1)).
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - MU), 5 * np.sqrt(var / n))
    np.testing.assert_array_less(np.abs(samples.var(axis=0) - var), 5 * var * np.sqrt(2 / (n - 1)))


def test_langevin_on_a_gaussian_score_has_the_discretized_stationary_moments():
    eps = 0.05
    samples = langevin_sample(
        jax.random.PRNGKey(2), lambda x: -(x - MU) / TAU2, jnp.zeros((4000, 2)),
        step_size=eps, num_steps=400,
    )
    check_moments(np.asarray(samples), ula_variance(TAU2, eps))


def test_annealed_langevin_ends_at_the_last_noise_level():
    sigmas = np.array([1.0, 0.5, 0.2])
    eps = 0.02
    samples = langevin_sample(
        jax.random.PRNGKey(3), lambda x, s: -(x - MU) / (TAU2 + s**2), jnp.zeros((4000, 2)),
        step_size=eps, num_steps=300, sigmas=sigmas,
    )
    check_moments(np.asarray(samples), ula_variance(TAU2 + sigmas[-1] ** 2, eps))


# --- errors --------------------------------------------------------------------------------


def fit(data=X, model=quadratic_energy, **kwargs):
    kwargs.setdefault("num_steps", 2)
    return fit_score_model(KEY, model, gaussian_params(), data, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"data": np.where(np.arange(D) == 1, np.nan, X)}, ValueError, "data contains NaN"),
        ({"data": X[:, 0]}, ValueError, "data must be 2-D"),
        ({"data": X[None]}, ValueError, "data must be 2-D"),
        ({"data": np.ones((5, D), dtype=int)}, TypeError, "data must be an array of floats"),
        ({"objective": "ssm_v"}, ValueError, r"unknown objective 'ssm_v'; expected one of .*ssm"),
        ({"objective": "dsm", "eps": 0.1}, TypeError, "no option 'eps'; its options are"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"batch_size": 201}, ValueError, r"batch_size must be in \[1, 200\]"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        ({"num_steps": 0}, ValueError, "num_steps must be >= 1"),
        ({"kind": "density"}, ValueError, "unknown kind 'density'"),
        ({"model": linear_score}, ValueError, r"energy model must map .* to shape \(200,\)"),
        ({"kind": "score"}, ValueError, r"score model must map .* to shape \(200, 3\)"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be an optax"),
    ],
)
def test_bad_inputs_raise_before_tracing(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(**kwargs)


def test_a_diverging_fit_names_the_step():
    with pytest.raises(FloatingPointError, match=r"loss became non-finite .* at step \d+ of 200"):
        fit_score_model(
            KEY, quadratic_energy, gaussian_params(), X, objective="exact",
            optimizer=optax.sgd(1e3), num_steps=200,
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"init": np.full((3, 2), np.nan)}, ValueError, "init contains NaN"),
        ({"init": np.zeros(3)}, ValueError, "init must be 2-D"),
        ({"step_size": 0.0}, ValueError, "step_size must be finite and > 0"),
        ({"num_steps": 0}, ValueError, "num_steps must be >= 1"),
        ({"sigmas": np.array([[1.0]])}, ValueError, "sigmas must be 1-D"),
        ({"sigmas": np.array([1.0, -0.1])}, ValueError, "sigmas must be finite and > 0"),
        ({"score_fn": lambda x: x[:, :1]}, ValueError, "score_fn must map init of shape"),
    ],
)
def test_langevin_bad_inputs(kwargs, error, match):
    args = {"init": np.zeros((3, 2)), "step_size": 0.1, "num_steps": 2, "score_fn": lambda x: -x}
    if "sigmas" in kwargs:
        args["score_fn"] = lambda x, s: -x
    args.update(kwargs)
    with pytest.raises(error, match=match):
        langevin_sample(KEY, **args)


def test_langevin_divergence_is_reported():
    with pytest.raises(FloatingPointError, match="Langevin samples became non-finite"):
        langevin_sample(KEY, lambda x: -x, jnp.ones((3, 2)), step_size=10.0, num_steps=2000)
