"""Argument checks shared by the public entry points.

Shape and dtype checks work on tracers too (shapes are static under ``jit``); checks on
values (NaN, inf, identical rows) run only when the array is concrete, i.e. outside
``jit``/``vmap``, because a traced value cannot be inspected without a host sync.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def as_float_array(x, name: str) -> jax.Array:
    """Return ``x`` as a floating JAX array, or raise ``TypeError`` naming ``name``."""
    try:
        arr = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"{name} must be an array of floats, got {type(x).__name__}") from err
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must be an array of floats, got dtype {arr.dtype}")
    return arr


def check_finite(arr: jax.Array, name: str) -> None:
    if is_concrete(arr) and not bool(np.all(np.isfinite(np.asarray(arr)))):
        raise ValueError(f"{name} contains NaN or inf values")


def check_samples(samples, name: str = "samples", min_rows: int = 2) -> jax.Array:
    """Validate a sample matrix of shape (n, d): floating, 2-D, n >= min_rows, d >= 1, finite."""
    arr = as_float_array(samples, name)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (num_samples, dim), got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(arr.shape)}")
    check_finite(arr, name)
    return arr


def check_not_degenerate(arr: jax.Array, name: str = "samples") -> None:
    """Raise if every row of a concrete sample matrix is the same point."""
    if is_concrete(arr) and arr.shape[0] > 1:
        host = np.asarray(arr)
        if np.all(host == host[:1]):
            raise ValueError(
                f"{name}: all {host.shape[0]} rows are identical; the score of a point mass is "
                "undefined (add noise or pass distinct samples)"
            )


def check_queries(queries, dim: int, name: str = "queries") -> jax.Array:
    arr = check_samples(queries, name, min_rows=1)
    if arr.shape[1] != dim:
        raise ValueError(
            f"{name} must have {dim} columns to match the samples, got shape {tuple(arr.shape)}"
        )
    return arr


def check_dtype(arr: jax.Array, name: str, dtype) -> None:
    """``TypeError`` unless ``arr`` has the floating ``dtype`` of the state it meets (under
    ``jax_enable_x64`` a float32 state and float64 data would otherwise mix silently)."""
    if arr.dtype != dtype:
        raise TypeError(
            f"{name} must have dtype {jnp.dtype(dtype).name}, the dtype of the samples the "
            f"estimator's state was created from, got {arr.dtype}; cast one to the other"
        )


def _check_number(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_integer(value, name: str) -> None:
    if not _is_integer(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def check_positive(value, name: str, allow_none: bool = False, allow_zero: bool = False):
    """A finite number ``> 0`` (``>= 0`` with ``allow_zero``), or None with ``allow_none``."""
    if value is None and allow_none:
        return
    _check_number(value, name)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")


def check_nonnegative(value, name: str, allow_none: bool = False) -> None:
    """A finite number ``>= 0``, or None with ``allow_none``."""
    check_positive(value, name, allow_none=allow_none, allow_zero=True)


def check_in_range(
    value, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """A number in the interval from ``low`` to ``high`` (open at either end on request)."""
    _check_number(value, name)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (np.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value}")


def check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")


def check_int_at_least(value, name: str, minimum: int, allow_none: bool = False) -> None:
    """An int ``>= minimum`` (not a bool), or None with ``allow_none``."""
    if value is None and allow_none:
        return
    _check_integer(value, name)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_positive_int(value, name: str, allow_none: bool = False) -> None:
    """An int ``>= 1``, or None with ``allow_none``."""
    check_int_at_least(value, name, 1, allow_none=allow_none)


def check_precision(arr: jax.Array, name: str) -> None:
    """A floating array of at least 32 bits (float16 and bfloat16 raise ``TypeError``)."""
    if jnp.dtype(arr.dtype).itemsize < 4:
        raise TypeError(
            f"{name} must be float32 or float64, got dtype {arr.dtype}; "
            f"cast it first, e.g. {name}.astype(jnp.float32)"
        )


@functools.cache
def _raw_key_shape(impl: str) -> tuple:
    del impl  # the cache key: the default implementation decides the shape
    return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)


def check_key(key, name: str = "key", allow_none: bool = False):
    """A single PRNG key: a typed key of shape ``()`` (``jax.random.key(seed)``) or a raw
    ``uint32`` key of the default implementation's shape, ``(2,)`` for threefry
    (``jax.random.PRNGKey(seed)``); or None with ``allow_none``. Works on tracers (only the
    shape and dtype are read)."""
    if key is None and allow_none:
        return key
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return key
        raise ValueError(f"{name} must be a single PRNG key, got an array of keys of shape {shape}")
    raw_shape = _raw_key_shape(str(jax.config.jax_default_prng_impl))
    if dtype is not None and dtype == np.uint32 and tuple(shape) == raw_shape:
        return key
    if dtype is not None and dtype == np.uint32 and tuple(shape[-len(raw_shape) :]) == raw_shape:
        raise ValueError(f"{name} must be a single PRNG key, got an array of keys of shape {shape}")
    if dtype is not None:
        got = f"an array of shape {tuple(shape)} and dtype {dtype}"
    else:
        got = f"{type(key).__name__} {key!r}"[:80]
    raise TypeError(
        f"{name} must be a PRNG key (jax.random.key(seed), or jax.random.PRNGKey(seed): uint32 "
        f"of shape {raw_shape}), got {got}"
    )


def check_points(x, name: str) -> jax.Array:
    """Row-stacked points: a floating array of shape ``(n, d)`` (shape and dtype only)."""
    arr = as_float_array(x, name)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (num_points, dim), got shape {tuple(arr.shape)}"
        )
    return arr


def check_scalar_positive(value, name: str, dtype) -> jax.Array:
    """A scalar (array or number) as ``dtype``; when concrete, finite and ``> 0``."""
    arr = jnp.asarray(value, dtype=dtype)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(arr.shape)}")
    if is_concrete(arr):
        host = float(arr)
        if not (np.isfinite(host) and host > 0):
            raise ValueError(f"{name} must be finite and > 0, got {host}")
    return arr


def output_of(fn, name: str, *args, call: str):
    """``jax.eval_shape(fn, *args)``: the shape and dtype of ``fn``'s output, nothing computed.

    ``fn`` must be callable (``TypeError``), and an error raised while tracing it on ``args``
    (a shape mismatch inside ``fn``, say) is re-raised as ``ValueError`` naming ``name`` and
    ``call``, a description of the arguments, with the original error chained.
    """
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    try:
        return jax.eval_shape(fn, *args)
    except Exception as err:  # any error of the user's function, re-raised naming it
        raise ValueError(f"{name} failed when called {call}: {type(err).__name__}: {err}") from err


def check_hidden(hidden, name: str = "hidden") -> tuple:
    """Hidden-layer widths: a sequence (list or tuple) of ints ``>= 1``; returned as a tuple."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (list, tuple)):
        raise TypeError(
            f"{name} must be a sequence of positive ints (layer widths, e.g. (256, 256)), "
            f"got {type(hidden).__name__} {hidden!r}"[:200]
        )
    for width in hidden:
        if not _is_integer(width):
            raise TypeError(f"{name} must be a sequence of positive ints, got {hidden!r}")
        if width < 1:
            raise ValueError(f"{name} must be a sequence of positive ints, got {hidden!r}")
    return tuple(int(w) for w in hidden)


def is_network(obj) -> bool:
    """Whether ``obj`` has the network interface ``init(key, in_dim, out_dim, dtype)`` and
    ``apply(params, x)`` (like :class:`implicitvi.nets.MLP`)."""
    return all(callable(getattr(obj, m, None)) for m in ("init", "apply"))
