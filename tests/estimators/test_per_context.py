import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import KEY, rel_err

from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.estimators.per_context import PerContext

RNG = np.random.default_rng(7)
GROUPS = RNG.normal(size=(3, 20, 2)) * np.array([[[1.0, 0.5]], [[2.0, 1.0]], [[0.3, 0.3]]])


@pytest.mark.parametrize("base", [Stein(), SSGE()], ids=["stein", "ssge"])
def test_each_group_is_fitted_on_its_own(base):
    est = PerContext(base, group_size=20)
    rows, context = GROUPS.reshape(-1, 2), np.repeat(np.eye(3), 20, axis=0)
    state = jax.jit(est.init)(KEY, rows, context)
    queries = RNG.normal(size=(3 * 4, 2))
    score = jax.jit(est.score)
    got = score(state, queries, np.repeat(np.eye(3), 4, axis=0))
    at_samples = score(state, rows, context)
    # The base estimator fitted on one set of samples alone (jitted: one program per shape).
    alone = jax.jit(lambda samples, q: base.score(base.init(KEY, samples), q))
    for g in range(3):
        np.testing.assert_allclose(got[4 * g : 4 * (g + 1)], alone(GROUPS[g], queries[4 * g : 4 * (g + 1)]), rtol=1e-9)
        np.testing.assert_allclose(at_samples[20 * g : 20 * (g + 1)], alone(GROUPS[g], GROUPS[g]), rtol=1e-9)
    # Pooling the groups would give another, worse estimate of each group's score.
    pooled = alone(rows, rows)
    assert rel_err(pooled, np.asarray(at_samples)) > 1e-3


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: PerContext(Stein(), group_size=1), ValueError, "group_size must be >= 2"),
        (lambda: PerContext(ScoreNet(), group_size=4), ValueError, "needs an unconditional kernel estimator"),
        (lambda: PerContext("stein", group_size=4), TypeError, "estimator must be a ScoreEstimator"),
    ],
)
def test_bad_configuration_is_named(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_rows_not_in_whole_groups_are_named():
    est = PerContext(Stein(), group_size=20)
    with pytest.raises(ValueError, match="samples must have a multiple of group_size=20 rows, got 50"):
        est.init(KEY, RNG.normal(size=(50, 2)), jnp.zeros((50, 1)))
    state = jax.jit(est.init)(KEY, GROUPS.reshape(-1, 2), jnp.zeros((60, 1)))
    with pytest.raises(ValueError, match="queries must have a multiple of 3 rows"):
        est.score(state, RNG.normal(size=(4, 2)), jnp.zeros((4, 1)))
