r"""Score network trained by a score-matching objective on the incoming particles.

A network :math:`s_\theta(z)` — or :math:`s_\theta(z \mid c)` on the concatenation ``[z, c]`` when
``conditional=True`` — is trained by one of the objectives of :mod:`implicitvi.objectives` on the
samples it is given. Inside variational inference the samples change a little with every step of
the sampler, so each :meth:`ScoreNet.update` takes ``steps_per_update`` optimizer steps starting
from the previous parameters (warm start): the network tracks the moving distribution, as in
Song, Garg, Shi & Ermon (UAI 2019, §5.2) where it is trained on the sampler's own particles.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from implicitvi import _checks
from implicitvi.estimators.base import EstimatorChecks, register
from implicitvi.nets import MLP
from implicitvi.objectives import OBJECTIVES

__all__ = ["ScoreNet", "ScoreNetState"]


class ScoreNetState(NamedTuple):
    """Network state; no field depends on the number of samples, so it can be carried across
    sample sets of any size (inside SVI, for instance)."""

    params: Any  # network parameters (pytree)
    opt_state: Any  # optimizer state (pytree)
    loss: jax.Array  # () objective before the last update step (held-out best after fit)
    step: jax.Array  # () optimizer steps taken
    template: jax.Array  # (0, d) records the sample dimension and dtype
    context_template: jax.Array | None  # (0, c), or None when unconditional


@register("ssm")
@dataclasses.dataclass(frozen=True)
class ScoreNet(EstimatorChecks):
    """Score network estimator.

    Args:
        objective: ``"ssm_vr"`` (default), ``"ssm"``, ``"fd_ssm"``, ``"dsm"``, ``"exact"``, or
            ``"regression"``: least squares on per-sample ``targets`` whose conditional mean is
            the score (:func:`implicitvi.objectives.regression`; the conditional scores of a
            semi-implicit sampler). Then :meth:`update` and :meth:`fit` need ``targets``.
        num_projections: projections per sample for the sliced objectives.
        projection: ``"gaussian"`` or ``"rademacher"`` directions for the sliced objectives.
        hidden: hidden widths of the default MLP (softplus activations), a sequence of ints
            ``>= 1``.
        network: any object with ``init(key, in_dim, out_dim, dtype)`` and ``apply(params, x)``
            methods; overrides ``hidden``.
        optimizer: an Optax ``GradientTransformation`` (default ``optax.adam(1e-3)``).
        steps_per_update: optimizer steps per :meth:`update`.
        fit_steps: optimizer steps per :meth:`fit` (used by :func:`estimate_score`).
        holdout: fraction of the samples that :meth:`fit` keeps aside to pick, among its
            ``fit_steps`` iterates, the parameters with the lowest held-out objective (early
            stopping); ``0`` trains on all samples and keeps the last iterate.
        conditional: learn ``s(z | c)``; then every call needs a ``context``.
        base: ``"zero"`` — the network is the score; ``"normal"`` — the score is
            ``−z + net(z)``, the network learning the departure from a standard normal's score
            (for whitened samples), with its output layer starting at zero.
        sigma: noise level of ``"dsm"``.
        eps: step of ``"fd_ssm"``.

    Each optimizer step draws fresh projections (or noise) from the key it is given. ``init``
    only reads the shape and dtype of its samples (one row suffices).

    On a fixed sample set the empirical objective of a flexible network is unbounded below (it can
    drive ``tr ∇s`` to −∞ at the samples), so long training on few samples overfits badly; hence
    the held-out early stopping of :meth:`fit`. A stream of fresh samples — one batch per
    :meth:`update`, as inside variational inference — does not overfit.
    """

    persistent = True

    objective: str = "ssm_vr"
    num_projections: int = 1
    projection: str = "gaussian"
    hidden: tuple = (256, 256)
    network: Any = None
    optimizer: optax.GradientTransformation = optax.adam(1e-3)
    steps_per_update: int = 1
    fit_steps: int = 2000
    holdout: float = 0.2
    conditional: bool = False
    base: str = "zero"
    sigma: float = 0.1
    eps: float = 1e-2

    def __post_init__(self):
        if not isinstance(self.objective, str):
            raise TypeError(f"objective must be a string, got {type(self.objective).__name__}")
        _checks.check_choice(self.objective, "objective", OBJECTIVES)
        _checks.check_choice(self.projection, "projection", ("gaussian", "rademacher"))
        _checks.check_choice(self.base, "base", ("zero", "normal"))
        _checks.check_positive_int(self.num_projections, "num_projections")
        _checks.check_positive_int(self.steps_per_update, "steps_per_update")
        _checks.check_positive_int(self.fit_steps, "fit_steps")
        _checks.check_in_range(self.holdout, "holdout", 0.0, 1.0, high_open=True)
        _checks.check_positive(self.sigma, "sigma")
        _checks.check_positive(self.eps, "eps")
        if not isinstance(self.optimizer, optax.GradientTransformation):
            raise TypeError(
                "optimizer must be an optax.GradientTransformation, "
                f"got {type(self.optimizer).__name__}"
            )
        object.__setattr__(self, "hidden", _checks.check_hidden(self.hidden, "hidden"))
        if self.network is not None and not _checks.is_network(self.network):
            raise TypeError(
                "network must have init(key, in_dim, out_dim, dtype) and apply(params, x) "
                f"methods (e.g. implicitvi.nets.MLP), got {type(self.network).__name__}"
            )
        if self.network is None:
            object.__setattr__(self, "network", MLP(self.hidden, zero_output=self.base == "normal"))

    @property
    def needs_targets(self) -> bool:
        """Whether :meth:`update` and :meth:`fit` take ``targets`` (the ``"regression"`` objective)."""
        return self.objective == "regression"

    @property
    def loss_fn(self) -> Callable:
        """The objective as ``loss(score_fn, samples, key)`` with this estimator's options."""
        fn = OBJECTIVES[self.objective]
        if self.objective in ("ssm", "ssm_vr", "fd_ssm"):
            fn = functools.partial(
                fn, num_projections=self.num_projections, projection=self.projection
            )
        if self.objective == "fd_ssm":
            fn = functools.partial(fn, eps=self.eps)
        if self.objective == "dsm":
            fn = functools.partial(fn, sigma=self.sigma)
        return fn

    def apply(self, params, z: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """The network's score ``s(z)`` or ``s(z | c)`` for ``z`` of shape ``(n, d)``."""
        inputs = z if context is None else jnp.concatenate([z, context], axis=-1)
        out = self.network.apply(params, inputs)
        return out - z if self.base == "normal" else out

    def init(self, key, samples, context=None) -> ScoreNetState:
        _checks.check_key(key)
        samples = _checks.check_samples(samples, "samples", min_rows=1)
        context = self._check_context(context, samples.shape[0], "context")
        d = samples.shape[1]
        in_dim = d + (0 if context is None else context.shape[1])
        params = self.network.init(key, in_dim, d, samples.dtype)
        return ScoreNetState(
            params,
            self.optimizer.init(params),
            jnp.zeros((), samples.dtype),
            jnp.zeros((), jnp.int32),
            samples[:0],
            None if context is None else context[:0],
        )

    def loss(self, params, samples: jax.Array, key: jax.Array, context=None, targets=None) -> jax.Array:
        """Objective value of ``params`` on a batch (differentiable in ``params``)."""
        fn = self.loss_fn
        if self.needs_targets:
            fn = functools.partial(fn, targets=targets)
        return fn(lambda z: self.apply(params, z, context), samples, key)

    def _check_batch(self, key, state: ScoreNetState, samples, context, targets=None):
        _checks.check_key(key)
        self._check_state(state, ScoreNetState)
        samples, context = self._check_samples(
            samples, context, min_rows=1, context_dim=_dim(state)
        )
        if samples.shape[1] != state.template.shape[1]:
            raise ValueError(
                f"samples must have {state.template.shape[1]} columns as at init, "
                f"got shape {tuple(samples.shape)}"
            )
        _checks.check_dtype(samples, "samples", state.template.dtype)
        if self.needs_targets:
            if targets is None:
                raise ValueError(
                    "targets is required with objective='regression': the conditional score at "
                    "each sample, shape (n, d)"
                )
            targets = _checks.as_float_array(targets, "targets")
            _checks.check_dtype(targets, "targets", state.template.dtype)
            if targets.shape != samples.shape:
                raise ValueError(
                    f"targets must have the shape of samples {tuple(samples.shape)}, "
                    f"got {tuple(targets.shape)}"
                )
        elif targets is not None:
            raise ValueError(
                f"targets were given but objective={self.objective!r} does not use them; "
                "use objective='regression'"
            )
        return samples, context, targets

    def _step(self, params, opt_state, samples, key, context, targets):
        value, grads = jax.value_and_grad(self.loss)(params, samples, key, context, targets)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def update(self, key, state: ScoreNetState, samples, context=None, *, targets=None) -> ScoreNetState:
        """``steps_per_update`` optimizer steps on ``samples`` (and ``targets`` for the
        ``"regression"`` objective), from the current parameters."""
        samples, context, targets = self._check_batch(key, state, samples, context, targets)

        def step(carry, step_key):
            params, opt_state, value = self._step(*carry, samples, step_key, context, targets)
            return (params, opt_state), value

        keys = jax.random.split(key, self.steps_per_update)
        (params, opt_state), values = jax.lax.scan(step, (state.params, state.opt_state), keys)
        return state._replace(
            params=params,
            opt_state=opt_state,
            loss=values[-1],
            step=state.step + self.steps_per_update,
        )

    def fit(self, key, state: ScoreNetState, samples, context=None, *, targets=None) -> ScoreNetState:
        """``fit_steps`` optimizer steps on the fixed ``samples``, early-stopped on a held-out part.

        A random ``holdout`` fraction of the rows is set aside; after every step the objective on
        it (with projections fixed once, so that steps are compared on one function) is
        evaluated, and the parameters of the best step are returned. ``loss`` in the returned
        state is that held-out value.
        """
        samples, context, targets = self._check_batch(key, state, samples, context, targets)
        n = samples.shape[0]
        num_val = int(round(self.holdout * n))
        perm_key, val_key, key = jax.random.split(key, 3)
        order = jax.random.permutation(perm_key, n)
        pick = lambda a, idx: None if a is None else a[idx]  # noqa: E731
        if num_val == 0 or n - num_val < 2:
            train, val = (samples, context, targets), (samples, context, targets)
        else:
            train = tuple(pick(a, order[num_val:]) for a in (samples, context, targets))
            val = tuple(pick(a, order[:num_val]) for a in (samples, context, targets))

        def step(carry, step_key):
            params, opt_state, best, best_loss = carry
            params, opt_state, _ = self._step(params, opt_state, train[0], step_key, *train[1:])
            val_loss = self.loss(params, val[0], val_key, *val[1:])
            better = val_loss < best_loss
            best = jax.tree.map(lambda new, old: jnp.where(better, new, old), params, best)
            return (params, opt_state, best, jnp.minimum(val_loss, best_loss)), None

        start_loss = self.loss(state.params, val[0], val_key, *val[1:])
        carry = (state.params, state.opt_state, state.params, start_loss)
        (_, opt_state, best, best_loss), _ = jax.lax.scan(
            step, carry, jax.random.split(key, self.fit_steps)
        )
        return state._replace(
            params=best, opt_state=opt_state, loss=best_loss, step=state.step + self.fit_steps
        )

    def score(self, state: ScoreNetState, queries, context=None) -> jax.Array:
        """The network's ``(m, d)`` scores at ``(m, d)`` queries (and their ``(m, c)`` context)."""
        self._check_state(state, ScoreNetState)
        queries, context = self._check_queries(
            state.template.shape[1], _dim(state), queries, context, state.template.dtype
        )
        return self.apply(state.params, queries, context)


def _dim(state: ScoreNetState) -> int | None:
    return None if state.context_template is None else state.context_template.shape[1]
