r"""What the benchmarks measure on, defined once: score targets with a closed-form score, the
NumPyro models of the posterior-accuracy benchmark, and the kernel estimators and guides as
the benchmarks configure them.

Score targets (:class:`Target`, for ``score_estimation.py``):

* ``gaussian``: :math:`\mathcal N(\mu, \Sigma)`, :math:`\Sigma = R\,\mathrm{diag}(\lambda)R^\top`
  with ``λ`` log-spaced in ``[1/condition, 1]``, ``R`` a random rotation, ``μ ~ N(0, I/d)``;
  score :math:`-\Sigma^{-1}(x - \mu)`.
* ``mixture``: :math:`\tfrac12\mathcal N(m, I) + \tfrac12\mathcal N(-m, I)`, ``m = 2u`` with
  ``u`` a random unit vector; score :math:`-x + \tanh(m^\top x)\, m`.

NumPyro models (:data:`MODELS`, for ``posterior_accuracy.py`` and ``step_cost.py``), each with
the non-centered form NUTS samples for the reference and the map back to the model's sites:

* ``eight_schools``: eight schools, centered (D = 10).
* ``hier_logistic``: hierarchical logistic regression, 5 groups with centered intercepts and a
  learned scale, 3 covariates, 200 points (D = 10).
* ``funnel``: Neal's funnel, :math:`v \sim N(0, 3^2)`, :math:`x_{1:9} \mid v \sim N(0, e^{v})`
  (D = 10).
* ``banana``: a curved 2-D density (D = 2).
* ``bimodal``: two modes joined by a saddle (D = 2).
* ``stoch_vol``: stochastic volatility, non-centered AR(1) log-volatility over ``T`` time points
  with unknown level, persistence and scale (D = T + 3).

* ``pumps``: the BUGS pump-failure Poisson-gamma hierarchy (D = 12, positive sites).
* ``robust_regression``: Student-t regression with unknown degrees of freedom (D = 5).

Held out of the semi-implicit guide's tuning (it was never run on them while its defaults were
chosen; the two above were held out of its first defaults only):

* ``horseshoe``: linear regression under a centered horseshoe prior (D = 18).
* ``poisson_lognormal``: Poisson regression with centered log-normal effects per observation
  (D = 33).

Guides (:func:`make_guide_and_elbo`): NumPyro's ``AutoNormal``, ``AutoMultivariateNormal``,
``AutoIAFNormal``, ``AutoBNAFNormal`` and ``AutoDAIS`` with ``Trace_ELBO``;
``AutoImplicit(model, estimator=name)`` for ``name`` in ``ssm``, ``stein``, ``ssge`` and
``AutoSemiImplicit(model)`` with ``ImplicitELBO()``; every guide starts from ``init_to_median``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.contrib.einstein import RBFKernel, SteinVI
from numpyro.infer import Trace_ELBO
from numpyro.infer.autoguide import (
    AutoBNAFNormal,
    AutoDAIS,
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from numpyro.infer.initialization import init_to_median
from numpyro.optim import optax_to_numpyro

from implicitvi.estimators import SSGE, Stein
from implicitvi.infer import AutoImplicit, AutoSemiImplicit, ImplicitELBO
from implicitvi.infer.autoguide import default_estimator

# --------------------------------------------------------------------------------------------
# Score targets
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    dim: int
    sample: Callable  # (key, n) -> (n, d)
    score: Callable  # (n, d) -> (n, d)


def gaussian_target(key, dim: int, condition: float = 10.0) -> Target:
    """Gaussian with covariance eigenvalues log-spaced in [1/condition, 1], randomly rotated."""
    k_rot, k_mu = jax.random.split(key)
    rot, _ = jnp.linalg.qr(jax.random.normal(k_rot, (dim, dim)))
    eig = jnp.logspace(-math.log10(condition), 0.0, dim) if dim > 1 else jnp.ones(1)
    mu = jax.random.normal(k_mu, (dim,)) / math.sqrt(dim)
    scale = rot * jnp.sqrt(eig)  # Σ^{1/2} = R diag(√λ)
    precision = (rot / eig) @ rot.T  # Σ⁻¹ = R diag(1/λ) Rᵀ

    def sample(k, n):
        return mu + jax.random.normal(k, (n, dim)) @ scale.T

    def score(x):
        return -(x - mu) @ precision

    return Target("gaussian", dim, sample, score)


def mixture_target(key, dim: int, separation: float = 2.0) -> Target:
    """Equal mixture of N(±m, I), m = separation · u with u a random unit vector."""
    u = jax.random.normal(key, (dim,))
    m = separation * u / jnp.linalg.norm(u)

    def sample(k, n):
        k_sign, k_noise = jax.random.split(k)
        sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (n, 1)), 1.0, -1.0)
        return sign * m + jax.random.normal(k_noise, (n, dim))

    def score(x):
        # Responsibilities: r₊ − r₋ = tanh(mᵀx), so ∇log q = −x + tanh(mᵀx) m.
        return -x + jnp.tanh(x @ m)[:, None] * m

    return Target("mixture", dim, sample, score)


TARGETS = {"gaussian": gaussian_target, "mixture": mixture_target}

# --------------------------------------------------------------------------------------------
# Kernel estimators as benchmarked
# --------------------------------------------------------------------------------------------

KERNEL_NAMES = ("stein", "ssge")


def kernel_estimator(name: str, bandwidth: float | None = None):
    """``Stein(kernel="rbf")`` (η = 0.01) or ``SSGE(threshold=0.99)``; ``bandwidth=None`` is the
    median heuristic."""
    if name == "stein":
        return Stein(bandwidth=bandwidth, kernel="rbf")
    if name == "ssge":
        return SSGE(bandwidth=bandwidth, threshold=0.99)
    raise ValueError(f"unknown kernel estimator {name!r}; choose from {KERNEL_NAMES}")


def update_and_score(est):
    """Jitted ``(key, state, samples) -> (scores, J)``: ``update`` then the in-sample estimate
    ``score(state, samples)``; ``J`` is SSGE's number of eigenfunctions (−1 for Stein)."""

    def fn(key, state, samples):
        state = est.update(key, state, samples)
        return est.score(state, samples), getattr(state, "num_eigen", jnp.array(-1))

    return jax.jit(fn)


# --------------------------------------------------------------------------------------------
# NumPyro models
# --------------------------------------------------------------------------------------------

SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta_raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * theta_raw, sigma), obs=y)


def eight_schools_from_noncentered(s):
    return {
        "mu": s["mu"],
        "tau": s["tau"],
        "theta": s["mu"][..., None] + s["tau"][..., None] * s["theta_raw"],
    }


def logistic_data(num_groups=5, num_covariates=3, num_points=200, seed=20240611):
    rng = np.random.default_rng(seed)
    group = rng.integers(0, num_groups, size=num_points)
    x = rng.normal(size=(num_points, num_covariates))
    intercepts = -0.5 + 1.0 * rng.normal(size=num_groups)
    beta = np.array([1.0, -0.5, 0.25])[:num_covariates]
    logits = intercepts[group] + x @ beta
    y = (rng.uniform(size=num_points) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return (
        jnp.asarray(x, jnp.float32),
        jnp.asarray(group, jnp.int32),
        num_groups,
        jnp.asarray(y),
    )


def hier_logistic(x, group, num_groups, y=None):
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 2.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    with numpyro.plate("groups", num_groups):
        a = numpyro.sample("a", dist.Normal(mu_a, sigma_a))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=a[group] + x @ beta), obs=y)


def hier_logistic_noncentered(x, group, num_groups, y=None):
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 2.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    with numpyro.plate("groups", num_groups):
        a_raw = numpyro.sample("a_raw", dist.Normal(0.0, 1.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    a = mu_a + sigma_a * a_raw
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=a[group] + x @ beta), obs=y)


def hier_logistic_from_noncentered(s):
    a = s["mu_a"][..., None] + s["sigma_a"][..., None] * s["a_raw"]
    return {"mu_a": s["mu_a"], "sigma_a": s["sigma_a"], "a": a, "beta": s["beta"]}


FUNNEL_DIM = 9


def funnel(dim=FUNNEL_DIM):
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2.0)).expand([dim]).to_event(1))


def funnel_noncentered(dim=FUNNEL_DIM):
    numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x_raw", dist.Normal(0.0, 1.0).expand([dim]).to_event(1))


def funnel_from_noncentered(s):
    return {"v": s["v"], "x": s["x_raw"] * jnp.exp(s["v"][..., None] / 2.0)}


def banana():
    """x₁ ~ N(0, 1), x₂ | x₁ ~ N(x₁² − 1, 0.5²): a curved 2-D posterior (no data)."""
    x1 = numpyro.sample("x1", dist.Normal(0.0, 1.0))
    numpyro.sample("x2", dist.Normal(x1**2 - 1.0, 0.5))


def bimodal():
    """x ~ N(0, 2² I₂) observed through y₁ = 1 ~ N(x₁², 0.5²) and y₂ = 0 ~ N(x₂ − x₁, 0.5²): two
    modes near ±(1, 1), joined by a saddle of relative density ≈ e⁻²."""
    x = numpyro.sample("x", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
    numpyro.sample("y1", dist.Normal(x[0] ** 2, 0.5), obs=1.0)
    numpyro.sample("y2", dist.Normal(x[1] - x[0], 0.5), obs=0.0)


PUMPS_T = np.array([94.3, 15.7, 62.9, 126.0, 5.24, 31.4, 1.05, 1.05, 2.1, 10.5])
PUMPS_X = np.array([5, 1, 5, 14, 3, 19, 1, 1, 4, 22])


def pumps(t, x=None):
    """Gaver & O'Muircheartaigh's pump failures (the BUGS "pumps" example): ``θ_i ~ Gamma(α, β)``,
    ``x_i ~ Poisson(θ_i t_i)``, ``α ~ Exp(1)``, ``β ~ Gamma(0.1, 1)`` (D = 12, all positive)."""
    alpha = numpyro.sample("alpha", dist.Exponential(1.0))
    beta = numpyro.sample("beta", dist.Gamma(0.1, 1.0))
    with numpyro.plate("pump", t.shape[0]):
        theta = numpyro.sample("theta", dist.Gamma(alpha, beta))
        numpyro.sample("x", dist.Poisson(theta * t), obs=x)


def robust_data(num_points=40, seed=20261201):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_points, 2))
    y = 1.0 + x @ np.array([2.0, -1.0]) + 0.5 * rng.standard_t(3.0, size=num_points)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def robust_regression(x, y=None):
    """Linear regression with Student-t noise of unknown degrees of freedom (D = 5): the scale
    and ``ν`` posteriors are skewed and correlated."""
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0).expand([x.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
    numpyro.sample("y", dist.StudentT(nu, a + x @ b, sigma), obs=y)


def stoch_vol_data(num_steps=100, seed=20240612, mu=-1.0, phi=0.9, sigma=0.3):
    rng = np.random.default_rng(seed)
    h = np.empty(num_steps)
    h[0] = mu + sigma / math.sqrt(1.0 - phi**2) * rng.normal()
    for t in range(1, num_steps):
        h[t] = mu + phi * (h[t - 1] - mu) + sigma * rng.normal()
    y = np.exp(h / 2.0) * rng.normal(size=num_steps)
    return (jnp.asarray(y, jnp.float32),)


def stoch_vol(y):
    """``h_1 ~ N(mu, sigma^2 / (1 - phi^2))``, ``h_t = mu + phi (h_{t-1} - mu) + sigma eps_t``,
    ``y_t ~ N(0, exp(h_t))``, with the innovations ``eps`` as the latent states."""
    num_steps = y.shape[0]
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    eps = numpyro.sample("eps", dist.Normal(0.0, 1.0).expand([num_steps]).to_event(1))
    e = sigma * eps.at[0].divide(jnp.sqrt(1.0 - phi**2))

    def ar1(prev, innovation):
        cur = phi * prev + innovation
        return cur, cur

    _, centred = jax.lax.scan(ar1, jnp.zeros((), e.dtype), e)
    h = mu + centred
    numpyro.sample("y", dist.Normal(0.0, jnp.exp(h / 2.0)), obs=y)


def horseshoe_data(num_points=30, num_covariates=8, seed=20261130):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_points, num_covariates))
    beta = np.zeros(num_covariates)
    beta[:2] = (2.0, -1.5)
    y = x @ beta + 0.5 * rng.normal(size=num_points)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def horseshoe(x, y=None):
    """Linear regression under a horseshoe prior (Carvalho, Polson & Scott 2010), centered:
    ``τ ~ C⁺(0, 1)``, ``λ_j ~ C⁺(0, 1)``, ``β_j ~ N(0, (τ λ_j)²)``, ``σ ~ N⁺(0, 1)``; two of
    eight coefficients non-zero, 30 points (D = 18): heavy-tailed scales and funnels between
    each ``β_j`` and its ``τ λ_j``."""
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    with numpyro.plate("coef", x.shape[1]):
        lam = numpyro.sample("lam", dist.HalfCauchy(1.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, tau * lam))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(x @ beta, sigma), obs=y)


def horseshoe_noncentered(x, y=None):
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    with numpyro.plate("coef", x.shape[1]):
        lam = numpyro.sample("lam", dist.HalfCauchy(1.0))
        beta_raw = numpyro.sample("beta_raw", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(x @ (tau[..., None] * lam * beta_raw), sigma), obs=y)


def horseshoe_from_noncentered(s):
    beta = s["tau"][..., None] * s["lam"] * s["beta_raw"]
    return {"tau": s["tau"], "lam": s["lam"], "beta": beta, "sigma": s["sigma"]}


def poisson_lognormal_data(num_points=30, seed=20261130):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=num_points)
    rate = np.exp(1.0 + 0.5 * x + 0.6 * rng.normal(size=num_points))
    return jnp.asarray(x, jnp.float32), jnp.asarray(rng.poisson(rate), jnp.float32)


def poisson_lognormal(x, y=None):
    """Over-dispersed counts: Poisson regression with a centered log-normal effect per
    observation, ``u_i ~ N(0, s²)``, ``y_i ~ Poisson(exp(a + b x_i + u_i))``, ``s ~ N⁺(0, 1)``;
    30 points (D = 33)."""
    a = numpyro.sample("a", dist.Normal(0.0, 2.0))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("obs", x.shape[0]):
        u = numpyro.sample("u", dist.Normal(0.0, s))
        numpyro.sample("y", dist.Poisson(jnp.exp(a + b * x + u)), obs=y)


def poisson_lognormal_noncentered(x, y=None):
    a = numpyro.sample("a", dist.Normal(0.0, 2.0))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("obs", x.shape[0]):
        u_raw = numpyro.sample("u_raw", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Poisson(jnp.exp(a + b * x + s * u_raw)), obs=y)


def poisson_lognormal_from_noncentered(s):
    return {"a": s["a"], "b": s["b"], "s": s["s"], "u": s["s"][..., None] * s["u_raw"]}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    model: Callable
    args: Callable[[], tuple]
    ref_model: Callable | None = None  # reparameterized model for the reference; None: model
    ref_to_model: Callable | None = None  # its draws -> the model's sites
    target_accept: float = 0.9


MODELS = {
    "eight_schools": ModelSpec(
        "eight_schools",
        "eight schools, centered",
        eight_schools,
        lambda: (jnp.asarray(SCHOOLS_SIGMA, jnp.float32), jnp.asarray(SCHOOLS_Y, jnp.float32)),
        eight_schools_noncentered,
        eight_schools_from_noncentered,
        target_accept=0.95,
    ),
    "hier_logistic": ModelSpec(
        "hier_logistic",
        "hierarchical logistic regression, 5 centered group intercepts, 3 covariates, 200 points",
        hier_logistic,
        logistic_data,
        hier_logistic_noncentered,
        hier_logistic_from_noncentered,
        target_accept=0.9,
    ),
    "funnel": ModelSpec(
        "funnel",
        f"Neal's funnel, v ~ N(0, 3^2), x_1..{FUNNEL_DIM} | v ~ N(0, exp(v))",
        funnel,
        lambda: (),
        funnel_noncentered,
        funnel_from_noncentered,
        target_accept=0.95,
    ),
    "banana": ModelSpec(
        "banana",
        "2-D banana, x1 ~ N(0, 1), x2 | x1 ~ N(x1^2 - 1, 0.5^2)",
        banana,
        lambda: (),
        target_accept=0.9,
    ),
    "bimodal": ModelSpec(
        "bimodal",
        "2-D bimodal, x ~ N(0, 4 I), y1 = 1 ~ N(x1^2, 0.5^2), y2 = 0 ~ N(x2 - x1, 0.5^2)",
        bimodal,
        lambda: (),
        target_accept=0.9,
    ),
    "pumps": ModelSpec(
        "pumps",
        "pump failures (BUGS), Poisson-gamma hierarchy, 10 pumps",
        pumps,
        lambda: (jnp.asarray(PUMPS_T, jnp.float32), jnp.asarray(PUMPS_X, jnp.float32)),
        target_accept=0.95,
    ),
    "robust_regression": ModelSpec(
        "robust_regression",
        "Student-t regression with unknown degrees of freedom, 2 covariates, 40 points",
        robust_regression,
        robust_data,
        target_accept=0.9,
    ),
    "stoch_vol": ModelSpec(
        "stoch_vol",
        "stochastic volatility, non-centered AR(1) log-volatility, 100 time points",
        stoch_vol,
        stoch_vol_data,
        target_accept=0.9,
    ),
    "horseshoe": ModelSpec(
        "horseshoe",
        "horseshoe linear regression, centered, 8 covariates (2 non-zero), 30 points",
        horseshoe,
        horseshoe_data,
        horseshoe_noncentered,
        horseshoe_from_noncentered,
        target_accept=0.99,
    ),
    "poisson_lognormal": ModelSpec(
        "poisson_lognormal",
        "Poisson regression with centered log-normal effects per observation, 30 points",
        poisson_lognormal,
        poisson_lognormal_data,
        poisson_lognormal_noncentered,
        poisson_lognormal_from_noncentered,
        target_accept=0.95,
    ),
}


# --------------------------------------------------------------------------------------------
# Guides as benchmarked
# --------------------------------------------------------------------------------------------

GUIDES = ("normal", "mvn", "iaf", "bnaf", "dais", "steinvi", "implicit-ssm", "implicit-stein",
          "implicit-ssge", "semi-implicit", "semi-implicit-iaf", "semi-implicit-bnaf",
          "semi-implicit-avg32", "semi-implicit-mixture")
LABELS = {
    "normal": "AutoNormal",
    "mvn": "AutoMultivariateNormal",
    "iaf": "AutoIAFNormal",
    "bnaf": "AutoBNAFNormal",
    "dais": "AutoDAIS",
    "steinvi": "SteinVI (16 AutoNormal components)",
    "implicit-ssm": "AutoImplicit (SSM)",
    "implicit-stein": "AutoImplicit (Stein)",
    "implicit-ssge": "AutoImplicit (SSGE)",
    "semi-implicit": "AutoSemiImplicit",
    "semi-implicit-iaf": "AutoSemiImplicit (IAF frame)",
    "semi-implicit-bnaf": "AutoSemiImplicit (BNAF frame)",
    "semi-implicit-avg32": "AutoSemiImplicit (targets averaged over 32 components)",
    "semi-implicit-mixture": "AutoSemiImplicit (mixture score)",
}


def make_steinvi(model, particles: int, lr: float):
    """NumPyro's SteinVI as benchmarked: a mixture of ``particles`` AutoNormal components moved
    by Stein forces (RBF kernel) under Adam, one ELBO draw per component per step (as many model
    evaluations per step as the other guides' ``particles``). Returns ``(steinvi, guide)``."""
    guide = AutoNormal(model, init_loc_fn=init_to_median)
    stein = SteinVI(model, guide, optax_to_numpyro(optax.adam(lr)), RBFKernel(),
                    num_stein_particles=particles, num_elbo_particles=1)
    return stein, guide


def make_guide_and_elbo(name: str, model, particles: int):
    if name == "normal":
        return AutoNormal(model, init_loc_fn=init_to_median), Trace_ELBO(num_particles=particles)
    if name == "mvn":
        guide = AutoMultivariateNormal(model, init_loc_fn=init_to_median)
        return guide, Trace_ELBO(num_particles=particles)
    if name == "iaf":
        return AutoIAFNormal(model, init_loc_fn=init_to_median), Trace_ELBO(num_particles=particles)
    if name == "bnaf":
        return AutoBNAFNormal(model, init_loc_fn=init_to_median), Trace_ELBO(num_particles=particles)
    if name == "dais":
        return AutoDAIS(model, init_loc_fn=init_to_median), Trace_ELBO(num_particles=particles)
    if name.startswith("semi-implicit"):
        variant = {"": {}, "-iaf": {"flow": "iaf"}, "-bnaf": {"flow": "bnaf"},
                   "-avg32": {"num_components": 32},
                   "-mixture": {"score": "mixture"}}[name[len("semi-implicit"):]]
        guide = AutoSemiImplicit(model, init_loc_fn=init_to_median, **variant)
        return guide, ImplicitELBO(num_particles=particles)
    if name == "implicit-ssm-1":  # the step-cost variant: one score-network step per SVI step
        one_step = dataclasses.replace(default_estimator(), steps_per_update=1)
        return AutoImplicit(model, estimator=one_step), ImplicitELBO(num_particles=particles)
    if name.startswith("implicit-"):
        # AutoImplicit maps "ssm" / "stein" / "ssge" to its own (normal-base) configurations;
        # ImplicitELBO(estimator=None) uses the guide site's estimator. Passing the same name to
        # ImplicitELBO would give a differently configured estimator: for "ssm" it raises, for
        # the kernel estimators it silently replaces the guide's.
        est = name.split("-", 1)[1]
        return AutoImplicit(model, estimator=est), ImplicitELBO(num_particles=particles)
    raise ValueError(f"unknown guide {name!r}; choose from {GUIDES}")
