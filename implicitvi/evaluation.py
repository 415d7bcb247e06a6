r"""Test log-likelihood of decoders: annealed importance sampling and the importance-weighted bound.

A decoder :math:`p(x \mid z)` with the prior :math:`p(z) = \mathcal{N}(0, I)` has the marginal
likelihood :math:`p(x) = \int p(z)\, p(x \mid z)\, dz`, which no encoder gives in closed form
(and an implicit encoder gives no density at all). Two estimators are provided; both only call
``log_likelihood_fn(z, x) = log p(x | z)`` for one latent vector and one data row.

**Annealed importance sampling** (AIS; Neal, "Annealed importance sampling", Statistics and
Computing 2001). With temperatures :math:`0 = \beta_0 < \beta_1 < \dots < \beta_{T-1} = 1` and
:math:`f_t(z) = p(z)\, p(x \mid z)^{\beta_t}`, each of ``K`` chains starts at
:math:`z_0 \sim p(z)` and alternates

.. math:: \log w \mathrel{+}= (\beta_t - \beta_{t-1}) \log p(x \mid z_{t-1}), \qquad
   z_t \sim \mathcal{T}_t(z_{t-1}, \cdot), \qquad t = 1, \dots, T - 1,

where :math:`\mathcal{T}_t` is a Hamiltonian Monte Carlo transition that leaves
:math:`f_t / \int f_t` invariant. Then :math:`\mathbb{E}[w] = p(x)` (Neal 2001, §2) and
:math:`\log \hat p(x) = \log \frac1K \sum_k w_k`.

**Importance-weighted bound** (IWAE; Burda, Grosse & Salakhutdinov, "Importance weighted
autoencoders", ICLR 2016, eq. 8): with a proposal :math:`q(z \mid x)` and
:math:`z_s \sim q`,

.. math:: \log \hat p(x) = \log \frac1S \sum_{s=1}^S
   \frac{p(x \mid z_s)\, p(z_s)}{q(z_s \mid x)}.

Bias: both estimators have :math:`\mathbb{E}[\hat p(x)] = p(x)` (AIS exactly so with a fixed step
size, see :func:`ais_log_likelihood`), so by Jensen's inequality
:math:`\mathbb{E}[\log \hat p(x)] \le \log p(x)`: they are *stochastic lower bounds* on the
log-likelihood, tight as the variance of the weights vanishes. AIS with many temperatures is
typically far tighter than IWAE with a mismatched proposal (Wu, Burda, Salakhutdinov & Grosse,
"On the quantitative analysis of decoder-based generative models", ICLR 2017, §5). The returned
log-weights measure the remaining gap: with :math:`K` chains it is about
:math:`\operatorname{Var}[\log w] / (2K)` when that variance is small.

The protocol of Wu et al. (2017), used for the MNIST log-likelihoods of Song, Garg, Shi & Ermon
("Sliced score matching", UAI 2019, §5.2), is AIS with ``T = 1000`` sigmoid temperatures
(:func:`sigmoid_schedule`), ``K = 16`` chains and HMC with 10 leapfrog steps whose step size
is adapted towards an acceptance rate of 0.65 — the defaults of :func:`ais_log_likelihood`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.mcmc import hmc

from implicitvi._checks import (
    as_float_array,
    check_finite,
    check_in_range,
    check_int_at_least,
    check_key,
    check_positive,
    check_positive_int,
    is_concrete,
    output_of,
)

__all__ = [
    "AISResult",
    "IWAEResult",
    "ais_log_likelihood",
    "gaussian_proposal",
    "iwae_log_likelihood",
    "sigmoid_schedule",
]

LogLikelihoodFn = Callable[[jax.Array, jax.Array], jax.Array]

# Step-size adaptation of Wu et al. (2017): multiply by 1.02 while the running acceptance rate
# is above target and by 0.98 otherwise; the running rate is an exponential average.
_STEP_SIZE_INCREASE = 1.02
_STEP_SIZE_DECREASE = 0.98
_ACCEPTANCE_SLOWNESS = 0.9


class AISResult(NamedTuple):
    """Output of :func:`ais_log_likelihood` for ``n`` rows and ``K`` chains.

    Attributes:
        log_likelihood: ``(n,)`` estimates :math:`\\log \\frac1K \\sum_k w_k` of ``log p(x)``.
        log_weights: ``(n, K)`` AIS log-weights :math:`\\log w_k`.
        acceptance: ``(n, K)`` HMC acceptance probability of each chain, averaged over the
            ``T - 1`` transitions.
    """

    log_likelihood: jax.Array
    log_weights: jax.Array
    acceptance: jax.Array


class IWAEResult(NamedTuple):
    """Output of :func:`iwae_log_likelihood` for ``n`` rows and ``S`` proposal draws.

    Attributes:
        log_likelihood: ``(n,)`` estimates :math:`\\log \\frac1S \\sum_s w_s` of ``log p(x)``.
        log_weights: ``(n, S)`` importance log-weights
            :math:`\\log p(x \\mid z_s) + \\log p(z_s) - \\log q(z_s \\mid x)`.
    """

    log_likelihood: jax.Array
    log_weights: jax.Array


def sigmoid_schedule(num_temperatures: int, rad: float = 4.0) -> jax.Array:
    r"""Sigmoid annealing schedule of Wu et al. (2017, §4.1; after Grosse et al.'s BDMC code).

    .. math:: \beta_t = \frac{\sigma(s_t) - \sigma(-r)}{\sigma(r) - \sigma(-r)}, \qquad
       s_t = -r + \frac{2 r t}{T - 1}, \quad t = 0, \dots, T - 1,

    with :math:`\sigma` the logistic function: :math:`\beta_0 = 0`, :math:`\beta_{T-1} = 1`,
    strictly increasing, symmetric about 1/2, with steps smallest at both ends (where the
    log-weight increments vary most) and largest in the middle; a small ``rad`` tends to the
    linear schedule.

    Args:
        num_temperatures: ``T >= 2``, the number of temperatures including both endpoints.
        rad: ``r > 0``, half-width of the sigmoid's input range.

    Returns:
        ``(T,)`` temperatures in the default floating dtype.

    Raises:
        TypeError: ``num_temperatures`` is not an int or ``rad`` is not a number.
        ValueError: ``num_temperatures < 2`` or ``rad`` is not finite and positive.
    """
    check_positive_int(num_temperatures, "num_temperatures")
    if num_temperatures < 2:
        raise ValueError(
            f"num_temperatures must be >= 2 (beta = 0 and beta = 1), got {num_temperatures}"
        )
    check_positive(rad, "rad")
    s = 1 / (1 + np.exp(-np.linspace(-rad, rad, num_temperatures)))
    return jnp.asarray((s - s[0]) / (s[-1] - s[0]), jnp.result_type(float))


def ais_log_likelihood(
    key: jax.Array,
    log_likelihood_fn: LogLikelihoodFn,
    x: jax.Array,
    latent_dim: int,
    *,
    schedule: int | jax.Array = 1000,
    num_chains: int = 16,
    num_leapfrog: int = 10,
    step_size: float = 0.05,
    adapt_step_size: bool = True,
    target_acceptance: float = 0.65,
    step_size_bounds: tuple[float, float] = (1e-4, 0.5),
    batch_size: int = 100,
    first_row: int = 0,
) -> AISResult:
    r"""AIS estimate of :math:`\log p(x)` for each row of ``x`` (Neal 2001; Wu et al. 2017).

    The prior is :math:`p(z) = \mathcal{N}(0, I_{\text{latent\_dim}})`; see the module docstring
    for the estimator. Every chain anneals from the prior to the posterior through
    :math:`f_t(z) = p(z)\, p(x \mid z)^{\beta_t}` with one HMC transition (BlackJAX's kernel,
    unit mass matrix, ``num_leapfrog`` velocity-Verlet steps) at each
    :math:`\beta_1, \dots, \beta_{T-1}`, i.e. ``(T - 1) * num_leapfrog + 1`` gradients of
    ``log_likelihood_fn`` per chain.

    Step-size adaptation (Wu et al. 2017): each chain keeps its own step size, multiplied by 1.02
    after a transition when its running acceptance rate (exponential average, factor 0.9, of the
    HMC acceptance probability) exceeds ``target_acceptance`` and by 0.98 otherwise, clipped to
    ``step_size_bounds``. Every transition still leaves its tempered target invariant, but as
    the step size depends on the chain's own past the weights are no longer exactly unbiased for
    :math:`p(x)`. The effect is small in practice (for a Bernoulli decoder with one latent, 256
    chains and ``T = 1000`` it stayed within the Monte Carlo error of about 0.01 nats of the exact
    value), and ``adapt_step_size=False`` keeps ``step_size`` fixed for an exactly unbiased
    :math:`\hat p(x)`. The upper bound of 0.5 (Wu et al.) suits posteriors much narrower than
    the prior; with one or two latents HMC accepts nearly every step there, and a larger bound
    lets the adaptation reach its target.

    Rows are processed ``batch_size`` at a time by one compiled function (a ``lax.scan`` over
    temperatures, vmapped over chains and rows), cached for the same ``log_likelihood_fn``
    object and counts; row ``i`` draws from ``jax.random.fold_in(key, first_row + i)``, so the
    estimates depend neither on ``batch_size`` nor on whether a data set is scored whole or in
    pieces (``x[a:b]`` with ``first_row=a``, e.g. to save a long run block by block).

    Args:
        key: PRNG key.
        log_likelihood_fn: ``(z, x_row) -> scalar`` log-likelihood :math:`\log p(x \mid z)` for
            one latent vector ``z`` of shape ``(latent_dim,)`` and one row ``x_row = x[i]``;
            differentiable in ``z`` (it may close over decoder parameters).
        x: ``(n, ...)`` data, one row per data point (at least 2-D: reshape scalar rows to
            ``(n, 1)``); any real dtype (binarized data may be bool or int).
        latent_dim: dimension of ``z``.
        schedule: the number ``T >= 2`` of temperatures of :func:`sigmoid_schedule`, or the
            temperatures themselves, ``(T,)`` strictly increasing from 0 to 1.
        num_chains: ``K``, independent chains per row.
        num_leapfrog: leapfrog steps per HMC transition.
        step_size: initial (or, without adaptation, fixed) leapfrog step size.
        adapt_step_size: whether to adapt the step size per chain (see above).
        target_acceptance: acceptance rate in ``(0, 1)`` the adaptation aims at.
        step_size_bounds: ``(low, high)`` with ``0 < low <= step_size <= high``.
        batch_size: rows per compiled call (memory grows with ``batch_size * num_chains``).
        first_row: index ``>= 0`` of ``x``'s first row in the data set it was sliced from.

    Returns:
        :class:`AISResult` with ``log_likelihood`` ``(n,)``, ``log_weights`` ``(n, K)`` and
        ``acceptance`` ``(n, K)``; latents and results are in ``x``'s dtype when it is floating,
        otherwise in the default floating dtype.

    Raises:
        TypeError: a count is not an int, a number is not a number, ``x`` is not a real
            array, ``log_likelihood_fn`` is not callable or returns a non-floating value.
        ValueError: ``x`` has fewer than 2 dimensions, no rows or non-finite values;
            ``log_likelihood_fn`` does not return a scalar or fails on a latent of shape
            ``(latent_dim,)`` and a row of ``x``; a count is below 1 or ``first_row`` below 0;
            the schedule is not ``T >= 2`` increasing temperatures from 0 to 1; ``step_size``
            lies outside ``step_size_bounds``; ``target_acceptance`` is not in ``(0, 1)``; an
            estimate came out NaN or +inf (``log_likelihood_fn`` returned NaN or +inf along a
            chain), checked after the run on concrete results.
    """
    check_key(key)
    x, dtype = _check_data(x)
    check_positive_int(latent_dim, "latent_dim")
    _check_log_likelihood_fn(log_likelihood_fn, latent_dim, x, dtype)
    betas = _check_schedule(schedule, dtype)
    check_positive_int(num_chains, "num_chains")
    check_positive_int(num_leapfrog, "num_leapfrog")
    check_positive_int(batch_size, "batch_size")
    check_int_at_least(first_row, "first_row", 0)
    _check_step_size(step_size, step_size_bounds)
    check_in_range(target_acceptance, "target_acceptance", 0.0, 1.0, low_open=True, high_open=True)

    batch_fn = partial(
        _ais_batch,
        log_likelihood_fn=log_likelihood_fn,
        latent_dim=latent_dim,
        num_chains=num_chains,
        num_leapfrog=num_leapfrog,
        adapt_step_size=bool(adapt_step_size),
        dtype=np.dtype(dtype),
    )
    settings = tuple(
        jnp.asarray(v, dtype) for v in (step_size, target_acceptance, step_size_bounds)
    )
    result = _map_rows(batch_fn, key, (x,), (betas, *settings), batch_size, first_row)
    _check_estimates(result.log_likelihood)
    return result


@partial(
    jax.jit,
    static_argnames=(
        "log_likelihood_fn", "latent_dim", "num_chains", "num_leapfrog", "adapt_step_size", "dtype"
    ),
)
def _ais_batch(key, idx, x, betas, step_size, target_acceptance, step_size_bounds, **static):
    """:func:`_ais_row` for a batch of rows; compiled once per function and static settings."""
    row_fn = partial(_ais_row, **static)
    return jax.vmap(row_fn, in_axes=(0, 0) + (None,) * 4)(
        _row_keys(key, idx), x, betas, step_size, target_acceptance, step_size_bounds
    )


def _ais_row(
    key,
    x_row,
    betas,
    step_size,
    target_acceptance,
    step_size_bounds,
    *,
    log_likelihood_fn,
    latent_dim,
    num_chains,
    num_leapfrog,
    adapt_step_size,
    dtype,
) -> AISResult:
    def log_likelihood(z):
        # In the latents' dtype, so that constants captured in another precision do not
        # change the scan's carry types.
        return log_likelihood_fn(z, x_row).astype(dtype)

    hmc_kernel = hmc.build_kernel()
    inverse_mass = jnp.ones(latent_dim, dtype)
    num_steps = betas.shape[0] - 1
    init_key, scan_key = jax.random.split(key)
    z = jax.random.normal(init_key, (num_chains, latent_dim), dtype)
    ll, ll_grad = jax.vmap(jax.value_and_grad(log_likelihood))(z)

    def anneal(carry, inputs):
        z, ll, ll_grad, log_w, eps, running_accept, total_accept = carry
        step_key, beta_prev, beta = inputs
        log_w = log_w + (beta - beta_prev) * ll

        def tempered(z):
            return beta * log_likelihood(z) + _log_prior(z)

        # The stored density and gradient must be those of the current temperature.
        state = hmc.HMCState(z, beta * ll + _log_prior(z), beta * ll_grad - z)
        state, info = jax.vmap(
            lambda k, s, e: hmc_kernel(k, s, tempered, e, inverse_mass, num_leapfrog)
        )(jax.random.split(step_key, num_chains), state, eps)
        z = state.position
        # log p(x|z) and its gradient are recovered from the tempered ones (beta > 0 here)
        # instead of costing one more gradient evaluation per temperature.
        ll = (state.logdensity - _log_prior(z)) / beta
        ll_grad = (state.logdensity_grad + z) / beta
        accept = info.acceptance_rate
        if adapt_step_size:
            running_accept = (
                _ACCEPTANCE_SLOWNESS * running_accept + (1 - _ACCEPTANCE_SLOWNESS) * accept
            )
            factor = jnp.where(
                running_accept > target_acceptance, _STEP_SIZE_INCREASE, _STEP_SIZE_DECREASE
            )
            eps = jnp.clip(eps * factor, step_size_bounds[0], step_size_bounds[1])
        return (z, ll, ll_grad, log_w, eps, running_accept, total_accept + accept), None

    zeros = jnp.zeros(num_chains, dtype)
    carry = (
        z,
        ll,
        ll_grad,
        zeros,
        jnp.full(num_chains, step_size, dtype),
        jnp.full(num_chains, target_acceptance, dtype),
        zeros,
    )
    steps = (jax.random.split(scan_key, num_steps), betas[:-1], betas[1:])
    carry, _ = jax.lax.scan(anneal, carry, steps)
    log_w, total_accept = carry[3], carry[6]
    return AISResult(_log_mean_exp(log_w), log_w, total_accept / num_steps)


def iwae_log_likelihood(
    key: jax.Array,
    log_likelihood_fn: LogLikelihoodFn,
    x: jax.Array,
    loc: jax.Array,
    scale: jax.Array,
    *,
    num_samples: int = 1000,
    batch_size: int = 10,
    first_row: int = 0,
) -> IWAEResult:
    r"""Importance-weighted estimate of :math:`\log p(x)` with a Gaussian proposal per row.

    For row ``i`` the proposal is :math:`q_i = \mathcal{N}(\mu_i, L_i L_i^\top)`, and

    .. math:: \log \hat p(x_i) = \log \frac1S \sum_{s=1}^S
       \frac{p(x_i \mid z_s)\, \mathcal{N}(z_s; 0, I)}{q_i(z_s)}, \qquad
       z_s = \mu_i + L_i \epsilon_s,\ \epsilon_s \sim \mathcal{N}(0, I)

    (Burda et al. 2016, eq. 8). With the exact posterior as proposal every weight equals
    :math:`p(x_i)`; a proposal narrower than the posterior inflates the variance of the weights
    and hence the downward bias, and its rare large weights can also push a single estimate far
    above :math:`\log p(x_i)`: a largest normalized weight
    :math:`\max_s w_s / \sum_s w_s` near 1 (from ``log_weights``) flags such a row. An implicit
    encoder has no density: use a Gaussian moment-matched to its draws,
    :func:`gaussian_proposal`, widened if in doubt.

    Args:
        key: PRNG key.
        log_likelihood_fn: ``(z, x_row) -> scalar`` as in :func:`ais_log_likelihood`.
        x: ``(n, ...)`` data, as in :func:`ais_log_likelihood`.
        loc: ``(n, latent_dim)`` proposal means :math:`\mu_i`.
        scale: ``(n, latent_dim)`` proposal standard deviations (a diagonal :math:`L_i`), or
            ``(n, latent_dim, latent_dim)`` lower-triangular Cholesky factors :math:`L_i` of the
            proposal covariances; diagonal entries positive.
        num_samples: ``S``, proposal draws per row.
        batch_size: rows per compiled call (memory grows with ``batch_size * num_samples``);
            row ``i`` draws from ``jax.random.fold_in(key, first_row + i)`` whatever the batch.
        first_row: index ``>= 0`` of ``x``'s first row in the data set it was sliced from, as
            in :func:`ais_log_likelihood`.

    Returns:
        :class:`IWAEResult` with ``log_likelihood`` ``(n,)`` and ``log_weights`` ``(n, S)``, in
        ``loc``'s dtype.

    Raises:
        TypeError: ``loc`` or ``scale`` is not a floating array, a count is not an int, ``x`` is
            not a real array, ``log_likelihood_fn`` is not callable or returns a non-floating
            value.
        ValueError: ``x`` has fewer than 2 dimensions, no rows or non-finite values; ``loc`` is
            not ``(n, latent_dim)`` with the rows of ``x``; ``scale`` has neither accepted shape,
            is not lower-triangular or has non-positive diagonal entries; an array has
            non-finite values; ``log_likelihood_fn`` does not return a scalar or fails on a
            latent and a row of ``x``; a count is below 1 or ``first_row`` below 0; an estimate
            came out NaN or +inf (checked after the run on concrete results).
    """
    check_key(key)
    x, _ = _check_data(x)
    loc = as_float_array(loc, "loc")
    if loc.ndim != 2 or loc.shape[0] != x.shape[0] or loc.shape[1] < 1:
        raise ValueError(
            f"loc must have shape (num_rows, latent_dim) with the {x.shape[0]} rows of x, "
            f"got shape {tuple(loc.shape)}"
        )
    check_finite(loc, "loc")
    scale_tril = _check_scale(scale, loc.shape, loc.dtype)
    _check_log_likelihood_fn(log_likelihood_fn, loc.shape[1], x, loc.dtype)
    check_positive_int(num_samples, "num_samples")
    check_positive_int(batch_size, "batch_size")
    check_int_at_least(first_row, "first_row", 0)

    batch_fn = partial(_iwae_batch, log_likelihood_fn=log_likelihood_fn, num_samples=num_samples)
    result = _map_rows(batch_fn, key, (x, loc, scale_tril), (), batch_size, first_row)
    _check_estimates(result.log_likelihood)
    return result


@partial(jax.jit, static_argnames=("log_likelihood_fn", "num_samples"))
def _iwae_batch(key, idx, x, loc, scale_tril, **static):
    return jax.vmap(partial(_iwae_row, **static))(_row_keys(key, idx), x, loc, scale_tril)


def _iwae_row(key, x_row, loc, scale_tril, *, log_likelihood_fn, num_samples) -> IWAEResult:
    eps = jax.random.normal(key, (num_samples, loc.shape[0]), loc.dtype)
    z = loc + eps @ scale_tril.T
    log_q = (
        -0.5 * jnp.sum(eps**2, axis=-1)
        - jnp.sum(jnp.log(jnp.diagonal(scale_tril)))
        - 0.5 * loc.shape[0] * math.log(2 * math.pi)
    )
    ll = jax.vmap(lambda zs: log_likelihood_fn(zs, x_row).astype(loc.dtype))(z)
    log_w = ll + _log_prior(z) - log_q
    return IWAEResult(_log_mean_exp(log_w), log_w)


def gaussian_proposal(samples: jax.Array, *, widen: float = 1.0) -> tuple[jax.Array, jax.Array]:
    r"""Gaussian proposals moment-matched to encoder draws, for :func:`iwae_log_likelihood`.

    For row ``i`` with draws :math:`z_{i1}, \dots, z_{iS}` (e.g. from an implicit encoder
    :math:`q(z \mid x_i)`), the mean :math:`\mu_i` and the unbiased sample covariance
    :math:`C_i`; the returned Cholesky factor is :math:`L_i = \text{widen} \cdot
    \operatorname{chol}(C_i)`, i.e. the covariance is scaled by ``widen**2``. A proposal wider
    than the posterior costs variance mildly, a narrower one can cost it without bound, hence
    the option to widen.

    Args:
        samples: ``(n, S, latent_dim)`` draws, ``S > latent_dim`` per row.
        widen: factor ``> 0`` on the proposal's standard deviations.

    Returns:
        ``(loc, scale_tril)`` of shapes ``(n, latent_dim)`` and ``(n, latent_dim, latent_dim)``.

    Raises:
        TypeError: ``samples`` is not a floating array or ``widen`` is not a number.
        ValueError: ``samples`` is not 3-D with ``S > latent_dim >= 1``, has non-finite values,
            or a row's sample covariance is singular; ``widen`` is not finite and positive.
    """
    arr = as_float_array(samples, "samples")
    if arr.ndim != 3 or arr.shape[2] < 1 or arr.shape[1] <= arr.shape[2]:
        raise ValueError(
            "samples must have shape (num_rows, num_draws, latent_dim) with "
            f"num_draws > latent_dim >= 1, got shape {tuple(arr.shape)}"
        )
    check_finite(arr, "samples")
    check_positive(widen, "widen")
    loc, scale_tril = _moment_match(arr, widen)
    if is_concrete(scale_tril) and not bool(jnp.all(jnp.isfinite(scale_tril))):
        raise ValueError(
            "samples: a row's sample covariance is singular (draws confined to a subspace)"
        )
    return loc, scale_tril


@jax.jit
def _moment_match(samples, widen):
    loc = jnp.mean(samples, axis=1)
    centred = samples - loc[:, None, :]
    cov = jnp.einsum("nsi,nsj->nij", centred, centred) / (samples.shape[1] - 1)
    return loc, widen * jnp.linalg.cholesky(cov)


def _log_prior(z):
    """log N(z; 0, I) over the last axis."""
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def _log_mean_exp(a):
    return jax.nn.logsumexp(a, axis=-1) - math.log(a.shape[-1])


def _map_rows(batch_fn, key, rows, shared, batch_size, first_row):
    """``batch_fn(key, row_indices, *row_batches, *shared)`` over all rows, ``batch_size`` at a
    time, concatenated; the indices count from ``first_row``.

    Batches are sliced on the host, and the last one is padded with copies of the last row
    (dropped afterwards), so that all batches share one compilation.
    """
    rows = [np.asarray(a) for a in rows]
    n = rows[0].shape[0]
    size = min(batch_size, n)
    outputs = []
    for start in range(0, n, size):
        idx = np.minimum(np.arange(start, start + size), n - 1)
        outputs.append(batch_fn(key, first_row + idx, *(a[idx] for a in rows), *shared))
    return jax.tree.map(lambda *parts: jnp.asarray(np.concatenate(parts)[:n]), *outputs)


def _row_keys(key, idx):
    """Row ``i`` (counted from ``first_row``) draws from ``fold_in(key, i)``, whichever batch it
    falls in."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def _check_data(x) -> tuple[jax.Array, jnp.dtype]:
    """``x`` as an array of rows, and the floating dtype for latents."""
    try:
        arr = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"x must be an array of real numbers, got {type(x).__name__}") from err
    floating = jnp.issubdtype(arr.dtype, jnp.floating)
    if not (floating or np.dtype(arr.dtype).kind in "biu"):
        raise TypeError(f"x must be an array of real numbers, got dtype {arr.dtype}")
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise ValueError(
            "x must have shape (num_rows, ...) with at least 2 dimensions and one row "
            f"(reshape scalar rows to (n, 1)), got shape {tuple(arr.shape)}"
        )
    check_finite(arr, "x")
    return arr, arr.dtype if floating else jnp.result_type(float)


def _check_estimates(log_likelihood) -> None:
    """NaN or +inf estimates come from a log-likelihood that returned NaN or +inf (-inf is a
    legitimate estimate: a row of zero likelihood)."""
    host = np.asarray(log_likelihood)
    bad = np.flatnonzero(np.isnan(host) | (host == np.inf))
    if bad.size:
        rows = bad[:10].tolist()
        raise ValueError(
            f"log_likelihood_fn returned NaN or +inf: the estimates of rows {rows}"
            f"{' ...' if bad.size > 10 else ''} of x are {host[bad[0]]}; check it for log(0), "
            "0/0 or overflow"
        )


def _check_log_likelihood_fn(fn, latent_dim, x, dtype) -> None:
    out = output_of(
        fn,
        "log_likelihood_fn",
        jax.ShapeDtypeStruct((latent_dim,), dtype),
        jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
        call=f"as fn(z, x_row) on z of shape ({latent_dim},) and x_row of shape {x.shape[1:]}",
    )
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            "log_likelihood_fn(z, x_row) must return a scalar log p(x_row | z) for one latent "
            f"vector z of shape ({latent_dim},) and one row of x, got {shape}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"log_likelihood_fn must return a floating value, got dtype {out.dtype}")


def _check_schedule(schedule, dtype) -> jax.Array:
    if isinstance(schedule, (int, np.integer)) and not isinstance(schedule, bool):
        if schedule < 2:
            raise ValueError(
                f"schedule must be a number of temperatures >= 2 (beta = 0 and beta = 1), "
                f"got {schedule}"
            )
        return sigmoid_schedule(int(schedule)).astype(dtype)
    betas = np.asarray(as_float_array(schedule, "schedule"))
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise ValueError(
            f"schedule must be an int or a 1-D array of at least 2 temperatures, "
            f"got shape {betas.shape}"
        )
    if not (betas[0] == 0 and betas[-1] == 1 and np.all(np.diff(betas) > 0)):
        raise ValueError("schedule must increase strictly from 0 to 1")
    return jnp.asarray(betas, dtype)


def _check_step_size(step_size, bounds) -> None:
    check_positive(step_size, "step_size")
    if not (isinstance(bounds, tuple) and len(bounds) == 2):
        raise TypeError(f"step_size_bounds must be a (low, high) tuple, got {bounds!r}")
    low, high = bounds
    check_positive(low, "step_size_bounds[0]")
    check_positive(high, "step_size_bounds[1]")
    if not low <= step_size <= high:
        raise ValueError(f"step_size must lie within step_size_bounds {bounds}, got {step_size}")


def _check_scale(scale, loc_shape, dtype) -> np.ndarray:
    """Validate ``scale`` (standard deviations or Cholesky factors); return Cholesky factors."""
    arr = np.asarray(as_float_array(scale, "scale"), dtype)
    n, d = loc_shape
    if arr.shape == (n, d):
        arr = arr[:, :, None] * np.eye(d, dtype=dtype)
    elif arr.shape != (n, d, d):
        raise ValueError(
            f"scale must have shape {(n, d)} (standard deviations) or {(n, d, d)} (Cholesky "
            f"factors) to match loc, got shape {tuple(arr.shape)}"
        )
    elif np.any(np.triu(arr, k=1) != 0):
        raise ValueError("scale of shape (n, d, d) must be lower-triangular (Cholesky factors)")
    check_finite(arr, "scale")
    if not np.all(np.diagonal(arr, axis1=1, axis2=2) > 0):
        raise ValueError("scale must have positive (diagonal) entries")
    return arr
