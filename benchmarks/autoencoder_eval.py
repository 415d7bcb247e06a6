"""Evaluation of a trained MNIST autoencoder (used by ``mnist_vae_wae.py`` and ``machine.py``):
the fixed binarized test set, the decoder's log-likelihood, encoder draws, the IWAE and AIS
negative log-likelihoods with per-image values, the semi-implicit encoder's score agreement,
runs paired image by image, and the figure of samples, reconstructions and the loss curve."""

from __future__ import annotations

import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from autoencoders import (
    MIXING_RATE,
    decoder_net,
    linearized_score,
    mode_score,
    noise_mlp,
    row_components,
    semi_implicit_components,
    semi_implicit_estimator,
    semi_implicit_frame,
)
from common import markdown_table

from implicitvi import datasets, evaluation


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
        part_path = f"{path}.part.npz"  # written whole, then renamed: a stop mid-write loses nothing
        np.savez(part_path, settings=settings, log_likelihood=done, seconds=seconds)
        os.replace(part_path, path)
        print(f"AIS: {len(done)} of {len(x)} rows, {seconds:.0f} s", flush=True)
    # As one array from the device, so that the mean's summation order is that of a single call.
    return jnp.asarray(done), seconds


def semi_implicit_score_agreement(key, params, score_state, x, hidden, num_draws=16, chain_steps=8000,
                                  pilot_steps=200, skip_steps=2000, frame_components=0):
    """How well the semi-implicit encoder's score network tracks the score of q(w | x): at
    ``num_draws`` draws of w per row of ``x``, the correlation (pooled over draws, rows and
    coordinates) of its scores with a reference for ∇ log q(w | x) = E[∇ log q(w | x, ε₂) | w, x],
    and the same correlation for the single conditional score −ε₁/s, the network's regression
    target, for −w, the score of the standard normal the encoder starts at, and for the
    :func:`linearized_score` and :func:`mode_score` at each draw (the network's scores taken
    in the encoder's moment frame over ``frame_components`` mixing draws, if positive, and
    mapped back to w; no network if ``score_state`` is None).

    The reference averages the conditional score −(w − m)/s² over ``chain_steps`` states of
    two independent MALA chains on ε₂ | w, x, each started at the draw's own ε₂. That start is
    an exact draw of ε₂ | w, x, and the chain leaves that law invariant, so every state is one
    too: the average is unbiased at any length, with no burn-in, and a chain that mixes slowly
    (in high dimension, between modes) only makes it noisier. Its noise is tied to the start,
    though, whose conditional score is the target −ε₁/s itself, and that would overstate the
    target's agreement; the first ``skip_steps`` states are therefore left out of the average.
    ``"chains"``, the correlation of the two chains' averages, says how noisy the reference is;
    it is their mean. A pilot run of ``pilot_steps`` from the same start sets the chains' step
    size (towards acceptance 0.6) and is then discarded. Unlike a mixture over fresh mixing
    draws, whose weights collapse onto the draw's own component as the dimension grows, this
    works at z = 32.
    Returns ``{"network", "conditional", "normal", "linearized", "mode", "chains"}``."""
    estimator = semi_implicit_estimator(1e-3)  # its network as trained (the rate plays no part)
    n, data_dim = x.shape
    k = params["encoder$params"][-1][1].shape[-1] // 2  # the latent dimension
    apply = noise_mlp(hidden, 2 * k, data_dim)[1]
    mixing = lambda x, e: apply(params["mixing$params"], x, e)  # noqa: E731
    gate = MIXING_RATE * params["mixing_gate"]
    k_own, k_noise, k_chains = jax.random.split(key, 3)
    eps2 = jax.random.normal(k_own, (n, num_draws, k))
    eps1 = jax.random.normal(k_noise, (n, num_draws, k))
    m, s = semi_implicit_components(mixing, gate, x, eps2)
    w = m + s * eps1
    chains = jax.jit(jax.vmap(jax.vmap(partial(conditional_score_chains, mixing, gate, chain_steps=chain_steps,
                                               pilot_steps=pilot_steps, skip_steps=skip_steps),
                                       in_axes=(0, None, 0, 0))))
    ref_a, ref_b = chains(jax.random.split(k_chains, n * num_draws).reshape(n, num_draws, -1), x, w, eps2)
    ref = 0.5 * (ref_a + ref_b)
    corr = lambda a, b: float(jnp.corrcoef(a.ravel(), b.ravel())[0, 1])  # noqa: E731
    rows = jnp.broadcast_to(x[:, None], (n, num_draws, data_dim)).reshape(-1, data_dim)
    linearized = linearized_score(mixing, gate, rows, eps2.reshape(-1, k), eps1.reshape(-1, k))
    mode = mode_score(mixing, gate, rows, eps2.reshape(-1, k), w.reshape(-1, k))
    result = {"conditional": corr(-eps1 / s, ref), "normal": corr(-w, ref),
              "linearized": corr(linearized, ref), "mode": corr(mode, ref), "chains": corr(ref_a, ref_b)}
    if score_state is None:
        return result
    mean, var = jnp.zeros((n, k)), jnp.ones((n, k))
    if frame_components:
        probes = jax.random.normal(jax.random.fold_in(key, 1), (n, frame_components, k))
        mean, var = semi_implicit_frame(mixing, gate, x, probes)
    mean, sd = mean[:, None], jnp.sqrt(var)[:, None]
    net = estimator.score(score_state, ((w - mean) / sd).reshape(-1, k), rows).reshape(w.shape) / sd
    return {"network": corr(net, ref), **result}


def conditional_score_chains(mixing, gate, key, x, w, eps2, chain_steps, pilot_steps, skip_steps, target=0.6):
    """The averages (k,), (k,) of −(w − m)/s² over ``chain_steps`` states of two MALA chains on
    ε₂ | w, x for one draw w (k,) of one row x (data_dim,), both started at its own ε₂ ``eps2``
    (k,), after ``skip_steps`` states; see :func:`semi_implicit_score_agreement`."""

    def log_joint(e):
        m, s = row_components(mixing, gate, x, e)
        return jnp.sum(-0.5 * ((w - m) / s) ** 2 - jnp.log(s)) - 0.5 * jnp.sum(e**2), -(w - m) / s**2

    value_and_grad = jax.value_and_grad(log_joint, has_aux=True)

    def step(state, key, h):
        e, log_p, grad, score = state
        k_move, k_accept = jax.random.split(key)
        proposal = e + h * grad + jnp.sqrt(2 * h) * jax.random.normal(k_move, e.shape)
        (log_p_new, score_new), grad_new = value_and_grad(proposal)
        forward = -jnp.sum((proposal - e - h * grad) ** 2) / (4 * h)
        backward = -jnp.sum((e - proposal - h * grad_new) ** 2) / (4 * h)
        log_accept = jnp.minimum(0.0, log_p_new - log_p + backward - forward)
        accept = jnp.log(jax.random.uniform(k_accept)) < log_accept
        state = jax.tree.map(lambda a, b: jnp.where(accept, a, b), (proposal, log_p_new, grad_new, score_new), state)
        return state, jnp.exp(log_accept)

    (log_p, score), grad = value_and_grad(eps2)
    start = (eps2, log_p, grad, score)

    def pilot(carry, key):
        state, log_h = carry
        state, accept = step(state, key, jnp.exp(log_h))
        return (state, log_h + 0.05 * (accept - target)), None

    k_pilot, k_a, k_b = jax.random.split(key, 3)
    (_, log_h), _ = jax.lax.scan(pilot, (start, jnp.log(0.05)), jax.random.split(k_pilot, pilot_steps))

    def average(key):
        def body(carry, key):
            state, total = carry
            state, _ = step(state, key, jnp.exp(log_h))
            return (state, total + state[3]), None

        k_skip, k_average = jax.random.split(key)
        (state, _), _ = jax.lax.scan(body, (start, score), jax.random.split(k_skip, skip_steps))
        (_, total), _ = jax.lax.scan(body, (state, jnp.zeros_like(score)), jax.random.split(k_average, chain_steps))
        return total / chain_steps

    return average(k_a), average(k_b)


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


