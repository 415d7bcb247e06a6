r"""The score-estimator interface and the one-shot :func:`estimate_score`.

A score estimator approximates :math:`\nabla_z \log q(z)` (or :math:`\nabla_z \log q(z \mid c)`)
from samples of ``q`` alone. Like an Optax transformation it is a frozen object holding only
hyper-parameters, with pure functions over an explicit state pytree::

    state  = est.init(key, samples, context=None)            # samples (n, d), context (n, c)
    state  = est.update(state, samples, key, context=None)   # absorb a new sample set
    scores = est.score(state, queries, context=None)         # (m, d); kernel estimators also
                                                             # score(state): in-sample
    state  = est.fit(state, samples, key, context=None)      # bring to a fitted estimate

Kernel estimators (:class:`~implicitvi.estimators.Stein`, :class:`~implicitvi.estimators.SSGE`)
are fitted by ``init`` or ``update`` in closed form; a network
(:class:`~implicitvi.estimators.ScoreNet`) takes ``steps_per_update`` optimizer steps per
``update`` and ``fit_steps`` per ``fit``. All functions jit and vmap; the estimator object is a
static argument.

Input checks (dimensions, context, hyper-parameters) raise ``ValueError``/``TypeError`` when a
function is called, including while it is traced; checks on values (NaN or inf entries, all rows
identical) run only on concrete arrays, outside ``jit``.
"""

from __future__ import annotations

import jax

from implicitvi import _checks

__all__ = ["ScoreEstimator", "estimate_score", "get_estimator", "register"]

_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make ``name`` usable wherever an estimator is accepted."""

    def wrap(cls):
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_estimator(estimator) -> "ScoreEstimator":
    """Return ``estimator`` itself, or a default-configured one for a registered name.

    Names: ``"ssm"`` (:class:`ScoreNet` with SSM-VR), ``"stein"``, ``"ssge"``.
    """
    if isinstance(estimator, ScoreEstimator):
        return estimator
    if isinstance(estimator, str):
        _checks.check_choice(estimator, "estimator", _REGISTRY)
        return _REGISTRY[estimator]()
    raise TypeError(
        f"estimator must be a ScoreEstimator or one of {sorted(_REGISTRY)}, "
        f"got {type(estimator).__name__}"
    )


class ScoreEstimator:
    """Base class: holds the input checks shared by every estimator.

    Subclasses are frozen dataclasses and implement ``init``, ``update`` and ``score``;
    ``conditional`` says whether a context is required (True) or refused (False).

    ``persistent`` tells how the state relates to the samples. False (kernel estimators): every
    ``update`` refits from scratch, the state holds the sample set, and ``score(state)`` without
    queries gives the in-sample estimate. True (networks): the state carries learned parameters
    from one sample set to the next, its shapes do not depend on the number of samples, and
    ``score`` needs explicit queries.
    """

    conditional: bool = False
    persistent: bool = False

    def init(self, key: jax.Array, samples, context=None):
        raise NotImplementedError

    def update(self, state, samples, key: jax.Array, context=None):
        raise NotImplementedError

    def score(self, state, queries=None, context=None) -> jax.Array:
        raise NotImplementedError

    def fit(self, state, samples, key: jax.Array, context=None):
        """Fit to ``samples``: one :meth:`update` unless the estimator trains iteratively."""
        return self.update(state, samples, key, context)

    def _check_samples(self, samples, context, min_rows: int = 2, context_dim: int | None = None):
        samples = _checks.check_samples(samples, "samples", min_rows=min_rows)
        _checks.check_not_degenerate(samples, "samples")
        return samples, self._check_context(context, samples.shape[0], "context", context_dim)

    def _check_context(self, context, num_rows: int, name: str, dim: int | None = None):
        label = type(self).__name__
        if not self.conditional:
            if context is not None:
                raise ValueError(
                    f"{name}: {label} is an unconditional estimator; pass {name}=None "
                    "(use ScoreNet(conditional=True) for s(z | c))"
                )
            return None
        if context is None:
            raise ValueError(
                f"{name}: {label}(conditional=True) needs a context array of shape "
                f"({num_rows}, context_dim), got None"
            )
        context = _checks.as_float_array(context, name)
        if context.ndim != 2 or context.shape[0] != num_rows:
            raise ValueError(
                f"{name} must have shape ({num_rows}, context_dim) to match the samples, "
                f"got {tuple(context.shape)}"
            )
        if dim is not None and context.shape[1] != dim:
            raise ValueError(
                f"{name} must have {dim} columns as at init, got shape {tuple(context.shape)}"
            )
        _checks.check_finite(context, name)
        return context

    def _check_queries(self, dim: int, context_dim: int | None, queries, context):
        """Validate ``(m, dim)`` queries and their context."""
        queries = _checks.check_queries(queries, dim)
        return queries, self._check_context(context, queries.shape[0], "context", context_dim)


def estimate_score(
    estimator,
    samples,
    queries=None,
    *,
    key: jax.Array,
    context=None,
    query_context=None,
) -> jax.Array:
    """Estimate ``∇ log q`` at ``queries`` from ``samples`` of ``q`` in one call.

    Runs ``init`` then ``fit`` (a network trains ``fit_steps`` steps) then ``score``.

    Args:
        estimator: a :class:`ScoreEstimator` or a name: ``"ssm"``, ``"stein"``, ``"ssge"``.
        samples: ``(n, d)`` draws from ``q``.
        queries: ``(m, d)`` points to score; default: the samples themselves (in-sample).
        key: PRNG key (network initialisation and projections).
        context: ``(n, c)`` conditioning values of the samples, for a conditional estimator.
        query_context: ``(m, c)`` conditioning values of the queries (default: ``context``
            when ``queries`` is None).

    Returns:
        ``(m, d)`` estimated scores (``(n, d)`` when ``queries`` is None).
    """
    est = get_estimator(estimator)
    init_key, fit_key = jax.random.split(key)
    state = est.init(init_key, samples, context)
    state = est.fit(state, samples, fit_key, context)
    if queries is None and est.persistent:
        return est.score(state, samples, context if query_context is None else query_context)
    return est.score(state, queries, query_context)
