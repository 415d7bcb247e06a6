r"""``AutoImplicit``: an automatic guide whose posterior is a neural sampler.

All latent sites of the model are flattened into one unconstrained vector ``u ∈ R^D`` (as in
NumPyro's :class:`~numpyro.infer.autoguide.AutoContinuous` guides), drawn as

.. math:: \epsilon \sim \mathcal N(0, I_K), \quad
   w = \epsilon_{1:D} + \tanh(\alpha)\, c\, \tanh(g_\theta(\epsilon)), \quad u = \mu + L w,

with ``g`` a network (default MLP), ``α`` a learned gate starting at 0 (the guide starts as a
Gaussian with mean μ and Cholesky factor L), ``c`` = ``residual_scale`` and ``K ≥ D`` the noise
dimension. The affine part's entropy :math:`\log|\det L|` is exact; only :math:`H[w]` is
score-estimated, by default by a :class:`~implicitvi.estimators.ScoreNet` with a normal base
(``s(w) = −w + net(w)``). The residual is bounded (at most ``c`` per coordinate), so ``w`` keeps
normal tails: an unbounded residual can move the sampler's mass faster than the score network
tracks it, and the entropy gradient then diverges. Constrained sites get
``biject_to(support)(u)`` and carry its log-Jacobian.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import optax
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_median
from numpyro.primitives import Messenger

from implicitvi import _checks
from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.estimators.base import get_estimator
from implicitvi.infer.primitives import implicit_sample
from implicitvi.nets import MLP

__all__ = ["AutoImplicit", "AutoSampler"]


def default_estimator() -> ScoreNet:
    """AutoImplicit's score estimator: a normal-base 128-128 ScoreNet taking 3 SSM-VR steps per
    SVI step with Adam (1e-3) on gradients clipped to global norm 1."""
    return ScoreNet(
        hidden=(128, 128),
        base="normal",
        steps_per_update=3,
        optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
    )


WHITENED = {
    "ssm": default_estimator,
    "stein": lambda: Stein(base="normal"),
    "ssge": lambda: SSGE(base="normal"),
}
"""Estimator names → the configurations AutoImplicit uses for them: all shrink towards the
standard normal's score, which is where the whitened latent ``w`` starts."""


class _ParamRate(Messenger):
    """Param sites registered inside hold their values divided by ``rate``; the code inside
    sees them multiplied back. The stored value is what the optimizer steps (and what a trace
    records: it copies the site before this handler's ``postprocess_message``)."""

    def __init__(self, rate):
        super().__init__()
        self.rate = rate

    def process_message(self, msg):
        if msg["type"] == "param" and self.rate != 1.0:
            init, rate = msg["fn"], self.rate
            msg["fn"] = lambda *a, **k: jax.tree.map(lambda x: x / rate, init(*a, **k))

    def postprocess_message(self, msg):
        if msg["type"] == "param" and self.rate != 1.0:
            msg["value"] = jax.tree.map(lambda x: self.rate * x, msg["value"])


class AutoSampler(AutoContinuous):
    """What the sampler-only autoguides share: NumPyro's flattening of the latent sites into one
    unconstrained vector ``u``, a draw ``u = μ + L w`` whose ``w`` has no closed-form density and
    is recorded by :func:`~implicitvi.infer.implicit_sample`, and posterior summaries from draws.

    Subclasses set ``self.estimator`` (``None`` where ``_draw_latent`` gives the scores),
    ``self.network`` and ``self.noise_dim`` (``None``: the latent dimension) before calling
    ``__init__`` here, and implement ``_draw_latent(sample_shape, scored) -> (w, implicit_sample
    keywords)``, where ``scored`` is false for posterior draws, which record no site (a score
    the keywords would carry need not be computed).
    """

    def __init__(self, model, *, init_scale, num_samples, prefix, init_loc_fn):
        _checks.check_positive(init_scale, "init_scale")
        _checks.check_positive_int(num_samples, "num_samples")
        if not (_checks.is_network(self.network) or callable(self.network)):
            raise TypeError(
                "network must have init(key, in_dim, out_dim, dtype) and apply(params, x) methods "
                "(e.g. implicitvi.nets.MLP), or be a factory network(name, noise_dim, out_dim) -> "
                f"apply; got {type(self.network).__name__}"
            )
        if self.estimator is not None and self.estimator.conditional:
            raise ValueError(
                f"estimator: {type(self).__name__}'s latent has no context; use an unconditional one"
            )
        self._init_scale = init_scale
        self.num_samples = num_samples
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        # NumPyro's initialisation builds the prototype trace (it handles ImproperUniform sites,
        # which cannot be sampled). A discrete latent makes it fail first, with a message about
        # enumeration; only then is the model traced by sampling, to name the site.
        try:
            super()._setup_prototype(*args, **kwargs)
        except Exception:
            with handlers.block():
                try:
                    sampled = handlers.trace(handlers.seed(self.model, 0)).get_trace(*args, **kwargs)
                except Exception:
                    sampled = {}
            self._check_continuous(sampled)
            raise
        if self.noise_dim is None:
            self.noise_dim = self.latent_dim
        if self.noise_dim < self.latent_dim:
            raise ValueError(
                f"noise_dim must be at least the latent dimension {self.latent_dim} "
                f"(else the sampler has no density on R^{self.latent_dim}), got {self.noise_dim}"
            )

    def _check_continuous(self, trace):
        for name, site in trace.items():
            if site["type"] == "sample" and not site["is_observed"] and site["fn"].support.is_discrete:
                raise ValueError(
                    f"site '{name}' of the model is a discrete latent variable: {type(self).__name__} "
                    "needs continuous latents (its sampler is reparameterized); marginalize it "
                    "out, e.g. with numpyro.contrib.funsor, or observe it"
                )

    def _network(self, out_dim, rate=1.0):
        """``self.network`` as a function ``(..., K) -> (..., out_dim)``, its parameters a param
        site (or registered by the factory).

        With ``rate`` ``r``, every param site the network registers holds ``θ / r`` and the
        network is applied at ``θ`` (:class:`_ParamRate`): an optimizer whose steps do not
        depend on the gradient's scale (Adam, RMSProp) then moves ``θ`` at ``r`` times its
        learning rate, as if the network had a learning rate of its own.
        """
        name = f"{self.prefix}_sampler"
        with _ParamRate(rate):
            if not _checks.is_network(self.network):
                return self.network(name, self.noise_dim, out_dim)
            net = self.network
            # The default float type, as the noise and the other parameters (float64 under x64).
            dtype = jnp.result_type(float)
            params = numpyro.param(name, lambda key: net.init(key, self.noise_dim, out_dim, dtype))
        return lambda eps: net.apply(params, eps)

    def _draw(self, sample_shape=(), scored=True):
        """``(u, w, log|det L|, implicit_sample keywords)`` for ``sample_shape`` draws; without
        ``scored``, the keywords may be empty."""
        d = self.latent_dim
        loc = numpyro.param(f"{self.prefix}_loc", self._init_latent)
        scale_tril = numpyro.param(
            f"{self.prefix}_scale_tril",
            jnp.identity(d) * self._init_scale,
            constraint=constraints.scaled_unit_lower_cholesky,
        )
        w, site_kwargs = self._draw_latent(tuple(sample_shape), scored)
        v, log_det = self._frame(w)
        u = loc + v @ scale_tril.T
        return u, w, log_det + jnp.sum(jnp.log(jnp.diagonal(scale_tril))), site_kwargs

    def _frame(self, w):
        """A bijection ``v = T(w)`` applied before the affine map, and ``log|det ∂v/∂w|``
        (per draw or scalar): here the identity."""
        return w, 0.0

    def _sample_latent(self, *args, **kwargs):
        sample_shape = kwargs.pop("sample_shape", ())
        if sample_shape:  # posterior draws: no site to score
            return self._draw(sample_shape, scored=False)[0]
        u, w, log_det, site_kwargs = self._draw()
        return implicit_sample(
            f"_{self.prefix}_latent",
            u,
            latent=w,
            log_abs_det_jacobian=log_det,
            support=constraints.real_vector,
            estimator=self.estimator,
            infer={"is_auxiliary": True},
            **site_kwargs,
        )

    def _no_closed_form(self, method):
        raise NotImplementedError(
            f"{type(self).__name__}.{method}: an implicit guide has no closed-form posterior; use "
            "sample_posterior, median or quantiles"
        )

    def _get_posterior(self):
        self._no_closed_form("get_posterior")

    def get_base_dist(self):
        """Not available: the guide's distribution has no closed form."""
        self._no_closed_form("get_base_dist")

    def get_transform(self, params):
        """Not available: the guide's distribution has no closed form."""
        self._no_closed_form("get_transform")

    def get_posterior(self, params):
        """Not available: the guide's distribution has no closed form."""
        self._no_closed_form("get_posterior")

    def _posterior_draws(self, params):
        return self.sample_posterior(
            jax.random.PRNGKey(0), params, sample_shape=(self.num_samples,)
        )

    def median(self, params):
        """Coordinate-wise median of ``num_samples`` posterior draws (fixed key), per site."""
        return {k: jnp.median(v, axis=0) for k, v in self._posterior_draws(params).items()}

    def quantiles(self, params, quantiles):
        """Coordinate-wise quantiles of ``num_samples`` posterior draws (fixed key), per site;
        each value has shape ``(len(quantiles),) + site shape``."""
        q = jnp.asarray(quantiles)
        return {k: jnp.quantile(v, q, axis=0) for k, v in self._posterior_draws(params).items()}


class AutoImplicit(AutoSampler):
    """Implicit (sampler-only) guide over all latent sites of ``model``.

    Args:
        model: a NumPyro model with continuous latent sites.
        noise_dim: dimension ``K`` of the noise; default the latent dimension ``D``; ``K ≥ D``.
        hidden: hidden widths of the default sampler MLP.
        network: the residual network ``g``: an object with ``init(key, in_dim, out_dim, dtype)``
            and ``apply(params, x)`` (like :class:`implicitvi.nets.MLP`), or a factory
            ``network(name, noise_dim, latent_dim) -> apply`` called inside the guide that
            registers its own parameters (e.g. through ``numpyro.contrib.module.eqx_module`` or
            ``flax_module``) and returns a function mapping ``(..., K)`` to ``(..., D)``.
        estimator: the score estimator of ``w``: an estimator, or ``"ssm"`` (default:
            :func:`default_estimator`), ``"stein"`` or ``"ssge"`` (with ``base="normal"``).
            Leave ``ImplicitELBO``'s own ``estimator`` unset to use this one.
        residual_scale: the bound ``c`` on the residual's size per coordinate (in units of the
            whitened noise).
        init_scale: initial diagonal of ``L``.
        num_samples: draws used by :meth:`median` and :meth:`quantiles`.
        prefix, init_loc_fn: as in NumPyro's autoguides.
    """

    def __init__(
        self,
        model,
        *,
        noise_dim: int | None = None,
        hidden=(64, 64),
        network=None,
        estimator=None,
        residual_scale: float = 1.0,
        init_scale: float = 0.1,
        num_samples: int = 1000,
        prefix: str = "auto",
        init_loc_fn=init_to_median,
    ):
        _checks.check_positive_int(noise_dim, "noise_dim", allow_none=True)
        _checks.check_positive(residual_scale, "residual_scale", allow_zero=True)
        self.noise_dim = noise_dim
        self.network = MLP(hidden) if network is None else network
        if estimator is None or isinstance(estimator, str) and estimator in WHITENED:
            self.estimator = WHITENED["ssm" if estimator is None else estimator]()
        else:
            self.estimator = get_estimator(estimator)
        self.residual_scale = residual_scale
        super().__init__(
            model, init_scale=init_scale, num_samples=num_samples, prefix=prefix,
            init_loc_fn=init_loc_fn,
        )

    def _draw_latent(self, sample_shape, scored=True):
        d = self.latent_dim
        gate = numpyro.param(f"{self.prefix}_gate", jnp.zeros(()))
        residual = self._network(d)
        eps = jax.random.normal(numpyro.prng_key(), tuple(sample_shape) + (self.noise_dim,))
        return eps[..., :d] + jnp.tanh(gate) * self.residual_scale * jnp.tanh(residual(eps)), {}
