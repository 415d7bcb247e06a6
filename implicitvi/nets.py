"""Small networks as pure ``init``/``apply`` function pairs over a parameter pytree.

An :class:`MLP` is a frozen description (layer sizes, activation); its parameters are a list of
``(W, b)`` pairs, ``W`` of shape ``(fan_in, fan_out)``. Any other network can take its place in
the estimators as long as it offers the same two functions.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from implicitvi._checks import check_hidden

__all__ = ["MLP"]


@dataclasses.dataclass(frozen=True)
class MLP:
    """Multi-layer perceptron ``x ↦ W_L σ(… σ(W_1 x + b_1) …) + b_L``.

    Args:
        hidden: widths of the hidden layers, a sequence of ints ``>= 1`` (``()`` for a linear
            map); anything else raises ``TypeError``/``ValueError`` naming ``hidden``.
        activation: elementwise nonlinearity σ. Score networks trained by score matching need a
            smooth one (their input-Jacobian is part of the loss); the default is ``jax.nn.softplus``.
        zero_output: initialise the last layer at zero, so the network starts as the zero map.
    """

    hidden: Sequence[int] = (256, 256)
    activation: Callable[[jax.Array], jax.Array] = jax.nn.softplus
    zero_output: bool = False

    def __post_init__(self):
        object.__setattr__(self, "hidden", check_hidden(self.hidden, "hidden"))
        if not callable(self.activation):
            raise TypeError(f"activation must be callable, got {type(self.activation).__name__}")

    def init(self, key: jax.Array, in_dim: int, out_dim: int, dtype=None) -> list:
        """Parameters for inputs of ``in_dim`` features and outputs of ``out_dim``, in ``dtype``
        (default: JAX's default float type, float64 under ``jax_enable_x64``).

        Weights are drawn from N(0, 1/fan_in) (LeCun normal), biases start at zero.
        """
        dtype = jnp.result_type(float) if dtype is None else dtype
        sizes = (in_dim, *self.hidden, out_dim)
        keys = jax.random.split(key, len(sizes) - 1)
        params = []
        for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            if last and self.zero_output:
                w = jnp.zeros((fan_in, fan_out), dtype)
            else:
                w = jax.random.normal(k, (fan_in, fan_out), dtype) / jnp.sqrt(fan_in).astype(dtype)
            params.append((w, jnp.zeros((fan_out,), dtype)))
        return params

    def apply(self, params: list, x: jax.Array) -> jax.Array:
        """Apply to ``x`` of shape ``(..., in_dim)``; returns ``(..., out_dim)``."""
        for w, b in params[:-1]:
            x = self.activation(x @ w + b)
        w, b = params[-1]
        return x @ w + b
