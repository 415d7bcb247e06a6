import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from implicitvi.infer import load_checkpoint, run_minibatch

DATA = jnp.asarray(np.random.default_rng(0).normal(2.0, 1.0, size=(40, 3)))


def location_model(x):
    mu = numpyro.sample("mu", dist.Normal(0, 10).expand([3]).to_event(1))
    with numpyro.plate("batch", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1).to_event(1), obs=x)


def make_svi():
    return SVI(location_model, AutoNormal(location_model), optax.adam(0.05), Trace_ELBO())


def run(steps, svi=None, **kw):
    svi = make_svi() if svi is None else svi
    return run_minibatch(svi, jax.random.PRNGKey(0), DATA, steps, batch_size=8, chunk_size=5, progress_bar=False, **kw)


def test_minibatch_fit_reaches_the_posterior_mean():
    svi = make_svi()
    result = run(400, svi)
    assert result.losses.shape == (400,)
    loc = svi.get_params(result.state)["mu_auto_loc"]
    # Each batch of 8 has posterior mean ≈ its sample mean; the iterates average them.
    np.testing.assert_allclose(loc, DATA.mean(0), atol=0.2)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    whole = run(30)
    run(15, checkpoint=path, checkpoint_every=5, config={"lr": 0.05})
    resumed = run(30, checkpoint=path, config={"lr": 0.05}, resume=True)
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state), jax.tree_util.tree_leaves(whole.state)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    state, losses = load_checkpoint(path, whole.state, {"lr": 0.05})
    assert losses.shape == (30,)


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    run(5, checkpoint=path, config={"latent_dim": 8})
    with pytest.raises(ValueError, match="another configuration .latent_dim: 8 in the checkpoint, 32 now"):
        run(10, checkpoint=path, config={"latent_dim": 32}, resume=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(10, checkpoint=str(tmp_path / "missing.npz"), resume=True)


def test_non_finite_loss_names_the_step():
    def model(x):
        mu = numpyro.sample("mu", dist.Normal(0, 10))
        numpyro.factor("blow_up", jnp.where(mu > 3.0, jnp.nan, 0.0))
        with numpyro.plate("batch", x.shape[0]):
            numpyro.sample("x", dist.Normal(mu, 1), obs=x)

    svi = SVI(model, AutoNormal(model), optax.adam(0.5), Trace_ELBO())
    with pytest.raises(FloatingPointError, match=r"the loss became non-finite at step [1-9]"):
        run_minibatch(svi, jax.random.PRNGKey(0), DATA[:, 0] + 8.0, 50, batch_size=4, progress_bar=False)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="batch_size must be at most the number of data rows"):
        run_minibatch(make_svi(), jax.random.PRNGKey(0), DATA, 10, batch_size=41)
    with pytest.raises(ValueError, match="num_steps"):
        run_minibatch(make_svi(), jax.random.PRNGKey(0), DATA, 0, batch_size=4)
    with pytest.raises(ValueError, match="need a checkpoint path"):
        run_minibatch(make_svi(), jax.random.PRNGKey(0), DATA, 10, batch_size=4, resume=True)
