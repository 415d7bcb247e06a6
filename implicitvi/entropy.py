r"""Entropy-gradient surrogates for samplers without a density.

For a sampler :math:`z = f_\phi(\epsilon)`, :math:`\epsilon \sim p(\epsilon)`, the entropy
:math:`H[q_\phi] = -\mathbb{E}_{q_\phi}[\log q_\phi(z)]` has the gradient

.. math:: \nabla_\phi H[q_\phi] = -\mathbb{E}_\epsilon\big[\nabla_z \log q_\phi(z)^\top\,
   \partial f_\phi(\epsilon) / \partial \phi\big]_{z = f_\phi(\epsilon)}

(the term :math:`\mathbb{E}_q[\nabla_\phi \log q_\phi(z)]` at fixed ``z`` vanishes). Given scores
:math:`s(z) \approx \nabla_z \log q_\phi(z)` at the drawn ``z``, the scalar

.. math:: \mathcal{S}(\phi) = -\frac1n \sum_i \operatorname{sg}[s(z_i)]^\top
   \big(z_i - \operatorname{sg}[z_i]\big), \qquad z_i = f_\phi(\epsilon_i)

(``sg`` = stop-gradient) has exactly that gradient in expectation, and the value 0: scores do not
determine the entropy itself, so a loss that adds :math:`\mathcal{S}` reports everything but the
estimated entropy and is not shifted by an arbitrary amount. For an amortized sampler :math:`z = f_\phi(\epsilon, x)` the same
scalar with conditional scores :math:`s(z_i \mid x_i)` has gradient
:math:`\nabla_\phi \frac1n\sum_i H[q_\phi(\cdot \mid x_i)]`: the conditional form is the same
formula with a conditional estimator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from implicitvi._checks import as_float_array

__all__ = ["surrogate"]


def surrogate(samples: jax.Array, scores: jax.Array) -> jax.Array:
    """Entropy surrogate ``−mean_i sg(scores_i) · (samples_i − sg(samples_i))``: value 0.

    Args:
        samples: ``(..., n, d)`` reparameterized draws ``z = f_φ(ε)`` (differentiable in φ).
        scores: ``(..., n, d)`` scores ``∇_z log q(z)`` at the draws (gradients are stopped).

    Returns:
        A scalar whose φ-gradient estimates ``∇_φ H[q_φ]`` (mean over all leading axes).

    Raises:
        TypeError: ``samples`` or ``scores`` is not a floating array.
        ValueError: they have fewer than 2 dimensions or different shapes.
    """
    samples, scores = as_float_array(samples, "samples"), as_float_array(scores, "scores")
    if samples.ndim < 2:
        raise ValueError(
            f"samples must have shape (..., n, d) with at least 2 dimensions, "
            f"got shape {tuple(samples.shape)}"
        )
    if samples.shape != scores.shape:
        raise ValueError(
            f"samples and scores must have the same shape, got {samples.shape} and {scores.shape}"
        )
    moved = samples - jax.lax.stop_gradient(samples)
    per_draw = jnp.sum(jax.lax.stop_gradient(scores) * moved, axis=-1)
    return -jnp.mean(per_draw)
