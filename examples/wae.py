r"""Wasserstein auto-encoder whose latent regularizer's gradient comes from a score estimator.

The WAE of Tolstikhin et al. (ICLR 2018) with the KL regularizer of Song, Garg, Shi & Ermon
(UAI 2019, §5.3): a deterministic encoder z = f(x) → 256 → 256 (tanh), a Bernoulli decoder, and

.. math:: \mathcal{L} = \mathbb{E}_x[-\log p(x \mid f(x))] + \lambda\,\mathrm{KL}(q(z) \,\|\, p(z)),

where q(z) is the *aggregate* posterior, the law of f(x) for x from the data. Its entropy
gradient needs ∇ log q(z), estimated on each batch's codes by an unconditional score network (SSM),
the Stein estimator or SSGE. As a NumPyro program: the guide's site ``z`` is an implicit site in
the batch plate without a context — so its particles across the batch are pooled as draws of
q(z) — and both the prior of z and that site sit under ``scale(λ)``; ``ImplicitELBO`` then
optimizes exactly −𝓛. ``--regularizer mmd`` replaces the KL by λ·MMD with the inverse
multiquadratic kernels of Tolstikhin et al. and trains with ``Trace_ELBO``.

Data: scikit-learn's 8×8 digits (no download), or MNIST with ``--data mnist.pkl.gz``. The paper's
full protocol (AIS, checkpoints, paired comparisons) is ``benchmarks/mnist_vae_wae.py``.

    python examples/wae.py --steps 2000 --regularizer stein
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
from jax.example_libraries import stax
from numpyro.distributions import constraints
from numpyro.handlers import scale
from numpyro.infer import SVI, Trace_ELBO

from implicitvi import datasets, evaluation
from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.infer import ImplicitELBO, implicit_sample, run_minibatch


def model(x, latent_dim, hidden, lam):
    """p(x | z) with the prior of z weighted by λ: the KL regularizer's cross-entropy term."""
    batch, data_dim = x.shape
    decode = numpyro.module("decoder", mlp(hidden, data_dim), (batch, latent_dim))
    with numpyro.plate("batch", batch):
        with scale(scale=lam):
            z = numpyro.sample("z", dist.Normal(0, 1).expand([latent_dim]).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)


def encoder_guide(estimator):
    """z = f(x): an implicit site whose batch, pooled, is a sample of the aggregate q(z)."""

    def guide(x, latent_dim, hidden, lam):
        batch, data_dim = x.shape
        encode = numpyro.module("encoder", mlp(hidden, latent_dim), (batch, data_dim))
        with numpyro.plate("batch", batch), scale(scale=lam):
            implicit_sample("z", encode(x), support=constraints.real_vector, estimator=estimator)

    return guide


def mmd_model(x, latent_dim, hidden, lam):
    """WAE-MMD: the encoder is a deterministic part of the model, the regularizer a factor."""
    batch, data_dim = x.shape
    encode = numpyro.module("encoder", mlp(hidden, latent_dim), (batch, data_dim))
    decode = numpyro.module("decoder", mlp(hidden, data_dim), (batch, latent_dim))
    z = encode(x)
    prior = jax.random.normal(numpyro.prng_key(), z.shape, z.dtype)
    numpyro.factor("mmd", -lam * batch * imq_mmd(z, prior))
    with numpyro.plate("batch", batch):
        numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)


def no_guide(x, latent_dim, hidden, lam):
    """WAE-MMD has no latent sample site."""


def imq_mmd(x, y):
    r"""Unbiased MMD² between samples ``x`` and ``y`` (both (n, d)) with the kernel sum
    :math:`\sum_s C_s / (C_s + \|a - b\|^2)`, :math:`C_s = s \cdot 2 d`, s ∈ {0.1, …, 10}."""
    n, d = x.shape

    def gram(a, b):
        sq = jnp.sum((a[:, None] - b[None]) ** 2, -1)
        return sum(c / (c + sq) for c in 2.0 * d * jnp.array([0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]))

    off = 1.0 - jnp.eye(n)
    within = (jnp.sum(gram(x, x) * off) + jnp.sum(gram(y, y) * off)) / (n * (n - 1))
    return within - 2.0 * jnp.mean(gram(x, y))


def mlp(hidden, out_dim):
    layers = [layer for width in hidden for layer in (stax.Dense(width), stax.Tanh)]
    return stax.serial(*layers, stax.Dense(out_dim))


def make_svi(args):
    optim = optax.rmsprop(args.lr)
    if args.regularizer == "mmd":
        return SVI(mmd_model, no_guide, optim, Trace_ELBO())
    estimator = {
        "ssm": lambda: ScoreNet(objective="ssm_vr", hidden=(256, 256), optimizer=optax.rmsprop(args.lr)),
        "stein": lambda: Stein(eta=1e-3),
        "ssge": lambda: SSGE(eta=1e-3, threshold=0.99),
    }[args.regularizer]()
    return SVI(model, encoder_guide(estimator), optim, ImplicitELBO(num_particles=1))


def main(args):
    data = datasets.load_digits() if args.data is None else datasets.load_mnist(args.data)
    train_key, eval_key, test_key = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    hidden = tuple(args.hidden)
    svi = make_svi(args)
    result = run_minibatch(
        svi, train_key, jnp.asarray(data.train.images), args.steps, args.latent_dim, hidden, args.lam,
        batch_size=args.batch_size, transform=datasets.binarize, chunk_size=args.chunk,
        progress_bar=args.progress_bar,
    )
    # Per image: the reconstruction term plus λ times the prior's cross-entropy (the entropy of
    # q(z) has a gradient but no value), or plus λ·MMD.
    losses = result.losses / args.batch_size
    window = max(1, len(losses) // 10)
    first, last = float(losses[:window].mean()), float(losses[-window:].mean())
    print(f"training loss per image: first {window} steps {first:.2f}, last {window} steps {last:.2f}")

    params = svi.get_params(result.state)
    test_x = datasets.binarize(test_key, jnp.asarray(data.test.images[: args.eval_rows]))
    codes = mlp(hidden, args.latent_dim)[1](params["encoder$params"], test_x)
    decode = mlp(hidden, test_x.shape[-1])[1]

    def log_lik(z, x):
        return dist.Bernoulli(logits=decode(params["decoder$params"], z)).log_prob(x).sum()

    # The encoder is deterministic: the bound's proposal is a Gaussian around each code whose
    # scale is a tenth of the codes' spread.
    scale_ = jnp.broadcast_to(0.1 * codes.std(0), codes.shape)
    iwae = evaluation.iwae_log_likelihood(eval_key, log_lik, test_x, codes, scale_, num_samples=args.iwae_samples)
    nll = float(-jnp.mean(iwae.log_likelihood))
    print(f"test NLL, IWAE bound with {args.iwae_samples} samples on {len(test_x)} images: {nll:.2f} nats")
    return {"losses": losses, "iwae_nll": nll}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="mnist.pkl.gz or a directory with the MNIST IDX files (default: sklearn digits)")
    p.add_argument("--regularizer", choices=["ssm", "stein", "ssge", "mmd"], default="ssm")
    p.add_argument("--lam", type=float, default=10.0, help="weight λ of the latent regularizer")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chunk", type=int, default=500, help="steps per jitted chunk")
    p.add_argument("--eval-rows", type=int, default=1000, help="test images for the IWAE bound")
    p.add_argument("--iwae-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    args = p.parse_args(argv)
    if args.latent_dim < 1:
        p.error(f"--latent-dim must be >= 1, got {args.latent_dim}")
    if args.lam <= 0:
        p.error(f"--lam must be > 0, got {args.lam}")
    return args


if __name__ == "__main__":
    main(parse_args())
