r"""Statistical efficiency of score matching against maximum likelihood, in one dimension.

Koehler, Heckett & Risteski, *Statistical Efficiency of Score Matching: The View from
Isoperimetry* (ICLR 2023), relate the asymptotic variance of the score-matching (SM) estimator
to that of the maximum-likelihood estimator (MLE) through the isoperimetry of the model
distribution: when its Poincaré / log-Sobolev constant is small (e.g. a strongly log-concave
distribution) SM is within a factor polynomial in that constant of the MLE, and when the
distribution has a sparse cut — two modes with little mass between them — SM can be much less
efficient, for a family rich enough to move mass across the cut: the score sees such a parameter
only inside the cut, so its variance grows like the inverse mass of the cut, which is also how
the Poincaré constant grows (exponentially in the separation of the modes). This script
measures the variance ratio and compares it with the asymptotic theory.

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

Theory (M-estimator sandwich, by trapezoid quadrature on a fine grid):
:math:`n\,\mathrm{Var}_{\rm MLE} \to 1/I(\theta^\star)`,
:math:`I = \mathbb E[(\partial_\theta \log p)^2]`;
:math:`n\,\mathrm{Var}_{\rm SM} \to \mathbb E[(\partial_\theta \ell_{\rm SM})^2] /
(\mathbb E[\partial_\theta^2 \ell_{\rm SM}])^2` (the M-estimator sandwich, van der Vaart 1998,
*Asymptotic Statistics*, Theorem 5.21).
Poincaré constant :math:`C_P = \sup_f \mathrm{Var}_p f / \mathbb E_p[f'^2]` of
:math:`p_{\theta^\star}`, from a finite-element discretisation of the Dirichlet form
(:func:`poincare_constant`).

Usage::

    python benchmarks/sm_efficiency.py                 # 2000 repetitions of n = 2000, 7 settings
    python benchmarks/sm_efficiency.py --quick         # smoke run, about 20 s
    python benchmarks/sm_efficiency.py --reps 500 --n 4000 --out efficiency.png
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy
from scipy.linalg import eigh_tridiagonal
from common import markdown_table, table, write_json

# The fits are refined to 1e-12 of the search interval and the SM sandwich divides by a curvature
# of order e^(-s²/2): float32 would leave few significant digits in either.
jax.config.update("jax_enable_x64", True)

GRID_SIZE = 48
NEWTON_STEPS = 60
QUADRATURE_POINTS = 20001
WEIGHT_BOUND = 10.0
SETTINGS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)


# --------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Theory: sandwich variances and the Poincaré constant
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="family")
def _quadrature(family: Family, s):
    r"""Uniform grid on ``family.support(s)``, trapezoid weights, :math:`\log p_{\theta^\star}`."""
    lo, hi = family.support(s)
    x = jnp.linspace(lo, hi, QUADRATURE_POINTS)
    h = x[1] - x[0]
    w = jnp.full_like(x, h).at[jnp.array([0, -1])].set(0.5 * h)
    log_p = jax.vmap(family.log_density, (0, None, None))(x, family.true_theta(s), s)
    return x, w, log_p


def _expect(family: Family, s, f: Callable) -> jax.Array:
    r""":math:`\mathbb E_{p_{\theta^\star}}[f(x)]` by the trapezoid rule (renormalised)."""
    x, w, log_p = _quadrature(family, s)
    p = w * jnp.exp(log_p)
    return jnp.sum(p * jax.vmap(f)(x)) / jnp.sum(p)


@functools.partial(jax.jit, static_argnames="family")
def _fisher_information(family, s):
    theta = family.true_theta(s)
    score = jax.grad(family.log_density, argnums=1)
    return _expect(family, s, lambda x: score(x, theta, s) ** 2)


@functools.partial(jax.jit, static_argnames="family")
def _sm_sandwich(family, s):
    theta = family.true_theta(s)
    d1 = jax.grad(hyvarinen_loss, argnums=2)
    d2 = jax.grad(d1, argnums=2)
    b = _expect(family, s, lambda x: d1(family.log_density, x, theta, s) ** 2)
    a = _expect(family, s, lambda x: d2(family.log_density, x, theta, s))
    return b / a**2


def fisher_information(family: Family, s: float) -> float:
    r""":math:`I(\theta^\star) = \mathbb E[(\partial_\theta \log p_\theta(x))^2]` by quadrature."""
    return float(_fisher_information(family, jnp.asarray(s, dtype=jnp.float64)))


def asymptotic_variance(family: Family, method: str, s: float) -> float:
    r"""Limit of :math:`n\,\mathrm{Var}(\hat\theta)` as :math:`n \to \infty`.

    MLE: :math:`1/I(\theta^\star)`. SM: the sandwich
    :math:`\mathbb E[(\partial_\theta \ell_{\rm SM})^2] /
    (\mathbb E[\partial^2_\theta \ell_{\rm SM}])^2`
    at :math:`\theta^\star` (van der Vaart 1998, Theorem 5.21).

    Raises:
        ValueError: for an unknown ``method``.
    """
    if method == "mle":
        return 1.0 / fisher_information(family, s)
    if method != "sm":
        raise ValueError(f"method must be 'mle' or 'sm', got {method!r}")
    return float(_sm_sandwich(family, jnp.asarray(s, dtype=jnp.float64)))


def poincare_constant(x: np.ndarray, log_p: np.ndarray) -> float:
    r"""Poincaré constant :math:`C_P = \sup_f \mathrm{Var}_p f / \int f'^2 p` of a 1-D density.

    :math:`1/C_P` is the smallest non-zero eigenvalue :math:`\lambda_1` of
    :math:`\int f' g' p = \lambda \int f g p` (the generator :math:`-f'' - (\log p)' f'` with
    natural boundary conditions). Discretised with piecewise-linear elements on the uniform grid
    ``x``, a lumped mass matrix :math:`p_i h` and the edge weight :math:`\sqrt{p_i p_{i+1}}/h`
    (the density at the edge's midpoint to :math:`O(h^2)`); after the symmetric scaling by the mass
    matrix the problem is tridiagonal with off-diagonal :math:`-1/h^2` and diagonal
    :math:`\sum_{j \sim i} e^{(\log p_j - \log p_i)/2}/h^2`, which involves only differences of
    ``log_p`` and so stays finite far in the tails.

    Args:
        x: uniform grid, shape ``(m,)``, covering the mass of ``p``.
        log_p: :math:`\log p` on the grid, shape ``(m,)``, up to an additive constant.

    Returns:
        :math:`C_P = 1/\lambda_1`.
    """
    x = np.asarray(x, dtype=np.float64)
    log_p = np.asarray(log_p, dtype=np.float64)
    h = x[1] - x[0]
    half_diff = 0.5 * np.diff(log_p)
    diag = np.zeros_like(log_p)
    diag[:-1] += np.exp(half_diff)
    diag[1:] += np.exp(-half_diff)
    off = -np.ones(len(x) - 1)
    eig = eigh_tridiagonal(diag / h**2, off / h**2, eigvals_only=True, select="i",
                           select_range=(0, 1))
    return float(1.0 / eig[1])


def family_poincare_constant(family: Family, s: float) -> float:
    r""":func:`poincare_constant` of :math:`p_{\theta^\star}` on the family's quadrature grid."""
    x, _, log_p = _quadrature(family, jnp.asarray(s, dtype=jnp.float64))
    return poincare_constant(x, log_p)


# --------------------------------------------------------------------------------------------
# Empirical study
# --------------------------------------------------------------------------------------------


class Row(NamedTuple):
    """One setting of one family: empirical and predicted variances, and :math:`C_P`."""

    family: str
    s: float
    theta: float
    var_mle: float  # n·Var over repetitions
    var_sm: float
    ratio: float
    ci: tuple[float, float]
    theory_mle: float
    theory_sm: float
    poincare: float
    failed_mle: int  # fits that are not a verified interior minimum
    failed_sm: int


def ratio_interval(key: jax.Array, mle: jax.Array, sm: jax.Array, num_boot: int,
                   level: float = 0.95) -> tuple[float, float]:
    r"""Percentile bootstrap interval of :math:`\mathrm{Var}(\hat\theta_{\rm SM}) /
    \mathrm{Var}(\hat\theta_{\rm MLE})`, resampling repetitions (both estimators on the same
    samples, so the pair is resampled together). ``mle``, ``sm``: shape ``(reps,)``."""
    idx = jax.random.randint(key, (num_boot, mle.shape[0]), 0, mle.shape[0])
    ratios = jnp.var(sm[idx], axis=1) / jnp.var(mle[idx], axis=1)
    q = jnp.quantile(ratios, jnp.array([(1 - level) / 2, (1 + level) / 2]))
    return float(q[0]), float(q[1])


def study(family: Family, s: float, key: jax.Array, reps: int, n: int, num_boot: int) -> Row:
    r"""Both estimators on ``reps`` samples of size ``n`` from :math:`p_{\theta^\star}`."""
    k_sample, k_boot = jax.random.split(key)
    x = family.sample(k_sample, s, (reps, n))
    mle, sm = fit(family, "mle", x, s), fit(family, "sm", x, s)
    var_mle = n * float(jnp.var(mle.theta, ddof=1))
    var_sm = n * float(jnp.var(sm.theta, ddof=1))
    return Row(
        family=family.name, s=s, theta=float(family.true_theta(s)),
        var_mle=var_mle, var_sm=var_sm, ratio=var_sm / var_mle,
        ci=ratio_interval(k_boot, mle.theta, sm.theta, num_boot),
        theory_mle=asymptotic_variance(family, "mle", s),
        theory_sm=asymptotic_variance(family, "sm", s),
        poincare=family_poincare_constant(family, s),
        failed_mle=int(jnp.sum(~verified(mle))), failed_sm=int(jnp.sum(~verified(sm))),
    )


def family_table(rows: list[Row]) -> dict:
    """One family's rows as a results table (see ``common.table``)."""
    header = ["s", "θ*", "n·Var MLE", "n·Var SM", "ratio SM/MLE [95% CI]", "1/I", "sandwich SM",
              "predicted ratio", "C_P", "not verified (MLE, SM)"]
    return table(header, [
        [f"{r.s:g}", f"{r.theta:g}", f"{r.var_mle:.4g}", f"{r.var_sm:.4g}",
         f"{r.ratio:.4g} [{r.ci[0]:.4g}, {r.ci[1]:.4g}]", f"{r.theory_mle:.4g}",
         f"{r.theory_sm:.4g}", f"{r.theory_sm / r.theory_mle:.4g}", f"{r.poincare:.4g}",
         f"{r.failed_mle}, {r.failed_sm}"] for r in rows], "r" * len(header))


def plot(rows: list[Row], path: str) -> None:
    """Ratio (empirical with CI, predicted) and :math:`C_P` against ``s``; ratio against
    :math:`C_P`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"mixture-mean": "C0", "mixture-weight": "C3", "logistic": "C2"}
    drawn = set()
    for name, color in colors.items():
        fam = [r for r in rows if r.family == name]
        if not fam:
            continue
        s = np.array([r.s for r in fam])
        emp = np.array([r.ratio for r in fam])
        err = np.abs(np.array([r.ci for r in fam]).T - emp)
        pred = np.array([r.theory_sm / r.theory_mle for r in fam])
        cp = np.array([r.poincare for r in fam])
        left.plot(s, pred, "-", color=color, label=f"{name}: sandwich ratio")
        left.errorbar(s, emp, yerr=err, fmt="o", color=color, ms=4, capsize=2,
                      label=f"{name}: empirical ratio (95% CI)")
        right.plot(cp, pred, "-", color=color, label=f"{name}: sandwich")
        right.errorbar(cp, emp, yerr=err, fmt="o", color=color, ms=4, capsize=2,
                       label=f"{name}: empirical")
        # The two mixtures share p_θ*, hence C_P: draw it once, in black.
        label = "mixtures" if name.startswith("mixture") else name
        if label not in drawn:
            drawn.add(label)
            left.plot(s, cp, "--", color="k" if label == "mixtures" else color, alpha=0.6,
                      label=f"{label}: $C_P$")
    cp_all = np.array([r.poincare for r in rows])
    span = np.array([cp_all.min(), cp_all.max()])
    right.plot(span, span, ":", color="grey", label="ratio = $C_P$")
    left.set(yscale="log", xlabel="setting s (modes at ±s; logistic: variance 1 + s²)",
             ylabel="n·Var(SM) / n·Var(MLE), and $C_P$",
             title="Efficiency of SM relative to MLE")
    right.set(xscale="log", yscale="log", xlabel="Poincaré constant $C_P$ of $p_{θ^*}$",
              ylabel="n·Var(SM) / n·Var(MLE)", title="Ratio against $C_P$")
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Statistical efficiency of score matching against maximum likelihood "
                    "(Koehler, Heckett & Risteski 2023) on 1-D families."
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 200 repetitions of n = 500, settings 1, 2, 3")
    p.add_argument("--reps", type=int, default=None, help="repetitions per setting; default 2000")
    p.add_argument("--n", type=int, default=None, help="sample size; default 2000")
    p.add_argument("--settings", type=float, nargs="+", default=None,
                   help=f"settings s; default {' '.join(f'{v:g}' for v in SETTINGS)}")
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples for the CI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="figure file (none by default)")
    p.add_argument("--json", default=None,
                   help="results file (default benchmarks/results/sm_efficiency.json)")
    args = p.parse_args(argv)
    defaults = {"reps": 200, "n": 500, "settings": [1.0, 2.0, 3.0]} if args.quick else {
        "reps": 2000, "n": 2000, "settings": list(SETTINGS)}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.reps < 2 or args.n < 2:
        p.error("--reps and --n must be at least 2")
    if min(args.settings) <= 0:
        p.error("settings must be positive")
    return args


def main(args: argparse.Namespace) -> list[Row]:
    start = time.perf_counter()
    root = jax.random.PRNGKey(args.seed)
    print(f"SM vs MLE efficiency: {args.reps} repetitions of n = {args.n}, settings "
          f"{', '.join(f'{v:g}' for v in args.settings)}, seed {args.seed}; grid {GRID_SIZE} "
          f"+ at most {NEWTON_STEPS} safeguarded Newton steps; {args.boot} bootstrap resamples.\n"
          f"JAX {jax.__version__} ({jax.default_backend()}), NumPy {np.__version__}, "
          f"SciPy {scipy.__version__}, Python {platform.python_version()}, float64.",
          flush=True)
    rows, tables = [], {}
    for i, name in enumerate(args.families):
        family = FAMILIES[name]
        fam_rows = []
        for j, s in enumerate(args.settings):
            key = jax.random.fold_in(jax.random.fold_in(root, i), j)
            fam_rows.append(study(family, s, key, args.reps, args.n, args.boot))
        tables[name] = family_table(fam_rows)
        print(f"\n{name}\n\n{markdown_table(**tables[name])}", flush=True)
        rows += fam_rows
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    out = {"settings": settings, "seconds": time.perf_counter() - start,
           "rows": [r._asdict() for r in rows], "tables": tables}
    print(f"wrote {write_json('sm_efficiency', out, args.json)}")
    if args.out:
        plot(rows, args.out)
        print(f"Figure: {args.out}.")
    return rows


if __name__ == "__main__":
    main(parse_args())
