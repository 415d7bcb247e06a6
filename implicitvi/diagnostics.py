r"""Diagnostics for sampler-only posteriors: ArviZ conversion and the kernel Stein discrepancy.

An implicit posterior has no density, so the usual checks that compare densities are out of
reach; what remains are checks on samples: ArviZ's summaries, posterior-predictive checks and
PSIS-LOO from pointwise log-likelihoods, and the kernel Stein discrepancy (KSD) of the samples
against the model's unnormalized posterior, which needs only the model's score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import Predictive
from numpyro.infer.util import initialize_model, log_likelihood

from implicitvi import _checks

__all__ = [
    "kernel_stein_discrepancy",
    "moment_errors",
    "to_inference_data",
    "unconstrained_score",
]


def _arviz_major() -> int:
    import arviz

    return int(arviz.__version__.split(".")[0])


def to_inference_data(
    model,
    guide,
    params: dict,
    *,
    key: jax.Array,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    num_samples: int = 1000,
    coords: dict | None = None,
    dims: dict | None = None,
):
    """ArviZ data for a fitted guide: ``posterior``, ``posterior_predictive``,
    ``log_likelihood`` and ``observed_data`` groups.

    Posterior draws come from ``guide`` with ``params`` (one chain of ``num_samples`` draws),
    predictions and pointwise log-likelihoods from ``model`` at those draws. Works with ArviZ
    0.x (returns ``InferenceData``) and 1.x (returns a ``DataTree``); ``az.summary``, ``az.loo``
    and posterior-predictive plots accept either.

    Args:
        model, guide: the NumPyro model and a guide fitted to it (any guide, implicit or not).
        params: the guide's parameters, e.g. ``svi_result.params``.
        key: PRNG key for the posterior and predictive draws.
        model_args, model_kwargs: the arguments the model was fitted with (observations
            included).
        num_samples: posterior draws.
        coords, dims: ArviZ coordinates and dimension names, as in ``az.from_dict``.

    Raises:
        TypeError: ``params`` is not a dict or ``key`` is not a PRNG key.
        ValueError: ``params`` lacks some of the guide's parameters (the parameters of another
            guide, say: the guide would otherwise draw from freshly initialised ones).
    """
    _checks.check_positive_int(num_samples, "num_samples")
    _checks.check_key(key)
    model_kwargs = {} if model_kwargs is None else model_kwargs
    _check_guide_params(guide, params, model_args, model_kwargs)
    seeded = handlers.seed(model, jax.random.PRNGKey(0))
    model_trace = handlers.trace(seeded).get_trace(*model_args, **model_kwargs)
    observed = {
        name: np.asarray(site["value"])
        for name, site in model_trace.items()
        if site["type"] == "sample" and site["is_observed"]
    }
    latent = [
        name
        for name, site in model_trace.items()
        if site["type"] in ("sample", "deterministic") and not site.get("is_observed", False)
    ]
    draws = Predictive(
        model,
        guide=guide,
        params=params,
        num_samples=num_samples,
        return_sites=latent + list(observed),
    )(key, *model_args, **model_kwargs)
    posterior = {k: draws[k] for k in latent if k in draws}
    predictive = {k: draws[k] for k in observed if k in draws}
    loglik = log_likelihood(model, posterior, *model_args, **model_kwargs)

    def chains(group):
        return {k: np.asarray(v)[None] for k, v in group.items()}

    groups = {
        "posterior": chains(posterior),
        "posterior_predictive": chains(predictive),
        "log_likelihood": chains(loglik),
        "observed_data": observed,
    }
    import arviz as az

    if _arviz_major() >= 1:
        return az.from_dict(groups, coords=coords, dims=dims)
    return az.from_dict(**groups, coords=coords, dims=dims)


def _check_guide_params(guide, params, model_args, model_kwargs) -> None:
    """``params`` must name every parameter the guide declares (one trace of the guide)."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a dict of the guide's parameters (e.g. svi_result.params), "
            f"got {type(params).__name__}"
        )
    seeded = handlers.seed(guide, jax.random.PRNGKey(0))
    trace = handlers.trace(seeded).get_trace(*model_args, **model_kwargs)
    wanted = {name for name, site in trace.items() if site["type"] == "param"}
    missing = sorted(wanted - set(params))
    if missing:
        raise ValueError(
            f"params must hold the guide's parameters, but {missing} are missing (params has "
            f"{sorted(params)}): pass the parameters this guide was fitted with, e.g. "
            "svi.get_params(svi_state) or svi_result.params"
        )


def unconstrained_score(model, model_args: tuple = (), model_kwargs: dict | None = None):
    """Score of the model's unnormalized posterior in NumPyro's unconstrained space.

    Returns ``(score_fn, to_unconstrained)``: ``score_fn`` maps ``(n, D)`` flat unconstrained
    points to ``(n, D)`` gradients of ``log p(x, T(u)) + log|det J_T(u)|``, and
    ``to_unconstrained`` maps a dict of constrained posterior draws (leading axis ``n``, as from
    ``sample_posterior``) to ``(n, D)`` points in the same flattening.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    info = initialize_model(
        jax.random.PRNGKey(0), model, model_args=model_args, model_kwargs=model_kwargs
    )
    proto = info.param_info.z
    _, unravel = jax.flatten_util.ravel_pytree(proto)
    potential = info.potential_fn
    supports = {
        name: site["fn"].support
        for name, site in info.model_trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }

    def score_fn(u):
        return jax.vmap(lambda x: -jax.grad(lambda v: potential(unravel(v)))(x))(u)

    def to_unconstrained(samples: dict):
        flat = {k: biject_to(supports[k]).inv(jnp.asarray(samples[k])) for k in proto}
        n = next(iter(flat.values())).shape[0]
        return jax.vmap(lambda i: jax.flatten_util.ravel_pytree(
            {k: v[i] for k, v in flat.items()})[0])(jnp.arange(n))

    return score_fn, to_unconstrained


def kernel_stein_discrepancy(
    samples, score: Callable | jax.Array, *, bandwidth: float = 1.0, beta: float = -0.5
) -> jax.Array:
    r"""Kernel Stein discrepancy of ``samples`` against a target known through its score.

    With the IMQ kernel :math:`k(x, y) = (1 + \|x - y\|^2 / h^2)^{\beta}` and the target's
    score :math:`s`, the Stein kernel (Gorham & Mackey, "Measuring Sample Quality with Kernels",
    ICML 2017) is

    .. math:: k_p(x, y) = s(x)^\top s(y)\, k + s(x)^\top \nabla_y k + s(y)^\top \nabla_x k
       + \operatorname{tr} \nabla_x \nabla_y k,

    and the returned value is the V-statistic :math:`\sqrt{\frac1{n^2}\sum_{ij} k_p(x_i, x_j)}`,
    0 only when the samples' empirical distribution is the target's in the limit. Compare guides
    by their KSD on the same number of draws.

    Args:
        samples: ``(n, d)`` draws (for a NumPyro model: unconstrained, see
            :func:`unconstrained_score`).
        score: the target's score, a function ``(n, d) -> (n, d)``, or its values ``(n, d)`` at
            the samples.
        bandwidth: ``h > 0``; beta: the IMQ exponent in ``(−1, 0)``.

    Raises:
        ValueError: bad shapes or values (named); on concrete arrays, a discrepancy that
            overflows the dtype (samples or scores of magnitude near the square root of its
            largest number), instead of returning NaN or inf.

    Cost: :math:`O(n^2 d)` time, :math:`O(n^2)` memory.
    """
    x = _checks.check_samples(samples, "samples")
    _checks.check_positive(bandwidth, "bandwidth")
    if not -1.0 < beta < 0.0:
        raise ValueError(f"beta must be in (-1, 0), got {beta}")
    s = score(x) if callable(score) else jnp.asarray(score)
    if s.shape != x.shape:
        raise ValueError(f"score must have the samples' shape {x.shape}, got {s.shape}")
    _checks.check_finite(s, "score")
    n, d = x.shape
    h2 = bandwidth**2
    diff = x[:, None, :] - x[None, :, :]
    r2 = jnp.sum(diff**2, axis=-1)
    base = 1.0 + r2 / h2
    k = base**beta
    g = 2.0 * beta / h2 * base ** (beta - 1.0)  # ∇_x k = g (x − y), ∇_y k = −g (x − y)
    sx_diff = jnp.einsum("id,ijd->ij", s, diff)
    sy_diff = jnp.einsum("jd,ijd->ij", s, diff)
    trace = -(2.0 * beta * d / h2) * base ** (beta - 1.0) - (
        4.0 * beta * (beta - 1.0) / h2**2
    ) * base ** (beta - 2.0) * r2
    stein = (s @ s.T) * k - g * sx_diff + g * sy_diff + trace
    ksd = jnp.sqrt(jnp.maximum(jnp.mean(stein), 0.0))
    if _checks.is_concrete(ksd) and not np.isfinite(float(ksd)):
        raise ValueError(
            f"samples and score are too large for {x.dtype}: the kernel Stein discrepancy "
            f"overflowed (largest |samples| {float(jnp.max(jnp.abs(x))):.3g}, largest |score| "
            f"{float(jnp.max(jnp.abs(s))):.3g}, bandwidth {bandwidth}); rescale them or pass "
            "float64 arrays"
        )
    return ksd


def moment_errors(samples, reference) -> dict:
    """How far ``samples`` are from ``reference`` draws (e.g. NUTS), coordinate by coordinate.

    Args:
        samples: ``(n, D)`` draws of the approximation (flat, e.g. unconstrained).
        reference: ``(m, D)`` reference draws in the same flattening.

    Returns:
        ``{"mean_z": median_j |mean_q − mean_ref| / sd_ref, "log_sd": median_j |log(sd_q / sd_ref)|,
        "mean_z_max": …, "log_sd_max": …}`` as Python floats, computed in float64 with the
        sample standard deviations (``ddof=1``).
    """
    _checks.check_samples(samples, "samples")
    _checks.check_samples(reference, "reference")
    q, ref = np.asarray(samples, np.float64), np.asarray(reference, np.float64)
    if q.shape[1] != ref.shape[1]:
        raise ValueError(
            f"samples and reference must have the same number of columns, got {q.shape[1]} "
            f"and {ref.shape[1]}"
        )
    sd_ref = ref.std(axis=0, ddof=1)
    mean_z = np.abs(q.mean(axis=0) - ref.mean(axis=0)) / sd_ref
    log_sd = np.abs(np.log(q.std(axis=0, ddof=1) / sd_ref))
    return {
        "mean_z": float(np.median(mean_z)),
        "log_sd": float(np.median(log_sd)),
        "mean_z_max": float(mean_z.max()),
        "log_sd_max": float(log_sd.max()),
    }
