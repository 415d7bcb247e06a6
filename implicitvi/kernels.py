r"""Stationary kernels on :math:`\mathbb{R}^d`, their gradients and the median heuristic.

Conventions (fixed; the estimators and their tests rely on them):

* RBF:  :math:`k(x, y) = \exp(-\|x - y\|^2 / (2h^2))`.
* IMQ:  :math:`k(x, y) = (1 + \|x - y\|^2 / h^2)^{-1/2}`.
* Median heuristic: :math:`h = \operatorname{median}\{\|x_i - x_j\| : i < j\}`.

Both kernels depend on :math:`r^2 = \|x - y\|^2` only, so their gradient in the first
argument is :math:`\nabla_x k(x, y) = 2 (x - y)\, \partial k / \partial r^2`. The estimators use
that form (:func:`gram_and_slope`) to contract gradients with weights in
:math:`O(n m d)` time without building the :math:`(n, m, d)` gradient tensor.

All functions take row-stacked points ``x`` of shape ``(n, d)`` and ``y`` of shape ``(m, d)``
and work in the dtype of their inputs. They check ranks and shapes when called (also under
``jit``), and that a concrete bandwidth is finite and positive; a mismatch raises ``ValueError``
naming the argument.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from implicitvi._checks import check_choice, check_points, check_scalar_positive

__all__ = [
    "KERNELS",
    "grad_sum",
    "gram_and_slope",
    "imq",
    "median_bandwidth",
    "rbf",
    "squared_distances",
    "unit_scale",
]


def _check_pair(x, y) -> tuple[jax.Array, jax.Array]:
    x, y = check_points(x, "x"), check_points(y, "y")
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"y must have {x.shape[1]} columns to match x, got shape {tuple(y.shape)}")
    return x, y


def squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """Pairwise squared Euclidean distances, shape ``(n, m)``, clipped at 0."""
    x, y = _check_pair(x, y)
    # A common shift leaves distances unchanged and cuts the cancellation in the expansion.
    shift = jnp.mean(x, axis=0)
    x, y = x - shift, y - shift
    xx = jnp.sum(x * x, axis=-1)[:, None]
    yy = jnp.sum(y * y, axis=-1)[None, :]
    return jnp.maximum(xx + yy - 2.0 * x @ y.T, 0.0)


def _rbf_profile(r2: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    k = jnp.exp(-r2 / (2.0 * h**2))
    return k, -k / (2.0 * h**2)


def _imq_profile(r2: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    k = jax.lax.rsqrt(1.0 + r2 / h**2)
    return k, -(k**3) / (2.0 * h**2)


KERNELS: dict[str, Callable] = {"rbf": _rbf_profile, "imq": _imq_profile}
"""Kernel name → profile ``(r², h) ↦ (k, ∂k/∂r²)``."""


def gram_and_slope(kernel: str, x: jax.Array, y: jax.Array, h) -> tuple[jax.Array, jax.Array]:
    """Gram matrix ``K[i, j] = k(x_i, y_j)`` and slope ``S[i, j] = ∂k/∂r²`` at ``r² = ‖x_i − y_j‖²``.

    ``∇_x k(x_i, y_j) = 2 (x_i − y_j) S[i, j]``. Shapes: ``(n, m)`` each.
    """
    check_choice(kernel, "kernel", KERNELS)
    x, y = _check_pair(x, y)
    h = check_scalar_positive(h, "bandwidth", x.dtype)
    return KERNELS[kernel](squared_distances(x, y), h)


def grad_sum(x: jax.Array, y: jax.Array, slope: jax.Array) -> jax.Array:
    r"""Row ``j`` is :math:`\sum_i \nabla_{x_i} k(x_i, y_j)`; shape ``(m, d)``.

    ``slope`` is the ``(n, m)`` slope matrix of :func:`gram_and_slope` for ``(x, y)``.
    This is the :math:`\langle \nabla, K \rangle` term of the Stein identity.
    """
    x, y = _check_pair(x, y)
    if jnp.shape(slope) != (x.shape[0], y.shape[0]):
        raise ValueError(
            f"slope must have shape {(x.shape[0], y.shape[0])} (rows of x, rows of y), "
            f"got {jnp.shape(slope)}"
        )
    return 2.0 * (slope.T @ x - jnp.sum(slope, axis=0)[:, None] * y)


def rbf(x: jax.Array, y: jax.Array, bandwidth) -> jax.Array:
    """RBF Gram matrix ``exp(−‖x_i − y_j‖² / (2h²))``, shape ``(n, m)``."""
    return gram_and_slope("rbf", x, y, bandwidth)[0]


def imq(x: jax.Array, y: jax.Array, bandwidth) -> jax.Array:
    """IMQ Gram matrix ``(1 + ‖x_i − y_j‖² / h²)^(−1/2)``, shape ``(n, m)``."""
    return gram_and_slope("imq", x, y, bandwidth)[0]


def _kth_smallest(values: jax.Array, k: int) -> jax.Array:
    """Exact ``k``-th smallest (0-based) of non-negative floats, without sorting.

    Non-negative IEEE floats order like their bit patterns read as integers, so a binary search
    over the bit patterns, counting ``values <= candidate`` at each step, lands exactly on the
    ``k``-th order statistic: O(bits · n) work, much cheaper than XLA's CPU sort for the
    ``n = M(M−1)/2`` pairwise distances.
    """
    int_type = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(values.dtype).itemsize]
    bits = jax.lax.bitcast_convert_type(values, int_type)

    def step(_, bounds):
        lo, hi = bounds  # invariant: count(bits <= hi) > k, count(bits <= lo - 1) <= k
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid) > k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    num_bits = 8 * jnp.dtype(int_type).itemsize
    lo, _ = jax.lax.fori_loop(0, num_bits, step, (jnp.zeros((), int_type), jnp.max(bits)))
    return jax.lax.bitcast_convert_type(lo, values.dtype)


def unit_scale(value: jax.Array) -> jax.Array:
    """The power of two ``s`` with ``value / s`` in ``[0.5, 1)``; 1 where ``value`` is 0 or not finite.

    Dividing by a power of two is exact, so a computation on ``x / s`` gives, scaled back, the
    very numbers of the computation on ``x`` wherever that one neither overflows nor underflows,
    and stays in range where it would (samples of magnitude 1e19 or 1e-21 in float32).
    """
    value = jnp.asarray(value)
    _, exponent = jnp.frexp(value)
    exponent = jnp.minimum(exponent, jnp.finfo(value.dtype).maxexp - 1)
    ok = (value > 0) & jnp.isfinite(value)
    return jnp.where(ok, jnp.ldexp(jnp.ones_like(value), exponent), jnp.ones_like(value))


def median_bandwidth(x: jax.Array) -> jax.Array:
    r"""Median heuristic :math:`h = \operatorname{median}_{i<j} \|x_i - x_j\|` for ``x`` of shape ``(n, d)``.

    The median of an even number of distances is the mean of the two middle ones (as
    ``numpy.median``). Defined result on degenerate sets: when the median is 0 (more than half
    of the pairs coincide) the mean pairwise distance is used instead, and ``1`` when all points
    coincide, so that kernels stay finite (every estimator then returns a zero score for a point
    mass). Scale-safe: the distances are computed on ``x`` divided by a power of two near its
    spread (:func:`unit_scale`), so squared distances neither overflow nor underflow for any
    magnitude the dtype holds, and the result is exact where they would not have anyway.
    """
    x = check_points(x, "x")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"median_bandwidth needs at least 2 points, got {n}")
    scale = unit_scale(jnp.max(jnp.abs(x - jnp.mean(x, axis=0))))
    x = x / scale
    rows, cols = jnp.triu_indices(n, k=1)
    dist = jnp.sqrt(squared_distances(x, x)[rows, cols])
    num = dist.shape[0]
    upper = _kth_smallest(dist, num // 2)
    med = upper if num % 2 else 0.5 * (_kth_smallest(dist, num // 2 - 1) + upper)
    mean = jnp.mean(dist)
    return jnp.where(med > 0, med * scale, jnp.where(mean > 0, mean * scale, jnp.ones_like(mean)))
