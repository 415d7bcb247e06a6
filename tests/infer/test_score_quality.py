"""score_check against closed forms: a sampler whose marginal is N(0, I) exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.distributions.constraints import real_vector
from numpyro.infer import SVI

from implicitvi.estimators import ScoreNet
from implicitvi.infer import ImplicitELBO, implicit_sample, score_check

D = 3


class Shift:
    """A score network's residual that is the constant ``c``: with the normal base the score is
    ``−w + c``."""

    def __init__(self, c):
        self.c = c

    def init(self, key, in_dim, out_dim, dtype):
        return {"c": jnp.full((out_dim,), self.c, dtype)}

    def apply(self, params, x):
        return jnp.broadcast_to(params["c"], x.shape)


def model():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1))


def guide_with(network):
    def guide():
        # w = (ε₂ + ε₁)/√2 ~ N(0, I), conditional score t = −ε₁/σ with σ = 1/√2. Then
        # t + w = (ε₂ − ε₁)/√2 has unit variance per coordinate: C = ½ E||t − ∇log q||² = D/2.
        e2, e1 = jax.random.normal(numpyro.prng_key(), (2, D))
        w = (e2 + e1) / 2**0.5
        est = ScoreNet(objective="regression", base="normal", network=network)
        implicit_sample("x", w, support=real_vector, conditional_score=-(2**0.5) * e1, estimator=est)

    return guide


def checked(network, num_draws=4096):
    guide = guide_with(network)
    svi = SVI(model, guide, optax.adam(1e-3), ImplicitELBO(num_particles=2))
    state = svi.init(jax.random.PRNGKey(0))
    return score_check(jax.random.PRNGKey(1), guide, svi.get_params(state), state.mutable_state,
                       num_draws=num_draws)["x"]


def test_exact_score_has_the_constant_as_loss_and_no_gap():
    check = checked(Shift(0.0))
    # Standard error of the loss: ½ sd(χ²_D) / √n = ½ √(2D) / 64 ≈ 0.019.
    np.testing.assert_allclose(check.loss, D / 2, atol=0.08)
    # The moment-matched Gaussian is the exact score up to O(D/n) estimation error.
    assert abs(check.gap) < 0.01


def test_gap_is_the_difference_of_squared_score_errors():
    # s = −w + c: ½ E||s − ∇log q||² = ½ D c², the Gaussian's ≈ 0.
    check = checked(Shift(0.5))
    np.testing.assert_allclose(check.gap, 0.5 * D * 0.25, atol=0.03)
    np.testing.assert_allclose(check.loss - check.gaussian_loss, check.gap, rtol=1e-6)


def test_bad_input_is_named():
    guide = guide_with(Shift(0.0))
    svi = SVI(model, guide, optax.adam(1e-3), ImplicitELBO(num_particles=2))
    state = svi.init(jax.random.PRNGKey(0))
    params = svi.get_params(state)
    with pytest.raises(ValueError, match="num_draws must exceed the latent dimension 3"):
        score_check(jax.random.PRNGKey(1), guide, params, state.mutable_state, num_draws=3)
    with pytest.raises(TypeError, match="mutable_state must be svi_state.mutable_state"):
        score_check(jax.random.PRNGKey(1), guide, params, state)
    with pytest.raises(ValueError, match="no score state of implicit site 'x'"):
        score_check(jax.random.PRNGKey(1), guide, params, {})

    def plain_guide():
        implicit_sample("x", jax.random.normal(numpyro.prng_key(), (D,)), support=real_vector,
                        estimator="stein")

    with pytest.raises(ValueError, match="no implicit site with conditional scores"):
        score_check(jax.random.PRNGKey(1), plain_guide, {}, {})
