r"""The Wasserstein auto-encoders of Song, Garg, Shi & Ermon (UAI 2019, §5.3) as NumPyro
programs, for :mod:`mnist_vae_wae`.

WAE (Tolstikhin et al., ICLR 2018) with the KL regularizer:

.. math:: \mathcal{L} = \mathbb{E}_x[-\log p(x \mid f(x))] + \lambda\,\mathrm{KL}(q(z) \,\|\, p(z)),

q(z) the aggregate posterior of a deterministic encoder f. Its guide site has no context, so the
batch's codes are pooled as draws of q(z), and the prior and the site sit under ``scale(λ)``:
``ImplicitELBO`` then optimizes exactly −𝓛. The ``mmd`` baseline replaces the KL by λ·MMD with
Tolstikhin et al.'s inverse multiquadratic kernels, trained with ``Trace_ELBO``.

WAE programs take ``(x, latent_dim, hidden, lam)``, ``x`` a binary batch (batch, data_dim).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
from autoencoders import decoder_net, mlp
from numpyro.distributions import constraints
from numpyro.handlers import scale
from numpyro.infer import SVI, Trace_ELBO

from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.infer import ImplicitELBO, implicit_sample


def decoder_with_prior(activation="tanh"):
    """WAE model p(x | z) with the prior of z weighted by λ (the KL's cross-entropy term)."""

    def model(x, latent_dim, hidden, lam):
        batch, data_dim = x.shape
        decode = numpyro.module("decoder", decoder_net(hidden, data_dim, activation), (batch, latent_dim))
        with numpyro.plate("batch", batch):
            with scale(scale=lam):
                z = numpyro.sample("z", dist.Normal(0, 1).expand([latent_dim]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    return model


def deterministic_encoder(estimator):
    """WAE guide: z = f(x), an implicit site whose pooled batch is a sample of q(z)."""

    def guide(x, latent_dim, hidden, lam):
        batch, data_dim = x.shape
        encode = numpyro.module("encoder", mlp(hidden, latent_dim), (batch, data_dim))
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
    """WAE-MMD as a NumPyro model: the encoder is a deterministic part of the model, the
    regularizer a factor −λ · batch · MMD²(codes, prior draws)."""

    def model(x, latent_dim, hidden, lam):
        batch, data_dim = x.shape
        encode = numpyro.module("encoder", mlp(hidden, latent_dim), (batch, data_dim))
        decode = numpyro.module("decoder", decoder_net(hidden, data_dim, activation), (batch, latent_dim))
        z = encode(x)
        prior = jax.random.normal(numpyro.prng_key(), z.shape, z.dtype)
        numpyro.factor("mmd", -lam * batch * imq_mmd(z, prior))
        with numpyro.plate("batch", batch):
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    return model


def no_guide(x, latent_dim, hidden, lam):
    """WAE-MMD has no latent sample site; its encoder lives in the model."""


def wae_svi(regularizer, lr, activation="tanh"):
    """SVI (RMSProp ``lr``) of the WAE with ``regularizer`` in {ssm, stein, ssge, mmd}."""
    if regularizer == "mmd":
        return SVI(mmd_autoencoder(activation), no_guide, optax.rmsprop(lr), Trace_ELBO())
    if regularizer == "ssm":
        estimator = ScoreNet(objective="ssm_vr", hidden=(256, 256), optimizer=optax.rmsprop(lr))
    elif regularizer == "stein":
        estimator = Stein(eta=1e-3)
    else:
        estimator = SSGE(eta=1e-3, threshold=0.99)
    return SVI(decoder_with_prior(activation), deterministic_encoder(estimator), optax.rmsprop(lr),
               ImplicitELBO(num_particles=1))
