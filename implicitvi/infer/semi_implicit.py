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
"""

from __future__ import annotations

import jax
import numpyro
import optax
from numpyro.infer.initialization import init_to_median

from implicitvi import _checks
from implicitvi.estimators import ScoreNet
from implicitvi.estimators.base import get_estimator
from implicitvi.infer.autoguide import AutoSampler
from implicitvi.nets import MLP

__all__ = ["AutoSemiImplicit", "regression_estimator"]


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
    """Semi-implicit guide over all latent sites of ``model``; fit it with
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
            (``"stein"``, ``"ssge"``, ``"ssm"``) ignores them.
        min_scale: ``σ_min``, a floor on the conditional scale (in whitened units), which keeps
            the regression targets ``−ε₁/σ`` bounded; ``0 ≤ σ_min < 1/√2``.
        network_scale: a constant multiplying the network's output. Under Adam, whose steps have
            the size of the learning rate whatever the gradient's, it is the mixing network's
            learning rate relative to ``μ`` and ``L``: left at 1, the network widens ``w`` faster
            than ``L`` takes up the scale and than the score network follows, and fits at a
            learning rate of 1e-2 diverge; see docs/benchmarks.md.
        init_scale: initial diagonal of ``L``.
        num_samples: draws used by :meth:`median` and :meth:`quantiles`.
        prefix, init_loc_fn: as in NumPyro's autoguides.

    On the posterior-accuracy benchmark (docs/benchmarks.md), Adam at 1e-2 gives its best
    results, but it stopped non-finite there on stochastic volatility (D = 103) and on the pump
    model; at 1e-3 it stayed finite on the five models it ran on, and the slowed mixing network
    needs more than 5,000 steps there.
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
        network_scale: float = 0.1,
        init_scale: float = 0.1,
        num_samples: int = 1000,
        prefix: str = "auto",
        init_loc_fn=init_to_median,
    ):
        _checks.check_positive_int(noise_dim, "noise_dim", allow_none=True)
        _checks.check_in_range(min_scale, "min_scale", 0.0, 0.5**0.5, high_open=True)
        _checks.check_positive(network_scale, "network_scale")
        self.network_scale = network_scale
        self.noise_dim = noise_dim
        self.network = MLP(hidden, zero_output=True) if network is None else network
        self.estimator = regression_estimator() if estimator is None else get_estimator(estimator)
        self.min_scale = min_scale
        super().__init__(
            model, init_scale=init_scale, num_samples=num_samples, prefix=prefix,
            init_loc_fn=init_loc_fn,
        )

    def _draw_latent(self, sample_shape):
        d = self.latent_dim
        half = 0.5**0.5
        mixing = self._network(2 * d)
        key_mix, key_noise = jax.random.split(numpyro.prng_key())
        eps2 = jax.random.normal(key_mix, sample_shape + (self.noise_dim,))
        eps1 = jax.random.normal(key_noise, sample_shape + (d,))
        # The output scale slows the mixing network under Adam (whose steps have the size of
        # the learning rate whatever the gradient's): g moves at the pace of μ and L.
        out = self.network_scale * mixing(eps2)
        loc = half * eps2[..., :d] + out[..., :d]
        # σ ∈ (σ_min, σ_min + 2 (1/√2 − σ_min)); at the start σ_min + (1/√2 − σ_min) = 1/√2, so
        # that w ~ N(0, I): the overall scale stays with L, the network shapes within it.
        scale = self.min_scale + (half - self.min_scale) * 2 * jax.nn.sigmoid(out[..., d:])
        return loc + scale * eps1, {"conditional_score": -eps1 / scale}
