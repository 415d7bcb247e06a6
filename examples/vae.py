"""Variational auto-encoder with an implicit encoder, trained with a score-estimated entropy.

The setting of Song, Garg, Shi & Ermon (UAI 2019, §5.3). The encoder is a neural sampler
z = f([x, ε]), ε ~ N(0, I), whose density q(z | x) is unknown. The ELBO's entropy term gets its
gradient from a score estimator on the site ``z`` with the image as context: a conditional score
network s(z | x) trained by sliced score matching (SSM-VR) on the encoder's own draws, one step
per model step inside ``svi.update``; or the Stein or spectral Stein (SSGE) estimator on
``--kernel-samples`` encoder draws per image, of which the decoder sees the first.
``--encoder semi-implicit`` is a continuous Gaussian mixture, the Gaussian encoder's
z = μ(x) + σ(x) ⊙ w with w ~ N(m(x, ε₂), diag s(x, ε₂)²) over mixing noise ε₂: the conditional
score −ε₁/s of w is known at every draw, and a conditional network fitted to it by least squares
has the score of q(w | x) as its minimiser. ``--encoder gaussian`` is the ordinary VAE.
The decoder is Bernoulli, z → 256 → 256 (tanh) → x.

Data: scikit-learn's 8×8 digits (no download), or MNIST with ``--data mnist.pkl.gz``; every
batch is binarized afresh. The script prints the training loss and the test negative
log-likelihood by the importance-weighted bound, and saves decoder samples and reconstructions.
The paper's full protocol (AIS, checkpoints, paired comparisons) is
``benchmarks/mnist_vae_wae.py``.

    python examples/vae.py --steps 2000
    python examples/vae.py --data mnist.pkl.gz --estimator stein
"""

from __future__ import annotations

import os

# The kernel estimators factor many small Gram matrices, where OpenBLAS's threads cost more than
# they save.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.example_libraries import stax
from numpyro.distributions import constraints
from numpyro.infer import SVI, Trace_ELBO

from implicitvi import datasets, evaluation
from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.infer import ImplicitELBO, implicit_sample, run_minibatch


def model(x, latent_dim, hidden):
    """p(z) p(x | z): z ~ N(0, I), x ~ Bernoulli(decoder(z)); x is a binary batch (n, data_dim)."""
    batch, data_dim = x.shape
    decode = numpyro.module("decoder", mlp(hidden, data_dim), (batch, latent_dim))
    with numpyro.plate("batch", batch):
        z = numpyro.sample("z", dist.Normal(0, 1).expand([latent_dim]).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)


def implicit_guide(estimator, draws=None):
    """q(z | x) = law of f([x, ε]); the entropy gradient at ``draws`` draws per image if given."""

    def guide(x, latent_dim, hidden):
        batch, data_dim = x.shape
        encode = numpyro.module("encoder", noise_mlp(hidden, latent_dim, data_dim), (batch, data_dim + latent_dim))
        shape = (batch, latent_dim) if draws is None else (batch, draws, latent_dim)
        w = encode(x, jax.random.normal(numpyro.prng_key(), shape, x.dtype))
        with numpyro.plate("batch", batch):
            implicit_sample(
                "z", w if draws is None else w[:, 0], support=constraints.real_vector, context=x,
                estimator=estimator, entropy_draws=None if draws is None else w,
            )

    return guide


def semi_implicit_guide(estimator, min_scale=0.3, shift_bound=3.0, mixing_rate=0.1, frame_draws=64):
    """q(z | x) = E_ε₂ N(z; μ(x) + σ(x) m(x, ε₂), diag (σ(x) s(x, ε₂))²): the Gaussian encoder's
    z = μ(x) + σ(x) ⊙ w around a semi-implicit w = ε₂/√2 + g(x, ε₂) + s(x, ε₂) ⊙ ε₁, with a
    centred, bounded shift g = b tanh((g̃(x, ε₂) − g̃(x, 0)) / b) and scales s ∈ (min_scale,
    √2 − min_scale), so that μ(x) and σ(x) keep the location and scale of w and w cannot become
    a mixture of needles; the gate on the mixing network starts at zero (w ~ N(0, I), the
    Gaussian encoder) and is stored divided by ``mixing_rate``, so that under RMSProp it moves at
    that fraction of the learning rate. H[z | x] = Σ log σ(x) + H[w | x]. The score of w is
    estimated in the frame w̃ = (w − m̄(x)) / v̄(x)^½ of w's mean and variance over
    ``frame_draws`` fresh mixing draws, a constant affine map given x: the normal-base network
    then learns only what q(w | x) adds to its moment-matched Gaussian. The site carries the
    conditional score of w̃, v̄^½ ⊙ (−ε₁/s), the regression target of ``estimator``."""
    half = 0.5**0.5

    def components(mixing, gate, x, eps2):
        g, h = jnp.split(gate * mixing(x, eps2), 2, axis=-1)
        g0 = jnp.split(gate * mixing(x, jnp.zeros((x.shape[0], eps2.shape[-1]), x.dtype)), 2, axis=-1)[0]
        g = shift_bound * jnp.tanh((g - (g0 if eps2.ndim == 2 else g0[:, None])) / shift_bound)
        return half * eps2 + g, min_scale + (half - min_scale) * 2 * jax.nn.sigmoid(h)

    def guide(x, latent_dim, hidden):
        batch, data_dim = x.shape
        gaussian = numpyro.module("encoder", mlp(hidden, 2 * latent_dim), (batch, data_dim))
        mixing = numpyro.module("mixing", noise_mlp(hidden, 2 * latent_dim, data_dim), (batch, data_dim + latent_dim))
        gate = mixing_rate * numpyro.param("mixing_gate", jnp.zeros(()))
        key_mix, key_noise, key_frame = jax.random.split(numpyro.prng_key(), 3)
        eps2 = jax.random.normal(key_mix, (batch, latent_dim), x.dtype)
        eps1 = jax.random.normal(key_noise, (batch, latent_dim), x.dtype)
        loc, log_scale = jnp.split(gaussian(x), 2, axis=-1)
        m, s = components(mixing, gate, x, eps2)
        w = m + s * eps1
        probes = jax.random.normal(key_frame, (batch, frame_draws, latent_dim), x.dtype)
        m_k, s_k = jax.lax.stop_gradient(components(mixing, gate, x, probes))
        mean, sd = m_k.mean(1), jnp.sqrt(m_k.var(1) + (s_k**2).mean(1))
        with numpyro.plate("batch", batch):
            implicit_sample(
                "z", loc + jnp.exp(log_scale) * w, latent=(w - mean) / sd,
                log_abs_det_jacobian=(log_scale + jnp.log(sd)).sum(-1),
                support=constraints.real_vector, context=x, estimator=estimator,
                conditional_score=sd * (-eps1 / s),
            )

    return guide


def gaussian_guide(x, latent_dim, hidden):
    """q(z | x) = N(μ(x), diag σ(x)²), the ordinary VAE."""
    batch, data_dim = x.shape
    encode = numpyro.module("encoder", mlp(hidden, 2 * latent_dim), (batch, data_dim))
    loc, log_scale = jnp.split(encode(x), 2, axis=-1)
    with numpyro.plate("batch", batch):
        numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))


def mlp(hidden, out_dim):
    layers = [layer for width in hidden for layer in (stax.Dense(width), stax.Tanh)]
    return stax.serial(*layers, stax.Dense(out_dim))


def noise_mlp(hidden, out_dim, data_dim):
    """``mlp`` on concat(x, ε) as ``apply(params, x, eps)``, ``eps`` (n, k) or (n, m, k): the
    first layer's x-part is computed once per image, not once per draw."""
    init, _ = mlp(hidden, out_dim)
    _, rest = mlp(hidden[1:], out_dim)

    def apply(params, x, eps):
        (w, b), _, *later = params
        hx = x @ w[:data_dim] + b
        return rest(later, jnp.tanh((hx if eps.ndim == 2 else hx[:, None, :]) + eps @ w[data_dim:]))

    return init, apply


def make_svi(args):
    if args.encoder == "gaussian":
        return SVI(model, gaussian_guide, optax.rmsprop(args.lr), Trace_ELBO())
    if args.encoder == "semi-implicit":
        estimator = ScoreNet(objective="regression", hidden=(256, 256), conditional=True, base="normal",
                             optimizer=optax.rmsprop(args.lr))
        guide = semi_implicit_guide(estimator)
    elif args.estimator == "ssm":
        estimator = ScoreNet(objective="ssm_vr", num_projections=1, hidden=(256, 256), conditional=True,
                             optimizer=optax.rmsprop(args.lr))
        guide = implicit_guide(estimator)
    else:
        estimator = Stein(eta=1e-3) if args.estimator == "stein" else SSGE(eta=1e-3, threshold=0.99)
        guide = implicit_guide(estimator, draws=args.kernel_samples)
    return SVI(model, guide, optax.rmsprop(args.lr), ImplicitELBO(num_particles=1))


def encoder_draws(guide, params, x, latent_dim, hidden, key, num):
    """``num`` encoder samples per row of ``x``: (num, n, latent_dim)."""

    def one(k):
        seeded = numpyro.handlers.substitute(numpyro.handlers.seed(guide, k), data=params)
        return numpyro.handlers.trace(seeded).get_trace(x, latent_dim, hidden)["z"]["value"]

    return jax.lax.map(one, jax.random.split(key, num))


def main(args):
    data = datasets.load_digits() if args.data is None else datasets.load_mnist(args.data)
    train_key, eval_key, test_key, fig_key = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    hidden = tuple(args.hidden)
    svi = make_svi(args)
    result = run_minibatch(
        svi, train_key, jnp.asarray(data.train.images), args.steps, args.latent_dim, hidden,
        batch_size=args.batch_size, transform=datasets.binarize, chunk_size=args.chunk,
        progress_bar=args.progress_bar,
    )
    # Per image; with an implicit encoder the loss is −E_q[log p(x, z)], the entropy left out.
    losses = result.losses / args.batch_size
    window = max(1, len(losses) // 10)
    first, last = float(losses[:window].mean()), float(losses[-window:].mean())
    print(f"training loss per image: first {window} steps {first:.2f}, last {window} steps {last:.2f}")

    params = svi.get_params(result.state)
    _, decode = mlp(hidden, data.test.images.shape[-1])
    test_x = datasets.binarize(test_key, jnp.asarray(data.test.images[: args.eval_rows]))

    def log_lik(z, x):
        return dist.Bernoulli(logits=decode(params["decoder$params"], z)).log_prob(x).sum()

    draws = encoder_draws(svi.guide, params, test_x, args.latent_dim, hidden, eval_key, args.proposal_draws)
    # The encoder has no density: the bound's proposal is a Gaussian moment-matched to its draws,
    # widened so that its tails cover the posterior's.
    loc, scale_tril = evaluation.gaussian_proposal(jnp.swapaxes(draws, 0, 1), widen=1.5)
    iwae = evaluation.iwae_log_likelihood(eval_key, log_lik, test_x, loc, scale_tril, num_samples=args.iwae_samples)
    nll = float(-jnp.mean(iwae.log_likelihood))
    print(f"test NLL, IWAE bound with {args.iwae_samples} samples on {len(test_x)} images: {nll:.2f} nats")
    if args.out:
        samples = jax.nn.sigmoid(decode(params["decoder$params"], jax.random.normal(fig_key, (32, args.latent_dim))))
        recon = jax.nn.sigmoid(decode(params["decoder$params"], draws[0, :16]))
        plot(args.out, samples, test_x[:16], recon)
        print(f"wrote {args.out}")
    return {"losses": losses, "iwae_nll": nll}


def plot(path, samples, originals, reconstructions):
    """Decoder means of prior draws beside test images and their reconstructions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = int(round(np.sqrt(samples.shape[-1])))
    panels = {"samples": samples, "test images | reconstructions": jnp.stack([originals, reconstructions], 1)}
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    for ax, (title, images) in zip(axes, panels.items()):
        tiles = np.asarray(images).reshape(-1, 8, side, side)
        ax.imshow(tiles.transpose(0, 2, 1, 3).reshape(-1, 8 * side), cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="mnist.pkl.gz or a directory with the MNIST IDX files (default: sklearn digits)")
    p.add_argument("--encoder", choices=["implicit", "semi-implicit", "gaussian"], default="implicit")
    p.add_argument("--estimator", choices=["ssm", "stein", "ssge"], default="ssm")
    p.add_argument("--kernel-samples", type=int, default=100, help="encoder draws per image for stein and ssge")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chunk", type=int, default=500, help="steps per jitted chunk")
    p.add_argument("--eval-rows", type=int, default=1000, help="test images for the IWAE bound")
    p.add_argument("--iwae-samples", type=int, default=1000)
    p.add_argument("--proposal-draws", type=int, default=128, help="encoder draws for the IWAE proposal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="vae.png", help="PNG path ('' to skip the figure)")
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    args = p.parse_args(argv)
    if args.latent_dim < 1:
        p.error(f"--latent-dim must be >= 1, got {args.latent_dim}")
    return args


if __name__ == "__main__":
    main(parse_args())
