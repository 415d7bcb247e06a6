r"""Wasserstein auto-encoder whose latent regularizer's gradient comes from a score estimator.

The WAE of Tolstikhin et al. (ICLR 2018) with the KL regularizer of Song, Garg, Shi & Ermon
(UAI 2019, §5.3): a deterministic encoder z = f(x) → 256 → 256 (tanh), a Bernoulli decoder, and

.. math:: \mathcal{L} = \mathbb{E}_x[-\log p(x \mid f(x))] + \lambda\,\mathrm{KL}(q(z) \,\|\, p(z)),

where q(z) is the *aggregate* posterior, the law of f(x) for x from the data. Its entropy
gradient needs ∇ log q(z), estimated on each batch's codes by an unconditional score network (SSM),
the Stein estimator or SSGE. As a NumPyro program: the guide's site ``z`` is an implicit site in
the batch plate without a context — so its particles across the batch are pooled as draws of
q(z) — and both the prior of z and that site sit under ``scale(λ)``; ``ImplicitELBO`` then
optimizes exactly −𝓛. The baseline ``--regularizer mmd`` replaces the KL by λ·MMD with the
inverse multiquadratic kernel of Tolstikhin et al. and trains with ``Trace_ELBO``.

    python examples/wae.py --data mnist.pkl.gz --latent-dim 8 --steps 100000 --ais-rows 1000
"""

from __future__ import annotations

import os

# Single-threaded OpenBLAS (LAPACK on the CPU) unless the caller chose otherwise: see vae.py.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
from jax.example_libraries import stax
from numpyro.distributions import constraints
from numpyro.handlers import scale
from numpyro.infer import SVI, Trace_ELBO

from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.infer import ImplicitELBO, implicit_sample

# The decoder, data loading, figures and test log-likelihood are the VAE example's.
_spec = importlib.util.spec_from_file_location("vae_example", Path(__file__).with_name("vae.py"))
vae = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vae)


def decoder_with_prior(activation="tanh"):
    """Model p(x | z) with the prior of z weighted by λ (the KL regularizer's cross-entropy term)."""

    def model(x, latent_dim, hidden, lam):
        batch, data_dim = x.shape
        decode = numpyro.module("decoder", vae.decoder_net(hidden, data_dim, activation), (batch, latent_dim))
        with numpyro.plate("batch", batch):
            with scale(scale=lam):
                z = numpyro.sample("z", dist.Normal(0, 1).expand([latent_dim]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    return model


def deterministic_encoder(estimator):
    """Guide: z = f(x), an implicit site whose pooled batch is a sample of the aggregate q(z)."""

    def guide(x, latent_dim, hidden, lam):
        batch, data_dim = x.shape
        encode = numpyro.module("encoder", vae.mlp(hidden, latent_dim, stax.Tanh), (batch, data_dim))
        with numpyro.plate("batch", batch), scale(scale=lam):
            implicit_sample("z", encode(x), support=constraints.real_vector, estimator=estimator)

    return guide


def imq_mmd(x, y):
    r"""Unbiased MMD² between samples ``x`` and ``y`` (both (n, d)) with Tolstikhin et al.'s kernel
    sum :math:`\sum_s C_s / (C_s + \|a - b\|^2)`, :math:`C_s = s \cdot 2 d`, s ∈ {0.1, …, 10}."""
    n, d = x.shape

    def gram(a, b):
        sq = jnp.sum((a[:, None] - b[None]) ** 2, -1)
        return sum(c / (c + sq) for c in 2.0 * d * jnp.array([0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]))

    off = 1.0 - jnp.eye(n)
    within = (jnp.sum(gram(x, x) * off) + jnp.sum(gram(y, y) * off)) / (n * (n - 1))
    return within - 2.0 * jnp.mean(gram(x, y))


def mmd_autoencoder(activation="tanh"):
    """WAE-MMD as a NumPyro model: the encoder is a deterministic part of the model."""

    def model(x, latent_dim, hidden, lam):
        batch, data_dim = x.shape
        encode = numpyro.module("encoder", vae.mlp(hidden, latent_dim, stax.Tanh), (batch, data_dim))
        decode = numpyro.module("decoder", vae.decoder_net(hidden, data_dim, activation), (batch, latent_dim))
        z = encode(x)
        prior = jax.random.normal(numpyro.prng_key(), z.shape, z.dtype)
        numpyro.factor("mmd", -lam * batch * imq_mmd(z, prior))
        with numpyro.plate("batch", batch):
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    return model


def no_guide(x, latent_dim, hidden, lam):
    """WAE-MMD has no latent sample site; its encoder lives in the model."""


def make_svi(args):
    optim = optax.rmsprop(args.lr)
    if args.regularizer == "mmd":
        return SVI(mmd_autoencoder(args.decoder_activation), no_guide, optim, Trace_ELBO())
    if args.regularizer == "ssm":
        estimator = ScoreNet(objective="ssm_vr", hidden=(256, 256), optimizer=optax.rmsprop(args.lr))
    elif args.regularizer == "stein":
        estimator = Stein(eta=1e-3)
    else:
        estimator = SSGE(eta=1e-3, threshold=0.99)
    model = decoder_with_prior(args.decoder_activation)
    return SVI(model, deterministic_encoder(estimator), optim, ImplicitELBO(num_particles=1))


def run_name(args):
    """File stem of the run's checkpoint, figure and results, e.g. ``wae_ssm_z8``."""
    return f"wae_{args.regularizer}_z{args.latent_dim}{vae.activation_suffix(args)}{vae.seed_suffix(args)}"


def main(args):
    data = vae.load_data(args)
    train_key, eval_key, _, fig_key = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    svi = make_svi(args)
    name = run_name(args)
    hidden = tuple(args.hidden)
    config = {
        "model": "wae",
        "data": "digits" if args.data is None else os.path.basename(os.path.normpath(args.data)),
        "latent_dim": args.latent_dim,
        "regularizer": args.regularizer,
        "lam": args.lam,
        "hidden": list(args.hidden),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        **vae.activation_config(args),
    }
    result, seconds = vae.train(args, svi, data, name, config, train_key, args.latent_dim, hidden, args.lam)
    params = svi.get_params(result.state)

    test_x = vae.binarized_test_images(data)
    data_dim = test_x.shape[-1]
    log_lik = vae.decoder_log_likelihood(params, hidden, data_dim, args.decoder_activation)
    codes = jax.jit(vae.mlp(hidden, args.latent_dim, stax.Tanh)[1])(params["encoder$params"], test_x)
    decode = vae.decoder_mean(params, hidden, data_dim, args.decoder_activation)
    vae.save_figures(
        os.path.join(args.out_dir, f"{name}.png"),
        decode(jax.random.normal(fig_key, (64, args.latent_dim))),
        test_x,
        decode(codes[:64]),
        result.losses,
        args.batch_size,
        f"{name}: {len(result.losses)} steps",
    )
    # The encoder is deterministic; the IWAE proposal is a Gaussian around each code whose
    # scale is --proposal-scale times the spread of the codes over the test set.
    loc = codes[: args.iwae_rows]
    scale = jnp.broadcast_to(args.proposal_scale * codes.std(0), loc.shape)
    return vae.report(args, name, vae.evaluate(eval_key, args, log_lik, test_x, loc, scale), result, seconds)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    vae.add_autoencoder_arguments(p, "wae_out")
    p.add_argument("--regularizer", choices=["ssm", "stein", "ssge", "mmd"], default="ssm")
    p.add_argument("--lam", type=float, default=10.0, help="weight λ of the latent regularizer")
    p.add_argument("--proposal-scale", type=float, default=0.1, help="IWAE proposal scale, relative to the codes' spread")
    args = p.parse_args(argv)
    vae.check_latent_dim(p, args)
    if args.lam <= 0:
        p.error(f"--lam must be > 0, got {args.lam}")
    return args


if __name__ == "__main__":
    main(parse_args())
