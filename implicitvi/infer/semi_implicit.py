r"""``AutoSemiImplicit``: a semi-implicit guide whose entropy gradient comes from score regression.

All latent sites are flattened into one unconstrained vector ``u ∈ R^D`` (as in NumPyro's
:class:`~numpyro.infer.autoguide.AutoContinuous` guides) and drawn as

.. math:: \epsilon_2 \sim \mathcal N(0, I_K), \quad \epsilon_1 \sim \mathcal N(0, I_D), \quad
   w = \tfrac{1}{\sqrt2}\, \epsilon_{2,1:D} + g_\theta(\epsilon_2) + \sigma(\epsilon_2) \odot \epsilon_1,
   \quad u = \mu + L w,

   \sigma(\epsilon_2) = \sigma_{\min} + 2\,(\tfrac{1}{\sqrt2} - \sigma_{\min})\,
   \operatorname{sigmoid} h_\theta(\epsilon_2),

so that :math:`q(w) = \mathbb E_{\epsilon_2} \mathcal N(w;\, m(\epsilon_2), \operatorname{diag}
\sigma(\epsilon_2)^2)` is a continuous mixture of Gaussians (Yin & Zhou 2018, SIVI). ``(g, h)`` is
one network (default MLP) whose output layer starts at zero, so the guide starts as the Gaussian
:math:`\mathcal N(\mu, LL^\top)` of ``AutoMultivariateNormal`` (``w ~ N(0, I)``) with half of
``w``'s variance in the mixing noise: the network then has a first-order effect from the first
step (with all variance in :math:`\epsilon_1`, the Gaussian is a saddle of the mixing network).
The conditional scale is bounded, so that the overall scale is learned by ``L`` and ``w`` stays
near the whitened frame where the score network's normal base is a good start; left free, the
network's scale outruns ``L``'s and the score network lags behind a wide ``w``.
:math:`\log|\det L|` is exact; the entropy of ``w`` has the gradient
:math:`-\mathbb E[\nabla_w \log q(w)^\top \partial w / \partial\phi]`, whose score is fitted by
least squares on the conditional score
:math:`\nabla_w \log q(w \mid \epsilon_2) = -\epsilon_1 / \sigma(\epsilon_2)`, known at every draw
(:func:`implicitvi.objectives.regression`; the identity behind UIVI, Titsias & Ruiz 2019, and
SIVI-SM, Yu & Zhang 2023), by a few optimizer steps of a normal-base score network per SVI step.

With ``score="mixture"`` no score network is fitted: the conditional scores, averaged over
many mixing draws with weights :math:`\propto q(w \mid \epsilon_2^k)`, are the score (SIVI's
estimate, exact as the number of mixing draws grows). The mixing draws are shared by the
particles of an :class:`~implicitvi.infer.ImplicitELBO` step, so that their network pass runs
once per step.

With ``flow=`` the frame is no longer affine: :math:`u = \mu + L\, T(w)` with ``T`` a NumPyro
autoregressive flow, whose log-determinant :math:`\log|\det \partial T / \partial w|` is exact
per draw and enters the ELBO as the affine part's does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import optax
from jax.example_libraries import stax
from numpyro.distributions.flows import (
    BlockNeuralAutoregressiveTransform,
    InverseAutoregressiveTransform,
)
from numpyro.distributions.transforms import PermuteTransform
from numpyro.infer.initialization import init_to_median
from numpyro.nn.auto_reg_nn import AutoregressiveNN
from numpyro.nn.block_neural_arn import BlockNeuralAutoregressiveNN

from implicitvi import _checks
from implicitvi.estimators import ScoreNet
from implicitvi.estimators.base import get_estimator
from implicitvi.infer.autoguide import AutoSampler
from implicitvi.infer.primitives import shared_prng_key
from implicitvi.nets import MLP

__all__ = ["AutoSemiImplicit", "mixture_score", "regression_estimator"]


def mixture_score(log_densities, scores):
    r"""The score of a mixture at one point, from its components' log-densities and scores there.

    For :math:`q(w) = \tfrac1K \sum_k q_k(w)`,

    .. math:: \nabla_w \log q(w) = \sum_k \omega_k\, \nabla_w \log q_k(w), \qquad
       \omega_k = \frac{q_k(w)}{\sum_j q_j(w)},

    the components' scores weighted by their densities at ``w``. With the components
    :math:`q(w \mid \epsilon_2^k)` at ``K`` mixing draws of a semi-implicit distribution (the
    draw's own among them), this is SIVI's estimate of its marginal score (Yin & Zhou 2018),
    consistent as ``K`` grows.

    Args:
        log_densities: ``(..., K)`` :math:`\log q_k(w)`, up to one constant shared by all ``k``.
        scores: ``(..., K, D)`` :math:`\nabla_w \log q_k(w)`.

    Returns:
        ``(..., D)`` the score at ``w``.
    """
    if jnp.ndim(scores) < 2 or jnp.shape(log_densities) != jnp.shape(scores)[:-1]:
        raise ValueError(
            "mixture_score: log_densities must have shape scores.shape[:-1] = (..., K) for scores "
            f"of shape (..., K, D); got log_densities {jnp.shape(log_densities)} and scores "
            f"{jnp.shape(scores)}"
        )
    weights = jax.nn.softmax(log_densities, axis=-1)[..., None]
    return jnp.sum(weights * scores, axis=-2)


def regression_estimator() -> ScoreNet:
    """AutoSemiImplicit's score estimator: a normal-base 128-128 :class:`ScoreNet` taking three
    Adam (3e-3) steps of the ``"regression"`` objective per SVI step (with one, it falls behind
    the mixing network at an SVI learning rate of 1e-2)."""
    return ScoreNet(
        objective="regression",
        hidden=(128, 128),
        base="normal",
        steps_per_update=3,
        optimizer=optax.adam(3e-3),
    )


class AutoSemiImplicit(AutoSampler):
    r"""Semi-implicit guide over all latent sites of ``model``; fit it with
    :class:`~implicitvi.infer.ImplicitELBO`.

    Args:
        model: a NumPyro model with continuous latent sites.
        noise_dim: dimension ``K ≥ D`` of the mixing noise ``ε₂``; default the latent dimension.
        hidden: hidden widths of the default mixing MLP.
        network: the mixing network ``(g, h)``, mapping ``(..., K)`` to ``(..., 2D)`` (first ``D``
            outputs ``g``, last ``D`` outputs ``h``): an object with ``init(key, in_dim, out_dim,
            dtype)`` and ``apply(params, x)``, or a factory ``network(name, noise_dim, out_dim) ->
            apply`` that registers its own parameters (as :class:`AutoImplicit` takes them). It
            should output zeros at the start, so that the guide starts as a Gaussian.
        estimator: the score estimator of ``w`` (default :func:`regression_estimator`); a network
            with ``objective="regression"`` uses the conditional scores, any other estimator
            (``"stein"``, ``"ssge"``, ``"ssm"``) ignores them. None is used with
            ``score="mixture"``.
        min_scale: ``σ_min``, a floor on the conditional scale (in whitened units), which keeps
            the regression targets ``−ε₁/σ`` bounded; ``0 ≤ σ_min < 1/√2``.
        network_rate: the mixing network's step size relative to ``μ`` and ``L``'s under an
            optimizer whose steps do not depend on the gradient's scale (Adam, RMSProp; under SGD
            it is squared): the network's param sites (the default's ``{prefix}_sampler``, or
            those a factory registers) hold its parameters divided by it. At a rate of 1 the
            network widens ``w`` faster than ``L`` takes up the scale and than the score network
            follows, and fits at Adam's 1e-2 diverge; see docs/benchmarks.md.
        init_scale: initial diagonal of ``L``.
        flow: ``None`` (default) or ``"iaf"`` / ``"bnaf"``: a normalizing flow ``T`` between
            the mixing and the affine map, ``u = μ + L T(w)``, built as NumPyro's
            :class:`~numpyro.infer.autoguide.AutoIAFNormal` (three IAF layers of hidden widths
            ``[D, D]``) and :class:`~numpyro.infer.autoguide.AutoBNAFNormal` (one block
            layer, hidden factors ``[8, 8]``) build theirs; its per-draw log-determinant is
            exact, so the score is still estimated in ``w`` only. With ``w`` Gaussian the guide
            is that autoguide (up to ``μ`` and ``L``).
        score: where the score of ``w`` comes from. ``"regression"`` (default): the score
            network ``estimator``, fitted on the conditional scores. ``"mixture"``: no network;
            the conditional scores averaged over ``num_components`` mixing draws (below) are
            the score itself, a self-normalised importance-sampling estimate of
            :math:`\nabla_w \log q(w) = \mathbb E[\nabla_w \log q(w \mid \varepsilon_2) \mid w]`
            that is consistent as ``C`` grows (it is the score of the log-mean-exp in SIVI's
            bound, Yin & Zhou 2018) and leans towards the draw's own component at small ``C``
            or in high dimension, which shrinks the entropy credit of the mixing.
        num_components: ``C``, further mixing draws over which the conditional
            score is averaged: with the draw's own component ``ε₂⁰`` and ``C`` fresh ones
            ``ε₂¹…ε₂ᶜ`` from the prior, the average is
            :math:`\sum_{k=0}^{C} \omega_k \nabla_w \log q(w \mid \varepsilon_2^k)` with
            :math:`\omega_k \propto q(w \mid \varepsilon_2^k)`. As a regression target: as
            ``ε₂⁰`` is a draw of :math:`q(\varepsilon_2 \mid w)`, its conditional mean given
            ``w`` is still the score (the invariance of conditional importance resampling,
            Andrieu, Doucet & Holenstein 2010), and its variance is lower. Default ``0`` (the
            target ``−ε₁/σ`` alone) with ``score="regression"`` and 256 with ``"mixture"``. It
            costs ``C`` mixing-network passes per step (the draws are shared by the step's
            particles, :func:`~implicitvi.infer.shared_prng_key`) and ``C``
            Gaussian densities per particle, no model evaluation.
        num_samples: draws used by :meth:`median` and :meth:`quantiles`.
        prefix, init_loc_fn: as in NumPyro's autoguides.

    On the posterior-accuracy benchmark (docs/benchmarks.md) it stays finite under Adam at 1e-2
    and 1e-3 on all ten models, and is more accurate at 1e-2; watch its score network with
    :func:`~implicitvi.infer.score_check`.
    """

    def __init__(
        self,
        model,
        *,
        noise_dim: int | None = None,
        hidden=(64, 64),
        network=None,
        estimator=None,
        min_scale: float = 0.01,
        network_rate: float = 0.1,
        init_scale: float = 0.1,
        flow: str | None = None,
        score: str = "regression",
        num_components: int | None = None,
        num_samples: int = 1000,
        prefix: str = "auto",
        init_loc_fn=init_to_median,
    ):
        _checks.check_positive_int(noise_dim, "noise_dim", allow_none=True)
        _checks.check_choice(score, "score", ("regression", "mixture"))
        self.score = score
        if num_components is None:
            num_components = 256 if score == "mixture" else 0
        _checks.check_int_at_least(num_components, "num_components", 1 if score == "mixture" else 0)
        self.num_components = num_components
        if score == "mixture" and estimator is not None:
            raise ValueError(
                "estimator: with score='mixture' the averaged conditional scores are the score and "
                "no estimator is fitted; leave estimator=None, or use score='regression'"
            )
        if flow is not None:
            _checks.check_choice(flow, "flow", ("iaf", "bnaf"))
        self.flow = flow
        _checks.check_in_range(min_scale, "min_scale", 0.0, 0.5**0.5, high_open=True)
        _checks.check_positive(network_rate, "network_rate")
        self.network_rate = network_rate
        self.noise_dim = noise_dim
        self.network = MLP(hidden, zero_output=True) if network is None else network
        if score == "mixture":
            self.estimator = None
        else:
            self.estimator = regression_estimator() if estimator is None else get_estimator(estimator)
        self.min_scale = min_scale
        super().__init__(
            model, init_scale=init_scale, num_samples=num_samples, prefix=prefix,
            init_loc_fn=init_loc_fn,
        )

    def _mixing(self, mixing, eps2):
        """The conditional Gaussian's ``(m(ε₂), σ(ε₂))``, each ``(..., D)``."""
        d = self.latent_dim
        half = 0.5**0.5
        out = mixing(eps2)
        loc = half * eps2[..., :d] + out[..., :d]
        # σ ∈ (σ_min, σ_min + 2 (1/√2 − σ_min)); at the start σ_min + (1/√2 − σ_min) = 1/√2, so
        # that w ~ N(0, I): the overall scale stays with L, the network shapes within it.
        scale = self.min_scale + (half - self.min_scale) * 2 * jax.nn.sigmoid(out[..., d:])
        return loc, scale

    def _draw_latent(self, sample_shape, scored=True):
        d = self.latent_dim
        mixing = self._network(2 * d, rate=self.network_rate)
        key_mix, key_noise = jax.random.split(numpyro.prng_key())
        eps2 = jax.random.normal(key_mix, sample_shape + (self.noise_dim,))
        eps1 = jax.random.normal(key_noise, sample_shape + (d,))
        loc, scale = self._mixing(mixing, eps2)
        w = loc + scale * eps1
        if not scored:
            return w, {}
        target = -eps1 / scale
        if self.num_components:
            target = self._averaged_score(mixing, shared_prng_key(), w, eps1, scale)
        return w, {"score" if self.score == "mixture" else "conditional_score": target}

    def _averaged_score(self, mixing, key, w, eps1, scale):
        """The conditional score averaged over the draw's own mixing component and
        ``num_components`` fresh ones (per draw of ``w``), weighted by their densities at ``w``.
        They are drawn from ``key``, which :class:`ImplicitELBO` shares between the particles of a
        step (:func:`~implicitvi.infer.shared_prng_key`): there their mixing pass runs
        once per step, not once per particle."""
        c = self.num_components
        w, eps1, scale = (jax.lax.stop_gradient(a) for a in (w, eps1, scale))
        eps2 = jax.random.normal(key, w.shape[:-1] + (c, self.noise_dim))
        loc_k, scale_k = jax.lax.stop_gradient(self._mixing(mixing, eps2))
        z_k = (w[..., None, :] - loc_k) / scale_k
        log_q = jnp.concatenate(
            [
                jnp.sum(-0.5 * eps1**2 - jnp.log(scale), -1)[..., None],
                jnp.sum(-0.5 * z_k**2 - jnp.log(scale_k), -1),
            ],
            axis=-1,
        )
        scores = jnp.concatenate([(-eps1 / scale)[..., None, :], -z_k / scale_k], axis=-2)
        return mixture_score(log_q, scores)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        if self.flow is not None and self.latent_dim == 1:
            raise ValueError(
                f"flow={self.flow!r} needs a latent dimension of at least 2 (NumPyro's "
                "autoregressive flows), got 1; use flow=None"
            )

    def _frame(self, w):
        """``v = T(w)`` through NumPyro's flow (as its AutoIAFNormal / AutoBNAFNormal build it)
        and the per-draw ``log|det ∂v/∂w|``; the identity without a flow."""
        if self.flow is None:
            return w, 0.0
        d = self.latent_dim
        parts = []
        for i in range(3 if self.flow == "iaf" else 1):
            if i > 0:
                parts.append(PermuteTransform(jnp.arange(d)[::-1]))
            name = f"{self.prefix}_flow_arn__{i}"
            if self.flow == "iaf":
                arn = AutoregressiveNN(d, [d, d], permutation=jnp.arange(d), nonlinearity=stax.Elu)
                parts.append(InverseAutoregressiveTransform(numpyro.module(name, arn, (d,))))
            else:
                arn = BlockNeuralAutoregressiveNN(d, [8, 8], None)
                parts.append(BlockNeuralAutoregressiveTransform(numpyro.module(name, arn, (d,))))
        log_det = jnp.zeros(w.shape[:-1], w.dtype)
        for t in parts:
            v, intermediates = t.call_with_intermediates(w)
            log_det = log_det + t.log_abs_det_jacobian(w, v, intermediates)
            w = v
        return w, log_det
