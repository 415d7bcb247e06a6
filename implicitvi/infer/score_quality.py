r"""``score_check``: is a fitted score network good enough for the entropy gradient it drives?

For an implicit site with conditional scores (a semi-implicit sampler,
``implicit_sample(..., conditional_score=t)``), the regression objective of the site's network
on fresh draws,

.. math:: J(s) = \tfrac12\, \mathbb E\, \|s(w) - t\|^2
   = \tfrac12\, \mathbb E\, \|s(w) - \nabla \log q(w)\|^2 + C,
   \qquad C = \tfrac12\, \mathbb E\, \|t - \nabla \log q(w)\|^2,

is the network's squared score error up to a constant that does not depend on ``s``
(:func:`implicitvi.objectives.regression`). The constant cancels from the difference with the
same objective of the Gaussian fitted to the draws' moments, :math:`s_G(w) = -\Sigma^{-1}(w - m)`:

.. math:: \mathrm{gap} = J(s) - J(s_G)
   = \tfrac12\, \mathbb E\, \|s - \nabla \log q\|^2 - \tfrac12\, \mathbb E\, \|s_G - \nabla \log q\|^2,

an exact comparison of two score errors, estimated without knowing :math:`\nabla \log q`.

**The rule.** While ``gap < 0`` the network's score is closer to the sampler's than the best
Gaussian's, and the entropy gradient it gives is better than a Gaussian approximation's. When
``gap > 0`` the network has fallen behind the sampler (or never fitted it): its entropy gradient
is worse than treating the draws as Gaussian and is not to be trusted; lower the learning rate
(or the mixing network's rate) or give the score network more steps per SVI step. A ``loss``
that rises over steps while the ELBO improves says the same earlier.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from numpyro import handlers

from implicitvi import _checks
from implicitvi.infer.primitives import state_name

__all__ = ["ScoreCheck", "score_check"]


class ScoreCheck(NamedTuple):
    """The score-quality signal of one implicit site (see the module's docstring)."""

    loss: jax.Array  # () J(s): the network's regression objective on fresh draws
    gaussian_loss: jax.Array  # () J(s_G): the same objective of the moment-matched Gaussian
    gap: jax.Array  # () loss − gaussian_loss: > 0 means worse than the Gaussian


def score_check(
    rng_key, guide, params, mutable_state, *args, num_draws: int = 512, **kwargs
) -> dict[str, ScoreCheck]:
    """The score-quality signal of every implicit site with conditional scores.

    Args:
        rng_key: PRNG key for the fresh draws.
        guide: the guide, as given to ``SVI``.
        params: its parameters (``svi.get_params(svi_state)``).
        mutable_state: ``svi_state.mutable_state``, which holds each site's score network.
        args, kwargs: the guide's positional and keyword arguments (as given to ``svi.init``).
        num_draws: guide draws (particles) to evaluate on; more than the site's latent
            dimension (the Gaussian's covariance must be non-singular). A site inside a plate
            contributes a draw per element: pooled without a context (as
            :class:`~implicitvi.infer.ImplicitELBO` pools them), one Gaussian per element with a
            context.

    Returns:
        ``{site name: ScoreCheck}``. Raises ``ValueError`` if no implicit site has conditional
        scores, or if such a site's estimator is not a network (a kernel estimator is refitted
        on every step's particles, with no state to check).
    """
    _checks.check_key(rng_key, "rng_key")
    _checks.check_positive_int(num_draws, "num_draws")
    if not isinstance(mutable_state, dict):
        raise TypeError(
            "mutable_state must be svi_state.mutable_state (a dict), "
            f"got {type(mutable_state).__name__}"
        )

    def trace(key):
        tr = handlers.trace(handlers.seed(handlers.substitute(guide, data=params), key))
        return {
            name: site
            for name, site in tr.get_trace(*args, **kwargs).items()
            if site["type"] == "sample"
            and site.get("infer", {}).get("implicit_conditional_score") is not None
        }

    estimators = {}  # each site's estimator, recorded while the draws are traced

    def draw(key):
        """Each site's draws, targets and context as ``(B, m, ·)``: ``B`` plate elements, ``m``
        draws of each (its ``entropy_draws``, or 1)."""
        out = {}
        for name, site in trace(key).items():
            infer = site["infer"]
            estimators[name] = infer["estimator"]
            latent, context = infer["implicit_entropy_draws"], infer["implicit_context"]
            if latent is None:
                latent = infer["implicit_latent"][..., None, :]
            if context is not None:
                context = jnp.broadcast_to(context[..., None, :], latent.shape[:-1] + context.shape[-1:])
            group = lambda x: None if x is None else x.reshape((-1,) + x.shape[-2:])  # noqa: E731
            targets = infer["implicit_conditional_score"].reshape(latent.shape)
            out[name] = (group(latent), group(targets), group(context))
        return out

    keys = jax.random.split(rng_key, num_draws)
    traced = jax.jit(jax.vmap(draw)).trace(keys)  # traced once, checked before it is compiled
    if not estimators:
        raise ValueError(
            "score_check: the guide has no implicit site with conditional scores "
            "(implicit_sample(..., conditional_score=...), as AutoSemiImplicit's)"
        )
    for name, est in estimators.items():
        if not est.persistent:
            raise ValueError(
                f"score_check: implicit site '{name}' has the kernel estimator "
                f"{type(est).__name__}, which is refitted on every step's particles and keeps no "
                "state to check; score_check checks a score network"
            )
        if state_name(name) not in mutable_state:
            raise ValueError(
                f"score_check: mutable_state has no score state of implicit site '{name}'; pass "
                "svi_state.mutable_state of an SVI state of this guide"
            )
    draws = traced.lower().compile()(keys)
    return {
        name: _check_site(name, est, mutable_state[state_name(name)]["score"], *draws[name])
        for name, est in estimators.items()
    }


def _check_site(name, est, state, latent, targets, context) -> ScoreCheck:
    """``ScoreCheck`` from ``(n, B, m, ·)`` draws, targets and context: one Gaussian fitted to
    the draws of each plate element (with a context) or to all of them (without)."""
    n, b, m, d = latent.shape
    groups = 1 if context is None else b
    per_group = n * b * m // groups
    if per_group <= d:
        raise ValueError(
            f"num_draws must exceed the latent dimension {d} of implicit site '{name}' "
            f"(a Gaussian's covariance is fitted to the draws), got {n}"
        )

    def by_group(x):
        return x.swapaxes(0, 1).reshape(groups, per_group, x.shape[-1])

    rows, t = by_group(latent), by_group(targets)
    ctx = None if context is None else by_group(context).reshape(-1, context.shape[-1])
    s = est.score(state, rows.reshape(-1, d), ctx).reshape(rows.shape)
    centred = rows - rows.mean(1, keepdims=True)
    cov = jnp.einsum("gni,gnj->gij", centred, centred) / (per_group - 1)
    s_gauss = -jnp.linalg.solve(cov[:, None], centred[..., None])[..., 0]
    loss = 0.5 * jnp.mean(jnp.sum((s - t) ** 2, -1))
    gaussian_loss = 0.5 * jnp.mean(jnp.sum((s_gauss - t) ** 2, -1))
    return ScoreCheck(loss, gaussian_loss, loss - gaussian_loss)
