r"""The score-estimator protocol and the one-shot :func:`estimate_score`.

A score estimator approximates :math:`\nabla_z \log q(z)` (or :math:`\nabla_z \log q(z \mid c)`)
from samples of ``q`` alone. Like an Optax transformation it is a frozen object holding only
hyper-parameters, with pure functions over an explicit state pytree; like a BlackJAX kernel, the
PRNG key comes first::

    state  = est.init(key, samples, context=None)            # samples (n, d), context (n, c)
    state  = est.update(key, state, samples, context=None)   # absorb a new sample set
    state  = est.fit(key, state, samples, context=None)      # bring to a fitted estimate
    scores = est.score(state, queries, context=None)         # (m, d) at explicit queries

Kernel estimators (:class:`~implicitvi.estimators.Stein`, :class:`~implicitvi.estimators.SSGE`)
are fitted in closed form by ``init`` or ``update`` (which refits from scratch and ignores the
previous state); a network (:class:`~implicitvi.estimators.ScoreNet`) takes ``steps_per_update``
optimizer steps per ``update`` and ``fit_steps`` per ``fit``. The same call sequence
``update → score(state, samples)`` therefore serves both: scored at its own samples, a kernel
estimator returns its in-sample estimate. All functions jit and vmap; the estimator object is a
static argument. Estimators are compared by the layout of their state (see
:func:`state_matches`), never as objects.

Input checks (dimensions, context, hyper-parameters, the PRNG key, the type of the state)
raise ``ValueError``/``TypeError`` when a function is called, including while it is traced; checks on values (NaN or inf entries, all rows
identical) run only on concrete arrays, outside ``jit``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

from implicitvi import _checks

__all__ = ["ScoreEstimator", "estimate_score", "get_estimator", "register", "state_matches"]

_REGISTRY: dict[str, type] = {}


@runtime_checkable
class ScoreEstimator(Protocol):
    """What every score estimator provides.

    Attributes:
        conditional: whether a context is required (True) or refused (False).
        persistent: how the state relates to the samples. False (kernel estimators): every
            ``update`` refits from scratch and the state holds the sample set, so its shapes
            depend on the number of samples. True (networks): the state carries learned
            parameters from one sample set to the next and its shapes do not depend on the
            number of samples, so it can live in an SVI state.

    An estimator may also set ``needs_targets = True`` (a :class:`ScoreNet` with the
    ``"regression"`` objective): its ``update`` and ``fit`` then take a keyword ``targets``,
    ``(n, d)`` per-sample values whose conditional mean given the sample is the score.
    """

    conditional: bool
    persistent: bool

    def init(self, key: jax.Array, samples: jax.Array, context: jax.Array | None = None) -> Any:
        """A state fitted (kernels) or initialised (networks) on ``(n, d)`` samples."""

    def update(
        self, key: jax.Array, state: Any, samples: jax.Array, context: jax.Array | None = None
    ) -> Any:
        """The state after absorbing a new ``(n, d)`` sample set."""

    def fit(
        self, key: jax.Array, state: Any, samples: jax.Array, context: jax.Array | None = None
    ) -> Any:
        """The state brought to a fitted estimate on ``(n, d)`` samples."""

    def score(self, state: Any, queries: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """``(m, d)`` estimates of the score at ``(m, d)`` queries."""


def register(name: str):
    """Class decorator: make ``name`` usable wherever an estimator is accepted."""

    def wrap(cls):
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_estimator(estimator) -> ScoreEstimator:
    """Return ``estimator`` itself, or a default-configured one for a registered name.

    Names: ``"ssm"`` (:class:`ScoreNet` with SSM-VR), ``"stein"``, ``"ssge"``.
    """
    if isinstance(estimator, str):
        _checks.check_choice(estimator, "estimator", _REGISTRY)
        return _REGISTRY[estimator]()
    if isinstance(estimator, ScoreEstimator):
        return estimator
    raise TypeError(
        f"estimator must be a ScoreEstimator or one of {sorted(_REGISTRY)}, "
        f"got {type(estimator).__name__}"
    )


def state_matches(estimator: ScoreEstimator, state, samples, context=None) -> bool:
    """Whether ``state`` has the layout (tree structure, shapes, dtypes) that
    ``estimator.init`` gives on ``samples`` — i.e. whether ``estimator`` can continue it.

    Two estimators are interchangeable on a state exactly when this holds for both; nothing is
    computed (``jax.eval_shape``).
    """
    fresh = jax.eval_shape(lambda: estimator.init(jax.random.PRNGKey(0), samples, context))
    spec = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)  # noqa: E731
    fresh_leaves, fresh_def = jax.tree.flatten(spec(fresh), is_leaf=lambda x: isinstance(x, tuple))
    leaves, treedef = jax.tree.flatten(
        spec(jax.eval_shape(lambda: state)), is_leaf=lambda x: isinstance(x, tuple)
    )
    return fresh_def == treedef and fresh_leaves == leaves


class EstimatorChecks:
    """Input checks shared by the estimators of this package (a mixin, not part of the protocol).

    Subclasses are frozen dataclasses implementing the :class:`ScoreEstimator` protocol;
    ``fit`` defaults to one ``update``.
    """

    conditional: bool = False
    persistent: bool = False

    def fit(self, key: jax.Array, state, samples, context=None):
        """Fit to ``samples``: one :meth:`update` unless the estimator trains iteratively."""
        return self.update(key, state, samples, context)

    def _check_state(self, state, state_type: type) -> None:
        """``TypeError`` unless ``state`` is a ``state_type`` (e.g. another estimator's state)."""
        if not isinstance(state, state_type):
            label = type(self).__name__
            raise TypeError(
                f"state must be the {state_type.__name__} that {label}.init returns, "
                f"got {type(state).__name__} (a state of another estimator?)"
            )

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

    def _check_queries(self, dim: int, context_dim: int | None, queries, context, dtype):
        """Validate ``(m, dim)`` queries of the state's ``dtype`` and their context."""
        if queries is None:
            raise ValueError(
                f"queries: {type(self).__name__}.score needs the (m, {dim}) points to score "
                "(pass the samples themselves for in-sample estimates)"
            )
        queries = _checks.check_queries(queries, dim)
        _checks.check_dtype(queries, "queries", dtype)
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
    _checks.check_key(key)
    init_key, fit_key = jax.random.split(key)
    state = est.init(init_key, samples, context)
    state = est.fit(fit_key, state, samples, context)
    if queries is None:
        queries = samples
        query_context = context if query_context is None else query_context
    return est.score(state, queries, query_context)
