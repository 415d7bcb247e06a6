r"""Score-matching objectives for a score model :math:`s(x) \approx \nabla_x \log p(x)`.

Every objective is a pure function ``objective(score_fn, samples, key, **options) -> scalar``:

* ``score_fn`` maps a batch ``(n, d) -> (n, d)`` row by row (row ``i`` of the output depends on
  row ``i`` of the input only — any per-sample network applied to a batch, possibly closing over
  parameters or a per-row context);
* ``samples`` has shape ``(n, d)``; the loss is the mean over its rows;
* ``key`` is a PRNG key for the objectives that draw projections or noise (``exact`` takes none).

Up to a constant that does not depend on ``s``, the exact, sliced and finite-difference objectives
equal the Fisher divergence :math:`\tfrac12 \mathbb{E}_p \|s(x) - \nabla \log p(x)\|^2` in
expectation, so they share one minimizer. :func:`regression` is the exception: it needs, beside
the samples, a per-sample target whose conditional mean given the sample is the score (the
conditional score of a semi-implicit sampler), and takes it as the keyword ``targets``. Gradients in ``x`` are taken in forward mode
(Jacobian-vector products); only :func:`exact` forms the Jacobian, column by column.

Every objective checks, also while traced, that ``samples`` is a 2-D floating array, that
``score_fn`` returns an array of the samples' shape, and that ``key`` is a single PRNG key where
one is used; each raises ``ValueError``/``TypeError`` naming the argument.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from implicitvi._checks import (
    check_choice,
    check_key,
    check_points,
    check_positive,
    check_positive_int,
)

__all__ = ["OBJECTIVES", "denoising", "exact", "fd_sliced", "regression", "sliced", "sliced_vr"]

ScoreFn = Callable[[jax.Array], jax.Array]
PROJECTIONS = ("gaussian", "rademacher")


def _check_samples(samples) -> jax.Array:
    return check_points(samples, "samples")


def _check_scores(got: tuple, shape: tuple) -> None:
    """``score_fn``'s output shape ``got`` must be the shape of its input (``shape``)."""
    if tuple(got) != tuple(shape):
        raise ValueError(
            f"score_fn must map samples of shape {tuple(shape)} to scores of the same shape, "
            f"got {tuple(got)}"
        )


def _check_required_key(key, why: str) -> None:
    if key is None:
        raise TypeError(f"key is required: {why}")
    check_key(key)


def exact(score_fn: ScoreFn, samples: jax.Array, key: jax.Array | None = None) -> jax.Array:
    r"""Hyvärinen's score-matching objective (Hyvärinen 2005, eq. 4).

    .. math:: J(s) = \mathbb{E}_x\big[\tfrac12 \|s(x)\|^2 + \operatorname{tr} \nabla_x s(x)\big].

    The trace is formed from all ``d`` Jacobian columns (``d`` forward-mode passes over the batch),
    so its cost grows as ``d`` times a forward pass: use it for small ``d`` and for tests.
    ``key`` is accepted and ignored so that all objectives share one signature.
    """
    del key
    samples = _check_samples(samples)
    n, d = samples.shape
    basis = jnp.broadcast_to(jnp.eye(d, dtype=samples.dtype)[:, None, :], (d, n, d))
    scores, columns = jax.vmap(lambda e: jax.jvp(score_fn, (samples,), (e,)), out_axes=(None, 0))(
        basis
    )
    _check_scores(scores.shape, samples.shape)
    # columns[k, i] = ∂s(x_i)/∂x_k, so the trace picks entry k of column k.
    trace = jnp.einsum("kik->i", columns)
    return jnp.mean(0.5 * jnp.sum(scores**2, axis=-1) + trace)


def _projections(key, shape, dtype, projection: str) -> jax.Array:
    check_choice(projection, "projection", PROJECTIONS)
    if projection == "gaussian":
        return jax.random.normal(key, shape, dtype)
    return jax.random.rademacher(key, shape, dtype)


def _sliced_terms(score_fn, samples, key, num_projections, projection):
    """Scores ``(n, d)``, projections ``(M, n, d)`` and the ``vᵀ ∇s v`` terms ``(M, n)``."""
    samples = _check_samples(samples)
    _check_required_key(key, "sliced objectives draw random projections")
    check_positive_int(num_projections, "num_projections")
    v = _projections(key, (num_projections, *samples.shape), samples.dtype, projection)
    scores, jvps = jax.vmap(lambda t: jax.jvp(score_fn, (samples,), (t,)), out_axes=(None, 0))(v)
    _check_scores(scores.shape, samples.shape)
    return scores, v, jnp.sum(v * jvps, axis=-1)


def sliced(
    score_fn: ScoreFn,
    samples: jax.Array,
    key: jax.Array,
    *,
    num_projections: int = 1,
    projection: str = "gaussian",
) -> jax.Array:
    r"""Sliced score matching, SSM (Song, Garg, Shi & Ermon 2019, eq. 7).

    .. math:: J(s) = \mathbb{E}_x \mathbb{E}_v\big[v^\top \nabla_x s(x)\, v + \tfrac12 (v^\top s(x))^2\big],

    with ``num_projections`` directions ``v`` per sample, standard Gaussian or Rademacher
    (both have :math:`\mathbb{E}[vv^\top] = I`, so the objective is unbiased for :func:`exact`).
    ``vᵀ ∇s v`` is one Jacobian-vector product per direction.
    """
    scores, v, quad = _sliced_terms(score_fn, samples, key, num_projections, projection)
    proj = jnp.sum(v * scores[None], axis=-1)
    return jnp.mean(quad + 0.5 * proj**2)


def sliced_vr(
    score_fn: ScoreFn,
    samples: jax.Array,
    key: jax.Array,
    *,
    num_projections: int = 1,
    projection: str = "gaussian",
) -> jax.Array:
    r"""Variance-reduced sliced score matching, SSM-VR (Song et al. 2019, eq. 8).

    .. math:: J(s) = \mathbb{E}_x\big[\mathbb{E}_v[v^\top \nabla_x s(x)\, v] + \tfrac12 \|s(x)\|^2\big],

    the second term of :func:`sliced` integrated over ``v`` in closed form.
    """
    scores, _, quad = _sliced_terms(score_fn, samples, key, num_projections, projection)
    return jnp.mean(quad) + 0.5 * jnp.mean(jnp.sum(scores**2, axis=-1))


def denoising(
    score_fn: ScoreFn, samples: jax.Array, key: jax.Array, *, sigma: float = 0.1
) -> jax.Array:
    r"""Denoising score matching, DSM (Vincent 2011, eq. 8) at noise level ``sigma``.

    .. math:: J(s) = \tfrac12 \mathbb{E}_{x, \epsilon}\big\|s(x + \sigma\epsilon) + \epsilon / \sigma\big\|^2,
       \quad \epsilon \sim \mathcal{N}(0, I).

    Its minimizer is the score of the *smoothed* density :math:`p * \mathcal{N}(0, \sigma^2 I)`,
    which tends to that of :math:`p` as :math:`\sigma \to 0` (at a growing variance).
    """
    samples = _check_samples(samples)
    _check_required_key(key, "the denoising objective draws noise")
    check_positive(sigma, "sigma")
    eps = jax.random.normal(key, samples.shape, samples.dtype)
    scores = score_fn(samples + sigma * eps)
    _check_scores(scores.shape, samples.shape)
    residual = scores + eps / sigma
    return 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))


def fd_sliced(
    score_fn: ScoreFn,
    samples: jax.Array,
    key: jax.Array,
    *,
    num_projections: int = 1,
    projection: str = "gaussian",
    eps: float = 1e-2,
) -> jax.Array:
    r"""Finite-difference sliced score matching, FD-SSM (Pang et al. 2020, NeurIPS).

    With :math:`v = \varepsilon u` (``u`` Gaussian or Rademacher) and
    :math:`a_\pm = v^\top s(x \pm v)`, central differences give
    :math:`a_+ - a_- = 2 v^\top \nabla s(x) v + O(\varepsilon^4)` and
    :math:`a_+ + a_- = 2 v^\top s(x) + O(\varepsilon^3)`, so

    .. math:: J_\varepsilon(s) = \varepsilon^{-2}\, \mathbb{E}_{x,u}\big[\tfrac12 (a_+ - a_-)
       + \tfrac18 (a_+ + a_-)^2\big] = J_{\mathrm{SSM}}(s) + O(\varepsilon^2).

    Only two evaluations of ``s`` per direction, batched in one call, and no Jacobian-vector
    product: cheaper than :func:`sliced` per step.
    """
    samples = _check_samples(samples)
    _check_required_key(key, "sliced objectives draw random projections")
    check_positive_int(num_projections, "num_projections")
    check_positive(eps, "eps")
    v = eps * _projections(key, (num_projections, *samples.shape), samples.dtype, projection)
    shifted = jnp.concatenate([samples[None] + v, samples[None] - v])
    out = jax.vmap(score_fn)(shifted)
    _check_scores(out.shape[1:], samples.shape)
    a = jnp.sum(jnp.concatenate([v, v]) * out, axis=-1)
    a_plus, a_minus = a[:num_projections], a[num_projections:]
    return jnp.mean(0.5 * (a_plus - a_minus) + 0.125 * (a_plus + a_minus) ** 2) / eps**2


def regression(
    score_fn: ScoreFn, samples: jax.Array, key: jax.Array | None = None, *, targets: jax.Array
) -> jax.Array:
    r"""Score regression on conditional scores (the identity behind DSM, UIVI and SIVI-SM).

    For a semi-implicit sampler :math:`x = m(\epsilon_2) + \sigma(\epsilon_2) \odot \epsilon_1`,
    :math:`q(x) = \mathbb{E}_{\epsilon_2}\, q(x \mid \epsilon_2)`, the conditional score
    :math:`t = \nabla_x \log q(x \mid \epsilon_2) = -\epsilon_1 / \sigma(\epsilon_2)` is known at
    every draw, and :math:`\mathbb{E}[t \mid x] = \nabla_x \log q(x)` (Titsias & Ruiz 2019, UIVI,
    eq. 6; Yu & Zhang 2023, SIVI-SM). Hence

    .. math:: J(s) = \tfrac12\, \mathbb{E}_{x, t}\, \|s(x) - t\|^2
       = \tfrac12\, \mathbb{E}_x \|s(x) - \nabla \log q(x)\|^2 + \text{const},

    plain least squares whose minimizer is the marginal score, with no derivative of ``s`` and
    no noise-level bias. :func:`denoising` is the special case :math:`m(\epsilon_2) = \epsilon_2`
    (the data), :math:`\sigma = ` ``sigma``.

    Args:
        score_fn: the score model, ``(n, d) -> (n, d)``.
        samples: ``(n, d)`` draws ``x``.
        key: accepted and ignored (all objectives share one signature).
        targets: ``(n, d)`` the conditional score at each draw.
    """
    del key
    samples = _check_samples(samples)
    targets = jnp.asarray(targets)
    if targets.shape != samples.shape:
        raise ValueError(
            f"targets must have the shape of samples {samples.shape}, got {targets.shape}"
        )
    scores = score_fn(samples)
    _check_scores(scores.shape, samples.shape)
    residual = scores - jax.lax.stop_gradient(targets)
    return 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))


OBJECTIVES: dict[str, Callable] = {
    "exact": exact,
    "ssm": sliced,
    "ssm_vr": sliced_vr,
    "dsm": denoising,
    "fd_ssm": fd_sliced,
    "regression": regression,
}
"""Objective name (as accepted by :class:`~implicitvi.estimators.ScoreNet`) → function."""
