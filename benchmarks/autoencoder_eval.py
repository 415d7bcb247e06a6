"""Evaluation of a trained MNIST autoencoder (used by ``mnist_vae_wae.py`` and ``machine.py``):
the fixed binarized test set, the decoder's log-likelihood, encoder draws, the IWAE and AIS
negative log-likelihoods with per-image values, the semi-implicit encoder's score agreement,
runs paired image by image, and the figure of samples, reconstructions and the loss curve."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from autoencoders import (
    MIXING_RATE,
    decoder_net,
    noise_mlp,
    semi_implicit_components,
    semi_implicit_estimator,
    semi_implicit_frame,
)
from common import markdown_table

from implicitvi import datasets, evaluation
from implicitvi.infer import mixture_score


def binarized_test_images(data):
    """The test images (n, data_dim) binarized once, with a key that does not depend on
    ``--seed``, so that every model and seed is scored on the same binary images."""
    key = jax.random.split(jax.random.PRNGKey(0), 4)[2]
    return datasets.binarize(key, jnp.asarray(data.test.images))


def decoder_log_likelihood(params, hidden, data_dim, activation):
    """log p(x | z) for one latent vector z (d,) and one binary image x (data_dim,)."""
    apply = decoder_net(hidden, data_dim, activation)[1]

    def log_lik(z, x):
        return dist.Bernoulli(logits=apply(params["decoder$params"], z)).log_prob(x).sum()

    return log_lik


def encoder_draws(guide, params, x, latent_dim, hidden, key, num):
    """``num`` encoder samples per row of ``x``: (num, n, latent_dim)."""

    def one(k):
        seeded = numpyro.handlers.substitute(numpyro.handlers.seed(guide, k), data=params)
        return numpyro.handlers.trace(seeded).get_trace(x, latent_dim, hidden)["z"]["value"]

    return jax.lax.map(one, jax.random.split(key, num))


def standard_error(values):
    """Standard error of the mean over test images (0 for a single image)."""
    values = np.asarray(values, np.float64)
    return float(np.std(values, ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0


def evaluate(key, args, log_lik, test_x, loc, scale, ais_path, steps):
    """NLLs, their standard errors and per-image values (``args``: the driver's options
    ``iwae_rows``, ``iwae_samples``, ``ais_rows``, ``ais_block``, ``latent_dim``,
    ``ais_temperatures``, ``ais_chains``, ``ais_leapfrog``): the IWAE bound with the Gaussian
    proposal N(loc, S Sᵀ) per row (``scale``: standard deviations (n, d) or Cholesky factors
    (n, d, d)), and AIS from the prior by :func:`blockwise_ais` (saved to ``ais_path`` for the
    model trained ``steps`` steps)."""
    results = {}
    iwae_key, ais_key = jax.random.split(key)
    if args.iwae_rows:
        start = time.perf_counter()
        iwae = evaluation.iwae_log_likelihood(
            iwae_key, log_lik, test_x[: args.iwae_rows], loc, scale, num_samples=args.iwae_samples
        )
        results.update(per_image_summary("iwae", iwae.log_likelihood))
        results["iwae_seconds"] = time.perf_counter() - start
    if args.ais_rows:
        log_likelihood, seconds = blockwise_ais(ais_key, args, log_lik, test_x[: args.ais_rows], ais_path, steps)
        results.update(per_image_summary("ais", log_likelihood))
        results["ais_seconds"] = seconds
    return results


def blockwise_ais(key, args, log_lik, x, path, steps):
    """AIS log-likelihoods (n,) of the rows of ``x`` and the seconds they took, computed
    ``args.ais_block`` rows at a time. After each block the values so far are saved to ``path``
    (``.npz``) with the settings and the model's training ``steps``; values saved under the same
    settings and steps are reused, so a run stopped part way resumes at its next block and a
    re-evaluation costs nothing. Row i draws from ``fold_in(key, i)`` in any block: the values are
    those of one call on all rows."""
    settings = np.array([steps, args.ais_temperatures, args.ais_chains, args.ais_leapfrog])
    done, seconds = np.zeros(0, np.float32), 0.0
    if os.path.exists(path):
        saved = np.load(path)
        if np.array_equal(saved["settings"], settings):
            done, seconds = saved["log_likelihood"][: len(x)], float(saved["seconds"])
    for first in range(len(done), len(x), args.ais_block):
        start = time.perf_counter()
        block = evaluation.ais_log_likelihood(
            key, log_lik, x[first : first + args.ais_block], args.latent_dim, schedule=args.ais_temperatures,
            num_chains=args.ais_chains, num_leapfrog=args.ais_leapfrog, first_row=first,
        )
        done = np.concatenate([done, np.asarray(block.log_likelihood)])
        seconds += time.perf_counter() - start
        partial = f"{path}.part.npz"  # written whole, then renamed: a stop mid-write loses nothing
        np.savez(partial, settings=settings, log_likelihood=done, seconds=seconds)
        os.replace(partial, path)
        print(f"AIS: {len(done)} of {len(x)} rows, {seconds:.0f} s", flush=True)
    # As one array from the device, so that the mean's summation order is that of a single call.
    return jnp.asarray(done), seconds


def semi_implicit_score_agreement(key, params, score_state, x, hidden, num_draws=16,
                                  num_components=2**19, block=2**15, frame_components=0):
    """How well the semi-implicit encoder's score network tracks the score of q(w | x): at
    ``num_draws`` draws of w per row of ``x``, the correlation (pooled over draws, rows and
    coordinates) of its scores with the mixture estimate
    Σₖ ωₖ ∇ log q(w | x, ε₂ᵏ), ωₖ ∝ q(w | x, ε₂ᵏ), over the draw's own and ``num_components``
    fresh mixing draws (a consistent estimate of the score; see ``AutoSemiImplicit(score=
    "mixture")``), and the same correlation for the single conditional score −ε₁/s, the
    network's regression target, and for −w, the score of the standard normal the encoder starts
    at (the network's scores taken in the encoder's moment frame over ``frame_components``
    mixing draws, if positive, and mapped back to w). The components are drawn per row and
    summed in blocks of ``block`` (memory O(block)). Where few components lie near w the estimate leans towards the draw's own component, and so
    towards −ε₁/s; ``"network_coarse"``, the network's correlation with the estimate over the
    first eighth of the components, shows whether ``num_components`` is enough (the two agree).
    Returns ``{"network", "network_coarse", "conditional", "normal"}``."""
    block = min(block, num_components // 8)
    if block < 1 or num_components % (8 * block):
        raise ValueError(f"num_components must be a multiple of 8 * min(block, num_components // 8), "
                         f"got {num_components} with block {block}")
    estimator = semi_implicit_estimator(1e-3)  # its network as trained (the rate plays no part)
    n, data_dim = x.shape
    k = params["encoder$params"][-1][1].shape[-1] // 2  # the latent dimension
    apply = noise_mlp(hidden, 2 * k, data_dim)[1]
    mixing = lambda x, e: apply(params["mixing$params"], x, e)  # noqa: E731
    gate = MIXING_RATE * params["mixing_gate"]
    k_own, k_noise, k_fresh = jax.random.split(key, 3)
    eps2 = jax.random.normal(k_own, (n, num_draws, k))
    eps1 = jax.random.normal(k_noise, (n, num_draws, k))
    m, s = semi_implicit_components(mixing, gate, x, eps2)
    w = m + s * eps1

    def log_q_and_scores(w_i, m_k, s_k):
        z = (w_i[:, None] - m_k) / s_k
        return jnp.sum(-0.5 * z**2 - jnp.log(s_k), -1), -z / s_k

    def reference(i, x_i, w_i, m_i, s_i):
        # A running log-sum-exp of the weights and the weighted sum of scores, from the own
        # component on: mixture_score over all components without holding them at once.
        log_q, scores = log_q_and_scores(w_i, m_i[:, None], s_i[:, None])
        start = (log_q[:, 0], scores[:, 0])

        def add_block(carry, b):
            lse, acc = carry
            fresh = jax.random.normal(jax.random.fold_in(jax.random.fold_in(k_fresh, i), b), (1, block, k))
            m_k, s_k = semi_implicit_components(mixing, gate, x_i[None], fresh)
            log_q, scores = log_q_and_scores(w_i, m_k, s_k)
            block_lse = jax.nn.logsumexp(log_q, -1)
            new = jnp.logaddexp(lse, block_lse)
            acc = acc * jnp.exp(lse - new)[:, None] + mixture_score(log_q, scores) * jnp.exp(block_lse - new)[:, None]
            return (new, acc), None

        blocks = num_components // block
        coarse, _ = jax.lax.scan(add_block, start, jnp.arange(blocks // 8))
        full, _ = jax.lax.scan(add_block, coarse, jnp.arange(blocks // 8, blocks))
        return coarse[1], full[1]

    coarse, ref = jax.lax.map(lambda a: reference(*a), (jnp.arange(n), x, w, m, s))
    context = jnp.broadcast_to(x[:, None], (n, num_draws, data_dim)).reshape(-1, data_dim)
    mean, var = jnp.zeros((n, k)), jnp.ones((n, k))
    if frame_components:
        probes = jax.random.normal(jax.random.fold_in(key, 1), (n, frame_components, k))
        mean, var = semi_implicit_frame(mixing, gate, x, probes)
    mean, sd = mean[:, None], jnp.sqrt(var)[:, None]
    net = estimator.score(score_state, ((w - mean) / sd).reshape(-1, k), context).reshape(w.shape) / sd
    corr = lambda a, b: float(jnp.corrcoef(a.ravel(), b.ravel())[0, 1])  # noqa: E731
    return {"network": corr(net, ref), "network_coarse": corr(net, coarse),
            "conditional": corr(-eps1 / s, ref), "normal": corr(-w, ref)}


def per_image_summary(kind, log_likelihood):
    """The mean NLL over the images, its standard error and the per-image NLLs (n,)."""
    # np.mean defers to the JAX array's own reduction: its summation order sets the last digits.
    return {f"{kind}_nll": float(-np.mean(log_likelihood)), f"{kind}_nll_se": standard_error(log_likelihood),
            f"{kind}_nll_per_image": -np.asarray(log_likelihood), f"{kind}_rows": int(log_likelihood.size)}


def paired_table(paths):
    """Markdown table of the per-image AIS NLLs of runs (``NAME_per_image.npz`` files) paired
    against the first file's: on the first n test images that both runs scored, the mean of
    d = NLL(run) − NLL(first) and its standard error std(d) / √n."""
    first = np.load(paths[0])["ais_nll_per_image"]
    rows = []
    for path in paths:
        nll = np.load(path)["ais_nll_per_image"]
        n = min(len(nll), len(first))
        d = nll[:n] - first[:n]
        se = d.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        rows.append([run_label(path), n, f"{nll[:n].mean():.2f}", f"{d.mean():+.2f} ± {se:.2f}"])
    return markdown_table(["run", "images", "AIS NLL", f"minus {run_label(paths[0])}, paired"], rows)


def run_label(path):
    return os.path.basename(path).removesuffix(".npz").removesuffix("_per_image")


def save_figure(path, samples, test_x, reconstructions, losses, title):
    """Decoder means of prior draws, test images beside their reconstructions, and the loss
    curve (smoothed over a 200th of the run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = int(round(np.sqrt(test_x.shape[-1])))

    def grid(images, cols):
        rows = len(images) // cols
        tiles = np.asarray(images[: rows * cols]).reshape(rows, cols, side, side)
        return tiles.transpose(0, 2, 1, 3).reshape(rows * side, cols * side)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
    axes[0].imshow(grid(samples, 8), cmap="gray")
    axes[0].set_title("samples (decoder means, z ~ p(z))")
    pairs = np.stack([np.asarray(test_x[:32]), np.asarray(reconstructions[:32])], 1).reshape(64, -1)
    axes[1].imshow(grid(pairs, 8), cmap="gray")
    axes[1].set_title("test images | reconstructions")
    for ax in axes[:2]:
        ax.axis("off")
    window = max(1, len(losses) // 200)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    axes[2].plot(np.arange(len(smooth)) + window, smooth)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("loss per image (nats)")
    axes[2].set_title("training loss")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


