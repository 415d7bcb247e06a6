import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from helpers import (
    BATCH,
    CONTEXTS,
    DATA_N,
    N_LOCAL,
    X_LOCAL,
    X_REG,
    Y_REG,
    fit,
    local_model,
    normal_model,
    regression,
    standard_normal_locals,
)
from numpyro.contrib.module import eqx_module
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.infer import AutoImplicit, ImplicitELBO, implicit_sample
from implicitvi.infer.autoguide import default_estimator
from implicitvi.infer.nonfinite import JIT_ERRORS


@pytest.fixture(scope="module")
def regression_svi():
    """AutoImplicit on the regression with its default estimator, initialised, and its update
    jitted once for the tests that step it."""
    guide = AutoImplicit(regression)
    svi = SVI(regression, guide, optax.adam(1e-2), ImplicitELBO(num_particles=4))
    state = svi.init(jax.random.PRNGKey(0), X_REG, Y_REG)
    return guide, svi, state, jax.jit(svi.update)


def test_svi_update_evaluate_stable_update_and_progress_bar(regression_svi):
    _, svi, state, update = regression_svi
    for _ in range(3):
        state, loss = update(state, X_REG, Y_REG)
    assert np.isfinite(loss)
    assert int(state.mutable_state["__auto_latent_score_state"]["step"]) == 3
    assert np.isfinite(jax.jit(svi.evaluate)(state, X_REG, Y_REG))
    # stable_update, stepped by SVI.run's jitted loop behind the progress bar (one program for
    # both), continuing from the state the updates left.
    result = svi.run(jax.random.PRNGKey(1), 20, X_REG, Y_REG, progress_bar=True, stable_update=True, init_state=state)
    assert result.losses.shape == (20,) and np.all(np.isfinite(result.losses))
    assert int(result.state.mutable_state["__auto_latent_score_state"]["step"]) == 23


def test_estimator_state_is_trained_inside_svi_and_gets_no_elbo_gradient(regression_svi):
    guide, svi, state, update = regression_svi
    before = state.mutable_state["__auto_latent_score_state"]["score"]
    state, _ = update(state, X_REG, Y_REG)
    after = state.mutable_state["__auto_latent_score_state"]["score"]
    assert int(after.step) == int(before.step) + guide.estimator.steps_per_update
    assert not np.allclose(jax.tree.leaves(after.params)[0], jax.tree.leaves(before.params)[0])
    # The score network's parameters are SVI state, not optimized parameters.
    assert not any("score" in name for name in svi.get_params(state))


def mixed_guide(x):
    loc = numpyro.param("mu_loc", 0.0)
    scale = numpyro.param("mu_scale", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))  # explicit site
    a = numpyro.param("a", 0.0)
    b = numpyro.param("b", -1.0)
    c = numpyro.param("c", 0.0)
    eps = jax.random.normal(numpyro.prng_key(), ())
    u = a + jnp.exp(b) * (eps + c * jnp.tanh(eps))
    implicit_sample("sigma", u, support=dist.constraints.positive, estimator="stein")


@pytest.mark.slow
def test_mixed_explicit_and_implicit_sites_match_nuts():
    mcmc = MCMC(NUTS(normal_model), num_warmup=500, num_samples=2000, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), DATA_N)
    ref = mcmc.get_samples()
    _, result = fit(normal_model, mixed_guide, ImplicitELBO(num_particles=16), DATA_N, steps=3000, lr=1e-2)
    draws = Predictive(mixed_guide, params=result.params, num_samples=4000)(jax.random.PRNGKey(1), DATA_N)
    for site in ("mu", "sigma"):
        ref_site, q = np.asarray(ref[site]), np.asarray(draws[site])
        assert abs(q.mean() - ref_site.mean()) < 0.2 * ref_site.std()
        assert abs(np.log(q.std() / ref_site.std())) < 0.2


def local_guide(x):
    loc = numpyro.param("mu_loc", 0.0)
    scale = numpyro.param("mu_scale", 0.5, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))
    w = numpyro.param("w", jnp.zeros(3))
    log_s = numpyro.param("log_s", 0.0)
    with numpyro.plate("data", N_LOCAL, subsample_size=BATCH) as idx:
        xb = x[idx]
        eps = jax.random.normal(numpyro.prng_key(), (BATCH,))
        u = w[0] + w[1] * xb + jnp.exp(log_s) * (eps + w[2] * jnp.tanh(eps))
        implicit_sample(
            "z",
            u,
            context=xb[:, None],
            estimator=ScoreNet(hidden=(32, 32), conditional=True, optimizer=optax.adam(3e-3), steps_per_update=2),
        )


@pytest.mark.slow
def test_subsampled_plate_with_amortized_conditional_sampler():
    _, result = fit(local_model, local_guide, ImplicitELBO(num_particles=8), X_LOCAL, steps=3000, lr=1e-2)
    assert np.all(np.isfinite(result.losses))
    # Exact posterior: μ | x ~ N(Σx / (1 + N/1.25) / 1.25, 1 / (1 + N/1.25));
    # z_i | x, μ ~ N((μ + 4 x_i) / 5, 1/5), so sd(z_i | x) = sqrt(1/5 + var(μ | x) / 25).
    prec_mu = 1 + N_LOCAL / 1.25
    np.testing.assert_allclose(result.params["mu_loc"], X_LOCAL.sum() / 1.25 / prec_mu, atol=0.05)
    sd_z = np.sqrt(0.2 + 1 / prec_mu / 25)
    params = result.params
    fixed_batch = numpyro.handlers.substitute(local_guide, data={"data": jnp.arange(BATCH)})
    draws = Predictive(fixed_batch, params=params, num_samples=2000)(jax.random.PRNGKey(1), X_LOCAL)["z"]
    # Without the N/B scale on the entropy term the local sd would shrink far below this.
    assert abs(np.log(np.asarray(draws).std(0).mean() / sd_z)) < 0.15
    np.testing.assert_allclose(params["w"][1], 0.8, atol=0.05)


def per_context_gaussian(estimator):
    def guide(c):
        a = numpyro.param("a", 0.2)
        log_s = numpyro.param("log_s", jnp.log(0.5))
        with numpyro.plate("items", c.shape[0]):
            eps = jax.random.normal(numpyro.prng_key(), c.shape)
            implicit_sample("z", a * c + jnp.exp(log_s) * eps, context=c[:, None], estimator=estimator)

    return guide


@pytest.mark.slow
@pytest.mark.parametrize("estimator", [Stein(), SSGE()], ids=["stein", "ssge"])
def test_kernel_estimator_scores_each_context_from_its_own_particles(estimator):
    # z_i = a c_i + s ε_i against p(z_i) = N(0, 1): the ELBO is Σ_i [−(a² c_i² + s²)/2 + log s]
    # + const, so ∂ELBO/∂a = −a Σ c_i² = −4 and ∂ELBO/∂log s = 4 (1 − s²) = 3. Pooling the four
    # contexts' particles would score their mixture instead: its entropy depends on a, and its
    # ∂/∂log s is about 4 s² / (s² + a² var c) ≈ 2.2.
    elbo = ImplicitELBO(num_particles=200)
    guide = per_context_gaussian(estimator)
    params = {"a": jnp.asarray(0.2), "log_s": jnp.log(0.5)}

    def loss(params, key):
        return elbo.loss(key, params, standard_normal_locals, guide, CONTEXTS)

    grads = [jax.grad(loss)(params, jax.random.PRNGKey(k)) for k in range(4)]
    mean = {k: float(np.mean([g[k] for g in grads])) for k in params}
    np.testing.assert_allclose(mean["a"], 4.0, rtol=0.1)
    np.testing.assert_allclose(mean["log_s"], -3.0, rtol=0.1)


def per_context_gaussian_with_draws(estimator, m):
    def guide(c):
        a = numpyro.param("a", 0.2)
        log_s = numpyro.param("log_s", jnp.log(0.5))
        with numpyro.plate("items", c.shape[0]):
            eps = jax.random.normal(numpyro.prng_key(), c.shape + (m,))
            w = (a * c[:, None] + jnp.exp(log_s) * eps)[..., None]  # (items, m, 1)
            implicit_sample("z", w[:, 0, 0], context=c[:, None], estimator=estimator, entropy_draws=w)

    return guide


@pytest.mark.slow
def test_entropy_draws_carry_the_entropy_term():
    # One particle, whose value the model sees, and 200 further draws per context for the
    # entropy: the ELBO gradient is the closed form of the test above, ∂(−ELBO)/∂a = 4 and
    # ∂(−ELBO)/∂log s = −3, averaged over keys (the model term is a one-draw estimate).
    elbo = ImplicitELBO(num_particles=1)
    guide = per_context_gaussian_with_draws(Stein(), 200)
    params = {"a": jnp.asarray(0.2), "log_s": jnp.log(0.5)}

    def loss(params, key):
        return elbo.loss(key, params, standard_normal_locals, guide, CONTEXTS)

    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, jax.random.split(jax.random.PRNGKey(0), 400))
    np.testing.assert_allclose(float(jnp.mean(grads["a"])), 4.0, rtol=0.1)
    np.testing.assert_allclose(float(jnp.mean(grads["log_s"])), -3.0, rtol=0.1)
    # Without the draws, one particle per context is too few for a kernel estimator.
    with pytest.raises(ValueError, match="Stein on a site with a context .implicit site 'z'., got 1"):
        elbo.loss(jax.random.PRNGKey(0), params, standard_normal_locals, per_context_gaussian(Stein()), CONTEXTS)


def test_scores_the_sampler_gives_yield_the_gaussians_elbo_gradient():
    # x ~ N(0, I₂) and a sampler w = m + s ε that gives its exact score −(w − m)/s²: the loss
    # −ELBO = ½ Σ (m² + s²) − Σ log s + const has the gradient m in m and s² − 1 in log s. Per
    # draw (m = s = 0.5) the estimates are 0.5 − 1.5 ε and 0.25 ε − 0.75 ε², so over 8192
    # particles their standard errors are 0.017 and 0.012.
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    def guide():
        m = numpyro.param("m", jnp.full(2, 0.5))
        log_s = numpyro.param("log_s", jnp.log(jnp.full(2, 0.5)))
        w = m + jnp.exp(log_s) * jax.random.normal(numpyro.prng_key(), (2,))
        implicit_sample("x", w, support=dist.constraints.real_vector, score=-(w - m) / jnp.exp(2 * log_s))

    elbo = ImplicitELBO(num_particles=8192)
    params = {"m": jnp.full(2, 0.5), "log_s": jnp.log(jnp.full(2, 0.5))}
    state = SVI(model, guide, optax.sgd(0.0), elbo).init(jax.random.PRNGKey(0))
    mutable = state.mutable_state

    def loss(params):
        return elbo.loss_with_mutable_state(jax.random.PRNGKey(1), {**params, **mutable}, model, guide)["loss"]

    grads = jax.jit(jax.grad(loss))(params)
    np.testing.assert_allclose(grads["m"], [0.5, 0.5], atol=0.07)
    np.testing.assert_allclose(grads["log_s"], [-0.75, -0.75], atol=0.05)


def test_implicit_site_whose_shape_changes_is_named():
    def model(d):
        numpyro.sample("v", dist.Normal(0, 1).expand([d]).to_event(1))

    def guide(d):
        eps = jax.random.normal(numpyro.prng_key(), (d,))
        implicit_sample("v", eps, support=dist.constraints.real_vector)

    svi = SVI(model, guide, optax.adam(1e-2), ImplicitELBO(num_particles=4))
    state = svi.init(jax.random.PRNGKey(0), 3)
    # The check runs while the step is traced, so no program is compiled.
    with pytest.raises(ValueError, match="implicit site 'v': its latent has 4 dimensions but had 3"):
        jax.jit(svi.update, static_argnums=1)(state, 4)


def test_kernel_estimator_with_fewer_than_two_particles_is_named():
    # The checks run while the step is traced, so the updates are jitted: nothing is compiled.
    guide = AutoImplicit(regression, estimator="ssge")
    svi = SVI(regression, guide, optax.adam(1e-2), ImplicitELBO(num_particles=1))
    state = svi.init(jax.random.PRNGKey(0), X_REG, Y_REG)
    with pytest.raises(ValueError, match=r"num_particles must be >= 2 with the kernel estimator SSGE on a site without a plate \(implicit site '_auto_latent'\)"):
        jax.jit(svi.update)(state, X_REG, Y_REG)
    svi = SVI(regression, guide, optax.adam(1e-2), ImplicitELBO(num_particles=1, estimator="stein"))
    with pytest.raises(ValueError, match="num_particles must be >= 2 with the kernel estimator Stein"):
        jax.jit(svi.update)(svi.init(jax.random.PRNGKey(0), X_REG, Y_REG), X_REG, Y_REG)
    local = SVI(standard_normal_locals, per_context_gaussian(Stein()), optax.adam(1e-2), ImplicitELBO(num_particles=1))
    with pytest.raises(ValueError, match="Stein on a site with a context .implicit site 'z'., got 1"):
        jax.jit(local.update)(local.init(jax.random.PRNGKey(0), CONTEXTS), CONTEXTS)


def test_non_finite_loss_stops_with_the_step():
    def model(x):
        mu = numpyro.sample("mu", dist.Normal(0, 2).expand([2]).to_event(1))
        numpyro.factor("bad", jnp.where(jnp.abs(mu[0]) > 1.5, jnp.nan, 0.0))
        numpyro.sample("x", dist.Normal(mu, 1).to_event(1), obs=x)

    svi = SVI(model, AutoImplicit(model), optax.adam(1e-1), ImplicitELBO(num_particles=4))
    # Under NumPyro's own jitted loop the runtime error carries the message.
    with pytest.raises(JIT_ERRORS, match=r"ImplicitELBO: the ELBO loss became non-finite at step \d+"):
        svi.run(jax.random.PRNGKey(0), 200, np.full((5, 2), 3.0), progress_bar=False)


def test_non_finite_latent_names_the_site():
    def model():
        numpyro.sample("mu", dist.Normal(0, 1))

    def guide():
        loc = numpyro.param("loc", 0.0)
        noise = jax.random.normal(numpyro.prng_key(), ())
        # The latent whose score is estimated is broken; the value itself stays finite.
        implicit_sample("mu", loc + noise, latent=jnp.full((1,), jnp.nan), estimator="stein")

    svi = SVI(model, guide, optax.adam(1e-2), ImplicitELBO(num_particles=4))
    state = svi.init(jax.random.PRNGKey(0))
    with pytest.raises(JIT_ERRORS, match=r"the latent or estimated score of implicit site 'mu' became non-finite at step 0"):
        jax.block_until_ready(jax.jit(svi.update)(state))


def test_persistent_estimator_must_match_the_guides(regression_svi):
    guide = regression_svi[0]  # AutoImplicit(regression), already set up
    svi = SVI(regression, guide, optax.adam(1e-2), ImplicitELBO(estimator=ScoreNet(hidden=(8,))))
    state = svi.init(jax.random.PRNGKey(0), X_REG, Y_REG)
    # The check runs while the step is traced, so nothing is compiled.
    with pytest.raises(ValueError, match="ImplicitELBO's estimator ScoreNet cannot continue the state"):
        jax.jit(svi.update)(state, X_REG, Y_REG)
    # Estimators are compared by the layout of their state, not as objects: a second default
    # configuration (a fresh optax.chain, unequal as an object) continues the guide's state.
    svi = SVI(regression, guide, optax.adam(1e-2), ImplicitELBO(estimator=default_estimator()))
    state, loss = jax.jit(svi.update)(svi.init(jax.random.PRNGKey(0), X_REG, Y_REG), X_REG, Y_REG)
    assert np.isfinite(loss)


def test_estimator_name_in_the_elbo_keeps_the_sites_configuration():
    for name, kind in (("ssm", ScoreNet), ("stein", Stein)):
        guide = AutoImplicit(regression, estimator=name)
        elbo = ImplicitELBO(num_particles=4, estimator=name)
        latent = jnp.zeros((4, 3))
        assert elbo._site_estimator("_auto_latent", guide.estimator, latent, None, 4) is guide.estimator
        assert isinstance(guide.estimator, kind)
    # An estimator of another kind overrides a kernel site's own.
    own = Stein(base="normal")
    assert isinstance(ImplicitELBO(estimator="ssge")._site_estimator("s", own, jnp.zeros((16, 3)), None, 16), SSGE)


# --- mutable state, carried as Trace_ELBO carries it ------------------------------------


def counting_model():
    counter = numpyro.primitives.mutable("counter", {"n": jnp.zeros(())})
    counter["n"] = counter["n"] + 1.0
    numpyro.sample("x", dist.Normal(0, 1))


def _small_implicit(model):
    """AutoImplicit with a small network and a score network whose objective compiles fast (DSM:
    no Hessian-vector products); these tests are about the state carried, not the estimator."""
    return AutoImplicit(model, hidden=(8,), estimator=ScoreNet(objective="dsm", hidden=(8,)))


def _mutable_after_three_updates(model, guide, elbo, *args):
    svi = SVI(model, guide, optax.adam(1e-2), elbo)
    state = svi.init(jax.random.PRNGKey(0), *args)
    update = jax.jit(svi.update)
    for _ in range(3):
        state, _ = update(state, *args)
    return state.mutable_state


def test_model_mutable_state_is_carried_as_trace_elbo_carries_it():
    expected = _mutable_after_three_updates(counting_model, AutoNormal(counting_model), Trace_ELBO())
    got = _mutable_after_three_updates(counting_model, _small_implicit(counting_model), ImplicitELBO(num_particles=1))
    assert float(expected["counter"]["n"]) == 4.0  # init and three updates
    assert float(got["counter"]["n"]) == 4.0
    # With several particles Trace_ELBO does not update mutable state; neither does ImplicitELBO,
    # which keeps it (and says so) instead of dropping it.
    with pytest.warns(UserWarning, match=r"mutable sites \['counter'\] are not updated with num_particles=4"):
        kept = _mutable_after_three_updates(counting_model, _small_implicit(counting_model), ImplicitELBO(num_particles=4))
    assert float(kept["counter"]["n"]) == 1.0
    assert int(kept["__auto_latent_score_state"]["step"]) == 3


def test_guide_mutable_state_is_carried():
    def guide():
        counter = numpyro.primitives.mutable("guide_counter", {"n": jnp.zeros(())})
        counter["n"] = counter["n"] + 2.0
        implicit_sample("x", numpyro.param("loc", 0.0) + jax.random.normal(numpyro.prng_key(), ()))

    state = _mutable_after_three_updates(counting_model, guide, ImplicitELBO(num_particles=1))
    assert float(state["guide_counter"]["n"]) == 8.0 and float(state["counter"]["n"]) == 4.0


BN, BN_STATE = eqx.nn.make_with_state(eqx.nn.BatchNorm)(2, axis_name="batch", momentum=0.5, mode="ema")
X_BN = jnp.asarray(np.random.default_rng(5).normal(3.0, 2.0, size=(20, 2)))


def batch_norm_model(x):
    beta = numpyro.sample("beta", dist.Normal(0, 1).expand([2]).to_event(1))
    net = eqx_module("bn", BN)
    holder = numpyro.primitives.mutable("bn$state", {"state": BN_STATE})
    batched = jax.vmap(net, in_axes=(0, None), out_axes=(0, None), axis_name="batch")
    h, holder["state"] = batched(x, holder["state"])
    numpyro.sample("y", dist.Normal(h @ beta, 1.0), obs=jnp.zeros(x.shape[0]))


def test_stateful_equinox_module_updates_as_under_trace_elbo():
    # The batch-norm statistics depend on the data only, so both ELBOs must move them alike.
    expected = _mutable_after_three_updates(batch_norm_model, AutoNormal(batch_norm_model), Trace_ELBO(), X_BN)
    got = _mutable_after_three_updates(batch_norm_model, _small_implicit(batch_norm_model), ImplicitELBO(num_particles=1), X_BN)
    initial = jax.tree.leaves(BN_STATE)
    for e, g, i in zip(jax.tree.leaves(expected["bn$state"]), jax.tree.leaves(got["bn$state"]), initial):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6)
    assert not np.allclose(np.asarray(jax.tree.leaves(got["bn$state"])[1]), np.asarray(initial[1]))


def test_particles_mapped_or_vectorized_give_the_same_loss():
    losses, steps = [], []
    for vectorize in (True, False):
        guide = AutoImplicit(regression, estimator="stein")
        svi = SVI(regression, guide, optax.adam(1e-2), ImplicitELBO(num_particles=4, vectorize_particles=vectorize))
        state = svi.init(jax.random.PRNGKey(0), X_REG, Y_REG)

        # One program for the update and the evaluation after it.
        @jax.jit
        def update_and_evaluate(state):
            state, loss = svi.update(state, X_REG, Y_REG)
            return state, loss, svi.evaluate(state, X_REG, Y_REG)

        state, loss, evaluated = update_and_evaluate(state)
        losses.append(float(evaluated))
        steps.append((float(loss), svi.get_params(state)))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    # The step itself (its loss and the parameters it reaches) agrees too.
    np.testing.assert_allclose(steps[0][0], steps[1][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(steps[0][1]), jax.tree.leaves(steps[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-6)
