r"""``implicit_sample``: declare a guide site whose density is known only through samples.

An implicit site is an ordinary NumPyro sample site with a :class:`~numpyro.distributions.Delta`
distribution, so that handlers, :class:`~numpyro.infer.Predictive` and ``sample_posterior`` keep
working, flagged ``infer={"implicit": True, ...}``. Its value ``z = T(u)`` is the constrained image
of an unconstrained draw ``u`` of the sampler; ``u`` itself may be an exact bijection
``u = A(w)`` of a *latent* ``w`` whose density is unknown. Then

.. math:: \log q(z) = \log q_W(w) - \log|\det \partial A / \partial w| - \log|\det J_T(u)|.

The Delta carries the two exact terms as its ``log_density``; :class:`~implicitvi.infer.ImplicitELBO`
never asks for :math:`\log q_W`, and adds the entropy surrogate of ``w`` (from a score estimator
fitted on all particles of the step) instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost
from numpyro.primitives import Messenger, apply_stack, mutable

from implicitvi import _checks
from implicitvi.estimators import ScoreNet
from implicitvi.estimators.base import get_estimator

__all__ = ["implicit_sample", "shared_prng_key", "state_name"]


def state_name(name: str) -> str:
    """Name of the mutable site holding the score-estimator state of implicit site ``name``."""
    return f"_{name}_score_state"


_SHARED_KEY = "implicitvi_shared_prng_key"  # the message type of shared_prng_key


def shared_prng_key():
    """A PRNG key shared by all particles of one :class:`~implicitvi.infer.ImplicitELBO` step.

    Under :class:`~implicitvi.infer.ImplicitELBO` every particle's guide gets the same key, fresh
    at every step, so that random quantities that need not differ between particles (a set of
    reference draws, say) are drawn and computed once per step rather than once per particle:
    with the particles vectorized, a computation from this key and the parameters alone is not
    batched. Elsewhere (``sample_posterior``, ``Trace_ELBO``) it is :func:`numpyro.prng_key`.
    """
    msg = apply_stack({"type": _SHARED_KEY, "fn": lambda: None, "args": (), "kwargs": {}, "value": None})
    return numpyro.prng_key() if msg["value"] is None else msg["value"]


class shared_key(Messenger):
    """Answer :func:`shared_prng_key` with ``rng_key`` inside ``fn``."""

    def __init__(self, fn=None, rng_key=None):
        self.rng_key = rng_key
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == _SHARED_KEY and msg["value"] is None:
            msg["value"] = self.rng_key


def _default_estimator(context):
    return ScoreNet(conditional=context is not None)


def implicit_sample(
    name: str,
    value: jax.Array,
    *,
    latent: jax.Array | None = None,
    log_abs_det_jacobian=0.0,
    support=constraints.real,
    context: jax.Array | None = None,
    estimator=None,
    entropy_draws: jax.Array | None = None,
    conditional_score: jax.Array | None = None,
    score: jax.Array | None = None,
    infer: dict | None = None,
):
    """Record an implicit sample site in a guide and return its constrained value.

    Args:
        name: the model site this guide site stands for (or an auxiliary name).
        value: unconstrained draw ``u``, shape ``batch_shape + event_shape`` where
            ``event_shape`` is the support's (``()`` for scalar sites).
        latent: the array ``w`` whose score is estimated, shape ``batch_shape + (d,)``;
            default: ``value`` with its event dimensions flattened.
        log_abs_det_jacobian: ``log|det ∂u/∂w|`` of an exact bijection from ``latent`` to
            ``value`` (scalar or ``batch_shape``), e.g. ``Σ log diag L`` for ``u = μ + L w``.
        support: the model site's support; ``value`` is mapped into it by
            ``biject_to(support)`` and the site carries that map's log-Jacobian.
        context: ``batch_shape + (c,)`` conditioning values of an amortized sampler
            ``q(w | c)`` (local latents inside a plate). A conditional network learns
            ``∇ log q(w | c)`` across all contexts; a kernel estimator (Stein, SSGE) estimates
            each plate element's score from that element's own particles (so it needs
            ``num_particles >= 2``). Without a context, the particles of all plate elements are
            pooled as draws of one distribution: for a sampler shared by the plate's elements,
            such as a deterministic encoder of the data, that is the *aggregate* posterior.
        estimator: the score estimator of this site (default ``"ssm"``: a
            :class:`~implicitvi.estimators.ScoreNet`, conditional when ``context`` is given). A
            persistent estimator's state is created here, as a mutable site, when SVI starts.
        entropy_draws: ``batch_shape + (m, d)`` further draws of ``latent`` from the same sampler
            at the same plate element (and context), at which the site's entropy is estimated
            instead of at ``latent``: the estimator is fitted on them and the entropy surrogate
            averages over them, while the model sees ``value`` only. It lowers the variance of the
            entropy gradient at the cost of m sampler passes, not m model passes. Song et al.
            (2019) train their Stein and spectral VAEs so, with m = 100 draws per image of which
            the first is decoded: ``value=w[..., 0, :], entropy_draws=w``.
        conditional_score: for a semi-implicit sampler ``w = m(ε₂) + σ(ε₂) ⊙ ε₁`` (or any whose
            conditional density given its mixing noise is known), the conditional score
            ``∇_w log q(w | ε₂) = −ε₁ / σ(ε₂)`` at each draw: same shape as ``latent``, or as
            ``entropy_draws`` when they are given. Its conditional mean given ``w`` is the score
            of ``w``, so an estimator with ``needs_targets`` (``ScoreNet(objective="regression")``)
            is fitted on it by least squares; other estimators ignore it.
        score: the score ``∇_w log q(w)`` itself at each draw, for a sampler that can compute it
            (exactly, or as a consistent estimate such as a semi-implicit sampler's conditional
            scores averaged over many mixing draws): same shape as ``latent``, or as
            ``entropy_draws`` when they are given. The entropy surrogate uses it as it is and no
            estimator is fitted, so ``estimator`` and ``conditional_score`` must not be given
            (nor does :class:`~implicitvi.infer.ImplicitELBO`'s ``estimator`` apply to the site).
        infer: further entries for the site's ``infer`` dict (e.g. ``{"is_auxiliary": True}``).

    Returns:
        The constrained value ``T(u)``.
    """
    if score is None:
        est = _default_estimator(context) if estimator is None else get_estimator(estimator)
    elif estimator is not None or conditional_score is not None:
        extra = "estimator" if estimator is not None else "conditional_score"
        raise ValueError(
            f"implicit site '{name}': score=... is the score itself, so no estimator is fitted; "
            f"do not pass {extra} with it"
        )
    else:
        est = None
    value = jnp.asarray(value)
    transform = biject_to(support)
    event_dim = transform.codomain.event_dim
    batch_shape = value.shape[: value.ndim - transform.domain.event_dim]
    if latent is None:
        latent = value.reshape(batch_shape + (-1,))
    latent = jnp.asarray(latent)
    if latent.shape[:-1] != batch_shape:
        raise ValueError(
            f"implicit site '{name}': latent must have shape batch_shape + (d,) with batch_shape "
            f"{batch_shape}, got {latent.shape}"
        )
    if entropy_draws is not None:
        entropy_draws = jnp.asarray(entropy_draws)
        expected = (entropy_draws.ndim == len(batch_shape) + 2) and (
            entropy_draws.shape[:-2] == batch_shape and entropy_draws.shape[-1] == latent.shape[-1]
        )
        if not expected:
            raise ValueError(
                f"implicit site '{name}': entropy_draws must have shape batch_shape + (m, d) = "
                f"{batch_shape} + (m, {latent.shape[-1]}), got {entropy_draws.shape}"
            )
    drawn = latent if entropy_draws is None else entropy_draws
    for label, given in (("conditional_score", conditional_score), ("score", score)):
        if given is not None and jnp.shape(given) != drawn.shape:
            raise ValueError(
                f"implicit site '{name}': {label} must have the shape of "
                f"{'latent' if entropy_draws is None else 'entropy_draws'} {drawn.shape}, "
                f"got {jnp.shape(given)}"
            )
    if conditional_score is not None:
        conditional_score = jnp.asarray(conditional_score)
    elif getattr(est, "needs_targets", False):
        raise ValueError(
            f"implicit site '{name}': the estimator {type(est).__name__}(objective="
            f"{getattr(est, 'objective', None)!r}) is fitted on conditional scores; pass "
            "conditional_score=... (∇_w log q(w | ε₂) at each draw)"
        )
    if context is not None:
        context = _checks.as_float_array(context, f"implicit site '{name}': context")
        if context.shape[:-1] != batch_shape:
            raise ValueError(
                f"implicit site '{name}': context must have shape {batch_shape} + (c,), "
                f"got {context.shape}"
            )
    if est is not None and est.conditional and context is None:
        raise ValueError(
            f"implicit site '{name}': the estimator {type(est).__name__}(conditional=True) needs a "
            "context; pass context=... (the conditioning values of an amortized sampler)"
        )
    if context is not None and est is not None and est.persistent and not est.conditional:
        raise ValueError(
            f"implicit site '{name}': context was given but the estimator {type(est).__name__} is "
            "unconditional; use ScoreNet(conditional=True), or a kernel estimator, which "
            "estimates each context's score from its own particles"
        )

    constrained = transform(value)
    log_density = -sum_rightmost(
        transform.log_abs_det_jacobian(value, constrained),
        transform.domain.event_dim,
    )
    log_density = log_density - log_abs_det_jacobian

    d = latent.shape[-1]
    flat_latent = jax.lax.stop_gradient(latent.reshape(-1, d))
    flat_context = None if context is None else context.reshape(-1, context.shape[-1])
    init_key = numpyro.prng_key()
    if init_key is None:
        init_key = jax.random.PRNGKey(0)
    mutable(
        state_name(name),
        {
            "step": jnp.zeros((), jnp.int32),
            "template": jnp.zeros((0, d), latent.dtype),
            "score": est.init(init_key, flat_latent[:1], None if flat_context is None else flat_context[:1])
            if est is not None and est.persistent
            else None,
        },
    )
    return numpyro.sample(
        name,
        dist.Delta(constrained, log_density=log_density, event_dim=event_dim),
        infer={
            **(infer or {}),
            "implicit": True,
            "implicit_latent": latent,
            "implicit_context": context,
            "implicit_entropy_draws": entropy_draws,
            "implicit_conditional_score": conditional_score,
            "implicit_score": None if score is None else jnp.asarray(score),
            "estimator": est,
        },
    )
