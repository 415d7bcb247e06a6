"""The MNIST driver's cheap parts: run names, checkpoint configurations, resuming, pairing."""

import numpy as np
import pytest
from mnist_vae_wae import main, parse_args, run_config, run_name


@pytest.mark.parametrize(
    "argv, name",
    [
        (["vae"], "vae_implicit_ssm_z8"),
        (["vae", "--encoder", "gaussian", "--estimator", "stein"], "vae_gaussian_z8"),
        (["vae", "--estimator", "ssge", "--latent-dim", "32", "--seed", "1"], "vae_implicit_ssge_z32_seed1"),
        (["vae", "--encoder", "whitened", "--decoder-activation", "softplus"], "vae_whitened_ssm_z8_softplus"),
        (["vae", "--encoder", "semi-implicit", "--estimator", "stein"], "vae_semi_implicit_frame64_z8"),
        (["vae", "--encoder", "semi-implicit", "--frame-components", "0"], "vae_semi_implicit_z8"),
        (["vae", "--encoder", "semi-implicit", "--frame-components", "16"], "vae_semi_implicit_frame16_z8"),
        (["vae", "--encoder", "semi-implicit", "--entropy-score", "linearized", "--latent-dim", "32"],
         "vae_semi_implicit_linearized_z32"),
        (["vae", "--encoder", "gaussian", "--iwae-particles", "5"], "vae_gaussian_iwae5_z8"),
        (["wae", "--regularizer", "mmd", "--seed", "2"], "wae_mmd_z8_seed2"),
        (["wae", "--decoder-activation", "softplus"], "wae_ssm_z8_softplus"),
    ],
)
def test_runs_are_named_after_their_configuration(argv, name):
    assert run_name(parse_args(argv)) == name


def test_the_frame_enters_the_checkpoint_configuration_only_when_used():
    # The semi-implicit encoder's frame is 64 draws unless told; 0 resumes the checkpoints
    # written before the frame, whose configuration has no frame entry.
    assert "frame_components" not in run_config(parse_args(["vae", "--encoder", "semi-implicit", "--frame-components", "0"]))
    assert run_config(parse_args(["vae", "--encoder", "semi-implicit"]))["frame_components"] == 64
    assert "frame_components" not in run_config(parse_args(["vae", "--encoder", "gaussian"]))
    # Likewise the entropy's score, a network in the checkpoints written before the option;
    # the linearized score needs no frame.
    assert "entropy_score" not in run_config(parse_args(["vae", "--encoder", "semi-implicit"]))
    linearized = run_config(parse_args(["vae", "--encoder", "semi-implicit", "--entropy-score", "linearized"]))
    assert linearized["entropy_score"] == "linearized" and "frame_components" not in linearized
    # And the importance-weighted bound's particles, absent for the ELBO (one particle).
    assert "iwae_particles" not in run_config(parse_args(["vae", "--encoder", "gaussian"]))
    assert run_config(parse_args(["vae", "--encoder", "gaussian", "--iwae-particles", "5"]))["iwae_particles"] == 5


def test_checkpoint_configurations_are_those_existing_checkpoints_hold():
    vae = run_config(parse_args(["vae", "--data", "data/mnist.pkl.gz/", "--encoder", "gaussian"]))
    assert vae == {
        "model": "vae", "data": "mnist.pkl.gz", "latent_dim": 8, "encoder": "gaussian", "estimator": None,
        "kernel_samples": 100, "hidden": [256, 256], "batch_size": 128, "lr": 1e-3, "seed": 0,
        "decoder_activation": "tanh",
    }
    # The first runs, softplus only, wrote no activation entry.
    wae = run_config(parse_args(["wae", "--decoder-activation", "softplus", "--lam", "5"]))
    assert wae == {
        "model": "wae", "data": "digits", "latent_dim": 8, "regularizer": "ssm", "lam": 5.0,
        "hidden": [256, 256], "batch_size": 128, "lr": 1e-3, "seed": 0,
    }


@pytest.mark.slow
def test_a_run_resumes_and_refuses_another_configurations_checkpoint(tmp_path):
    tiny = ["--hidden", "8", "--latent-dim", "2", "--batch-size", "16", "--chunk", "2", "--checkpoint-every", "2",
            "--iwae-rows", "2", "--iwae-samples", "2", "--proposal-draws", "3", "--out-dir", str(tmp_path),
            "--no-progress-bar"]
    first = main(parse_args(["vae", "--encoder", "gaussian", "--steps", "4", *tiny]))
    assert first["steps"] == 4 and np.isfinite(first["iwae_nll"])
    per_image = np.load(tmp_path / "vae_gaussian_z2_per_image.npz")
    assert per_image["iwae_nll_per_image"].shape == (2,)
    assert main(parse_args(["vae", "--encoder", "gaussian", "--steps", "6", "--resume", *tiny]))["steps"] == 6
    checkpoint = str(tmp_path / "vae_gaussian_z2.npz")
    with pytest.raises(ValueError, match="another configuration .*lr: 0.001 in the checkpoint, 0.01 now"):
        main(parse_args(["vae", "--encoder", "gaussian", "--steps", "8", "--resume", "--lr", "1e-2",
                         "--checkpoint", checkpoint, *tiny]))


def test_ais_in_saved_blocks_matches_one_call_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    import argparse

    import autoencoder_eval
    import jax
    import jax.numpy as jnp

    from implicitvi import evaluation

    args = argparse.Namespace(ais_block=2, latent_dim=1, ais_temperatures=4, ais_chains=2, ais_leapfrog=2)
    x = np.arange(5.0)[:, None]
    log_lik = lambda z, x: -0.5 * jnp.sum((x - z) ** 2)  # noqa: E731
    key, path = jax.random.PRNGKey(0), str(tmp_path / "run_ais.npz")
    whole = evaluation.ais_log_likelihood(key, log_lik, x, 1, schedule=4, num_chains=2, num_leapfrog=2)
    calls = []
    ais = evaluation.ais_log_likelihood
    monkeypatch.setattr(evaluation, "ais_log_likelihood", lambda *a, **k: calls.append(k["first_row"]) or ais(*a, **k))
    first, _ = autoencoder_eval.blockwise_ais(key, args, log_lik, x[:3], path, steps=10)
    assert calls == [0, 2]
    # A longer run of the same model computes only the rows not saved yet.
    rows, _ = autoencoder_eval.blockwise_ais(key, args, log_lik, x, path, steps=10)
    assert calls == [0, 2, 3]
    np.testing.assert_array_equal(rows, whole.log_likelihood)
    np.testing.assert_array_equal(first, whole.log_likelihood[:3])
    assert np.load(path)["log_likelihood"].shape == (5,)
    # The same rows again cost nothing; a model trained further starts afresh.
    autoencoder_eval.blockwise_ais(key, args, log_lik, x[:4], path, steps=10)
    assert calls == [0, 2, 3]
    autoencoder_eval.blockwise_ais(key, args, log_lik, x[:1], path, steps=20)
    assert calls == [0, 2, 3, 0]


def test_compare_pairs_runs_image_by_image_on_the_images_both_scored(tmp_path, capsys):
    first = np.array([90.0, 120.0, 60.0, 100.0])
    # The second run is worse by 1 or 3 nats per image: mean 2, sample sd 2/√3, so se 1/√3.
    second = first + np.array([1.0, 3.0, 1.0, 3.0])
    # The third scored two more images; only the first four are paired.
    third = np.concatenate([first - 0.5, [500.0, 500.0]])
    paths = []
    for name, nll in (("a", first), ("b", second), ("c", third)):
        path = tmp_path / f"{name}_per_image.npz"
        np.savez(path, ais_nll_per_image=nll)
        paths.append(str(path))
    main(parse_args(["compare", *paths]))
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "| run | images | AIS NLL | minus a, paired |"
    assert rows[2] == "| a | 4 | 92.50 | +0.00 ± 0.00 |"
    assert rows[3] == f"| b | 4 | 94.50 | +2.00 ± {1 / np.sqrt(3):.2f} |"
    assert rows[4] == "| c | 4 | 92.00 | -0.50 ± 0.00 |"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--encoder", "semi-implicit", "--frame-components", "-1"], "--frame-components must be >= 0, got -1"),
        (["--encoder", "gaussian", "--frame-components", "64"],
         "--frame-components applies to --encoder semi-implicit only, got --encoder gaussian"),
        (["--ais-block", "0"], "--ais-block must be >= 1, got 0"),
        (["--entropy-score", "linearized"],
         "--entropy-score applies to --encoder semi-implicit only, got --encoder implicit"),
        (["--encoder", "semi-implicit", "--entropy-score", "linearized", "--frame-components", "64"],
         "--frame-components applies to --entropy-score network only, got linearized"),
        (["--encoder", "gaussian", "--iwae-particles", "0"], "--iwae-particles must be >= 1, got 0"),
        (["--encoder", "semi-implicit", "--iwae-particles", "5"],
         "--iwae-particles applies to --encoder gaussian only, got --encoder semi-implicit"),
    ],
)
def test_bad_flags_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["vae", *argv])
    assert message in capsys.readouterr().err


def _strongly_mixing_2d_encoder():
    """The mixing network of a 2-D semi-implicit encoder on 5-D rows, used at gate 3.0, where
    q(w | x) is far from Gaussian but a mixture over fresh mixing draws is still an accurate
    reference for its score."""
    import jax
    from autoencoders import noise_mlp

    init, apply = noise_mlp((8,), 4, 5)
    _, params = init(jax.random.PRNGKey(0), (-1, 5 + 2))
    return lambda x, e: apply(params, x, e)


def _mixture_score(mixing, gate, x, w, key):
    """The score of q(w | x) at ``w`` (n, 2) as a mixture over 2¹⁶ fresh mixing draws per row."""
    import jax
    import jax.numpy as jnp
    from autoencoders import semi_implicit_components

    from implicitvi.infer import mixture_score

    m_k, s_k = semi_implicit_components(mixing, gate, x, jax.random.normal(key, (x.shape[0], 2**16, 2)))
    z = (w[:, None] - m_k) / s_k
    return mixture_score(jnp.sum(-0.5 * z**2 - jnp.log(s_k), -1), -z / s_k)


def test_the_chains_average_the_conditional_score_to_the_mixtures_score():
    # A 2-D encoder with a strong mixing network, where a mixture over 2¹⁶ fresh mixing draws
    # is an accurate and independent reference: the chains' average must agree with it.
    import jax
    from autoencoder_eval import conditional_score_chains
    from autoencoders import semi_implicit_components

    mixing = _strongly_mixing_2d_encoder()
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 5))
    eps2 = jax.random.normal(jax.random.PRNGKey(2), (6, 2))
    m, s = semi_implicit_components(mixing, 3.0, x, eps2)
    w = m + s * jax.random.normal(jax.random.PRNGKey(3), m.shape)
    expected = _mixture_score(mixing, 3.0, x, w, jax.random.PRNGKey(4))
    chains = jax.jit(jax.vmap(lambda k, x, w, e: conditional_score_chains(mixing, 3.0, k, x, w, e, 2000, 100, 200)))
    a, b = chains(jax.random.split(jax.random.PRNGKey(5), 6), x, w, eps2)
    assert np.abs(m - 0.5**0.5 * eps2).max() > 0.3  # far from the gate-zero Gaussian
    # (The chains' Monte Carlo error is about 0.05 of the largest score here; −w is off by 1.2.)
    np.testing.assert_allclose((a + b) / 2, expected, atol=0.15 * np.abs(expected).max())
    assert np.corrcoef(np.ravel(a + b), np.ravel(expected))[0, 1] > 0.99


def test_the_paper_configurations_need_data(capsys):
    with pytest.raises(SystemExit):
        parse_args(["paper"])
    assert "--data" in capsys.readouterr().err


@pytest.mark.parametrize("frame_components, entropy_score",
                         [(0, "network"), (64, "network"), (0, "linearized"), (0, "mode")])
def test_score_agreement_at_the_start_against_closed_forms(frame_components, entropy_score):
    # At the start the mixing gate is zero: w = (ε₂ + ε₁)/√2 ~ N(0, I) given x, so the chains'
    # reference must be the score −w (correlation 1), the conditional score −√2 ε₁ has
    # correlation 1/√2 with it, the linearized score and the score at the mode (one
    # Gauss–Newton step reaches it) are −w exactly, and the normal-base network,
    # whose output layer starts at zero (score −w), agrees as −w does; in the moment frame of 64
    # mixing draws, nearly so. An encoder on either of the first two has no network.
    import jax
    from autoencoder_eval import semi_implicit_score_agreement
    from autoencoders import vae_svi

    from implicitvi.infer.primitives import state_name

    x = (np.random.default_rng(0).random((8, 6)) < 0.5).astype(np.float32)
    svi = vae_svi("semi-implicit", None, 1e-3, frame_components=frame_components, entropy_score=entropy_score)
    state = svi.init(jax.random.PRNGKey(0), x, 2, (8,))
    r = semi_implicit_score_agreement(jax.random.PRNGKey(1), svi.get_params(state),
                                      state.mutable_state[state_name("z")]["score"], x, (8,),
                                      num_draws=64, chain_steps=300, skip_steps=50,
                                      frame_components=frame_components)
    assert r["normal"] > 0.99 and r["chains"] > 0.98
    assert abs(r["conditional"] - 0.5**0.5) < 0.03
    assert abs(r["linearized"] - r["normal"]) < 1e-5 and abs(r["mode"] - r["normal"]) < 1e-5
    if entropy_score != "network":
        assert "network" not in r
    else:
        assert abs(r["network"] - r["normal"]) < (0.02 if frame_components else 1e-3)


def test_the_encoders_mixing_shift_is_centred_per_image_and_bounded():
    # Whatever the mixing network and gate, m(x, ε₂ = 0) = 0 for every image (no per-image offset
    # for μ(x) to cancel), the shift m − ε₂/√2 stays within its bound and the scales above their
    # floor, while other ε₂ are moved by the network; the one-draw and many-draw shapes agree.
    import jax
    import jax.numpy as jnp
    from autoencoders import MIN_SCALE, SHIFT_BOUND, noise_mlp, semi_implicit_components

    init, apply = noise_mlp((8,), 6, 5)
    _, params = init(jax.random.PRNGKey(0), (-1, 5 + 3))
    mixing = lambda x, e: apply(params, x, e)  # noqa: E731
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
    eps2 = jax.random.normal(jax.random.PRNGKey(2), (4, 7, 3))
    m0, _ = semi_implicit_components(mixing, 1.0, x, jnp.zeros((4, 3)))
    np.testing.assert_allclose(m0, 0.0, atol=1e-6)
    m, s = semi_implicit_components(mixing, 1.0, x, eps2)
    assert np.abs(m - 0.5**0.5 * eps2).max() > 1e-2
    m1, s1 = semi_implicit_components(mixing, 1.0, x, eps2[:, 2])
    np.testing.assert_allclose(m[:, 2], m1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s[:, 2], s1, rtol=1e-5)
    m, s = semi_implicit_components(mixing, 1e4, x, eps2)  # a saturating gate
    shift = np.abs(m - 0.5**0.5 * eps2)
    assert shift.max() <= SHIFT_BOUND and shift.max() > 0.9 * SHIFT_BOUND
    assert s.min() >= MIN_SCALE and s.max() <= 2**0.5 - MIN_SCALE + 1e-6


def test_the_score_frame_holds_the_moments_of_the_encoders_draws():
    # The frame's mean and variance from many mixing draws are those of w = m + s ⊙ ε₁ itself,
    # computed here from its draws; the frame carries no gradient.
    import jax
    import jax.numpy as jnp
    from autoencoders import noise_mlp, semi_implicit_components, semi_implicit_frame

    init, apply = noise_mlp((8,), 6, 5)
    _, params = init(jax.random.PRNGKey(0), (-1, 5 + 3))
    mixing = lambda x, e: apply(params, x, e)  # noqa: E731
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5))
    mean, var = semi_implicit_frame(mixing, 3.0, x, jax.random.normal(jax.random.PRNGKey(2), (2, 20_000, 3)))
    m, s = semi_implicit_components(mixing, 3.0, x, jax.random.normal(jax.random.PRNGKey(3), (2, 20_000, 3)))
    w = np.asarray(m + s * jax.random.normal(jax.random.PRNGKey(4), m.shape))
    # Standard errors of the mean and of the variance of 20,000 draws: about 0.01 sd and 0.01 var.
    np.testing.assert_allclose(mean, w.mean(1), atol=0.04 * np.sqrt(w.var(1)).max())
    np.testing.assert_allclose(var, w.var(1), rtol=0.04)
    grad = jax.grad(lambda g: semi_implicit_frame(mixing, g, x, jnp.ones((2, 4, 3)))[1].sum())(3.0)
    assert grad == 0.0


def test_the_linearized_and_mode_scores_are_the_normal_score_at_the_start_and_near_the_mixtures():
    # At gate zero the map ε₂ ↦ ε₂/√2 is linear and s = 1/√2, so the linearized score and the
    # score at the mode are exactly the score −w of w ~ N(0, I). With a strongly mixing 2-D
    # encoder both are near the mixture's score over 2¹⁶ fresh mixing draws, unlike the
    # unbiased but noisy conditional score −ε₁/s.
    import jax
    from autoencoders import linearized_score, mode_score, semi_implicit_components

    mixing = _strongly_mixing_2d_encoder()
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 5))
    eps2, eps1 = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 2))
    m, s = semi_implicit_components(mixing, 0.0, x, eps2)
    np.testing.assert_allclose(linearized_score(mixing, 0.0, x, eps2, eps1), -(m + s * eps1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mode_score(mixing, 0.0, x, eps2, m + s * eps1), -(m + s * eps1),
                               rtol=1e-5, atol=1e-5)
    m, s = semi_implicit_components(mixing, 3.0, x, eps2)
    w = m + s * eps1
    expected = np.ravel(_mixture_score(mixing, 3.0, x, w, jax.random.PRNGKey(4)))
    linearized = np.ravel(linearized_score(mixing, 3.0, x, eps2, eps1))
    mode = np.ravel(mode_score(mixing, 3.0, x, eps2, w))
    conditional = np.ravel(-eps1 / s)
    # (Measured: 0.98 and 0.99 against 0.30.)
    assert np.corrcoef(linearized, expected)[0, 1] > 0.95
    assert np.corrcoef(mode, expected)[0, 1] > 0.95
    assert np.corrcoef(conditional, expected)[0, 1] < 0.5


def test_an_unknown_entropy_score_is_named():
    from autoencoders import semi_implicit_encoder, semi_implicit_estimator

    with pytest.raises(ValueError, match=r"entropy_score must be one of \('network', 'linearized', 'mode'\), got 'exact'"):
        semi_implicit_encoder(semi_implicit_estimator(1e-3), entropy_score="exact")


def test_the_importance_weighted_bound_is_per_image_and_reaches_the_likelihood():
    # A 1-D latent, so that log p(x) of each image is a quadrature over z, independent of any
    # sampling. The encoder is set to the prior and the decoder made to depend strongly on z,
    # so that the ELBO is far below log p(x). The bound of K = 4096 draws per image reaches it
    # (a bound with the draws weighted jointly over the batch's 16 images stays about 3 nats
    # below it here).
    import jax
    import jax.numpy as jnp
    from autoencoders import decoder_net, vae_svi
    from jax.scipy.special import logsumexp
    from jax.scipy.stats import norm

    x = (jax.random.uniform(jax.random.PRNGKey(3), (16, 3)) < 0.5).astype(jnp.float32)
    args = (x, 1, (4,))

    def state_at_prior(svi):
        state = svi.init(jax.random.PRNGKey(0), *args)
        params = svi.get_params(state)
        w, b = params["encoder$params"][-1]
        params["encoder$params"][-1] = (jnp.zeros_like(w), jnp.zeros_like(b))  # q(z | x) = N(0, 1)
        params["decoder$params"] = jax.tree.map(lambda a: 4 * a, params["decoder$params"])
        return state._replace(optim_state=svi.optim.init(params)), params

    def mean_loss(svi, state):
        keys = jax.random.split(jax.random.PRNGKey(1), 8)
        return float(jnp.stack([svi.evaluate(state._replace(rng_key=k), *args) for k in keys]).mean())

    iwae = vae_svi("gaussian", None, 1e-3, iwae_particles=4096)
    iwae_state, params = state_at_prior(iwae)
    grid = jnp.linspace(-12.0, 12.0, 8001)[:, None]
    logits = decoder_net((4,), 3)[1](params["decoder$params"], grid)  # (G, 3)
    log_lik = (x[:, None] * jax.nn.log_sigmoid(logits) + (1 - x[:, None]) * jax.nn.log_sigmoid(-logits)).sum(-1)
    exact = float((logsumexp(log_lik + norm.logpdf(grid[:, 0]), axis=1) + jnp.log(grid[1, 0] - grid[0, 0])).sum())

    elbo = vae_svi("gaussian", None, 1e-3)
    assert abs(mean_loss(iwae, iwae_state) + exact) < 0.1
    assert mean_loss(elbo, state_at_prior(elbo)[0]) + exact > 10.0


def test_vae_svi_names_a_bad_iwae_particles():
    from autoencoders import vae_svi

    with pytest.raises(ValueError, match=r"^iwae_particles must be an int >= 1, got 0$"):
        vae_svi("gaussian", None, 1e-3, iwae_particles=0)
    with pytest.raises(ValueError, match=r"^iwae_particles applies to the gaussian encoder only, got encoder='implicit'$"):
        vae_svi("implicit", "ssm", 1e-3, iwae_particles=5)
