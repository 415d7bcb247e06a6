r"""Scale study: one SVI step of each guide on a log-Gaussian Cox process against the number of
latent cells D.

Counts on an ``n × n`` grid of the unit square (D = n² cells of area 1/D), ``y_i ~
Poisson(exp(f_i) / D)``, ``f = μ + (L₁ ⊗ L₁) z`` with ``z ~ N(0, I_D)`` the one latent site and
``L₁`` the Cholesky factor of a squared-exponential covariance (variance 1, lengthscale 0.1) on
the grid's coordinates, applied as ``L₁ Z L₁ᵀ`` on ``z`` reshaped to ``(n, n)``; ``μ = log 2D``.
For every D: ``AutoImplicit``, ``AutoSemiImplicit`` (``ImplicitELBO``), ``AutoMultivariateNormal``
and ``AutoNormal`` (``Trace_ELBO``), ``--particles`` each, Adam 1e-2: the median wall time of a
compiled ``svi.update`` (the guides of one D timed in turn), its compile time and XLA's
``memory_analysis()`` (temporaries + arguments + outputs), the bytes of the optimizer's
parameters; for ``AutoImplicit``, one ``estimator.update`` + ``estimator.score`` on
``(particles, D)`` draws; for the guides with a D × D factor ``L``, NumPyro's map from the packed
triangle it stores to ``L`` with its gradient. A guide whose estimated memory
(:func:`estimate_bytes`) exceeds ``--max-gb`` is skipped, with the reason.

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/lgcp_scale.py   # → results/lgcp_scale.json
    python benchmarks/lgcp_scale.py --quick                  # smoke run, D = 64, 144

XLA and OpenBLAS run single-threaded unless ``XLA_FLAGS`` / ``OPENBLAS_NUM_THREADS`` are set.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import itertools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from common import (
    budgeted_times,
    fmt_ms,
    int_list,
    markdown_table,
    str_list,
    table,
    write_json,
)
from models import make_guide_and_elbo
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.infer import SVI

from implicitvi.infer.primitives import state_name

GUIDES = (("implicit-ssm", "AutoImplicit"), ("semi-implicit", "AutoSemiImplicit"),
          ("mvn", "AutoMultivariateNormal"), ("normal", "AutoNormal"))
SCORE, TRANSFORM = "score estimator", "L transform"
LENGTHSCALE, VARIANCE, JITTER = 0.1, 1.0, 1e-5
SAMPLER_HIDDEN, SCORE_HIDDEN = (64, 64), (128, 128)  # the guides' default networks
# Copies of the parameters an update holds (XLA's temporaries + arguments + outputs measured
# 8.0-8.1 D² floats for a D × D factor at D = 1024 and 2500).
COPIES = 8


def grid_factor(n: int) -> np.ndarray:
    """The Cholesky factor of the squared-exponential covariance of ``n`` equally spaced points
    on [0, 1] (float64, with a small jitter on the diagonal)."""
    x = (np.arange(n) + 0.5) / n
    k = VARIANCE * np.exp(-0.5 * ((x[:, None] - x[None, :]) / LENGTHSCALE) ** 2)
    return np.linalg.cholesky(k + JITTER * VARIANCE * np.eye(n))


def field(z, chol, mean):
    """``f = μ + (L₁ ⊗ L₁) z``, applied as ``L₁ Z L₁ᵀ`` on ``z`` reshaped to ``(n, n)``."""
    n = chol.shape[0]
    return mean + (chol @ z.reshape(z.shape[:-1] + (n, n)) @ chol.T).reshape(z.shape)


def lgcp(chol, mean, y=None):
    """The log-Gaussian Cox process on the grid, non-centered: ``z`` is the only latent."""
    d = chol.shape[0] ** 2
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
    numpyro.sample("y", dist.Poisson(jnp.exp(field(z, chol, mean)) / d).to_event(1), obs=y)


def simulate(key, dim: int) -> tuple:
    """Model arguments ``(L₁, μ, y)`` with counts drawn from the model on ``dim = n²`` cells."""
    n = math.isqrt(dim)
    if n * n != dim:
        raise ValueError(f"D must be a square (the grid is n × n), got {dim}")
    chol, mean = jnp.asarray(grid_factor(n), jnp.float32), jnp.float32(math.log(2 * dim))
    k_z, k_y = jax.random.split(key)
    f = field(jax.random.normal(k_z, (dim,)), chol, mean)
    return chol, mean, jax.random.poisson(k_y, jnp.exp(f) / dim).astype(jnp.float32)


def parts(name: str, dim: int) -> dict[str, int]:
    """The parameters of a guide (and its score network) that grow with D, by what holds them."""
    def mlp(*sizes):
        return sum(a * b + b for a, b in itertools.pairwise(sizes))

    out = {"loc and scale": 2 * dim} if name == "normal" else {"D×D Cholesky factor": dim * dim}
    if name == "implicit-ssm":
        out["sampler MLP"] = mlp(dim, *SAMPLER_HIDDEN, dim)
    if name == "semi-implicit":
        out["mixing MLP"] = mlp(dim, *SAMPLER_HIDDEN, 2 * dim)
    if name in ("implicit-ssm", "semi-implicit"):
        out["score network"] = mlp(dim, *SCORE_HIDDEN, dim)
    return out


def estimate_bytes(name: str, dim: int, particles: int) -> tuple[int, str]:
    """Float32 bytes of a compiled update (``COPIES`` of the parameters and ``(particles, D)``
    activations of a few dozen layers), and the part that dominates."""
    sizes = parts(name, dim)
    return 4 * (COPIES * sum(sizes.values()) + 64 * particles * dim), max(sizes, key=sizes.get)


def skip_reason(name: str, dim: int, particles: int, max_gb: float) -> str | None:
    """Why the guide would not fit in ``max_gb`` at D, or None."""
    need, part = estimate_bytes(name, dim, particles)
    if need > max_gb * 1e9:
        return f"skipped: {part} needs {need / 1e9:.3g} GB (estimate; budget {max_gb:g} GB)"
    return None


def nbytes(tree) -> int:
    """Bytes of the arrays of a pytree."""
    return sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes"))


def memory_bytes(compiled) -> int | None:
    """XLA's temporaries + arguments + outputs of an executable, or None where not reported."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):  # not every backend reports it
        return None
    return m and m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes


def compiled_guide(name: str, key, data, particles: int) -> dict:
    """A guide's compiled update with its state, compile time and memory."""
    guide, elbo = make_guide_and_elbo(name, lgcp, particles)
    svi = SVI(lgcp, guide, optax.adam(1e-2), elbo)
    t0 = time.perf_counter()
    state = jax.jit(svi.init)(key, *data)  # op by op, each operation would compile apart
    t1 = time.perf_counter()
    update = jax.jit(svi.update).lower(state, *data).compile()
    t2 = time.perf_counter()
    run = {"init_s": t1 - t0, "compile_s": t2 - t1, "memory": memory_bytes(update),
           "params": nbytes(svi.optim.get_params(state.optim_state)),
           "mutable": nbytes(state.mutable_state), "call": (update, (state, *data))}
    if name == "implicit-ssm":
        est = guide.estimator
        est_state = state.mutable_state[state_name(f"_{guide.prefix}_latent")]["score"]
        draws = jax.random.normal(jax.random.fold_in(key, 1), (particles, data[2].shape[0]))
        fn = jax.jit(lambda k, s, x: est.score(est.update(k, s, x), x))
        run["score_call"] = (fn, (jax.random.fold_in(key, 2), est_state, draws))
    return run


def transform_call(dim: int) -> tuple:
    """The packed lower triangle the optimizer holds → the D × D factor ``L``, with its gradient."""
    t = biject_to(constraints.scaled_unit_lower_cholesky)
    packed = jnp.zeros(dim * (dim + 1) // 2)
    return jax.jit(jax.grad(lambda x: jnp.sum(t(x)))), (packed,)


def bench_dim(dim: int, key, args) -> list[dict]:
    """Every guide at one D: compiled, then timed in turn; skipped guides carry their reason."""
    k_data, k_init = jax.random.split(key)
    data = simulate(k_data, dim)
    rows, calls = [], {}
    for name, label in GUIDES:
        if name not in args.guides:
            continue
        row = {"guide": label, "dim": dim, "particles": args.particles,
               "estimate_bytes": estimate_bytes(name, dim, args.particles)[0]}
        row["skipped"] = skip_reason(name, dim, args.particles, args.max_gb)
        if row["skipped"] is None:
            run = compiled_guide(name, k_init, data, args.particles)
            calls[label] = run.pop("call")
            if "score_call" in run:
                calls[SCORE] = run.pop("score_call")
            if name != "normal":
                calls[TRANSFORM] = transform_call(dim)
            row.update(run)
            print(f"D={dim} {label}: compiled in {row['compile_s']:.1f} s", flush=True)
        rows.append(row)
    seconds, reps = budgeted_times(calls, args.steps, args.budget, args.min_steps) if calls else ({}, 0)
    ms = {k: 1e3 * v for k, v in seconds.items()}
    for row in (r for r in rows if r["skipped"] is None):
        row.update(step_ms=ms[row["guide"]], reps=reps)
        if row["guide"] == "AutoImplicit":
            row["score_ms"] = ms[SCORE]
        if row["guide"] != "AutoNormal":
            row["transform_ms"] = ms[TRANSFORM]
        print(f"D={dim} {row['guide']}: {row['step_ms']:.2f} ms/step ({reps} steps)", flush=True)
    return rows


def mb(x) -> str:
    return "—" if x is None else f"{x / 1e6:.1f}" if x < 1e8 else f"{x / 1e6:.0f}"


def scale_table(rows: list[dict], steps: int) -> dict:
    """One row a guide and D: step, compile, memory, parameters, score estimator, note."""
    out = []
    for r in rows:
        if r["skipped"]:
            out.append([r["guide"], r["dim"], "—", "—", "—", "—", "—", r["skipped"]])
            continue
        score = "—" if "score_ms" not in r else (
            f"{fmt_ms(r['score_ms'])} ({100 * r['score_ms'] / r['step_ms']:.0f}% of step)")
        notes = [f"L transform + grad {fmt_ms(r['transform_ms'])} ms"] if "transform_ms" in r else []
        notes += [f"median of {r['reps']} steps"] if r["reps"] < steps else []
        out.append([r["guide"], r["dim"], fmt_ms(r["step_ms"]), f"{r['compile_s']:.1f}",
                    mb(r["memory"]), mb(r["params"]), score, "; ".join(notes)])
    return table(["guide", "D", "step ms", "compile s", "memory MB (XLA temp+args+outputs)",
                  "params MB", "score-estimator ms", "note"], out, "lrrrrrrl")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: D = 64, 144, 3 steps")
    p.add_argument("--dims", type=int_list, help="squares (default 1024,2500,4096,10000)")
    p.add_argument("--guides", type=str_list, default=[name for name, _ in GUIDES])
    p.add_argument("--particles", type=int, default=16, help="particles of every guide")
    p.add_argument("--steps", type=int, default=10, help="timed steps per guide")
    p.add_argument("--min-steps", type=int, default=3, help="fewest timed steps under --budget")
    p.add_argument("--budget", type=float, default=30.0, help="seconds of timed rounds per D")
    p.add_argument("--max-gb", type=float, default=6.0, help="skip guides estimated above this")
    p.add_argument("--json", default=None, help="results file (default results/lgcp_scale.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps = args.min_steps = 3
    if args.dims is None:
        args.dims = [64, 144] if args.quick else [1024, 2500, 4096, 10000]
    return args


def main(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    key = jax.random.PRNGKey(0)
    rows = []
    for dim in args.dims:
        rows += bench_dim(dim, jax.random.fold_in(key, dim), args)
    tables = {"scale": scale_table(rows, args.steps)}
    print(markdown_table(**tables["scale"]))
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    out = {"settings": settings, "rows": rows, "tables": tables,
           "seconds": time.perf_counter() - start}
    print(f"wrote {write_json('lgcp_scale', out, args.json)}")
    return out


if __name__ == "__main__":
    main(parse_args())
