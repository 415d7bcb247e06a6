r"""Step cost of implicit VI: one jitted ``svi.update`` of ``ImplicitELBO`` + ``AutoImplicit``
against ``Trace_ELBO`` + ``AutoMultivariateNormal`` at equal particles.

On :func:`models.stoch_vol` with ``T = 100`` time points (D = 103) and ``T = --big-dim``
(D = T + 3), the configurations of ``CONFIGS``: ``AutoImplicit`` with its default score
network (three SSM-VR steps per SVI step) and with one score step, ``AutoMultivariateNormal``,
``AutoSemiImplicit`` with its two scores, and SteinVI. Median (10th-90th percentile) wall time
over ``--steps`` calls after ``--warmup`` warm-up calls, the configurations interleaved call by
call so that background load hits every one alike; CPU ms is the median process CPU time per
call (insensitive to other work descheduling this process when XLA runs single-threaded);
compile time is the first call.

Usage::

    python benchmarks/step_cost.py --steps 300      # → results/step_cost.json

XLA and OpenBLAS run single-threaded unless ``XLA_FLAGS`` / ``OPENBLAS_NUM_THREADS`` are set: on
a CPU shared with other work, multi-threaded kernels (notably OpenBLAS's, behind the Cholesky
factors and triangular solves of ``AutoMultivariateNormal``) wait for descheduled workers, and a
step can then take 10 times its own cost.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time

import jax
import numpy as np
import optax
from common import markdown_table, table, write_json
from models import make_guide_and_elbo, make_steinvi, stoch_vol, stoch_vol_data
from numpyro.infer import SVI

CONFIGS = (("implicit-ssm", "AutoImplicit (SSM) + ImplicitELBO"),
           ("mvn", "AutoMultivariateNormal + Trace_ELBO"),
           ("implicit-ssm-1", "AutoImplicit (SSM, 1 score step) + ImplicitELBO"),
           ("semi-implicit", "AutoSemiImplicit (3 regression steps) + ImplicitELBO"),
           ("semi-implicit-mixture", "AutoSemiImplicit (mixture score) + ImplicitELBO"),
           ("steinvi", "SteinVI (16 AutoNormal components, RBF)"))


def compiled_update(guide_name, args, cfg) -> dict:
    """A warmed-up jitted ``svi.update`` with its state, dimension and compile time."""
    if guide_name == "steinvi":
        svi, guide = make_steinvi(stoch_vol, cfg.particles, cfg.lr)
    else:
        guide, elbo = make_guide_and_elbo(guide_name, stoch_vol, cfg.particles)
        svi = SVI(stoch_vol, guide, optax.adam(cfg.lr), elbo)
    state = svi.init(jax.random.PRNGKey(0), *args)
    update = jax.jit(lambda s: svi.update(s, *args))
    t0 = time.perf_counter()
    state, loss = jax.block_until_ready(update(state))
    compile_s = time.perf_counter() - t0
    for _ in range(cfg.warmup):
        state, loss = update(state)
    jax.block_until_ready(loss)
    dim = args[0].shape[0] + 3  # stoch_vol: T states and (mu, phi, sigma)
    return {"update": update, "state": state, "dim": dim, "compile_s": compile_s,
            "times": [], "cpu": []}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: T = 100 and 200, 10 calls")
    p.add_argument("--steps", type=int, default=200, help="timed calls per configuration")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--big-dim", type=int, default=500, help="time points of the big model")
    p.add_argument("--particles", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--json", default=None, help="results file (default results/step_cost.json)")
    cfg = p.parse_args(argv)
    if cfg.quick:
        cfg.steps, cfg.warmup, cfg.big_dim, cfg.particles = 10, 2, 200, 4
    runs = []
    for num_steps in (100, cfg.big_dim):
        args = stoch_vol_data(num_steps)
        for guide_name, label in CONFIGS:
            runs.append({"label": label, "T": num_steps, **compiled_update(guide_name, args, cfg)})
            print(f"compiled {label}, T = {num_steps} in {runs[-1]['compile_s']:.1f} s", flush=True)
    for _ in range(cfg.steps):
        for r in runs:
            t0, c0 = time.perf_counter(), time.process_time()
            r["state"], loss = r["update"](r["state"])
            jax.block_until_ready((r["state"], loss))
            r["times"].append(time.perf_counter() - t0)
            r["cpu"].append(time.process_time() - c0)
    rows = []
    for r in runs:
        ms = np.array(r["times"]) * 1e3
        rows.append({"label": r["label"], "T": r["T"], "dim": r["dim"],
                     "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
                     "p90_ms": float(np.percentile(ms, 90)),
                     "cpu_ms": float(np.median(r["cpu"]) * 1e3), "compile_s": r["compile_s"]})
    tables = {"step_cost": table(
        ["configuration", "D", "wall ms / step", "p10–p90 (ms)"],
        [[r["label"], r["dim"], f"{r['median_ms']:.2f}", f"{r['p10_ms']:.2f}–{r['p90_ms']:.2f}"]
         for r in rows], "lrrr")}
    print(markdown_table(**tables["step_cost"]))
    settings = {k: v for k, v in vars(cfg).items() if k != "json"}
    out = {"settings": settings, "rows": rows, "tables": tables}
    print(f"wrote {write_json('step_cost', out, cfg.json)}")
    return out


if __name__ == "__main__":
    main()
