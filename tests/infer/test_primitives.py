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


def test_shared_prng_key_is_one_key_for_every_particle_of_an_elbo_step():
    # A guide whose only randomness comes from shared_prng_key: every particle then draws the same
    # value, so the loss over four particles equals the loss over one (same step key). The same
    # guide drawing from numpyro.prng_key gives four different particles and another loss.
    import jax
    import numpyro

    from implicitvi.infer import ImplicitELBO
    from implicitvi.infer.primitives import shared_prng_key

    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    def guide_from(draw_key):
        def guide():
            m = numpyro.param("m", 0.5)
            v = m + jax.random.normal(draw_key())
            implicit_sample("x", v, score=jnp.reshape(m - v, (1,)))  # the score of N(m, 1)

        return guide

    def loss(guide, particles):
        elbo = ImplicitELBO(num_particles=particles)
        return float(elbo.loss(jax.random.PRNGKey(3), {"m": jnp.asarray(0.5)}, model, guide))

    shared = guide_from(shared_prng_key)
    assert loss(shared, 4) == loss(shared, 1)
    own = guide_from(numpyro.prng_key)
    assert loss(own, 4) != loss(own, 1)
    # Outside the ELBO it is numpyro.prng_key.
    data = jax.random.key_data
    np.testing.assert_array_equal(data(seed(shared_prng_key, 5)()), data(seed(numpyro.prng_key, 5)()))
