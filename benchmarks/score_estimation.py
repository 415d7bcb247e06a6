r"""Score-estimation benchmark: accuracy and wall time of the estimators in ``implicitvi``.

Targets: ``gaussian`` and ``mixture`` of :mod:`models`, whose score is known in closed form.
Metric: relative squared score error
:math:`\sum_i \|\hat s(x_i) - s(x_i)\|^2 / \sum_i \|s(x_i)\|^2`.

* Kernel estimators (Stein, SSGE) are fitted on ``M`` particles and evaluated in-sample on the
  same particles (``score(state, samples)``), mean over ``--reps`` independent sets. Time: one
  jitted ``update`` + ``score`` on ``M`` particles, after compilation, median of
  ``--time-reps`` calls.
* Score networks (``ScoreNet``) are trained on a stream, as inside variational inference:
  each of the ``--steps`` jitted ``update`` calls receives a fresh batch of ``M`` samples and
  takes one optimizer step (warm start). They are evaluated on ``--eval-samples`` fresh samples
  (held out: never trained on). Time: one jitted ``update`` on ``M`` samples (median of
  ``--time-reps`` calls, the objectives of one cell timed in turn so that they share the machine
  load) and the total wall time of the ``--steps`` streaming steps (drawing the batches
  included, compilation and evaluations excluded). ``--fixed-batch`` instead fits each network
  with ``ScoreNet.fit`` on one fixed set of ``M`` samples, for a comparison at matched data.

The cost of the kernel estimators against ``M`` and ``d`` is ``kernel_cost.py``.

Usage::

    python benchmarks/score_estimation.py                 # full grid → results/score_estimation.json
    python benchmarks/score_estimation.py --quick         # smoke run, under a minute

On CPU, XLA spreads one operation over a thread pool, and the LAPACK routines behind the
kernel estimators' Cholesky and eigendecomposition run on OpenBLAS threads. On a machine whose
cores are busy with other work a call can then wait for a descheduled worker and take 10-70
times longer than its own cost. For reproducible timings there, run single-threaded::

    OPENBLAS_NUM_THREADS=1 \
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmarks/score_estimation.py
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax
from common import (
    fmt_ms,
    int_list,
    interleaved_times,
    median_time,
    str_list,
    table,
    write_json,
)
from models import KERNEL_NAMES, TARGETS, Target, kernel_estimator, update_and_score

from implicitvi.estimators import ScoreNet

NETWORK_OBJECTIVES = ("ssm_vr", "ssm", "dsm", "fd_ssm")
LABELS = {"stein": "Stein", "ssge": "SSGE", "ssm_vr": "SSM-VR", "ssm": "SSM", "dsm": "DSM",
          "fd_ssm": "FD-SSM"}


def relative_error(estimate, truth) -> float:
    return float(np.sum((estimate - truth) ** 2)) / float(np.sum(truth**2))


def fmt_err(x: float) -> str:
    if not np.isfinite(x):
        return "nan"
    return f"{x:.3f}" if x >= 0.01 else f"{x:.2e}"


def bench_kernel(name: str, target: Target, num: int, key, reps: int, time_reps: int) -> dict:
    est = kernel_estimator(name)
    fn = update_and_score(est)
    k_init, key = jax.random.split(key)
    sample = jax.jit(target.sample, static_argnums=1)
    state = est.init(k_init, sample(k_init, num))
    errors, num_eigen = [], []
    for r in range(reps):
        k_x, k_u = jax.random.split(jax.random.fold_in(key, r))
        x = sample(k_x, num)
        scores, j = fn(k_u, state, x)
        errors.append(relative_error(scores, target.score(x)))
        num_eigen.append(int(j))
    seconds = median_time(lambda: fn(k_u, state, x), repeats=time_reps, warmup=1)
    return {"kind": "kernel", "estimator": name, "target": target.name, "dim": target.dim,
            "particles": num, "error": float(np.mean(errors)), "errors": errors,
            "num_eigen": float(np.mean(num_eigen)) if name == "ssge" else None,
            "update_score_ms": 1e3 * seconds, "finite": bool(np.all(np.isfinite(errors)))}


def make_network(objective: str, args) -> ScoreNet:
    return ScoreNet(objective=objective, num_projections=1, hidden=tuple(args.hidden),
                    optimizer=optax.adam(args.lr), steps_per_update=1, fit_steps=args.steps,
                    sigma=args.sigma, eps=args.eps)


def bench_network(objective: str, target: Target, num: int, key, eval_x, eval_s, args):
    """Train on the stream (or fit on one set with ``--fixed-batch``); return the result row
    and the ``(fn, args)`` of one update call, timed later by ``interleaved_times``."""
    est = make_network(objective, args)
    sample = jax.jit(target.sample, static_argnums=1)
    update = jax.jit(est.update)
    score = jax.jit(est.score)

    k_init, k_train = jax.random.split(key)
    state = est.init(k_init, sample(k_init, num))
    steps = args.steps
    # keys[t] = (key of batch t, key of update t), as host arrays: no dispatch to index them.
    keys = np.asarray(jax.random.split(k_train, 2 * steps)).reshape(steps, 2, -1)
    jax.block_until_ready(update(keys[0, 1], state, sample(keys[0, 0], num)))  # compile

    errors = {}
    if args.fixed_batch:
        batch = sample(keys[0, 0], num)
        fit = jax.jit(est.fit).lower(keys[0, 1], state, batch).compile()
        t0 = time.perf_counter()
        state = jax.block_until_ready(fit(keys[0, 1], state, batch))
        train_seconds = time.perf_counter() - t0
        errors[steps] = relative_error(score(state, eval_x), eval_s)
    else:
        checkpoints = sorted({max(1, steps // 4), max(1, steps // 2), steps})
        train_seconds, done = 0.0, 0
        for stop in checkpoints:
            t0 = time.perf_counter()
            for t in range(done, stop):
                batch = sample(keys[t, 0], num)  # a fresh batch for every update
                state = update(keys[t, 1], state, batch)
            jax.block_until_ready(state)
            train_seconds += time.perf_counter() - t0
            done = stop
            errors[stop] = relative_error(score(state, eval_x), eval_s)

    x = sample(jax.random.fold_in(k_train, steps), num)
    timed_call = (update, (keys[-1, 1], state, x))
    row = {"kind": "network", "estimator": objective, "target": target.name, "dim": target.dim,
           "particles": num, "steps": steps, "error": errors[steps],
           "errors_at": {str(k): v for k, v in errors.items()},
           "error_in_sample": relative_error(score(state, batch), target.score(batch)),
           "fixed_batch": bool(args.fixed_batch), "final_loss": float(state.loss),
           "step_ms": None, "train_s": train_seconds, "finite": bool(np.isfinite(errors[steps]))}
    return row, timed_call


def tables(results: list[dict], args) -> dict:
    """The markdown tables of one run, by name (see ``render.py``)."""
    cells = {(r["target"], r["dim"], r["particles"], r["estimator"]): r for r in results}
    configs = sorted({(r["target"], r["dim"], r["particles"]) for r in results},
                     key=lambda c: (args.targets.index(c[0]), c[1], c[2]))
    kernels = [k for k in KERNEL_NAMES if k in args.kernels]
    nets = [o for o in NETWORK_OBJECTIVES if o in args.objectives]
    get = lambda c, e, key, fmt: "" if (*c, e) not in cells else fmt(cells[(*c, e)][key])
    out = {}

    header = ["target", "d", "M"] + [LABELS[e] for e in kernels + nets]
    ratio = "ssm_vr" in nets and kernels
    rows = []
    for c in configs:
        row = [c[0], c[1], c[2]] + [get(c, e, "error", fmt_err) for e in kernels + nets]
        if ratio:
            best = min(cells[(*c, k)]["error"] for k in kernels if (*c, k) in cells)
            row.append(get(c, "ssm_vr", "error", lambda v, best=best: f"{v / best:.3f}"))
        rows.append(row)
    out["error"] = table(header + (["SSM-VR / best kernel"] if ratio else []), rows)

    header = (["target", "d", "M"] + [f"{LABELS[e]} upd+score ms" for e in kernels]
              + [f"{LABELS[e]} ms/step" for e in nets])
    rows = [[c[0], c[1], c[2]] + [get(c, e, "update_score_ms", fmt_ms) for e in kernels]
            + [get(c, e, "step_ms", fmt_ms) for e in nets] for c in configs]
    out["wall_time"] = table(header, rows)

    if nets and not args.fixed_batch:
        marks = list(next(r for r in results if r["kind"] == "network")["errors_at"])
        header = (["target", "d", "M", "objective"] + [f"err @ {m}" for m in marks]
                  + ["ms/step", "train s"])
        rows = [[c[0], c[1], c[2], LABELS[e]] + [fmt_err(r["errors_at"][m]) for m in marks]
                + [fmt_ms(r["step_ms"]), f"{r['train_s']:.1f}"]
                for c in configs for e in nets if (r := cells.get((*c, e))) is not None]
        out["stream"] = table(header, rows)

    if "ssm" in nets and "fd_ssm" in nets:
        header = ["target", "d", "M", "SSM ms/step", "FD-SSM ms/step", "SSM / FD-SSM time",
                  "SSM err", "FD-SSM err"]
        rows = [[c[0], c[1], c[2], fmt_ms(a["step_ms"]), fmt_ms(b["step_ms"]),
                 f"{a['step_ms'] / b['step_ms']:.2f}", fmt_err(a["error"]), fmt_err(b["error"])]
                for c in configs
                if (a := cells.get((*c, "ssm"))) and (b := cells.get((*c, "fd_ssm")))]
        out["fd_vs_ssm"] = table(header, rows)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Accuracy and wall time of the score estimators in implicitvi.estimators.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (d=3; M=100; 50 steps; 32-32 net), mostly compilation")
    p.add_argument("--targets", type=str_list, default=list(TARGETS),
                   help="comma-separated subset of: gaussian,mixture")
    p.add_argument("--dims", type=int_list, default=[2, 10, 50, 100], help="dimensions d")
    p.add_argument("--particles", type=int_list, default=[100, 500],
                   help="M: particles for kernel estimators, batch size for networks")
    p.add_argument("--kernels", type=str_list, default=list(KERNEL_NAMES),
                   help="comma-separated subset of: stein,ssge (empty string for none)")
    p.add_argument("--objectives", type=str_list, default=list(NETWORK_OBJECTIVES),
                   help="comma-separated ScoreNet objectives (empty string for none)")
    p.add_argument("--reps", type=int, default=5,
                   help="independent particle sets per kernel-estimator cell")
    p.add_argument("--steps", type=int, default=2000, help="T: streaming update steps per network")
    p.add_argument("--fixed-batch", action="store_true",
                   help="instead of the stream, fit networks on one fixed set of M samples "
                        "(ScoreNet.fit, --steps steps, default held-out early stopping)")
    p.add_argument("--hidden", type=int_list, default=[256, 256],
                   help="hidden widths of the score network")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the network")
    p.add_argument("--sigma", type=float, default=0.1, help="DSM noise level")
    p.add_argument("--eps", type=float, default=1e-2, help="FD-SSM finite-difference step")
    p.add_argument("--eval-samples", type=int, default=2000,
                   help="fresh samples on which networks are evaluated")
    p.add_argument("--time-reps", type=int, default=30, help="timed calls per cell (median)")
    p.add_argument("--seed", type=int, default=0, help="seed of targets, samples and networks")
    p.add_argument("--json", default=None,
                   help="results file (default benchmarks/results/score_estimation.json, "
                        "or score_estimation_fixed.json with --fixed-batch)")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.particles = [3], [100]
        args.reps, args.steps, args.hidden = 2, 50, [32, 32]
        args.eval_samples, args.time_reps = 500, 3
    for values, allowed in ((args.targets, TARGETS), (args.kernels, KERNEL_NAMES),
                            (args.objectives, NETWORK_OBJECTIVES)):
        for v in values:
            if v not in allowed:
                p.error(f"unknown choice {v!r}; choose from {list(allowed)}")
    return args


def main(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    root = jax.random.PRNGKey(args.seed)
    results = []
    for t_idx, t_name in enumerate(args.targets):
        for dim in args.dims:
            cell_key = jax.random.fold_in(jax.random.fold_in(root, t_idx), dim)
            k_target, k_eval, k_run = jax.random.split(cell_key, 3)
            target = TARGETS[t_name](k_target, dim)
            eval_x = target.sample(k_eval, args.eval_samples)
            eval_s = target.score(eval_x)
            for num in args.particles:
                run_key = jax.random.fold_in(k_run, num)
                for name in args.kernels:
                    results.append(bench_kernel(name, target, num, jax.random.fold_in(run_key, 1),
                                                args.reps, args.time_reps))
                rows, calls = {}, {}
                for obj in args.objectives:
                    rows[obj], calls[obj] = bench_network(
                        obj, target, num, jax.random.fold_in(run_key, 2), eval_x, eval_s, args)
                for obj, seconds in interleaved_times(calls, args.time_reps).items():
                    rows[obj]["step_ms"] = 1e3 * seconds
                    results.append(rows[obj])
                print(f"{t_name} d={dim} M={num}: " + ", ".join(
                    f"{LABELS[r['estimator']]} {fmt_err(r['error'])}"
                    for r in results if (r["target"], r["dim"], r["particles"]) == (t_name, dim, num)),
                    flush=True)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    out = {"settings": settings, "seconds": time.perf_counter() - start, "rows": results,
           "tables": tables(results, args)}
    name = "score_estimation_fixed" if args.fixed_batch else "score_estimation"
    print(f"wrote {write_json(name, out, args.json)}")
    return out


if __name__ == "__main__":
    main(parse_args())
