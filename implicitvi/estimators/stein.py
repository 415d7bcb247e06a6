r"""Stein gradient estimator (Li & Turner, "Gradient Estimators for Implicit Models", ICLR 2018).

For samples :math:`x_1, \dots, x_M` of ``q`` the Stein identity
:math:`\mathbb{E}_q[\nabla_x k(x, \cdot) + k(x, \cdot) \nabla_x \log q(x)] = 0`, applied with the
kernel at every sample and solved by ridge regression, gives the scores at the samples
(eq. 7; η is **not** scaled by M):

.. math:: \hat G = -(K + \eta I)^{-1} \langle \nabla, K \rangle, \qquad
   K_{ij} = k(x_i, x_j), \quad \langle \nabla, K \rangle_i = \sum_j \nabla_{x_j} k(x_j, x_i).

Out of sample (§3.4) a query :math:`x_*` joins the samples as point :math:`M + 1` and its row of
the enlarged system is solved in closed form (Schur complement). With :math:`A = K + \eta I`,
:math:`k_* = (k(x_m, x_*))_m`, :math:`E_{*,m} = \nabla_{x_*} k(x_*, x_m)` and
:math:`s_* = k(x_*, x_*) + \eta - k_*^\top A^{-1} k_*`:

.. math:: \hat g(x_*) = -s_*^{-1}\big(k_*^\top \hat G - (A^{-1} k_* + \mathbf{1})^\top E_*\big).

With ``base="normal"`` the ridge shrinks the *residual* :math:`r = s + x` towards 0 — i.e. the
estimate towards the standard normal's score :math:`-x` — instead of the score itself: the
identity applied to :math:`r` gives :math:`\hat R = (K + \eta I)^{-1}(K X - \langle\nabla, K\rangle)`,
so :math:`\hat G = -X + \hat R = -(K + \eta I)^{-1}(\langle \nabla, K\rangle + \eta X)`, and out of
sample the formula above with this :math:`\hat G`, minus :math:`(\eta / s_*)\, x_*`. Both bases
agree as :math:`\eta \to 0`; the normal base suits whitened, near-normal samples, for which
shrinking towards a zero score would understate the entropy's pull.

Numerics: the ridge actually used is :math:`\eta' = \max(\eta, M\,\varepsilon)`, with
:math:`\varepsilon` the machine epsilon of the samples' dtype: :math:`K` has a unit diagonal, so
below that floor rounding can make :math:`K + \eta I` numerically singular (a tiny ``eta`` with
nearly duplicate samples) and its Cholesky factor NaN. The floor is about 1e-5 for 100 float32
samples and 2e-14 in float64; a larger ``eta`` is used as given. The kernel algebra runs in
units of a power of two near the bandwidth (see
:mod:`implicitvi.estimators._kernel_common`), so samples of any magnitude the dtype holds give
finite, correctly scaled scores.

Cost: :math:`O(M^2 d + M^3)` per sample set, :math:`O(M^2 m + M m d)` for ``m`` queries.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

from implicitvi import _checks, kernels
from implicitvi.estimators._kernel_common import (
    bandwidth_for,
    check_kernel_options,
    check_kernel_samples,
    scaled,
)
from implicitvi.estimators.base import EstimatorChecks, register

__all__ = ["Stein", "SteinState"]


class SteinState(NamedTuple):
    samples: jax.Array  # (M, d)
    bandwidth: jax.Array  # ()
    cholesky: jax.Array  # (M, M) lower Cholesky factor of K + ηI
    scores: jax.Array  # (M, d) in-sample estimates Ĝ


@register("stein")
@dataclasses.dataclass(frozen=True)
class Stein(EstimatorChecks):
    """Stein gradient estimator.

    Args:
        bandwidth: kernel bandwidth ``h > 0``; ``None`` (default) uses the median heuristic
            on each new sample set.
        eta: ridge ``η > 0`` added to the Gram matrix (not scaled by the number of samples);
            raised to ``M · eps(dtype)`` when smaller, so that the Gram matrix factorises.
        kernel: ``"rbf"`` or ``"imq"`` (formulas in :mod:`implicitvi.kernels`).
        base: ``"zero"`` (the paper's estimator) or ``"normal"`` (shrink towards ``−x``).

    ``score(state, queries)`` returns the in-sample estimate Ĝ at a query row equal to one of
    the samples (so ``score(state, samples)`` is Ĝ) and the out-of-sample extension elsewhere.

    Samples must be float32 or float64 (``TypeError`` otherwise); ``score`` takes a
    :class:`SteinState` (``TypeError`` for another estimator's state).
    """

    state_type = SteinState

    bandwidth: float | None = None
    eta: float = 0.01
    kernel: str = "rbf"
    base: str = "zero"

    def __post_init__(self):
        check_kernel_options(self.bandwidth, self.kernel, self.base)
        _checks.check_positive(self.eta, "eta")

    def init(self, key, samples, context=None) -> SteinState:
        """Fit on ``(M, d)`` samples (the key is not used: the fit is closed-form)."""
        return self.update(key, None, samples, context)

    def update(self, key, state, samples, context=None) -> SteinState:
        """Refit on ``(M, d)`` samples from scratch; ``state`` and ``key`` are not used."""
        _checks.check_key(key, allow_none=True)
        samples, _ = self._check_samples(samples, context)
        check_kernel_samples(samples)
        h = bandwidth_for(self.bandwidth, samples)
        # In units of s (exact): x/s and h/s give K itself and s <∇, K>.
        s, x, h_s = scaled(samples, h)
        ridge = self.ridge(samples.shape[0], samples.dtype)
        gram, slope = kernels.gram_and_slope(self.kernel, x, x, h_s)
        a = gram + ridge * jnp.eye(samples.shape[0], dtype=samples.dtype)
        chol, _ = cho_factor(a, lower=True)
        rhs = kernels.grad_sum(x, x, slope) / s
        if self.base == "normal":
            rhs = rhs + ridge * samples
        scores = -cho_solve((chol, True), rhs)
        return SteinState(samples, h, chol, scores)

    def ridge(self, num_samples: int, dtype) -> float:
        """The ridge ``η' = max(η, M · eps(dtype))`` used for ``M`` samples (see the module)."""
        return max(self.eta, num_samples * float(jnp.finfo(dtype).eps))

    def score(self, state: SteinState, queries, context=None) -> jax.Array:
        """``(m, d)`` scores at ``(m, d)`` queries: Ĝ at rows equal to a sample, else §3.4.

        When the queries are the samples themselves, row for row, Ĝ is returned without
        evaluating the extension.
        """
        self._check_state(state, SteinState)
        queries, _ = self._check_queries(
            state.samples.shape[1], None, queries, context, state.samples.dtype
        )
        if queries.shape != state.samples.shape:
            return self._mixed(state, queries)
        return jax.lax.cond(
            jnp.all(queries == state.samples),
            lambda q: self.in_sample(state),
            lambda q: self._mixed(state, q),
            queries,
        )

    def in_sample(self, state: SteinState) -> jax.Array:
        """Ĝ, the ``(M, d)`` estimates at the samples themselves (= ``score(state, samples)``)."""
        self._check_state(state, SteinState)
        return state.scores

    def _mixed(self, state: SteinState, queries: jax.Array) -> jax.Array:
        """Ĝ at query rows equal to a sample, the out-of-sample extension at the others."""
        x = state.samples
        same = jnp.all(x[:, None, :] == queries[None, :, :], axis=-1)  # (M, m), fused
        in_sample = state.scores[jnp.argmax(same, axis=0)]
        return jnp.where(jnp.any(same, axis=0)[:, None], in_sample, self._extension(state, queries))

    def _extension(self, state: SteinState, queries: jax.Array) -> jax.Array:
        """The out-of-sample extension (§3.4) at every query row."""
        # In units of s, as in update: the correction comes out s times its value.
        s, x, h_s = scaled(state.samples, state.bandwidth)
        q = queries / s
        ridge = self.ridge(x.shape[0], x.dtype)
        k_xq, slope = kernels.gram_and_slope(self.kernel, x, q, h_s)  # (M, m) each
        a_inv_k = cho_solve((state.cholesky, True), k_xq)  # (M, m)
        # k(x_*, x_*) = 1 for both kernels.
        schur = 1.0 + ridge - jnp.sum(k_xq * a_inv_k, axis=0)  # (m,)
        weights = (a_inv_k + 1.0) * slope  # (M, m)
        # (A⁻¹k + 1)ᵀ E row by row, with E[m] = 2 (x_* − x_m) ∂k/∂r².
        correction = 2.0 * (q * jnp.sum(weights, axis=0)[:, None] - weights.T @ x)
        out = -(k_xq.T @ state.scores - correction / s) / schur[:, None]
        if self.base == "normal":
            out = out - (ridge / schur)[:, None] * queries
        return out
