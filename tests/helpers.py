"""Shared test helpers: relative error, the streaming fit loop, targets with known scores, and
the models the inference tests fit (with their closed-form or NUTS references)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI
from xla_flags import FAST_COMPILE

# --- estimator data and targets with known scores ----------------------------------------

RNG = np.random.default_rng(2)
X = RNG.normal(size=(60, 3)) * np.array([1.0, 0.5, 2.0])
Q = RNG.normal(size=(9, 3))
KEY = jax.random.PRNGKey(0)


def rel_err(estimate, target):
    return float(np.sum((np.asarray(estimate) - target) ** 2) / np.sum(target**2))


def gaussian(d, condition):
    rot, _ = np.linalg.qr(RNG.normal(size=(d, d)))
    cov = rot @ np.diag(np.geomspace(1.0, condition, d)) @ rot.T
    return np.linalg.cholesky(cov), np.linalg.inv(cov)
MIX_MEAN = np.array([2.0, 0.0])


def mixture_samples(n, rng):
    signs = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
    return rng.normal(size=(n, 2)) + signs * MIX_MEAN


def mixture_score(x):
    """Score of ½N(m, I) + ½N(−m, I)."""
    logit = np.clip(2 * x @ MIX_MEAN, -50, 50)
    w = 1 / (1 + np.exp(-logit))
    return -(x - MIX_MEAN) * w[:, None] - (x + MIX_MEAN) * (1 - w[:, None])
GAUSSIANS = {"well": gaussian(2, 1.0), "ill": gaussian(2, 10.0)}


def draw_target(target, n, rng):
    """``n`` samples of a target and their true scores."""
    if target == "mixture":
        x = mixture_samples(n, rng)
        return x, mixture_score(x)
    chol, prec = GAUSSIANS[target]
    x = rng.normal(size=(n, 2)) @ chol.T
    return x, -x @ prec
TARGETS = ("ill", "mixture", "well")


# --- models the inference tests fit --------------------------------------------------------

INFER_RNG = np.random.default_rng(0)

# Bayesian linear regression with correlated covariates: β ~ N(0, I), y ~ N(Xβ, 1).
# Posterior: Σ = (I + XᵀX)⁻¹, m = Σ Xᵀy.
X_REG = INFER_RNG.normal(size=(15, 2)) @ np.array([[1.0, 0.8], [0.0, 0.6]])
Y_REG = X_REG @ np.array([1.0, -0.5]) + INFER_RNG.normal(size=15)
POST_COV = np.linalg.inv(np.eye(2) + X_REG.T @ X_REG)
POST_MEAN = POST_COV @ X_REG.T @ Y_REG


def regression(x, y=None):
    beta = numpyro.sample("beta", dist.Normal(0, 1).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(x @ beta, 1), obs=y)


def fit(model, guide, elbo, *args, steps=2000, lr=1e-2, seed=0):
    """SVI with Adam, the step size decaying to 1% of ``lr`` so the last iterate settles."""
    schedule = optax.cosine_decay_schedule(lr, steps, alpha=0.01)
    svi = SVI(model, guide, optax.adam(schedule), elbo)
    return svi, svi.run(jax.random.PRNGKey(seed), steps, *args, progress_bar=False)
Y8 = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA8 = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    with numpyro.plate("J", len(sigma)):
        eta = numpyro.sample("eta", dist.Normal(0, 1))
        numpyro.deterministic("theta", mu + tau * eta)
        numpyro.sample("y", dist.Normal(mu + tau * eta, sigma), obs=y)
DATA_N = INFER_RNG.normal(1.0, 2.0, size=30)


def normal_model(x):
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    sigma = numpyro.sample("sigma", dist.HalfNormal(5))
    numpyro.sample("x", dist.Normal(mu, sigma), obs=x)


# Local latents in a subsampled plate, amortized by a conditional sampler:
# μ ~ N(0, 1), z_i ~ N(μ, 1), x_i ~ N(z_i, 0.5²), N = 100 observations, batches of 20.
N_LOCAL, BATCH = 100, 20
X_LOCAL = jnp.asarray(INFER_RNG.normal(1.0, np.sqrt(1.25), size=N_LOCAL))


def local_model(x):
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    with numpyro.plate("data", N_LOCAL, subsample_size=BATCH) as idx:
        z = numpyro.sample("z", dist.Normal(mu, 1))
        numpyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])
CONTEXTS = jnp.array([-3.0, -1.0, 1.0, 3.0])


def standard_normal_locals(c):
    with numpyro.plate("items", c.shape[0]):
        numpyro.sample("z", dist.Normal(0, 1))


# --- the streaming fit loop ------------------------------------------------------------------


def stream_fit(est, key, draw, steps, state=None):
    """Train ``est`` as inside variational inference: ``steps`` jitted ``update`` calls, each on a
    fresh batch ``draw()`` (``samples`` or ``(samples, context)``), warm-started; returns the state.
    """
    update = jax.jit(est.update)
    batch = lambda: (lambda b: b if isinstance(b, tuple) else (b,))(draw())  # noqa: E731
    state = est.init(key, *batch()) if state is None else state
    for step in range(steps):
        state = update(jax.random.fold_in(key, step), state, *batch())
    return state


# --- test files that run themselves as scripts in a subprocess ------------------------------


def run_as_script(script, out, *, xla_flags=FAST_COMPILE, env=None, timeout=300) -> dict:
    """Run the test file ``script`` as a script (``python script out``) on CPU with this
    checkout and ``tests/`` on the path; its last stdout line is a JSON report, to which the
    arrays it saved in ``out/fits.npz`` are added as ``"fits"``. The subprocess gets XLA flags
    of its own, not the session's: a benchmark module imported earlier may have set some that
    stop XLA reading the rest."""
    tests = Path(__file__).resolve().parent
    path = [str(tests.parent), str(tests), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(path),
           "XLA_FLAGS": xla_flags, **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(script), str(out)],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(Path(out) / "fits.npz") as fits:
        report["fits"] = dict(fits)
    return report
