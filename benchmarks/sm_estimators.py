r"""The one-dimensional families and the two estimators of the score-matching efficiency
benchmark (``sm_efficiency.py``).

Families, each indexed by a *setting* ``s`` that is held fixed while one scalar parameter
:math:`\theta` is estimated:

* ``mixture-mean``:
  :math:`p_\theta = \tfrac12\mathcal N(\theta, 1) + \tfrac12\mathcal N(-\theta, 1)`,
  :math:`\theta^\star = s` (separation :math:`2s`); :math:`\theta > 0` is the mode location.
* ``mixture-weight``: :math:`p_a = \sigma(a)\,\mathcal N(s, 1) + \sigma(-a)\,\mathcal N(-s, 1)`,
  :math:`a^\star = 0`; the parameter is the log-odds of the mode weights: it moves mass across
  the cut between the modes, the mechanism of the paper's lower bound. At :math:`a^\star = 0`
  both mixtures are the same distribution, so they share a Poincaré constant.
* ``logistic``: the location family :math:`p_\theta(x) \propto \exp(-V((x - \theta)/b))`,
  :math:`V(u) = 2\log(2\cosh(u/2))` (convex, not quadratic), :math:`\theta^\star = 0`, with the
  scale :math:`b = \sqrt{3(1 + s^2)}/\pi` chosen so that its variance :math:`\pi^2 b^2/3` equals
  the mixtures' :math:`1 + s^2`. The SM/MLE ratio of a location-scale family does not depend on
  :math:`b`: here it is :math:`10/7` for every ``s`` (by hand: :math:`\tanh(u/2)` is uniform on
  :math:`(-1, 1)`, :math:`n\,\mathrm{Var}_{\rm MLE} = 3b^2`,
  :math:`n\,\mathrm{Var}_{\rm SM} = 30b^2/7`).

Estimators (one sample of ``n`` points; vectorised over repetitions with ``jax.vmap``):

* MLE: :math:`\hat\theta = \arg\min_\theta -\frac1n\sum_i \log p_\theta(x_i)`.
* SM (Hyvärinen 2005, eq. 4): :math:`\hat\theta = \arg\min_\theta J(\theta)`,
  :math:`J(\theta) = \frac1n\sum_i \ell_{\rm SM}(x_i, \theta)`,
  :math:`\ell_{\rm SM} = \tfrac12\psi_\theta(x)^2 + \psi_\theta'(x)`,
  :math:`\psi_\theta = \partial_x \log p_\theta` (taken with ``jax.grad``).

Both are minimised over a search interval by a grid of ``GRID_SIZE`` points followed by a
safeguarded Newton iteration (bisection whenever the Newton step leaves the bracket or the
curvature is not positive), stopped when the step falls below :math:`10^{-12}` of the interval
or after ``NEWTON_STEPS`` steps; a fit is *verified* when it ends inside the interval at a point
with positive curvature, a vanishing Newton step and an objective no larger than the grid's
minimum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

# The fits are refined to 1e-12 of the search interval and the SM sandwich divides by a curvature
# of order e^(-s²/2): float32 would leave few significant digits in either.
jax.config.update("jax_enable_x64", True)

GRID_SIZE = 48
NEWTON_STEPS = 60
WEIGHT_BOUND = 10.0


# --- Families ---------------------------------------------------------------------------


class Family(NamedTuple):
    r"""A one-parameter family :math:`p_\theta` at a fixed setting ``s``.

    All callables take Python floats or traced scalars for ``s``:

    * ``log_density(x, theta, s)``: normalised :math:`\log p_\theta(x)` for scalar ``x``.
    * ``true_theta(s)``: the parameter the samples are drawn from.
    * ``sample(key, s, shape)``: draws of shape ``shape`` from :math:`p_{\theta^\star}`.
    * ``interval(x, s)``: search interval ``(lo, hi)`` for :math:`\hat\theta` given one sample
      ``x`` of shape ``(n,)``.
    * ``support(s)``: a range ``(lo, hi)`` outside which :math:`p_{\theta^\star}` has no mass
      at float64 precision (quadrature and Poincaré grids).
    """

    name: str
    log_density: Callable
    true_theta: Callable
    sample: Callable
    interval: Callable
    support: Callable


@jax.custom_jvp
def log_cosh(u: jax.Array) -> jax.Array:
    r""":math:`\log\cosh u`, stable for large ``|u|``, with derivative :math:`\tanh u`.

    The custom JVP keeps every higher derivative exact at ``u = 0``, where the derivative of the
    stable form ``logaddexp(u, -u)`` would go through a kink of ``|u|``.
    """
    return jnp.logaddexp(u, -u) - math.log(2.0)


@log_cosh.defjvp
def _log_cosh_jvp(primals, tangents):
    (u,), (du,) = primals, tangents
    return log_cosh(u), jnp.tanh(u) * du


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def mixture_mean_log_density(x, theta, s):
    r""":math:`\log(\tfrac12\varphi(x-\theta) + \tfrac12\varphi(x+\theta))
    = -\tfrac12(x^2 + \theta^2) + \log\cosh(\theta x) - \tfrac12\log 2\pi` (``s`` unused:
    it only sets the true parameter)."""
    del s
    return -0.5 * (x**2 + theta**2) + log_cosh(theta * x) - _HALF_LOG_2PI


def mixture_weight_log_density(x, a, s):
    r""":math:`\log(\sigma(a)\varphi(x-s) + \sigma(-a)\varphi(x+s))
    = -\tfrac12(x^2 + s^2) + \log\cosh(sx + a/2) - \log\cosh(a/2) - \tfrac12\log 2\pi`.

    Its score :math:`\psi_a(x) = -x + s\tanh(sx + a/2)` depends on ``a`` only where
    :math:`|sx + a/2| \lesssim 1`, i.e. between the modes.
    """
    return -0.5 * (x**2 + s**2) + log_cosh(s * x + 0.5 * a) - log_cosh(0.5 * a) - _HALF_LOG_2PI


def logistic_scale(s):
    r"""Scale :math:`b = \sqrt{3(1+s^2)}/\pi` giving the logistic the variance :math:`1 + s^2`."""
    return jnp.sqrt(3.0 * (1.0 + s**2)) / math.pi


def logistic_log_density(x, theta, s):
    r"""Logistic location family, :math:`\log p_\theta(x) = -\log b - 2\log(2\cosh(u/2))`,
    :math:`u = (x - \theta)/b`, :math:`b` = :func:`logistic_scale` ``(s)``."""
    b = logistic_scale(s)
    return -jnp.log(b) - 2.0 * log_cosh(0.5 * (x - theta) / b) - 2.0 * math.log(2.0)


def _sample_mixture(key, s, shape):
    k_sign, k_noise = jax.random.split(key)
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, shape), 1.0, -1.0)
    return s * sign + jax.random.normal(k_noise, shape)


def _sample_logistic(key, s, shape):
    return logistic_scale(s) * jax.random.logistic(key, shape)


def _mixture_mean_interval(x, s):
    # θ = 0 is a stationary point of both objectives (they are even in θ). The MLE solves
    # mean(x tanh θx) = θ, so it is below mean|x| ≤ √(mean x²); J grows like θ²/2, and an SM
    # fit that reached the upper end would be flagged by `boundary`.
    del s
    return 0.0, 2.0 * jnp.sqrt(jnp.mean(x**2))


def _mixture_weight_interval(x, s):
    del x, s
    return -WEIGHT_BOUND, WEIGHT_BOUND


def _logistic_interval(x, s):
    # Outside the sample's range every term of either objective decreases towards the data.
    del s
    return jnp.min(x), jnp.max(x)


def _mixture_support(s):
    return -s - 12.0, s + 12.0


def _logistic_support(s):
    half = 40.0 * logistic_scale(s)
    return -half, half


FAMILIES = {
    "mixture-mean": Family(
        "mixture-mean", mixture_mean_log_density, lambda s: s, _sample_mixture,
        _mixture_mean_interval, _mixture_support,
    ),
    "mixture-weight": Family(
        "mixture-weight", mixture_weight_log_density, lambda s: 0.0, _sample_mixture,
        _mixture_weight_interval, _mixture_support,
    ),
    "logistic": Family(
        "logistic", logistic_log_density, lambda s: 0.0, _sample_logistic,
        _logistic_interval, _logistic_support,
    ),
}


# --- Estimators -------------------------------------------------------------------------


def negative_log_likelihood(log_density: Callable, x, theta, s):
    r"""Per-sample MLE loss :math:`-\log p_\theta(x)` (scalar ``x``)."""
    return -log_density(x, theta, s)


def hyvarinen_loss(log_density: Callable, x, theta, s):
    r"""Per-sample score-matching loss :math:`\ell_{\rm SM} = \tfrac12\psi_\theta(x)^2 +
    \psi_\theta'(x)`, :math:`\psi_\theta = \partial_x \log p_\theta` (Hyvärinen 2005, eq. 4)."""
    psi, dpsi = jax.value_and_grad(jax.grad(log_density))(x, theta, s)
    return 0.5 * psi**2 + dpsi


LOSSES = {"mle": negative_log_likelihood, "sm": hyvarinen_loss}


class MEstimate(NamedTuple):
    r"""Result of :func:`fit`, each field of the sample's batch shape.

    * ``theta``: the estimate.
    * ``step``: :math:`|L'(\hat\theta)/L''(\hat\theta)|`, the Newton step left at the end.
    * ``curvature``: :math:`L''(\hat\theta)`.
    * ``grid_gap``: :math:`L(\hat\theta) - \min_{\rm grid} L`; not positive at a minimum.
    * ``boundary``: whether :math:`\hat\theta` is an end of the search interval.
    """

    theta: jax.Array
    step: jax.Array
    curvature: jax.Array
    grid_gap: jax.Array
    boundary: jax.Array


def _minimize(objective, lo, hi):
    """Grid search then safeguarded Newton on a scalar ``objective`` over ``[lo, hi]``."""
    grid = jnp.linspace(lo, hi, GRID_SIZE)
    values = jax.lax.map(objective, grid)
    k = jnp.argmin(values)
    d1 = jax.grad(objective)
    d2 = jax.grad(d1)
    tol = 1e-9 * (hi - lo)

    def newton(state):
        i, theta, a, b, _ = state
        g, h = d1(theta), d2(theta)
        # Keep [a, b] around a point where the slope changes from negative to positive.
        a = jnp.where(g < 0, theta, a)
        b = jnp.where(g > 0, theta, b)
        proposal = theta - g / h
        inside = (h > 0) & (proposal > a) & (proposal < b)
        new = jnp.where(inside, proposal, 0.5 * (a + b))
        return i + 1, new, a, b, jnp.abs(new - theta)

    def running(state):
        i, _, a, b, moved = state
        return (i < NEWTON_STEPS) & (moved > 1e-3 * tol) & (b - a > 1e-3 * tol)

    lower, upper = grid[jnp.maximum(k - 1, 0)], grid[jnp.minimum(k + 1, GRID_SIZE - 1)]
    start = (0, grid[k], lower, upper, upper - lower)
    _, theta, _, _, _ = jax.lax.while_loop(running, newton, start)
    g, h = d1(theta), d2(theta)
    return MEstimate(
        theta=theta,
        step=jnp.abs(g / h),
        curvature=h,
        grid_gap=objective(theta) - values[k],
        boundary=(theta - lo < tol) | (hi - theta < tol),
    )


def fit(family: Family, method: str, x: jax.Array, s: float) -> MEstimate:
    r"""Fit :math:`\theta` by ``method`` (``"mle"`` or ``"sm"``) to each row of ``x``.

    Args:
        family: the model family.
        method: ``"mle"`` (minimise the mean negative log-likelihood) or ``"sm"`` (minimise the
            Hyvärinen objective :math:`J`).
        x: samples, shape ``(..., n)``; the estimator is applied to the last axis.
        s: the family's setting.

    Returns:
        An :class:`MEstimate` whose fields have shape ``x.shape[:-1]``.

    Raises:
        ValueError: for an unknown ``method`` or a scalar ``x``.
    """
    if method not in LOSSES:
        raise ValueError(f"method must be one of {sorted(LOSSES)}, got {method!r}")
    x = jnp.asarray(x, dtype=jnp.float64)
    if x.ndim == 0:
        raise ValueError("x must have at least one axis (the sample)")
    flat = x.reshape(-1, x.shape[-1])
    out = _fit(family, method, flat, jnp.asarray(s, dtype=jnp.float64))
    return jax.tree.map(lambda v: v.reshape(x.shape[:-1]), out)


@functools.partial(jax.jit, static_argnames=("family", "method"))
def _fit(family, method, x, s):
    loss = LOSSES[method]
    per_point = jax.vmap(lambda xi, theta: loss(family.log_density, xi, theta, s), (0, None))

    def one(sample):
        lo, hi = family.interval(sample, s)
        return _minimize(lambda theta: jnp.mean(per_point(sample, theta)), lo, hi)

    return jax.vmap(one)(x)


def verified(est: MEstimate) -> jax.Array:
    """Whether each fit is an interior local minimum at least as low as the grid's best point."""
    return (
        ~est.boundary & (est.curvature > 0) & (est.step < 1e-8) & (est.grid_gap <= 1e-12)
    )

