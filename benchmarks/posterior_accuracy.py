r"""Posterior-accuracy benchmark: variational guides against a NUTS reference.

For each model, a NUTS reference is run once (and cached), then every guide is fitted by SVI
with the same number of steps, particles and Adam learning rate, over several seeds. All
comparisons are made in NumPyro's unconstrained space: every latent site is mapped to the
real line by ``biject_to(support).inv`` and flattened, for the reference draws and the guide
draws alike (:func:`implicitvi.diagnostics.unconstrained_score`).

Metrics, per run (``D`` unconstrained coordinates, ``n`` guide draws):

* **mean err**: median over coordinates of :math:`|\bar u^q_i - \bar u^{ref}_i| / \mathrm{sd}^{ref}_i`;
* **log-sd err**: median over coordinates of :math:`|\log(\mathrm{sd}^q_i / \mathrm{sd}^{ref}_i)|`;
* **KSD**: kernel Stein discrepancy (IMQ kernel, bandwidth 1) of ``n`` guide draws against the
  model's unnormalized posterior (:func:`implicitvi.diagnostics.kernel_stein_discrepancy`);
  the KSD of ``n`` thinned reference draws is the floor;
* **non-finite**: the run's loss became NaN/inf (Trace_ELBO), ``ImplicitELBO`` stopped with a
  ``FloatingPointError``, or the guide's draws were non-finite;
* **time**: wall time of ``svi.run`` (compilation included) plus drawing the ``n`` samples.

Each table reports the median over seeds (over the seeds whose run finished with finite draws).

Guides: NumPyro's ``AutoNormal``, ``AutoMultivariateNormal`` and ``AutoIAFNormal`` with
``Trace_ELBO``, and ``AutoImplicit(model, estimator=name)`` for ``name`` in ``ssm``, ``stein``,
``ssge`` with ``ImplicitELBO()`` (no estimator of its own, so it uses the guide's); every guide
starts from ``init_to_median``.

Models (data generated with fixed seeds inside this script):

* ``eight_schools``: eight schools, centered parameterization (D = 10).
* ``hier_logistic``: hierarchical logistic regression, 5 groups with centered intercepts and a
  learned scale, 3 covariates, 200 points (D = 10).
* ``funnel``: Neal's funnel, :math:`v \sim N(0, 3^2)`, :math:`x_{1:9} \mid v \sim N(0, e^{v})`
  (D = 10).
* ``stoch_vol``: stochastic volatility, non-centered AR(1) log-volatility over 100 time points
  with unknown level, persistence and scale (D = 103).

The reference: NUTS with ``init_to_median``. For the three centered models it runs on the
equivalent non-centered model and maps its draws back (the centered eight schools and the
funnel are the textbook cases where NUTS itself is biased); a "NUTS, as written" row shows what
NUTS gives on the model the guides see. The "reference floor" row holds the KSD of ``n``
thinned reference draws and the mean/log-sd errors of the second chain's thinned draws against
the first chain (the Monte Carlo noise of the metrics).

``--step-cost`` instead times one jitted ``svi.update`` (median over ``--cost-steps`` calls after
warm-up, interleaved between the configurations) of ``ImplicitELBO`` + ``AutoImplicit`` against
``Trace_ELBO`` + ``AutoMultivariateNormal`` at equal particles on ``stoch_vol`` (T = 100), and
of both on ``stoch_vol`` with T = 500 (D = 503).

Usage::

    python benchmarks/posterior_accuracy.py --quick                 # smoke run
    python benchmarks/posterior_accuracy.py --out results.md        # full grid, lr 1e-2
    python benchmarks/posterior_accuracy.py --lr 1e-2 1e-3 --out results.md
    python benchmarks/posterior_accuracy.py --step-cost --out results.md

``--out`` keeps what the file holds outside the section this run writes (the accuracy section
and the step-cost section are separate), so both modes can write to the same file. NUTS draws
are cached under ``--cache-dir`` (default ``benchmarks/.cache``).

XLA and OpenBLAS run single-threaded unless ``XLA_FLAGS`` / ``OPENBLAS_NUM_THREADS`` are set: on
a CPU shared with other work, multi-threaded kernels (notably OpenBLAS's, behind the Cholesky
factors and triangular solves of ``AutoMultivariateNormal``) wait for descheduled workers, and a
step can then take 10 times its own cost.
"""

from __future__ import annotations

import os

# Single-threaded XLA and OpenBLAS unless the caller chose otherwise: on a CPU shared with other
# work, multi-threaded kernels wait for descheduled workers and timings stop being comparable.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import datetime
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_median

try:
    import implicitvi
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import implicitvi

from implicitvi.diagnostics import kernel_stein_discrepancy, unconstrained_score
from implicitvi.infer import AutoImplicit, ImplicitELBO
from implicitvi.infer.autoguide import default_estimator

CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

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
    "stoch_vol": ModelSpec(
        "stoch_vol",
        "stochastic volatility, non-centered AR(1) log-volatility, 100 time points",
        stoch_vol,
        stoch_vol_data,
        target_accept=0.9,
    ),
}


# ----------------------------------------------------------------------------------------------
# Guides
# ----------------------------------------------------------------------------------------------

GUIDES = ("normal", "mvn", "iaf", "implicit-ssm", "implicit-stein", "implicit-ssge")
LABELS = {
    "normal": "AutoNormal",
    "mvn": "AutoMultivariateNormal",
    "iaf": "AutoIAFNormal",
    "implicit-ssm": "AutoImplicit (SSM)",
    "implicit-stein": "AutoImplicit (Stein)",
    "implicit-ssge": "AutoImplicit (SSGE)",
}


def make_guide_and_elbo(name: str, model, particles: int):
    if name == "normal":
        return AutoNormal(model, init_loc_fn=init_to_median), Trace_ELBO(num_particles=particles)
    if name == "mvn":
        guide = AutoMultivariateNormal(model, init_loc_fn=init_to_median)
        return guide, Trace_ELBO(num_particles=particles)
    if name == "iaf":
        return AutoIAFNormal(model, init_loc_fn=init_to_median), Trace_ELBO(num_particles=particles)
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


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------


def run_nuts(model, args, *, warmup, samples, chains, target_accept, seed):
    kernel = NUTS(model, init_strategy=init_to_median, target_accept_prob=target_accept)
    mcmc = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method="sequential",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=("diverging",))
    draws = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(draws)
    elapsed = time.perf_counter() - start
    divergences = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    return draws, divergences, elapsed


def flatten_chains(draws):
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in draws.items()}


def reference(spec: ModelSpec, args, to_u, cfg, log) -> dict:
    """NUTS reference draws ``u`` of shape (chains, samples, D), cached as ``.npz``."""
    tag = f"{spec.name}_w{cfg.warmup}_s{cfg.samples}_c{cfg.chains}_v{CACHE_VERSION}"
    path = Path(cfg.cache_dir) / f"{tag}.npz"
    if path.exists():
        data = np.load(path)
        log(f"[{spec.name}] NUTS reference from cache {path.name}")
        return {k: data[k] for k in data.files}
    ref_model = spec.ref_model or spec.model
    draws, divergences, elapsed = run_nuts(
        ref_model, args, warmup=cfg.warmup, samples=cfg.samples, chains=cfg.chains,
        target_accept=spec.target_accept, seed=0,
    )
    if spec.ref_to_model is not None:
        draws = spec.ref_to_model(draws)
    u = np.asarray(to_u(flatten_chains(draws))).reshape(cfg.chains, cfg.samples, -1)
    out = {"u": u, "divergences": np.array(divergences), "seconds": np.array(elapsed)}
    if spec.ref_model is not None and cfg.nuts_as_written:
        d2, div2, t2 = run_nuts(
            spec.model, args, warmup=cfg.warmup, samples=cfg.samples, chains=cfg.chains,
            target_accept=spec.target_accept, seed=1,
        )
        u2 = np.asarray(to_u(flatten_chains(d2))).reshape(cfg.chains, cfg.samples, -1)
        out.update(u_as_written=u2, divergences_as_written=np.array(div2), seconds_as_written=np.array(t2))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    log(
        f"[{spec.name}] NUTS reference: {elapsed:.1f} s, {divergences} divergences"
        + (f"; as written: {out['seconds_as_written']:.1f} s, {div2} divergences" if "u_as_written" in out else "")
    )
    return out


def thin(u, n):
    """``n`` evenly spaced rows of ``u`` (rows ordered chain by chain)."""
    idx = np.linspace(0, u.shape[0] - 1, n).round().astype(int)
    return u[idx]


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def moment_errors(u_q, u_ref):
    m_ref, s_ref = u_ref.mean(0), u_ref.std(0, ddof=1)
    m_q, s_q = u_q.mean(0), u_q.std(0, ddof=1)
    mean_err = float(np.median(np.abs(m_q - m_ref) / s_ref))
    sd_err = float(np.median(np.abs(np.log(s_q / s_ref))))
    return mean_err, sd_err


def ksd(u, score_fn):
    return float(kernel_stein_discrepancy(jnp.asarray(u, jnp.float32), score_fn))


def fit_guide(spec, guide_name, args, to_u, score_fn, u_ref, cfg, lr, seed):
    guide, elbo = make_guide_and_elbo(guide_name, spec.model, cfg.particles)
    svi = SVI(spec.model, guide, optax.adam(lr), elbo)
    row = {"guide": guide_name, "seed": seed, "lr": lr, "error": None}
    start = time.perf_counter()
    try:
        result = svi.run(jax.random.PRNGKey(seed), cfg.steps, *args, progress_bar=False)
        losses = np.asarray(jax.block_until_ready(result.losses))
        draws = guide.sample_posterior(
            jax.random.PRNGKey(10_000 + seed), result.params, *args, sample_shape=(cfg.draws,)
        )
        latent = {k: v for k, v in draws.items() if k in to_u.sites}
        u = np.asarray(jax.block_until_ready(to_u(latent)))
    except Exception as exc:  # a failed run is a result, not a crash of the benchmark
        row["seconds"] = time.perf_counter() - start
        row["error"] = error_line(exc)
        row["non_finite"] = isinstance(exc, FloatingPointError) or "non-finite" in str(exc)
        return row
    row["seconds"] = time.perf_counter() - start
    row["final_loss"] = float(np.mean(losses[-max(1, cfg.steps // 20):]))
    finite_rows = np.all(np.isfinite(u), axis=1)
    bad_losses = np.flatnonzero(~np.isfinite(losses))
    row["non_finite"] = bool(bad_losses.size or not np.all(finite_rows))
    row["non_finite_draws"] = int(np.sum(~finite_rows))
    row["first_non_finite_step"] = int(bad_losses[0]) if bad_losses.size else None
    if not np.any(finite_rows):
        row["error"] = "all draws non-finite" + (
            f" (loss non-finite from step {bad_losses[0]})" if bad_losses.size else ""
        )
        return row
    u = u[finite_rows]
    row["mean_err"], row["sd_err"] = moment_errors(u, u_ref)
    row["ksd"] = ksd(u, score_fn)
    return row


def error_line(exc) -> str:
    """The informative line of an exception (a host-callback error is wrapped by XLA)."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "ImplicitELBO:" in ln or "Error:" in ln:
            return f"{type(exc).__name__}: {ln[:400]}"
    return f"{type(exc).__name__}: {(lines[0] if lines else '')[:400]}"


class SiteConverter:
    """``to_u`` of :func:`unconstrained_score`, remembering which sites it flattens."""

    def __init__(self, to_u, sites):
        self._to_u = to_u
        self.sites = sites

    def __call__(self, samples):
        return self._to_u(samples)


def latent_sites(model, args):
    tr = numpyro.handlers.trace(numpyro.handlers.seed(model, jax.random.PRNGKey(0))).get_trace(*args)
    return [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------


def median_or_nan(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return statistics.median(values) if values else float("nan")


def fmt(x, digits=3):
    if x is None or not np.isfinite(x):
        return "—"
    if x != 0 and (abs(x) >= 1000 or abs(x) < 10 ** (-digits)):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def model_table(block) -> list[str]:
    lines = [
        f"**{block['model']}** — {block['description']}; D = {block['dim']}, "
        f"lr = {block['lr']:g}, {block['steps']} steps, {block['particles']} particles, "
        f"{block['draws']} draws, median over {block['num_seeds']} seeds.",
        "",
        "| guide | mean err | log-sd err | KSD | non-finite runs | time / run (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ref = block["reference"]
    lines.append(
        f"| reference floor (NUTS, {ref['draws']} draws) | {fmt(ref['mean_err'])} | "
        f"{fmt(ref['sd_err'])} | {fmt(ref['ksd'])} | {ref['divergences']} div. | "
        f"{fmt(ref['seconds'], 1)} |"
    )
    if "as_written" in ref:
        w = ref["as_written"]
        lines.append(
            f"| NUTS, as written | {fmt(w['mean_err'])} | {fmt(w['sd_err'])} | {fmt(w['ksd'])} | "
            f"{w['divergences']} div. | {fmt(w['seconds'], 1)} |"
        )
    for name, rows in block["guides"].items():
        ok = [r for r in rows if "mean_err" in r]
        bad = sum(bool(r.get("non_finite")) or r.get("error") is not None for r in rows)
        lines.append(
            f"| {LABELS[name]} | {fmt(median_or_nan([r['mean_err'] for r in ok]))} | "
            f"{fmt(median_or_nan([r['sd_err'] for r in ok]))} | "
            f"{fmt(median_or_nan([r['ksd'] for r in ok]))} | {bad}/{len(rows)} | "
            f"{fmt(median_or_nan([r['seconds'] for r in rows]), 1)} |"
        )
    errors = [(n, r) for n, rows in block["guides"].items() for r in rows if r.get("error")]
    if errors:
        lines.append("")
        for n, r in errors:
            lines.append(f"- {LABELS[n]}, seed {r['seed']}: `{r['error']}`")
    return lines


def machine_lines() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {os.cpu_count()}-core CPU ({cpu}), {jax.default_backend()} backend",
        f"- Python {platform.python_version()}, JAX {jax.__version__}, NumPyro {numpyro.__version__}, "
        f"Optax {optax.__version__}, implicitvi {getattr(implicitvi, '__version__', '?')} "
        f"(commit {REVISION})",
        f"- XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`, "
        f"OPENBLAS_NUM_THREADS: `{os.environ.get('OPENBLAS_NUM_THREADS', '')}`",
    ]


def source_revision() -> str:
    """The checkout's commit, read once at start-up (the library is imported then)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "implicitvi"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes to implicitvi/" if dirty else "")


REVISION = source_revision()


def command_line() -> str:
    return "python benchmarks/posterior_accuracy.py " + " ".join(sys.argv[1:])


def write_section(path: str, section: str, lines: list[str]):
    """Replace this section of the markdown file ``path``, keeping everything else."""
    begin, end = f"<!-- begin {section} -->", f"<!-- end {section} -->"
    body = "\n".join([begin, *lines, end]) + "\n"
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + body + ("\n" + tail if tail else "")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + body
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


# ----------------------------------------------------------------------------------------------
# Accuracy benchmark
# ----------------------------------------------------------------------------------------------


def prepare(model_name, cfg, log) -> dict:
    """The model's score, ``to_u`` and NUTS reference with its floor metrics."""
    spec = MODELS[model_name]
    args = spec.args()
    score_fn, to_u = unconstrained_score(spec.model, args)
    to_u = SiteConverter(to_u, latent_sites(spec.model, args))
    ref = reference(spec, args, to_u, cfg, log)
    u_all = ref["u"].reshape(-1, ref["u"].shape[-1])
    dim = u_all.shape[-1]
    summary = {"draws": cfg.draws, "divergences": int(ref["divergences"]),
               "seconds": float(ref["seconds"]), "ksd": ksd(thin(u_all, cfg.draws), score_fn)}
    if cfg.chains >= 2:
        summary["mean_err"], summary["sd_err"] = moment_errors(thin(ref["u"][1], cfg.draws), ref["u"][0])
    else:
        summary["mean_err"] = summary["sd_err"] = float("nan")
    if "u_as_written" in ref:
        w_thin = thin(ref["u_as_written"].reshape(-1, dim), cfg.draws)
        me, se = moment_errors(w_thin, u_all)
        summary["as_written"] = {"mean_err": me, "sd_err": se, "ksd": ksd(w_thin, score_fn),
                                 "divergences": int(ref["divergences_as_written"]),
                                 "seconds": float(ref["seconds_as_written"])}
    log(f"[{model_name}] D = {dim}, reference KSD floor {summary['ksd']:.4f}")
    return {"spec": spec, "args": args, "score_fn": score_fn, "to_u": to_u, "u_ref": u_all,
            "dim": dim, "summary": summary}


def release_compiled():
    """Drop compiled executables: every SVI run compiles afresh, and on Linux each executable
    holds memory mappings until released; over a full grid they would exhaust the process's
    mapping limit (``vm.max_map_count``) and XLA's compiler fails with ENOMEM."""
    jax.clear_caches()
    gc.collect()


def accuracy(cfg, log):
    blocks = []
    prepared = {}
    start_all = time.perf_counter()
    for lr in cfg.lr:
        for model_name in cfg.models:
            if model_name not in prepared:
                prepared[model_name] = prepare(model_name, cfg, log)
            m = prepared[model_name]
            block = {"model": model_name, "description": m["spec"].description, "dim": m["dim"],
                     "lr": lr, "steps": cfg.steps, "particles": cfg.particles, "draws": cfg.draws,
                     "num_seeds": len(cfg.seeds), "reference": m["summary"], "guides": {}}
            blocks.append(block)
            for guide_name in cfg.guides:
                rows = block["guides"].setdefault(guide_name, [])
                for seed in cfg.seeds:
                    row = fit_guide(m["spec"], guide_name, m["args"], m["to_u"], m["score_fn"],
                                    m["u_ref"], cfg, lr, seed)
                    release_compiled()
                    rows.append(row)
                    log(
                        f"[{model_name}] lr={lr:g} {guide_name} seed={seed}: "
                        + (f"ERROR {row['error']}" if row.get("error") else
                           f"mean_err={row['mean_err']:.3f} sd_err={row['sd_err']:.3f} "
                           f"ksd={row['ksd']:.4f} non_finite={row['non_finite']}")
                        + f" ({row['seconds']:.1f} s)"
                    )
            if cfg.out:
                render_accuracy(cfg, blocks, time.perf_counter() - start_all, done=False)
            if cfg.json:
                Path(cfg.json).write_text(json.dumps(blocks, indent=1, default=float))
    total = time.perf_counter() - start_all
    if cfg.out:
        render_accuracy(cfg, blocks, total, done=True)
    for block in blocks:
        print("\n".join(model_table(block)) + "\n")
    log(f"total {total / 60:.1f} min")
    return blocks


def render_accuracy(cfg, blocks, seconds, done):
    lines = [
        "## Posterior accuracy against NUTS",
        "",
        "```",
        command_line(),
        "```",
        "",
        *machine_lines(),
        f"- Total wall time: {seconds / 60:.1f} min" + ("" if done else " (run in progress)"),
        f"- Reference: NUTS (`init_to_median`), {cfg.warmup} warm-up + {cfg.samples} draws "
        f"x {cfg.chains} chains; eight schools, hierarchical logistic and funnel sampled in their "
        "non-centered form and mapped back. Guides: Adam, equal steps and particles; "
        "`Trace_ELBO` for the NumPyro autoguides, `ImplicitELBO` for `AutoImplicit`.",
        "- Metrics in unconstrained space: mean err = median over coordinates of "
        "|mean_q − mean_ref| / sd_ref; log-sd err = median over coordinates of "
        "|log(sd_q / sd_ref)|; KSD: IMQ kernel, bandwidth 1, on the same number of draws for "
        "every row. Reference floor: KSD of thinned reference draws, and the errors of chain 2 "
        "against chain 1. Time: `svi.run` including compilation, plus drawing.",
        "",
    ]
    for block in blocks:
        lines += model_table(block) + [""]
    write_section(cfg.out, "posterior-accuracy", lines)


# ----------------------------------------------------------------------------------------------
# Step cost
# ----------------------------------------------------------------------------------------------


def step_cost(cfg, log):
    configs = []
    for num_steps in (100, cfg.cost_big_dim):
        args = stoch_vol_data(num_steps)
        entries = [("implicit-ssm", "AutoImplicit (SSM) + ImplicitELBO"),
                   ("mvn", "AutoMultivariateNormal + Trace_ELBO"),
                   ("implicit-ssm-1", "AutoImplicit (SSM, 1 score step) + ImplicitELBO")]
        for guide_name, label in entries:
            guide, elbo = make_guide_and_elbo(guide_name, stoch_vol, cfg.particles)
            svi = SVI(stoch_vol, guide, optax.adam(cfg.lr[0]), elbo)
            state = svi.init(jax.random.PRNGKey(0), *args)
            update = jax.jit(lambda s, a=args, svi=svi: svi.update(s, *a))
            dim = guide.latent_dim
            t0 = time.perf_counter()
            state, loss = update(state)
            jax.block_until_ready(loss)
            compile_s = time.perf_counter() - t0
            for _ in range(cfg.cost_warmup):
                state, loss = update(state)
            jax.block_until_ready(loss)
            configs.append({"label": label, "T": num_steps, "dim": dim, "update": update,
                            "state": state, "times": [], "cpu": [], "compile": compile_s})
            log(f"[step-cost] compiled {label}, T = {num_steps} (D = {dim}) in {compile_s:.1f} s")
    for _ in range(cfg.cost_steps):  # interleaved, so background load hits every config alike
        for c in configs:
            t0, c0 = time.perf_counter(), time.process_time()
            c["state"], loss = c["update"](c["state"])
            jax.block_until_ready((c["state"], loss))
            c["times"].append(time.perf_counter() - t0)
            c["cpu"].append(time.process_time() - c0)
    rows = []
    for c in configs:
        times = np.array(c["times"]) * 1e3
        rows.append({"label": c["label"], "T": c["T"], "dim": c["dim"], "median_ms": float(np.median(times)),
                     "p10_ms": float(np.percentile(times, 10)), "p90_ms": float(np.percentile(times, 90)),
                     "cpu_ms": float(np.median(c["cpu"]) * 1e3), "compile_s": c["compile"]})
    small_i, small_m, small_1, big_i, big_m, big_1 = rows
    ratio = small_i["median_ms"] / small_m["median_ms"]
    ratio_1 = small_1["median_ms"] / small_m["median_ms"]
    ratio_big_1 = big_1["median_ms"] / big_m["median_ms"]
    ratio_p10 = small_i["p10_ms"] / small_m["p10_ms"]
    ratio_big = big_i["median_ms"] / big_m["median_ms"]
    ratio_big_p10 = big_i["p10_ms"] / big_m["p10_ms"]
    scale = big_i["median_ms"] / small_i["median_ms"]
    scale_p10 = big_i["p10_ms"] / small_i["p10_ms"]
    ratio_cpu = small_i["cpu_ms"] / small_m["cpu_ms"]
    ratio_big_cpu = big_i["cpu_ms"] / big_m["cpu_ms"]
    lines = [
        "## Step cost: ImplicitELBO against Trace_ELBO",
        "",
        "```",
        command_line(),
        "```",
        "",
        *machine_lines(),
        f"- One jitted `svi.update` on `stoch_vol`, {cfg.particles} particles, median (10th-90th "
        f"percentile) over {cfg.cost_steps} calls after {cfg.cost_warmup} warm-up calls, the "
        "configurations interleaved call by call; CPU ms: median process CPU time per call "
        "(insensitive to other work descheduling this process when XLA runs single-threaded); "
        "compile time is the first call.",
        "",
        "| configuration | T | D | wall ms / step | p10-p90 (ms) | CPU ms / step | compile (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['T']} | {r['dim']} | {r['median_ms']:.2f} | "
                     f"{r['p10_ms']:.2f}-{r['p90_ms']:.2f} | {r['cpu_ms']:.2f} | {r['compile_s']:.1f} |")
    lines += [
        "",
        f"Step-time ratio ImplicitELBO + AutoImplicit / Trace_ELBO + AutoMultivariateNormal: "
        f"**{ratio:.2f}** at D = {small_i['dim']} (10th percentiles: {ratio_p10:.2f}; "
        f"CPU time: {ratio_cpu:.2f}), {ratio_big:.2f} at D = {big_i['dim']} (10th percentiles: "
        f"{ratio_big_p10:.2f}; CPU time: {ratio_big_cpu:.2f}). "
        f"From D = {small_i['dim']} to D = {big_i['dim']} the ImplicitELBO step time grows "
        f"{scale:.1f}x (10th percentiles: {scale_p10:.1f}x). With one score-network step per SVI "
        f"step instead of three: {ratio_1:.2f} at D = {small_i['dim']}, {ratio_big_1:.2f} at "
        f"D = {big_i['dim']}.",
        "",
    ]
    print("\n".join(lines))
    if cfg.out:
        write_section(cfg.out, "step-cost", lines)
    return rows


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny NUTS and SVI, one seed")
    p.add_argument("--step-cost", action="store_true", help="time svi.update instead")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    p.add_argument("--guides", nargs="+", choices=GUIDES, default=None)
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..n-1); default 3")
    p.add_argument("--steps", type=int, default=None, help="SVI steps; default 5000")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-2], help="Adam learning rate(s)")
    p.add_argument("--particles", type=int, default=16)
    p.add_argument("--draws", type=int, default=None, help="guide draws for the metrics; default 1000")
    p.add_argument("--warmup", type=int, default=None, help="NUTS warm-up; default 1000")
    p.add_argument("--samples", type=int, default=None, help="NUTS draws per chain; default 2000")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--no-nuts-as-written", dest="nuts_as_written", action="store_false",
                   help="skip NUTS on the centered models as written")
    p.add_argument("--cache-dir", default=str(Path(__file__).resolve().parent / ".cache"))
    p.add_argument("--cost-steps", type=int, default=None, help="timed updates; default 200")
    p.add_argument("--cost-warmup", type=int, default=20)
    p.add_argument("--cost-big-dim", type=int, default=500, help="time steps of the big model")
    p.add_argument("--out", default=None, help="markdown file to write (its section only)")
    p.add_argument("--json", default=None, help="also write the per-run results as JSON")
    cfg = p.parse_args(argv)
    q = cfg.quick
    defaults = {
        "models": ["eight_schools"] if q else list(MODELS),
        "guides": list(GUIDES),
        "seeds": 1 if q else 3,
        "steps": 100 if q else 5000,
        "draws": 200 if q else 1000,
        "warmup": 50 if q else 1000,
        "samples": 100 if q else 2000,
        "cost_steps": 10 if q else 200,
    }
    for k, v in defaults.items():
        if getattr(cfg, k) is None:
            setattr(cfg, k, v)
    if q:
        cfg.nuts_as_written = False
        cfg.particles = min(cfg.particles, 4)
        cfg.cost_warmup = min(cfg.cost_warmup, 2)
        cfg.cost_big_dim = min(cfg.cost_big_dim, 200)
    cfg.seeds = list(range(cfg.seeds))
    if cfg.draws > cfg.samples * cfg.chains:
        p.error("--draws must not exceed the reference's samples x chains")
    return cfg


def main(args=None):
    cfg = parse_args(args)

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    if cfg.step_cost:
        return step_cost(cfg, log)
    return accuracy(cfg, log)


if __name__ == "__main__":
    main()
