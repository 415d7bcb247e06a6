"""Bad input to the public API fails early with an error naming the argument.

One test per kind of fault; tiny shapes and no fits, so that the file runs in seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta

from implicitvi import (
    diagnostics,
    entropy,
    evaluation,
    kernels,
    objectives,
    score_model,
)
from implicitvi.datasets import binarize
from implicitvi.estimators import SSGE, ScoreNet, SSGEState, Stein, estimate_score
from implicitvi.infer import (
    AutoImplicit,
    AutoSemiImplicit,
    floating_point_errors,
    load_checkpoint,
    run_minibatch,
)
from implicitvi.infer.nonfinite import guard
from implicitvi.nets import MLP

KEY = jax.random.PRNGKey(0)
X32 = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)


def location_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("batch", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def location_svi(model=location_model, guide=None):
    guide = AutoDelta(model) if guide is None else guide
    return SVI(model, guide, optax.adam(0.1), Trace_ELBO())


# --- kernel estimators: scale, singular Gram matrix, precision, state -------------------------


def fitted_scores(est):
    """``x -> est.score(est.init(KEY, x), x)``, jitted: one compilation for all inputs of a shape."""
    return jax.jit(lambda x: est.score(est.init(KEY, x), x))


@pytest.mark.parametrize("est", [Stein(), SSGE()], ids=["Stein", "SSGE"])
def test_kernel_estimators_are_scale_safe_in_float32(est):
    scores_of = fitted_scores(est)
    reference = np.asarray(scores_of(X32))
    for scale in (1e19, 1e-21):
        scores = np.asarray(scores_of((X32 * np.float32(scale)).astype(np.float32)))
        assert np.all(np.isfinite(scores))
        # The score of x = c z is the score of z divided by c.
        np.testing.assert_allclose(scores * scale, reference, rtol=1e-3, atol=1e-3)


def test_median_bandwidth_is_scale_safe_in_float32():
    median = jax.jit(kernels.median_bandwidth)
    h = float(median(X32))
    for scale in (1e19, 1e-21):
        x = (X32 * np.float32(scale)).astype(np.float32)
        assert float(median(x)) / scale == pytest.approx(h, rel=1e-5)


def test_stein_with_a_tiny_ridge_on_near_duplicates_stays_finite():
    x = np.concatenate([X32, X32 + np.float32(1e-6)]).astype(np.float32)
    assert np.all(np.isfinite(np.asarray(fitted_scores(Stein(eta=1e-12))(x))))


def test_ksd_that_overflows_the_dtype_names_samples():
    x = (X32 * np.float32(1e19)).astype(np.float32)
    with pytest.raises(ValueError, match="samples and score are too large for float32"):
        diagnostics.kernel_stein_discrepancy(x, -x)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_samples_are_refused(dtype):
    for est in (Stein(), SSGE()):
        with pytest.raises(TypeError, match="samples must be float32 or float64"):
            est.init(KEY, jnp.asarray(X32, dtype))


def test_a_state_of_another_estimator_is_refused():
    z = jnp.zeros((3, 2))
    ssge_state = SSGEState(z, jnp.ones(()), jnp.zeros((3, 1)), jnp.zeros(1), z[:1], jnp.ones(()))
    with pytest.raises(TypeError, match="state must be the SteinState"):
        Stein().score(ssge_state, X32)
    with pytest.raises(TypeError, match="state must be the ScoreNetState"):
        ScoreNet(hidden=(2,)).score(ssge_state, X32)
    with pytest.raises(TypeError, match="state must be the SSGEState"):
        SSGE().score(None, X32)


# --- network descriptions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: ScoreNet(hidden=8), TypeError),
        (lambda: ScoreNet(hidden="64"), TypeError),
        (lambda: ScoreNet(hidden=(8, 0)), ValueError),
        (lambda: MLP(hidden=8), TypeError),
        (lambda: MLP(hidden=(8, 2.5)), TypeError),
    ],
)
def test_hidden_must_be_a_sequence_of_positive_ints(make, error):
    with pytest.raises(error, match="hidden must be a sequence of positive ints"):
        make()


def test_network_must_offer_init_and_apply():
    with pytest.raises(TypeError, match="network must have init"):
        ScoreNet(network="foo")

    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    for guide in (AutoImplicit, AutoSemiImplicit):
        with pytest.raises(TypeError, match="network must have init.*or be a factory"):
            guide(model, network=(64, 64))


# --- ranks and shapes of the low-level helpers -------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kernels.rbf(X32[0], X32, 1.0), r"x must be 2-D"),
        (lambda: kernels.imq(X32, X32[:, :1], 1.0), "y must have 2 columns to match x"),
        (lambda: kernels.rbf(X32, X32, -1.0), "bandwidth must be finite and > 0"),
        (lambda: kernels.rbf(X32, X32, np.ones(2)), "bandwidth must be a scalar"),
        (lambda: kernels.squared_distances(X32[None], X32[None]), "x must be 2-D"),
        (lambda: kernels.grad_sum(X32, X32, np.ones((3, 3))), r"slope must have shape \(6, 6\)"),
        (lambda: kernels.median_bandwidth(X32[0]), "x must be 2-D"),
        (lambda: objectives.exact(lambda z: -z, X32[0]), "samples must be 2-D"),
        (lambda: objectives.sliced(lambda z: -z, X32[0], KEY), "samples must be 2-D"),
        (
            lambda: objectives.regression(lambda z: -z, X32[0], targets=X32[0]),
            "samples must be 2-D",
        ),
        (lambda: entropy.surrogate(X32[0], X32[0]), "samples must have shape"),
        (lambda: entropy.surrogate(X32, X32[:, :1]), "samples and scores must have the same shape"),
    ],
)
def test_helpers_check_ranks_and_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_surrogate_refuses_integer_arrays():
    with pytest.raises(TypeError, match="samples must be an array of floats"):
        entropy.surrogate(np.ones((2, 2), int), np.ones((2, 2), int))


@pytest.mark.parametrize(
    "objective",
    [
        lambda f: objectives.exact(f, X32),
        lambda f: objectives.sliced(f, X32, KEY),
        lambda f: objectives.sliced_vr(f, X32, KEY),
        lambda f: objectives.denoising(f, X32, KEY),
        lambda f: objectives.fd_sliced(f, X32, KEY),
        lambda f: objectives.regression(f, X32, targets=X32),
    ],
    ids=["exact", "sliced", "sliced_vr", "denoising", "fd_sliced", "regression"],
)
def test_objectives_check_the_score_fn_output_shape(objective):
    with pytest.raises(ValueError, match="score_fn must map samples of shape"):
        objective(lambda z: z[..., :1])


# --- user functions of the wrong output shape --------------------------------------------------


def test_user_functions_are_checked_before_running():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="log_likelihood_fn"):
        evaluation.ais_log_likelihood(KEY, lambda z, row: z, x, 2, schedule=3)
    with pytest.raises(ValueError, match="log_likelihood_fn failed when called"):
        evaluation.ais_log_likelihood(KEY, lambda z, row: jnp.dot(z, row), x, 2, schedule=3)
    with pytest.raises(ValueError, match="model: an energy model must map"):
        score_model.fit_score_model(KEY, lambda p, b: b * p, 1.0, x, num_steps=1)
    with pytest.raises(ValueError, match="model failed when called"):
        score_model.fit_score_model(KEY, lambda p, b: b @ jnp.ones(5), 1.0, x, num_steps=1)
    with pytest.raises(ValueError, match="score_fn must map init"):
        score_model.langevin_sample(KEY, lambda b: b[:, 0], x, step_size=0.1, num_steps=1)
    with pytest.raises(ValueError, match="score_fn failed when called"):
        score_model.langevin_sample(
            KEY, lambda b: b @ jnp.ones((5, 3)), x, step_size=0.1, num_steps=1
        )


def test_a_nan_log_likelihood_is_named():
    x = np.ones((1, 1))
    with pytest.raises(ValueError, match="log_likelihood_fn returned NaN"):
        evaluation.ais_log_likelihood(
            KEY,
            lambda z, row: jnp.nan * jnp.sum(z),
            x,
            1,
            schedule=2,
            num_chains=1,
            num_leapfrog=1,
        )


# --- PRNG keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [0, "abc", np.zeros(2, np.float32)], ids=["int", "str", "float"])
@pytest.mark.parametrize(
    "call",
    [
        lambda k: estimate_score("stein", X32, key=k),
        lambda k: ScoreNet(hidden=(2,)).init(k, X32),
        lambda k: Stein().init(k, X32),
        lambda k: objectives.sliced(lambda z: -z, X32, k),
        lambda k: objectives.denoising(lambda z: -z, X32, k),
        lambda k: evaluation.ais_log_likelihood(k, lambda z, row: -jnp.sum(z**2), X32, 2),
        lambda k: evaluation.iwae_log_likelihood(
            k, lambda z, row: -jnp.sum(z**2), X32, np.zeros((6, 2)), np.ones((6, 2))
        ),
        lambda k: score_model.fit_score_model(k, lambda p, b: jnp.sum(b**2, 1) * p, 1.0, X32),
        lambda k: score_model.langevin_sample(k, lambda b: -b, X32, step_size=0.1, num_steps=1),
        lambda k: binarize(k, np.full((2, 2), 0.5)),
        lambda k: run_minibatch(location_svi(), k, np.ones(4), 1, batch_size=2),
        lambda k: diagnostics.to_inference_data(
            location_model, AutoDelta(location_model), {}, key=k
        ),
    ],
)
def test_keys_must_be_prng_keys(call, key):
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        call(key)


def test_typed_keys_are_accepted_and_key_arrays_refused():
    assert jnp.shape(binarize(jax.random.key(0), np.full((2, 2), 0.5))) == (2, 2)
    with pytest.raises(ValueError, match="key must be a single PRNG key"):
        binarize(jax.random.split(KEY, 3), np.full((2, 2), 0.5))


# --- diagnostics -------------------------------------------------------------------------------


def test_params_of_another_guide_are_refused():
    def normal_guide(x):
        loc = numpyro.param("loc", 0.0)
        scale = numpyro.param("scale", 1.0, constraint=dist.constraints.positive)
        numpyro.sample("mu", dist.Normal(loc, scale))

    data = jnp.ones(4)
    params = {"loc": jnp.zeros(())}  # the parameters of a point-mass guide
    with pytest.raises(ValueError, match=r"params must hold the guide's parameters.*'scale'"):
        diagnostics.to_inference_data(
            location_model, normal_guide, params, key=KEY, model_args=(data,)
        )
    with pytest.raises(TypeError, match="params must be a dict"):
        diagnostics.to_inference_data(
            location_model, normal_guide, [1], key=KEY, model_args=(data,)
        )


# --- training: data, checkpoints, non-finite steps ---------------------------------------------


def test_non_finite_data_is_named():
    data = np.ones(8)
    data[5] = np.nan
    with pytest.raises(ValueError, match="data contains NaN or inf values .* row 5"):
        run_minibatch(location_svi(), KEY, data, 2, batch_size=2, progress_bar=False)


def test_a_checkpoint_directory_is_checked_up_front(tmp_path):
    missing = str(tmp_path / "missing" / "ck.npz")
    with pytest.raises(FileNotFoundError, match="checkpoint .* does not exist; create it"):
        run_minibatch(location_svi(), KEY, np.ones(4), 1, batch_size=2, checkpoint=missing)
    with pytest.raises(IsADirectoryError, match="checkpoint .* is a directory"):
        run_minibatch(location_svi(), KEY, np.ones(4), 1, batch_size=2, checkpoint=str(tmp_path))


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    state = {"a": jnp.zeros(2)}
    text, array, other = tmp_path / "text.npz", tmp_path / "array.npy", tmp_path / "other.npz"
    text.write_text("hello")
    np.save(array, np.ones(3))
    np.savez(other, a=np.ones(2))
    for path in (text, array, other):
        with pytest.raises(ValueError, match=f"checkpoint '{path}' is not a checkpoint"):
            load_checkpoint(str(path), state, {})


def test_a_model_non_finite_from_the_start_raises_floating_point_error():
    def model(x):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.factor("broken", jnp.nan * mu)
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        numpyro.sample("mu", dist.Normal(numpyro.param("loc", 0.0), 1.0))

    svi = SVI(model, guide, optax.adam(0.1), Trace_ELBO())
    with pytest.raises(FloatingPointError, match="the loss became non-finite at step 0"):
        run_minibatch(svi, KEY, np.ones(2), 1, batch_size=2, chunk_size=1, progress_bar=False)


def test_floating_point_errors_turns_a_guard_under_jit_into_floating_point_error():
    @jax.jit
    def step(x):
        return guard(
            jnp.sum(x), 3, {"the input": jnp.all(jnp.isfinite(x))}, where="test", advice="fix it"
        )

    message = "test: the input became non-finite at step 3"
    with pytest.raises(FloatingPointError, match=message), floating_point_errors():
        jax.block_until_ready(step(jnp.array([1.0, jnp.nan])))
