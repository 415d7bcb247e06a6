r"""Spectral Stein gradient estimator, SSGE (Shi, Sun & Zhu, "A Spectral Approach to Gradient
Estimation for Implicit Distributions", ICML 2018).

The score is expanded in the eigenfunctions of the kernel's integral operator under ``q``,
estimated by the Nyström method from samples :math:`x_1, \dots, x_M`. With
:math:`(\lambda_j, u_j)` the eigenpairs of the Gram matrix :math:`K + \eta I` itself
(:math:`\lambda_1 \ge \lambda_2 \ge \dots`, :math:`\|u_j\| = 1`):

.. math::
   \psi_j(x) = \frac{\sqrt{M}}{\lambda_j} \sum_m k(x, x_m)\, u_{jm}, \qquad
   \beta_j = -\frac1M \sum_m \nabla \psi_j(x_m), \qquad
   \hat g(x) = \sum_{j \le J} \beta_j\, \psi_j(x).

``J`` is ``num_eigen`` when given, otherwise the smallest ``J`` whose top-``J`` eigenvalues hold at
least ``threshold`` of the trace, chosen afresh for every sample set (inside ``jit`` as a mask).
Eigenvalues below ``M · λ_1 · eps(dtype)`` are treated as zero and never used, so a rank-deficient
Gram matrix gives finite estimates.

With ``base="normal"`` the truncated expansion is that of the residual :math:`r = s + x`, whose
coefficients are :math:`\beta^r_j = -\frac1M\sum_m \nabla\psi_j(x_m) + \frac1M \sum_m \psi_j(x_m)
x_m`, and :math:`\hat g(x) = -x + \sum_{j \le J} \beta^r_j \psi_j(x)`: the truncation drops the
residual's high-order components, not the score's (for whitened, near-normal samples).

The kernel algebra runs in units of a power of two near the bandwidth (see
:mod:`implicitvi.estimators._kernel_common`), so samples of any magnitude the dtype holds give
finite, correctly scaled scores.

Cost: :math:`O(M^2 d + M^3)` per sample set, :math:`O(M m (d + J))` for ``m`` queries.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from implicitvi import _checks, kernels
from implicitvi.estimators._kernel_common import (
    bandwidth_for,
    check_kernel_options,
    check_kernel_samples,
    scaled,
)
from implicitvi.estimators.base import EstimatorChecks, register

__all__ = ["SSGE", "SSGEState"]


class SSGEState(NamedTuple):
    samples: jax.Array  # (M, d)
    bandwidth: jax.Array  # ()
    eigvecs: jax.Array  # (M, J_max) u_j, columns masked to 0 beyond J
    inv_eigvals: jax.Array  # (J_max,) 1/λ_j, 0 beyond J
    beta: jax.Array  # (J_max, d), 0 beyond J
    num_eigen: jax.Array  # () the J in use


@register("ssge")
@dataclasses.dataclass(frozen=True)
class SSGE(EstimatorChecks):
    """Spectral Stein gradient estimator.

    Args:
        bandwidth: kernel bandwidth ``h > 0``; ``None`` (default) uses the median heuristic.
        num_eigen: number ``J`` of eigenfunctions, ``1 ≤ J ≤ M``; overrides ``threshold``.
        threshold: eigenvalue-mass fraction in ``(0, 1]`` that chooses ``J`` when
            ``num_eigen`` is None.
        eta: ridge ``η ≥ 0`` added to the Gram matrix before its eigendecomposition.
        kernel: ``"rbf"`` or ``"imq"``.
        base: ``"zero"`` (the paper's estimator) or ``"normal"`` (expand ``s + x``).

    Samples must be float32 or float64 (``TypeError`` otherwise); ``score`` takes an
    :class:`SSGEState` (``TypeError`` for another estimator's state).
    """

    state_type = SSGEState

    bandwidth: float | None = None
    num_eigen: int | None = None
    threshold: float = 0.99
    eta: float = 0.0
    kernel: str = "rbf"
    base: str = "zero"

    def __post_init__(self):
        check_kernel_options(self.bandwidth, self.kernel, self.base)
        _checks.check_positive_int(self.num_eigen, "num_eigen", allow_none=True)
        _checks.check_in_range(self.threshold, "threshold", 0.0, 1.0, low_open=True)
        _checks.check_nonnegative(self.eta, "eta")

    def init(self, key, samples, context=None) -> SSGEState:
        """Fit on ``(M, d)`` samples (the key is not used: the fit is closed-form)."""
        return self.update(key, None, samples, context)

    def update(self, key, state, samples, context=None) -> SSGEState:
        """Refit on ``(M, d)`` samples from scratch; ``state`` and ``key`` are not used."""
        _checks.check_key(key, allow_none=True)
        samples, _ = self._check_samples(samples, context)
        check_kernel_samples(samples)
        m = samples.shape[0]
        if self.num_eigen is not None and self.num_eigen > m:
            raise ValueError(
                f"num_eigen must be at most the number of samples ({m}), got {self.num_eigen}"
            )
        h = bandwidth_for(self.bandwidth, samples)
        # In units of s (exact): x/s, h/s; the gradient sum comes out s times its value.
        s, x, h_s = scaled(samples, h)
        gram, slope = kernels.gram_and_slope(self.kernel, x, x, h_s)
        eigvals, eigvecs = jnp.linalg.eigh(gram + self.eta * jnp.eye(m, dtype=samples.dtype))
        eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
        tol = m * eigvals[0] * jnp.finfo(samples.dtype).eps
        usable = eigvals > tol
        if self.num_eigen is None:
            mass = jnp.cumsum(jnp.where(usable, eigvals, 0.0))
            mass_before = mass - eigvals
            keep = usable & (mass_before < self.threshold * mass[-1])
        else:
            eigvals, eigvecs, usable = (
                eigvals[: self.num_eigen],
                eigvecs[:, : self.num_eigen],
                usable[: self.num_eigen],
            )
            keep = usable
        inv = jnp.where(keep, 1.0 / jnp.where(keep, eigvals, 1.0), 0.0)
        eigvecs = eigvecs * keep
        # Σ_m ∇ψ_j(x_m) = √M/λ_j Σ_l u_jl Σ_m ∇_{x_m} k(x_m, x_l).
        grad_sum = kernels.grad_sum(x, x, slope) / s
        beta = -(inv[:, None] * (eigvecs.T @ grad_sum)) / jnp.sqrt(jnp.asarray(m, samples.dtype))
        state = SSGEState(samples, h, eigvecs, inv, beta, jnp.sum(keep))
        if self.base == "normal":
            psi = self.eigenfunctions(state, samples)
            state = state._replace(beta=beta + psi.T @ samples / m)
        return state

    def eigenfunctions(self, state: SSGEState, queries: jax.Array) -> jax.Array:
        """Nyström eigenfunctions ``ψ_j`` at ``queries``; shape ``(m, J_max)``, 0 beyond ``J``."""
        self._check_state(state, SSGEState)
        s, x, h_s = scaled(state.samples, state.bandwidth)
        gram = kernels.gram_and_slope(self.kernel, queries / s, x, h_s)[0]
        m = state.samples.shape[0]
        return jnp.sqrt(jnp.asarray(m, queries.dtype)) * (gram @ state.eigvecs) * state.inv_eigvals

    def in_sample(self, state: SSGEState) -> jax.Array:
        """The ``(M, d)`` estimates at the samples themselves (= ``score(state, samples)``)."""
        self._check_state(state, SSGEState)
        out = self.eigenfunctions(state, state.samples) @ state.beta
        return out - state.samples if self.base == "normal" else out

    def score(self, state: SSGEState, queries, context=None) -> jax.Array:
        """``(m, d)`` scores ``ĝ`` at ``(m, d)`` queries (the same formula in and out of sample)."""
        self._check_state(state, SSGEState)
        queries, _ = self._check_queries(
            state.samples.shape[1], None, queries, context, state.samples.dtype
        )
        out = self.eigenfunctions(state, queries) @ state.beta
        return out - queries if self.base == "normal" else out
