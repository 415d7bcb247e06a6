r"""The asymptotic theory of the score-matching efficiency benchmark (``sm_efficiency.py``):
sandwich variances by quadrature and the Poincaré constant.

Theory (M-estimator sandwich, by trapezoid quadrature on a fine grid):
:math:`n\,\mathrm{Var}_{\rm MLE} \to 1/I(\theta^\star)`,
:math:`I = \mathbb E[(\partial_\theta \log p)^2]`;
:math:`n\,\mathrm{Var}_{\rm SM} \to \mathbb E[(\partial_\theta \ell_{\rm SM})^2] /
(\mathbb E[\partial_\theta^2 \ell_{\rm SM}])^2` (the M-estimator sandwich, van der Vaart 1998,
*Asymptotic Statistics*, Theorem 5.21).
Poincaré constant :math:`C_P = \sup_f \mathrm{Var}_p f / \mathbb E_p[f'^2]` of
:math:`p_{\theta^\star}`, from a finite-element discretisation of the Dirichlet form
(:func:`poincare_constant`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import eigh_tridiagonal
from sm_estimators import Family, hyvarinen_loss

QUADRATURE_POINTS = 20001


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

