"""Hyper-parameter checks, the bandwidth rule and the working scale shared by the kernel estimators.

Scale: the kernel estimators compute in units of ``s = unit_scale(h)``, a power of two near the
bandwidth ``h`` (samples ``x / s``, bandwidth ``h / s`` in ``[0.5, 1)``), and scale the scores
back by ``1 / s``. Division by a power of two is exact, so the estimates are bitwise those of
the plain formulas wherever these stay in the dtype's range, and stay finite and correct for
samples of any magnitude it holds (in float32, samples of size 1e19 used to overflow the squared
distances and samples of size 1e-21 to underflow them).
"""

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


def check_kernel_samples(samples: jax.Array) -> None:
    """Kernel estimators factorise in the samples' dtype: float16/bfloat16 raise ``TypeError``."""
    _checks.check_precision(samples, "samples")


def scaled(samples: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(s, samples / s, h / s)`` with ``s = unit_scale(h)`` (see the module docstring)."""
    s = kernels.unit_scale(h)
    return s, samples / s, h / s


def bandwidth_for(bandwidth, samples: jax.Array) -> jax.Array:
    """The fixed ``bandwidth``, or the median heuristic on ``samples`` when it is None."""
    if bandwidth is None:
        return kernels.median_bandwidth(samples)
    return jnp.asarray(bandwidth, samples.dtype)
