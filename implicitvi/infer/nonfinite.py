"""Stopping a jitted run when a quantity becomes non-finite, with a message naming it and the step.

One mechanism serves the ELBO and the training loop: :func:`guard` adds a check to a traced value
that costs one predicate while everything is finite; on a failing step a host callback raises
``FloatingPointError`` with the message. Under a user's own ``jit`` that surfaces as JAX's
runtime error (:data:`JIT_ERRORS`), whose text carries the message; where this library runs the loop
(:func:`~implicitvi.infer.run_minibatch`), :func:`reraise` turns it back into the
``FloatingPointError`` itself, and around a loop of the user's own (``svi.run``)
:func:`floating_point_errors` does the same.

JAX logs every exception raised in a host callback with its traceback; for the guard's own
``FloatingPointError``, which reaches the caller anyway, that log record is dropped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["JIT_ERRORS", "floating_point_errors", "guard", "reraise"]

JIT_ERRORS = (getattr(jax.errors, "JaxRuntimeError", RuntimeError), ValueError)
"""What a :func:`guard` failing under ``jit`` reaches the caller as: JAX's runtime error, or a
``ValueError`` when the call took JAX's compiled fast path; both carry the message."""

_lock = threading.Lock()
_raised: list[FloatingPointError] = []  # the host callback's error, for reraise


def _fail(where: str, names: tuple[str, ...], advice: str, dtype, step, *flags):
    if all(bool(f) for f in flags):
        return np.zeros((), dtype)
    bad = ", ".join(n for n, f in zip(names, flags) if not bool(f))
    err = FloatingPointError(f"{where}: {bad} became non-finite at step {int(step)}; {advice}")
    err.from_guard = True  # for _QuietGuard
    with _lock:
        _raised[:] = [err]
    raise err


def guard(value: jax.Array, step: jax.Array, checks: dict[str, jax.Array], *, where: str,
          advice: str) -> jax.Array:
    """``value`` (a scalar), stopping the computation when one of ``checks`` is false.

    Args:
        value: the scalar to pass through (a loss); it stays differentiable.
        step: the step number to report.
        checks: quantity name → boolean scalar, true while that quantity is finite.
        where: who reports (``"ImplicitELBO"``), the message's first words.
        advice: what to try, the message's last words.

    The host is called only on a failing step: the callback sits on one branch of a
    ``lax.cond``, and its (zero) result is added to ``value``, which keeps it alive without the
    ordered-effect token of ``jax.debug.callback``, which would order, and so slow, every step.
    """
    names = tuple(checks)
    flags = tuple(jnp.asarray(f) for f in checks.values())

    def fail(value):
        host = functools.partial(_fail, where, names, advice, value.dtype)
        spec = jax.ShapeDtypeStruct((), value.dtype)
        return value + jax.pure_callback(host, spec, step, *flags, vmap_method="sequential")

    return jax.lax.cond(jnp.all(jnp.stack(flags)), lambda v: v, fail, value)


def reraise(err: Exception) -> None:
    """Raise the ``FloatingPointError`` a :func:`guard` raised inside the failed computation
    ``err`` came from, chained to it; return if ``err`` has another cause."""
    with _lock:
        raised = _raised[:]
        _raised.clear()
    if raised and str(raised[0]) in str(err):
        raise raised[0] from err


@contextlib.contextmanager
def floating_point_errors():
    """Inside this context a :func:`guard` that fails under ``jit`` raises its
    ``FloatingPointError`` instead of JAX's runtime error, e.g.::

        with floating_point_errors():
            result = svi.run(key, num_steps, data)
    """
    try:
        yield
    except JIT_ERRORS as err:
        reraise(err)
        raise


class _QuietGuard(logging.Filter):
    """Drop JAX's log record of a callback that raised a guard's ``FloatingPointError``."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        return not getattr(err, "from_guard", False)


logging.getLogger("jax._src.callback").addFilter(_QuietGuard())
