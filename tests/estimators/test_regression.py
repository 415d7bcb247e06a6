"""Score regression on conditional scores: the objective and ScoreNet(objective="regression")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import rel_err

from implicitvi.estimators import ScoreNet
from implicitvi.objectives import regression
from implicitvi.score_model import fit_score_model

KEY = jax.random.PRNGKey(0)


def scale_mixture(key, n):
    """w = σ(ε₂) ε₁ in 1-D with σ = 0.5 or 2 by the sign of ε₂: the marginal is
    ½ N(0, 0.25) + ½ N(0, 4), whose score differs from every conditional one."""
    k2, k1 = jax.random.split(key)
    sigma = jnp.where(jax.random.normal(k2, (n, 1)) > 0, 0.5, 2.0)
    eps1 = jax.random.normal(k1, (n, 1))
    return sigma * eps1, -eps1 / sigma


def scale_mixture_score(w):
    var = jnp.array([0.25, 4.0])
    log_comp = -0.5 * w**2 / var - 0.5 * jnp.log(var)  # (n, 2)
    weights = jax.nn.softmax(log_comp, axis=-1)
    return jnp.sum(weights * (-w / var), axis=-1, keepdims=True)


def test_regression_objective_is_the_fisher_divergence_plus_a_constant():
    # For two score functions the difference of the objectives on many draws equals the
    # difference of their Fisher divergences to the marginal score (computed in closed form).
    w, t = scale_mixture(KEY, 200_000)
    true = scale_mixture_score(w)
    s1 = lambda x: -x  # noqa: E731
    s2 = lambda x: -0.5 * x  # noqa: E731
    lhs = regression(s1, w, targets=t) - regression(s2, w, targets=t)
    fisher = lambda s: 0.5 * jnp.mean(jnp.sum((s(w) - true) ** 2, -1))  # noqa: E731
    np.testing.assert_allclose(lhs, fisher(s1) - fisher(s2), rtol=0.05)


def test_network_fitted_on_conditional_scores_learns_the_marginal_score():
    # Relative error 0.012-0.020 over three seeds at this size.
    est = ScoreNet(objective="regression", hidden=(16, 16), optimizer=optax.adam(1e-2), fit_steps=500)
    w, t = scale_mixture(KEY, 2000)
    state = est.fit(jax.random.PRNGKey(1), est.init(KEY, w), w, targets=t)
    queries = jnp.linspace(-3.0, 3.0, 61)[:, None]
    true = scale_mixture_score(queries)
    assert rel_err(est.score(state, queries), true) < 0.05
    # The conditional scores themselves are far from it: the network did not copy them.
    assert rel_err(t, scale_mixture_score(w)) > 0.5


def test_update_takes_one_step_towards_the_targets():
    est = ScoreNet(objective="regression", hidden=(8,), base="normal")
    w, t = scale_mixture(KEY, 64)
    state = est.init(KEY, w)
    new = est.update(KEY, state, w, targets=t)
    assert int(new.step) == 1
    before = est.loss(state.params, w, KEY, targets=t)
    assert est.loss(new.params, w, KEY, targets=t) < before


def test_targets_are_required_checked_and_refused_where_unused():
    est = ScoreNet(objective="regression", hidden=(8,))
    w, t = scale_mixture(KEY, 16)
    state = est.init(KEY, w)
    with pytest.raises(ValueError, match="targets is required"):
        est.update(KEY, state, w)
    with pytest.raises(ValueError, match="targets must have the shape"):
        est.update(KEY, state, w, targets=t[:8])
    ssm = ScoreNet(hidden=(8,))
    with pytest.raises(ValueError, match="does not use them"):
        ssm.update(KEY, ssm.init(KEY, w), w, targets=t)
    assert est.needs_targets and not ssm.needs_targets
    with pytest.raises(ValueError, match="targets must have the shape"):
        regression(lambda x: x, w, targets=t[:, :0])


def test_energy_models_cannot_use_the_regression_objective():
    x = jnp.zeros((8, 2))
    with pytest.raises(ValueError, match="unknown objective 'regression'"):
        fit_score_model(KEY, lambda p, x: -0.5 * jnp.sum(x**2, -1), {}, x, objective="regression")
