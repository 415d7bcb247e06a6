r"""Posterior-accuracy benchmark: variational guides against a NUTS reference.

For each model of :data:`models.MODELS` a NUTS reference is run once (and cached), then every
guide of :func:`models.make_guide_and_elbo` is fitted by SVI with the same number of steps,
particles and Adam learning rate, over several seeds. All comparisons are made in NumPyro's
unconstrained space: every latent site is mapped to the real line by
``biject_to(support).inv`` and flattened, for the reference draws and the guide draws alike
(:func:`implicitvi.diagnostics.unconstrained_score`).

Metrics, per run (``D`` unconstrained coordinates, ``n`` guide draws):

* **mean err**: median over coordinates of :math:`|\bar u^q_i - \bar u^{ref}_i| / \mathrm{sd}^{ref}_i`;
* **log-sd err**: median over coordinates of :math:`|\log(\mathrm{sd}^q_i / \mathrm{sd}^{ref}_i)|`
  (standard deviations with ``ddof=1``);
* **KSD**: kernel Stein discrepancy (IMQ kernel, bandwidth 1) of ``n`` guide draws against the
  model's unnormalized posterior (:func:`implicitvi.diagnostics.kernel_stein_discrepancy`);
* **non-finite**: the run's loss became NaN/inf (Trace_ELBO), ``ImplicitELBO`` stopped with a
  ``FloatingPointError``, or the guide's draws were non-finite;
* **time**: wall time of ``svi.run`` (compilation included) plus drawing the ``n`` samples.

Each table reports the median over seeds (over the seeds whose run finished with finite draws).
The reference: NUTS with ``init_to_median``; for the three centered models it runs on the
equivalent non-centered model and maps its draws back (the centered eight schools and the
funnel are the textbook cases where NUTS itself is biased). The "NUTS floor" row holds the KSD
of ``n`` thinned reference draws and the errors of the second chain's thinned draws against the
first chain (the Monte Carlo noise of the metrics).

Usage::

    python benchmarks/posterior_accuracy.py --quick                 # smoke run
    python benchmarks/posterior_accuracy.py --lr 1e-2 1e-3          # → results/posterior_accuracy.json

NUTS draws are cached under ``--cache-dir`` (default ``benchmarks/.cache``). XLA and OpenBLAS
run single-threaded unless ``XLA_FLAGS`` / ``OPENBLAS_NUM_THREADS`` are set (see
``step_cost.py``).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import gc
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from common import markdown_table, seed_summary, table, write_json
from models import GUIDES, LABELS, MODELS, ModelSpec, make_guide_and_elbo, make_steinvi
from numpyro.contrib.einstein import MixtureGuidePredictive
from numpyro.infer import MCMC, NUTS, SVI
from numpyro.infer.initialization import init_to_median

from implicitvi.diagnostics import (
    kernel_stein_discrepancy,
    moment_errors,
    unconstrained_score,
)
from implicitvi.infer import nonfinite

CACHE_VERSION = 1


def run_nuts(model, args, *, warmup, samples, chains, target_accept, seed):
    kernel = NUTS(model, init_strategy=init_to_median, target_accept_prob=target_accept)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains,
                chain_method="sequential", progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=("diverging",))
    draws = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    divergences = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    return draws, divergences, time.perf_counter() - start


def flatten_chains(draws):
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in draws.items()}


def reference(spec: ModelSpec, args, to_u, cfg) -> dict:
    """NUTS reference draws ``u`` of shape (chains, samples, D), cached as ``.npz``."""
    tag = f"{spec.name}_w{cfg.warmup}_s{cfg.samples}_c{cfg.chains}_v{CACHE_VERSION}"
    path = Path(cfg.cache_dir) / f"{tag}.npz"
    if path.exists():
        data = np.load(path)
        return {k: data[k] for k in data.files}
    draws, divergences, elapsed = run_nuts(
        spec.ref_model or spec.model, args, warmup=cfg.warmup, samples=cfg.samples,
        chains=cfg.chains, target_accept=spec.target_accept, seed=0)
    if spec.ref_to_model is not None:
        draws = spec.ref_to_model(draws)
    u = np.asarray(to_u(flatten_chains(draws))).reshape(cfg.chains, cfg.samples, -1)
    out = {"u": u, "divergences": np.array(divergences), "seconds": np.array(elapsed)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    print(f"[{spec.name}] NUTS reference: {elapsed:.1f} s, {divergences} divergences", flush=True)
    return out


def thin(u, n):
    """``n`` evenly spaced rows of ``u`` (rows ordered chain by chain)."""
    idx = np.linspace(0, u.shape[0] - 1, n).round().astype(int)
    return u[idx]


def errors(u_q, u_ref) -> tuple[float, float]:
    """(mean err, log-sd err): the medians of :func:`implicitvi.diagnostics.moment_errors`."""
    e = moment_errors(u_q, u_ref)
    return e["mean_z"], e["log_sd"]


def ksd(u, score_fn):
    return float(kernel_stein_discrepancy(jnp.asarray(u, jnp.float32), score_fn))


def latent_sites(model, args):
    tr = numpyro.handlers.trace(numpyro.handlers.seed(model, jax.random.PRNGKey(0))).get_trace(*args)
    return [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]


def run_svi(spec, args, guide_name, cfg, lr, seed):
    """Fit by SVI; ``(losses, draws)``."""
    guide, elbo = make_guide_and_elbo(guide_name, spec.model, cfg.particles)
    svi = SVI(spec.model, guide, optax.adam(lr), elbo)
    try:
        result = svi.run(jax.random.PRNGKey(seed), cfg.steps, *args, progress_bar=False)
        losses = np.asarray(jax.block_until_ready(result.losses))
    except nonfinite.JIT_ERRORS as err:
        nonfinite.reraise(err)  # ImplicitELBO's guard: a FloatingPointError naming the step
        raise
    draws = guide.sample_posterior(
        jax.random.PRNGKey(10_000 + seed), result.params, *args, sample_shape=(cfg.draws,))
    return losses, draws


def run_steinvi(spec, args, sites, cfg, lr, seed):
    """Fit by NumPyro's SteinVI (:func:`models.make_steinvi`); ``(losses, draws)``."""
    stein, guide = make_steinvi(spec.model, cfg.particles, lr)
    result = stein.run(jax.random.PRNGKey(seed), cfg.steps, *args, progress_bar=False)
    losses = np.asarray(jax.block_until_ready(result.losses))
    predictive = MixtureGuidePredictive(spec.model, guide, result.params,
                                        guide_sites=stein.guide_sites, num_samples=cfg.draws,
                                        return_sites=sites)
    return losses, predictive(jax.random.PRNGKey(10_000 + seed), *args)


def fit_guide(m, guide_name, cfg, lr, seed) -> dict:
    spec, args = m["spec"], m["args"]
    row = {"guide": guide_name, "seed": seed, "lr": lr, "error": None}
    start = time.perf_counter()
    try:
        if guide_name == "steinvi":
            losses, draws = run_steinvi(spec, args, m["sites"], cfg, lr, seed)
        else:
            losses, draws = run_svi(spec, args, guide_name, cfg, lr, seed)
        latent = {k: v for k, v in draws.items() if k in m["sites"]}
        u = np.asarray(jax.block_until_ready(m["to_u"](latent)))
    except Exception as exc:  # noqa: BLE001 (a failed run is a result, not a crash)
        line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        row.update(seconds=time.perf_counter() - start, error=f"{type(exc).__name__}: {line[:400]}",
                   non_finite=isinstance(exc, FloatingPointError))
        return row
    row["seconds"] = time.perf_counter() - start
    finite_rows = np.all(np.isfinite(u), axis=1)
    bad_losses = np.flatnonzero(~np.isfinite(losses))
    row["non_finite"] = bool(bad_losses.size or not np.all(finite_rows))
    if not np.any(finite_rows):
        row["error"] = "all draws non-finite"
        return row
    u = u[finite_rows]
    row["mean_err"], row["sd_err"] = errors(u, m["u_ref"])
    row["ksd"] = ksd(u, m["score_fn"])
    return row


def prepare(model_name, cfg) -> dict:
    """The model's score, ``to_u`` and NUTS reference with its floor metrics."""
    spec = MODELS[model_name]
    args = spec.args()
    score_fn, to_u = unconstrained_score(spec.model, args)
    ref = reference(spec, args, to_u, cfg)
    u_all = ref["u"].reshape(-1, ref["u"].shape[-1])
    floor = {"ksd": ksd(thin(u_all, cfg.draws), score_fn)}
    floor["mean_err"], floor["sd_err"] = errors(thin(ref["u"][1], cfg.draws), ref["u"][0])
    return {"spec": spec, "args": args, "score_fn": score_fn, "to_u": to_u, "u_ref": u_all,
            "sites": latent_sites(spec.model, args), "dim": u_all.shape[-1], "floor": floor}


def fmt(x) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.2e}" if x != 0 and (abs(x) >= 1000 or abs(x) < 1e-3) else f"{x:.3f}"


def block_table(block) -> dict:
    """One model at one learning rate: the NUTS floor, then each guide's medians over seeds."""
    f = block["floor"]
    rows = [["NUTS floor (chain 2 vs chain 1)", fmt(f["mean_err"]), fmt(f["sd_err"]),
             fmt(f["ksd"]), "—"]]
    for name, runs in block["guides"].items():
        summary = seed_summary(runs, ("mean_err", "sd_err", "ksd"))
        rows.append([LABELS[name]] + [fmt(summary[k]) for k in ("mean_err", "sd_err", "ksd")]
                    + [summary["non_finite"]])
    return table(["guide", "mean err", "log-sd err", "KSD", "non-finite runs"], rows, "lrrrr")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny NUTS and SVI, one seed")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    # The semi-implicit guide's variants (flow frames, averaged targets) run when named.
    p.add_argument("--guides", nargs="+", choices=GUIDES,
                   default=[g for g in GUIDES if not g.startswith("semi-implicit-")])
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..n-1); default 3")
    p.add_argument("--steps", type=int, default=None, help="SVI steps; default 5000")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-2], help="Adam learning rate(s)")
    p.add_argument("--particles", type=int, default=16)
    p.add_argument("--draws", type=int, default=None, help="guide draws for the metrics; default 1000")
    p.add_argument("--warmup", type=int, default=None, help="NUTS warm-up; default 1000")
    p.add_argument("--samples", type=int, default=None, help="NUTS draws per chain; default 2000")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--cache-dir", default=str(Path(__file__).resolve().parent / ".cache"))
    p.add_argument("--json", default=None,
                   help="results file (default benchmarks/results/posterior_accuracy.json)")
    cfg = p.parse_args(argv)
    q = cfg.quick
    defaults = {"models": ["eight_schools"] if q else list(MODELS), "seeds": 1 if q else 3,
                "steps": 100 if q else 5000, "draws": 200 if q else 1000,
                "warmup": 50 if q else 1000, "samples": 100 if q else 2000}
    for k, v in defaults.items():
        if getattr(cfg, k) is None:
            setattr(cfg, k, v)
    if q:
        cfg.particles = min(cfg.particles, 4)
    if cfg.chains < 2:
        p.error("--chains must be at least 2 (the floor compares two chains)")
    if cfg.draws > cfg.samples * cfg.chains:
        p.error("--draws must not exceed the reference's samples x chains")
    return cfg


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    blocks, prepared, tables = [], {}, {}
    start = time.perf_counter()
    for lr in cfg.lr:
        for name in cfg.models:
            if name not in prepared:
                prepared[name] = prepare(name, cfg)
            m = prepared[name]
            block = {"model": name, "description": m["spec"].description, "dim": m["dim"],
                     "lr": lr, "floor": m["floor"], "guides": {}}
            for guide_name in cfg.guides:
                for seed in range(cfg.seeds):
                    row = fit_guide(m, guide_name, cfg, lr, seed)
                    # Every SVI run compiles afresh; released executables keep the process under
                    # its memory-mapping limit over a full grid.
                    jax.clear_caches()
                    gc.collect()
                    block["guides"].setdefault(guide_name, []).append(row)
                    print(f"[{name}] lr={lr:g} {guide_name} seed={seed}: "
                          + (row["error"] or f"mean_err={row['mean_err']:.3f} "
                             f"sd_err={row['sd_err']:.3f} ksd={row['ksd']:.4f}"), flush=True)
            blocks.append(block)
            tables[f"{name}_lr{lr:g}"] = block_table(block)
            print(markdown_table(**tables[f"{name}_lr{lr:g}"]), flush=True)
            # Written after every block, so that a stopped run keeps what it finished.
            path = write_json("posterior_accuracy", results(cfg, start, blocks, tables), cfg.json)
    print(f"wrote {path}")
    return results(cfg, start, blocks, tables)


def results(cfg, start, blocks, tables) -> dict:
    settings = {k: v for k, v in vars(cfg).items() if k not in ("json", "cache_dir")}
    return {"settings": settings, "seconds": time.perf_counter() - start, "blocks": blocks,
            "tables": tables}


if __name__ == "__main__":
    main()
