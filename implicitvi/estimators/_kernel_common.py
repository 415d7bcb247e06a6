"""Hyper-parameter checks and the bandwidth rule shared by the kernel estimators."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from implicitvi import _checks, kernels


BASES = ("zero", "normal")


def check_kernel_options(bandwidth, kernel: str, base: str) -> None:
    _checks.check_positive(bandwidth, "bandwidth", allow_none=True)
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a string, got {type(kernel).__name__}")
    _checks.check_choice(kernel, "kernel", kernels.KERNELS)
    _checks.check_choice(base, "base", BASES)


def bandwidth_for(bandwidth, samples: jax.Array) -> jax.Array:
    """The fixed ``bandwidth``, or the median heuristic on ``samples`` when it is None."""
    if bandwidth is None:
        return kernels.median_bandwidth(samples)
    return jnp.asarray(bandwidth, samples.dtype)
