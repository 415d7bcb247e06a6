r"""A kernel estimator of :math:`q(w \mid c)` for a finite set of contexts.

An amortized sampler draws ``k`` particles at each of ``G`` contexts (the elements of a plate).
A kernel estimator has no notion of context, but it can estimate each conditional
:math:`q(w \mid c_g)` from that context's own particles. :class:`PerContext` does exactly that:
the samples come as ``G`` consecutive groups of ``group_size`` rows, one group per context, and
the wrapped estimator is fitted and queried on each group alone (a ``vmap`` over groups).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from implicitvi import _checks
from implicitvi.estimators.base import EstimatorChecks, ScoreEstimator

__all__ = ["PerContext"]


@dataclasses.dataclass(frozen=True)
class PerContext(EstimatorChecks):
    """Fit an unconditional kernel estimator separately on each context's particles.

    Args:
        estimator: an unconditional kernel estimator with an ``in_sample(state)`` method
            (:class:`Stein`, :class:`SSGE`).
        group_size: rows per context ``k ≥ 2``; samples have ``G · k`` rows, rows
            ``g k … (g + 1) k − 1`` sharing context ``c_g``.

    ``init``/``update`` take ``(G k, d)`` samples and their ``(G k, c)`` context (used for its
    shape only: the grouping is by position). ``score`` takes ``(G k', d)`` queries grouped the
    same way (``k'`` per context) and scores group ``g`` with the estimator of context ``g``.
    The state is the wrapped estimator's, with a leading axis of length ``G``.
    """

    estimator: Any
    group_size: int

    conditional = True
    persistent = False

    def __post_init__(self):
        if not isinstance(self.estimator, ScoreEstimator):
            raise TypeError(
                f"estimator must be a ScoreEstimator, got {type(self.estimator).__name__}"
            )
        if self.estimator.conditional or self.estimator.persistent or not hasattr(self.estimator, "in_sample"):
            raise ValueError(
                "estimator: PerContext needs an unconditional kernel estimator (Stein or SSGE), "
                f"got {type(self.estimator).__name__}"
            )
        _checks.check_int_at_least(self.group_size, "group_size", 2)

    def init(self, key, samples, context=None):
        """Fit the wrapped estimator on each context's ``group_size`` rows."""
        return self.update(key, None, samples, context)

    def update(self, key, state, samples, context=None):
        """Refit on every group from scratch; ``state`` is not used."""
        _checks.check_key(key, allow_none=True)
        samples = _checks.check_samples(samples, "samples", min_rows=self.group_size)
        self._check_context(context, samples.shape[0], "context")
        sets = self._groups(samples, "samples", self.group_size)
        return jax.vmap(lambda w: self.estimator.init(key, w))(sets)

    def score(self, state, queries, context=None) -> jax.Array:
        """``(G k', d)`` scores; group ``g`` of the queries is scored under context ``g``."""
        self._check_state(state, getattr(self.estimator, "state_type", object))
        queries = _checks.check_samples(queries, "queries", min_rows=1)
        self._check_context(context, queries.shape[0], "context")
        num_groups = jax.tree.leaves(state)[0].shape[0]
        if queries.shape[0] % num_groups:
            raise ValueError(
                f"queries must have a multiple of {num_groups} rows (one group per context), "
                f"got {queries.shape[0]}"
            )
        sets = self._groups(queries, "queries", queries.shape[0] // num_groups)
        scored = lambda q: jax.vmap(self.estimator.score)(state, q)  # noqa: E731
        if sets.shape == state.samples.shape:
            # Decided once for all groups, so that the in-sample case computes nothing more (a
            # per-group decision inside the vmap would evaluate both branches).
            in_sample = lambda q: jax.vmap(self.estimator.in_sample)(state)  # noqa: E731
            scores = jax.lax.cond(jnp.all(sets == state.samples), in_sample, scored, sets)
        else:
            scores = scored(sets)
        return scores.reshape(queries.shape)

    @staticmethod
    def _groups(rows: jax.Array, name: str, size: int) -> jax.Array:
        if rows.shape[0] % size:
            raise ValueError(
                f"{name} must have a multiple of group_size={size} rows, got {rows.shape[0]}"
            )
        return rows.reshape(-1, size, rows.shape[1])
