r"""Fitting unnormalized models to data by score matching, and sampling them by Langevin dynamics.

An *energy model* :math:`p_\theta(x) \propto \exp(-E_\theta(x))` has an intractable normalizer,
but its score :math:`s_\theta(x) = \nabla_x \log p_\theta(x) = -\nabla_x E_\theta(x)` does not
depend on it. Score matching fits :math:`\theta` by minimizing the Fisher divergence
:math:`\tfrac12 \mathbb{E}_{p}\|s_\theta(x) - \nabla_x \log p(x)\|^2` to the data distribution
:math:`p`, which integration by parts turns into an objective on samples of :math:`p` alone
(Hyvärinen 2005). A *score model* :math:`s_\theta(x)` is fitted the same way without an energy.

:func:`fit_score_model` trains either kind by any objective of :mod:`implicitvi.objectives`
(exact SM, SSM, SSM-VR, DSM, FD-SSM) on minibatches of a fixed data set;
:func:`score_matching_loss` evaluates an objective, e.g. exact SM on held-out data;
:func:`langevin_sample` draws samples from the learned score; :func:`model_score` turns a model
and its parameters into the score function they all use.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from implicitvi import _checks
from implicitvi.objectives import OBJECTIVES

__all__ = ["fit_score_model", "langevin_sample", "model_score", "score_matching_loss"]

KINDS = ("energy", "score")


def model_score(
    model: Callable, params: Any, kind: str = "energy"
) -> Callable[[jax.Array], jax.Array]:
    r"""The score function ``x ↦ s(x)`` of a model with parameters ``params``.

    Args:
        model: ``model(params, x)`` for a batch ``x`` of shape ``(n, d)``. For ``kind="energy"``
            it returns the energies, shape ``(n,)`` or ``(n, 1)``, and the score is
            :math:`s(x) = -\nabla_x E(x)`, taken by reverse-mode autodiff of
            :math:`\sum_i E(x_i)` (valid because row ``i`` of the energies depends on row ``i``
            of ``x`` only). For ``kind="score"`` it returns the scores, shape ``(n, d)``.
        params: the model's parameter pytree.
        kind: ``"energy"`` or ``"score"``.

    Returns:
        A function mapping ``(n, d)`` to ``(n, d)``, as the objectives and
        :func:`langevin_sample` expect.

    Raises:
        ValueError: unknown ``kind``.
    """
    _checks.check_choice(kind, "kind", KINDS)
    if kind == "score":
        return lambda x: model(params, x)

    def score(x):
        return -jax.grad(lambda y: jnp.sum(model(params, y)))(x)

    return score


def _check_model_output(model, params, batch, kind) -> None:
    """Check, without running it, that ``model`` maps a batch to the shape ``kind`` needs."""
    n, d = batch.shape
    out = _checks.output_of(
        model, "model", params, batch, call=f"as model(params, x) on x of shape {(n, d)}"
    )
    expected = [(n,), (n, 1)] if kind == "energy" else [(n, d)]
    if not hasattr(out, "shape") or tuple(out.shape) not in expected:
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        want = " or ".join(str(s) for s in expected)
        article = "an" if kind == "energy" else "a"
        raise ValueError(
            f"model: {article} {kind} model must map a batch of shape {(n, d)} to shape {want}, "
            f"got {got}"
        )


def _objective_with_options(objective, options: dict) -> Callable:
    """The objective named ``objective`` with ``options`` bound, checked by name first."""
    if not isinstance(objective, str):
        raise TypeError(f"objective must be a string, got {type(objective).__name__}")
    # "regression" needs per-sample targets, which an energy model's data do not have.
    _checks.check_choice(objective, "objective", [n for n in OBJECTIVES if n != "regression"])
    fn = OBJECTIVES[objective]
    accepted = [
        p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    for name in options:
        if name not in accepted:
            raise TypeError(
                f"objective {objective!r} has no option {name!r}; its options are {accepted}"
            )
    return lambda score_fn, x, key: fn(score_fn, x, key, **options)


def _checked_loss(model, data, kind, objective, options) -> tuple[jax.Array, Callable]:
    """Validated ``data`` and the loss ``(params, batch, key) -> scalar`` of the model."""
    data = _checks.check_samples(data, "data", min_rows=1)
    _checks.check_choice(kind, "kind", KINDS)
    objective_fn = _objective_with_options(objective, options)

    def loss(params, batch, key):
        return objective_fn(model_score(model, params, kind), batch, key)

    return data, loss


def _raise_if_non_finite(losses: np.ndarray, params, num_steps: int) -> None:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = int(bad[0])
        raise FloatingPointError(
            f"score-matching loss became non-finite ({losses[step]}) at step {step} of "
            f"{num_steps}; lower the learning rate, or check the model for overflow"
        )
    leaves = jax.tree.leaves(params)
    if not all(np.all(np.isfinite(leaf)) for leaf in leaves):
        raise FloatingPointError(
            f"model parameters became non-finite in the last of {num_steps} steps; "
            "lower the learning rate"
        )


def score_matching_loss(
    model: Callable,
    params: Any,
    data,
    key: jax.Array | None = None,
    *,
    kind: str = "energy",
    objective: str = "exact",
    **objective_options,
) -> jax.Array:
    r"""A score-matching objective of a model on ``data``, e.g. to compare models on held-out data.

    The value of ``objective`` (see :func:`fit_score_model`) for the score of
    ``model(params, ·)``, averaged over the rows of ``data``; differentiable in ``params``. The
    default ``"exact"`` (Hyvärinen 2005) is deterministic; in expectation over the data it
    equals the Fisher divergence to the data distribution minus
    :math:`\tfrac12\mathbb{E}_p\|\nabla\log p\|^2`, which does not depend on the model: lower
    is better, and differences between models estimate differences of Fisher divergences.
    ``key`` is needed by the stochastic objectives only.

    Raises:
        ValueError, TypeError: as :func:`fit_score_model`, for ``data``, ``kind``,
            ``objective``, its options and the model's output shape.
    """
    _checks.check_key(key, allow_none=True)
    data, loss = _checked_loss(model, data, kind, objective, objective_options)
    _check_model_output(model, params, data, kind)
    return loss(params, data, key)


def fit_score_model(
    key: jax.Array,
    model: Callable,
    params: Any,
    data,
    *,
    kind: str = "energy",
    objective: str = "ssm_vr",
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 1000,
    batch_size: int | None = None,
    **objective_options,
) -> tuple[Any, jax.Array]:
    r"""Fit an unnormalized model to ``data`` by score matching.

    Minimizes, over the parameters :math:`\theta` of the model's score :math:`s_\theta`, one of
    the objectives of :mod:`implicitvi.objectives` on the data (each equals the Fisher divergence
    :math:`\tfrac12\mathbb{E}_{p}\|s_\theta - \nabla\log p\|^2` up to a constant, DSM that of
    the noise-smoothed data):

    * ``"exact"`` — Hyvärinen (2005, eq. 4):
      :math:`\mathbb{E}_x[\tfrac12\|s_\theta(x)\|^2 + \operatorname{tr}\nabla_x s_\theta(x)]`;
      ``d`` Jacobian columns per sample.
    * ``"ssm"`` / ``"ssm_vr"`` — sliced score matching (Song, Garg, Shi & Ermon 2019, eqs. 7–8):
      the trace replaced by :math:`v^\top\nabla_x s_\theta(x)\,v` for random directions ``v``;
      one Jacobian-vector product per direction. Options ``num_projections``, ``projection``.
    * ``"dsm"`` — denoising score matching (Vincent 2011, eq. 8):
      :math:`\tfrac12\mathbb{E}\|s_\theta(x + \sigma\epsilon) + \epsilon/\sigma\|^2`; fits the
      score of :math:`p * \mathcal{N}(0, \sigma^2 I)`. Option ``sigma``.
    * ``"fd_ssm"`` — finite-difference SSM (Pang, Xu, Li, Song, Ermon & Zhu 2020): SSM with the
      directional derivative replaced by central differences of ``s``. Options
      ``num_projections``, ``projection``, ``eps``.

    For an energy model :math:`s_\theta = -\nabla_x E_\theta`, so the objective involves second
    derivatives of :math:`E_\theta` in ``x`` (third, counting the parameter gradient), except
    for DSM and FD-SSM, which need only :math:`\nabla_x E_\theta`.

    Training is one jitted ``lax.scan`` over ``num_steps`` optimizer steps; step ``t`` draws a
    minibatch of ``batch_size`` rows of ``data`` uniformly with replacement (an ``O(batch_size)``
    draw, whatever the size of ``data``; all rows, in order, when ``batch_size`` is ``None``)
    and fresh projections or noise, both from ``key``.

    Args:
        key: PRNG key.
        model: ``model(params, x)`` on a batch ``x`` of shape ``(n, d)``: the energies, shape
            ``(n,)`` or ``(n, 1)``, for ``kind="energy"``; the scores, shape ``(n, d)``, for
            ``kind="score"``. Row ``i`` of the output must depend on row ``i`` of ``x`` only.
        params: initial parameter pytree.
        data: the data, shape ``(n, d)``, finite floats.
        kind: ``"energy"`` (default) or ``"score"``; see :func:`model_score`.
        objective: ``"ssm_vr"`` (default), ``"ssm"``, ``"exact"``, ``"dsm"`` or ``"fd_ssm"``.
        optimizer: an Optax transformation; default ``optax.adam(1e-3)``.
        num_steps: optimizer steps, at least 1.
        batch_size: rows per step, ``1 ≤ batch_size ≤ n``, or ``None`` for the full data.
        **objective_options: keyword options of the objective (``num_projections``,
            ``projection``, ``sigma``, ``eps``).

    Returns:
        ``(params, losses)``: the parameters after the last step, and the objective value of
        each step's minibatch before its update, shape ``(num_steps,)``.

    Raises:
        ValueError: ``data`` not 2-D or with NaN/inf, unknown ``objective`` or ``kind``,
            ``batch_size`` outside ``[1, n]``, ``num_steps < 1``, or a model output of the
            wrong shape (or a model that fails on a batch of the data).
        TypeError: non-float ``data``, an option the objective does not take, a non-Optax
            ``optimizer``, or a ``key`` that is not a PRNG key.
        FloatingPointError: the loss (or, after the last step, a parameter) became non-finite;
            the message names the step.
    """
    _checks.check_key(key)
    data, loss = _checked_loss(model, data, kind, objective, objective_options)
    n = data.shape[0]
    _checks.check_positive_int(num_steps, "num_steps")
    _checks.check_positive_int(batch_size, "batch_size", allow_none=True)
    if batch_size is not None and batch_size > n:
        raise ValueError(f"batch_size must be in [1, {n}] (the rows of data), got {batch_size}")
    if optimizer is None:
        optimizer = optax.adam(1e-3)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    _check_model_output(model, params, data[: batch_size or n], kind)

    @jax.jit
    def run(key, params, data):
        def step(carry, step_key):
            params, opt_state = carry
            batch_key, loss_key = jax.random.split(step_key)
            if batch_size is None:
                batch = data
            else:
                batch = data[jax.random.randint(batch_key, (batch_size,), 0, n)]
            value, grads = jax.value_and_grad(loss)(params, batch, loss_key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        carry = (params, optimizer.init(params))
        (params, _), losses = jax.lax.scan(step, carry, jax.random.split(key, num_steps))
        return params, losses

    params, losses = run(key, params, data)
    if _checks.is_concrete(losses):
        _raise_if_non_finite(np.asarray(losses), params, num_steps)
    return params, losses


def langevin_sample(
    key: jax.Array,
    score_fn: Callable,
    init,
    *,
    step_size: float,
    num_steps: int,
    sigmas=None,
) -> jax.Array:
    r"""Unadjusted Langevin dynamics driven by a score function, optionally annealed.

    Without ``sigmas``, ``num_steps`` steps of

    .. math:: x \leftarrow x + \tfrac{\varepsilon}{2}\, s(x) + \sqrt{\varepsilon}\, \xi,
       \quad \xi \sim \mathcal{N}(0, I),

    with :math:`\varepsilon` = ``step_size``, from every row of ``init`` independently. With
    :math:`s = \nabla\log p` this is the Euler discretization of the Langevin diffusion, whose
    stationary law is :math:`p`; without a Metropolis correction the chain's stationary law is
    off by :math:`O(\varepsilon)` (Roberts & Tweedie 1996). For :math:`p = \mathcal{N}(\mu,
    \tau^2)` it is :math:`\mathcal{N}(\mu, \tau^2 / (1 - \varepsilon / (4\tau^2)))`.

    With ``sigmas`` :math:`\sigma_1 > \dots > \sigma_L`, annealed Langevin dynamics (Song & Ermon
    2019, Algorithm 1): ``score_fn(x, sigma)`` is the score of the data smoothed by
    :math:`\mathcal{N}(0, \sigma^2 I)`, and ``num_steps`` steps are taken at each level with
    :math:`\varepsilon_i = \varepsilon\, \sigma_i^2 / \sigma_L^2`.

    Args:
        key: PRNG key.
        score_fn: ``(n, d) -> (n, d)`` (``(x, sigma) -> (n, d)`` with ``sigmas``), e.g.
            :func:`model_score` of a fitted model.
        init: starting points, shape ``(n, d)``.
        step_size: :math:`\varepsilon > 0` (at the last noise level when annealed).
        num_steps: steps (per noise level when annealed), at least 1.
        sigmas: optional decreasing noise levels, shape ``(L,)``.

    Returns:
        The final points, shape ``(n, d)``.

    Raises:
        ValueError: ``init`` not 2-D or not finite, ``step_size`` not positive,
            ``num_steps < 1``, ``sigmas`` not positive and 1-D, or ``score_fn`` output of the
            wrong shape.
        TypeError: ``key`` is not a PRNG key or ``score_fn`` is not callable.
        FloatingPointError: the chain diverged (non-finite points); lower ``step_size``.
    """
    _checks.check_key(key)
    init = _checks.check_samples(init, "init", min_rows=1)
    _checks.check_positive(step_size, "step_size")
    _checks.check_positive_int(num_steps, "num_steps")
    annealed = sigmas is not None
    if not annealed:
        sigmas = np.ones((1,), init.dtype)
        score_args = lambda x, sigma: (x,)  # noqa: E731
    else:
        sigmas = _checks.as_float_array(sigmas, "sigmas")
        if sigmas.ndim != 1 or sigmas.shape[0] < 1:
            raise ValueError(f"sigmas must be 1-D and non-empty, got shape {tuple(sigmas.shape)}")
        host = np.asarray(sigmas) if _checks.is_concrete(sigmas) else None
        if host is not None and not np.all(np.isfinite(host) & (host > 0)):
            raise ValueError(f"sigmas must be finite and > 0, got {sigmas}")
        sigmas = sigmas.astype(init.dtype)
        score_args = lambda x, sigma: (x, sigma)  # noqa: E731
    out = _checks.output_of(
        score_fn,
        "score_fn",
        *score_args(init, jax.ShapeDtypeStruct((), init.dtype)),
        call=f"on x of shape {tuple(init.shape)}" + (" and a scalar sigma" if annealed else ""),
    )
    if getattr(out, "shape", None) != init.shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"score_fn must map init of shape {init.shape} to the same shape, got {got}"
        )
    total = sigmas.shape[0] * num_steps

    def step(x, inputs):
        eps, sigma, k = inputs
        noise = jax.random.normal(k, x.shape, x.dtype)
        return x + 0.5 * eps * score_fn(*score_args(x, sigma)) + jnp.sqrt(eps) * noise, None

    @jax.jit
    def run(key, x, sigmas):
        scales = jnp.repeat(sigmas, num_steps)
        # Annealing rescales the step by σ_i²/σ_L²; without it the only scale is 1.
        steps = step_size * (scales / sigmas[-1]) ** 2
        return jax.lax.scan(step, x, (steps, scales, jax.random.split(key, total)))[0]

    x = run(key, init, sigmas)
    if _checks.is_concrete(x) and not np.all(np.isfinite(x)):
        raise FloatingPointError(
            f"Langevin samples became non-finite within {total} steps of size "
            f"{step_size}; lower step_size"
        )
    return x
