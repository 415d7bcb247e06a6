import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed, trace

from implicitvi.estimators import ScoreNet
from implicitvi.infer import implicit_sample


def test_constrained_implicit_site_carries_its_log_jacobian():
    def guide():
        implicit_sample("s", jnp.array([0.3, -1.2]), support=dist.constraints.positive, estimator="stein")

    site = trace(seed(guide, 0)).get_trace()["s"]
    np.testing.assert_allclose(site["value"], np.exp([0.3, -1.2]))
    # log q(s) = log q(u) − log|d exp(u)/du| = log q(u) − u: the Delta carries −u.
    np.testing.assert_allclose(site["fn"].log_prob(site["value"]), [-0.3, 1.2], rtol=1e-6)


def test_entropy_draws_of_the_wrong_shape_are_named():
    def guide():
        implicit_sample("z", jnp.zeros(3), support=dist.constraints.real_vector, entropy_draws=jnp.zeros((5, 2)))

    with pytest.raises(ValueError, match=r"implicit site 'z': entropy_draws must have shape batch_shape \+ \(m, d\) = \(\) \+ \(m, 3\), got \(5, 2\)"):
        trace(seed(guide, 0)).get_trace()


def test_estimator_needing_context_given_none_is_named():
    def guide():
        implicit_sample("z", jnp.zeros(2), estimator=ScoreNet(conditional=True))

    with pytest.raises(ValueError, match=r"implicit site 'z': the estimator ScoreNet\(conditional=True\) needs a context"):
        trace(seed(guide, 0)).get_trace()


def test_given_scores_exclude_an_estimator_and_must_match_the_latent():
    def guide(**kwargs):
        implicit_sample("z", jnp.zeros(3), support=dist.constraints.real_vector, **kwargs)

    with pytest.raises(ValueError, match=r"implicit site 'z': score=\.\.\. is the score itself, so no estimator is fitted; do not pass estimator"):
        trace(seed(guide, 0)).get_trace(score=jnp.zeros(3), estimator="stein")
    with pytest.raises(ValueError, match="do not pass conditional_score"):
        trace(seed(guide, 0)).get_trace(score=jnp.zeros(3), conditional_score=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"implicit site 'z': score must have the shape of latent \(3,\), got \(2,\)"):
        trace(seed(guide, 0)).get_trace(score=jnp.zeros(2))
