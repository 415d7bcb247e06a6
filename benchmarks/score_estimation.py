r"""Score-estimation benchmark: accuracy and wall time of the estimators in ``implicitvi``.

Targets (true score in closed form):

* ``gaussian``: :math:`\mathcal{N}(\mu, \Sigma)` with
  :math:`\Sigma = R\,\mathrm{diag}(\lambda)R^\top`, ``λ`` log-spaced in ``[0.1, 1]``
  (condition number 10), ``R`` a random rotation and ``μ ~ N(0, I/d)``; score
  :math:`-\Sigma^{-1}(x - \mu)`.
* ``mixture``: :math:`\tfrac12\mathcal{N}(m, I) + \tfrac12\mathcal{N}(-m, I)` with
  :math:`m = 2u`, ``u`` a random unit vector (modes 4 standard deviations apart); score
  :math:`-x + \tanh(m^\top x)\, m`.

Metric: relative squared score error
:math:`\sum_i \|\hat s(x_i) - s(x_i)\|^2 / \sum_i \|s(x_i)\|^2`.

* Kernel estimators (Stein, SSGE) are fitted on ``M`` particles and evaluated in-sample on the
  same particles (``score(state)`` with ``queries=None``), mean over ``--reps`` independent sets.
  Time: one jitted ``update`` + ``score`` on ``M`` particles, after compilation, median of
  ``--time-reps`` calls.
* Score networks (``ScoreNet``) are trained on a stream, as inside variational inference:
  each of the ``--steps`` jitted ``update`` calls receives a fresh batch of ``M`` samples and
  takes one optimizer step (warm start). They are evaluated on ``--eval-samples`` fresh samples
  (held out: never trained on). Time: one jitted ``update`` on ``M`` samples (median of
  ``--time-reps`` calls, the objectives of one cell timed in turn so that they share the machine
  load) and the total wall time of the ``--steps`` streaming steps (drawing the batches
  included, compilation and evaluations excluded). ``--fixed-batch`` instead fits each network
  with ``ScoreNet.fit`` on one fixed set of ``M`` samples, for a comparison at matched data.

A cost-scaling check times the kernel estimators' ``update`` + ``score`` against ``M`` at fixed
``d`` and against ``d`` at fixed ``M``, to compare with their documented
:math:`O(M^2 d + M^3)` cost.

Usage::

    python benchmarks/score_estimation.py                      # full grid
    python benchmarks/score_estimation.py --quick              # smoke run, under a minute
    python benchmarks/score_estimation.py --out tables.md      # also write the markdown tables

On CPU, XLA spreads one operation over a thread pool, and the LAPACK routines behind the
kernel estimators' Cholesky and eigendecomposition run on OpenBLAS threads. On a machine whose
cores are busy with other work a call can then wait for a descheduled worker and take 10-70
times longer than its own cost (``OPENBLAS_NUM_THREADS=1`` alone removes the worst of it).
For reproducible timings there, run single-threaded::

    OPENBLAS_NUM_THREADS=1 \
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmarks/score_estimation.py
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:
    import implicitvi
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import implicitvi

from implicitvi import kernels, objectives
from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.nets import MLP

NETWORK_OBJECTIVES = ("ssm_vr", "ssm", "dsm", "fd_ssm")
KERNEL_NAMES = ("stein", "ssge")
LABELS = {
    "stein": "Stein",
    "ssge": "SSGE",
    "ssm_vr": "SSM-VR",
    "ssm": "SSM",
    "dsm": "DSM",
    "fd_ssm": "FD-SSM",
}


# --------------------------------------------------------------------------------------------
# Targets
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


def relative_error(estimate, truth) -> float:
    num = float(jnp.sum((estimate - truth) ** 2))
    den = float(jnp.sum(truth**2))
    return num / den


def median_time(fn, *args, reps: int) -> float:
    """Median wall time (seconds) of ``fn(*args)`` over ``reps`` calls, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------


def make_kernel_estimator(name: str, bandwidth: float | None = None):
    if name == "stein":
        return Stein(bandwidth=bandwidth, kernel="rbf")
    if name == "ssge":
        return SSGE(bandwidth=bandwidth, threshold=0.99)
    raise ValueError(name)


def update_and_score_fn(est):
    """Jitted ``update`` followed by in-sample ``score``; also returns SSGE's J (else -1)."""

    def fn(state, samples, key):
        state = est.update(state, samples, key)
        return est.score(state), getattr(state, "num_eigen", jnp.array(-1))

    return jax.jit(fn)


def bench_kernel(name: str, target: Target, num: int, key, reps: int, time_reps: int) -> dict:
    est = make_kernel_estimator(name)
    fn = update_and_score_fn(est)
    k_init, key = jax.random.split(key)
    sample = jax.jit(target.sample, static_argnums=1)
    state = est.init(k_init, sample(k_init, num))
    errors, num_eigen = [], []
    for r in range(reps):
        k_x, k_u = jax.random.split(jax.random.fold_in(key, r))
        x = sample(k_x, num)
        scores, j = fn(state, x, k_u)
        errors.append(relative_error(scores, target.score(x)))
        num_eigen.append(int(j))
    seconds = median_time(fn, state, x, k_u, reps=time_reps)
    return {
        "kind": "kernel",
        "estimator": name,
        "target": target.name,
        "dim": target.dim,
        "particles": num,
        "error": statistics.fmean(errors),
        "error_sd": statistics.stdev(errors) if len(errors) > 1 else 0.0,
        "errors": errors,
        "num_eigen": statistics.fmean(num_eigen) if name == "ssge" else None,
        "update_score_ms": 1e3 * seconds,
        "finite": bool(np.all(np.isfinite(errors))),
    }


def make_network(objective: str, args) -> ScoreNet:
    return ScoreNet(
        objective=objective,
        num_projections=1,
        hidden=tuple(args.hidden),
        optimizer=optax.adam(args.lr),
        steps_per_update=1,
        fit_steps=args.steps,
        sigma=args.sigma,
        eps=args.eps,
    )


def bench_network(objective: str, target: Target, num: int, key, eval_x, eval_s, args):
    """Train on the stream (or fit on one set with ``--fixed-batch``); return the result row
    and the ``(fn, args)`` of one update call.

    The per-step time is filled in by :func:`interleaved_times`, which times the networks of
    one cell in turn so that load from other processes affects all objectives alike.
    """
    est = make_network(objective, args)
    sample = jax.jit(target.sample, static_argnums=1)
    update = jax.jit(est.update)
    score = jax.jit(est.score)

    k_init, k_train = jax.random.split(key)
    state = est.init(k_init, sample(k_init, num))
    steps = args.steps
    # keys[t] = (key of batch t, key of update t), as host arrays: no dispatch to index them.
    keys = np.asarray(jax.random.split(k_train, 2 * steps)).reshape(steps, 2, -1)
    jax.block_until_ready(update(state, sample(keys[0, 0], num), keys[0, 1]))  # compile

    errors = {}
    if args.fixed_batch:
        # For comparison: the library's fit on one fixed set of M samples (``steps`` optimizer
        # steps with its default held-out early stopping) instead of the stream.
        batch = sample(keys[0, 0], num)
        fit = jax.jit(est.fit).lower(state, batch, keys[0, 1]).compile()
        t0 = time.perf_counter()
        state = jax.block_until_ready(fit(state, batch, keys[0, 1]))
        train_seconds = time.perf_counter() - t0
        errors[steps] = relative_error(score(state, eval_x), eval_s)
    else:
        checkpoints = sorted({max(1, steps // 4), max(1, steps // 2), steps})
        train_seconds = 0.0
        done = 0
        for stop in checkpoints:
            t0 = time.perf_counter()
            for t in range(done, stop):
                batch = sample(keys[t, 0], num)  # a fresh batch for every update
                state = update(state, batch, keys[t, 1])
            jax.block_until_ready(state)
            train_seconds += time.perf_counter() - t0
            done = stop
            errors[stop] = relative_error(score(state, eval_x), eval_s)

    # The call timed for the per-step cost: the bare jitted update on one batch of M samples.
    x = sample(jax.random.fold_in(k_train, steps), num)
    timed_call = (update, (state, x, keys[-1, 1]))
    final = errors[steps]
    # In-sample error on the last batch trained on (the fixed set with --fixed-batch).
    in_sample = relative_error(score(state, batch), target.score(batch))
    row = {
        "kind": "network",
        "estimator": objective,
        "target": target.name,
        "dim": target.dim,
        "particles": num,
        "steps": steps,
        "error": final,
        "errors_at": {str(k): v for k, v in errors.items()},
        "error_in_sample": in_sample,
        "fixed_batch": bool(args.fixed_batch),
        "final_loss": float(state.loss),
        "step_ms": None,
        "train_s": train_seconds,
        "finite": bool(np.isfinite(final)),
    }
    return row, timed_call


def interleaved_times(calls: dict, reps: int) -> dict:
    """Median seconds of each ``fn(*args)`` in ``calls``, timed in turn, ``reps`` rounds."""
    for fn, fn_args in calls.values():
        jax.block_until_ready(fn(*fn_args))
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, (fn, fn_args) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*fn_args))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def bench_energy(args, key) -> str:
    """Objective step cost when the score is the gradient of an energy, s = −∇E.

    For a score *network* (the tables above) ``vᵀ∇s v`` is one forward-mode product and FD-SSM
    saves nothing. For an energy model, SSM's ``vᵀ∇s v`` is a Hessian-vector product of E and
    its parameter gradient a third-order derivative, which FD-SSM replaces by two more gradient
    evaluations (Pang et al. 2020). Times one jitted ``value_and_grad`` in the parameters of E.
    """
    net = MLP(tuple(args.hidden))
    rows = []
    for dim in args.energy_dims:
        k_params, k_x, k_proj = jax.random.split(jax.random.fold_in(key, dim), 3)
        params = net.init(k_params, dim, 1)
        x = jax.random.normal(k_x, (args.energy_particles, dim))

        def make_step(objective):
            def loss(p, k):
                def score_fn(z):
                    return -jax.vmap(jax.grad(lambda v: net.apply(p, v)[0]))(z)

                return objective(score_fn, x, k)

            return jax.jit(jax.value_and_grad(loss))

        objs = {
            "SSM": objectives.sliced,
            "SSM-VR": objectives.sliced_vr,
            "FD-SSM": functools.partial(objectives.fd_sliced, eps=args.eps),
        }
        calls = {name: (make_step(fn), (params, k_proj)) for name, fn in objs.items()}
        times = interleaved_times(calls, args.time_reps)
        ssm_value = float(calls["SSM"][0](params, k_proj)[0])
        fd_value = float(calls["FD-SSM"][0](params, k_proj)[0])
        rows.append(
            [str(dim), str(args.energy_particles)]
            + [fmt_ms(1e3 * times[name]) for name in objs]
            + [f"{times['FD-SSM'] / times['SSM']:.2f}", f"{abs(fd_value - ssm_value) / abs(ssm_value):.1e}"]
        )
        log(f"energy d={dim} " + " ".join(f"{n}:{1e3 * t:.2f}ms" for n, t in times.items()))
    header = ["d", "M", "SSM ms", "SSM-VR ms", "FD-SSM ms", "FD-SSM / SSM", "objective rel. diff."]
    return markdown_table(header, rows)


def bench_scaling(args, key) -> list[dict]:
    """update+score time of the kernel estimators against M (fixed d) and against d (fixed M).

    Each estimator is timed with the default median-heuristic bandwidth and with a fixed
    bandwidth (the same value, passed as a number), and the median heuristic
    ``kernels.median_bandwidth`` is timed alone: the difference separates the bandwidth rule
    from the Gram-matrix and linear-algebra work.
    """
    rows = []
    grid = [(args.scaling_dim, m) for m in args.scaling_particles]
    grid += [(d, args.scaling_dim_particles) for d in args.scaling_dims]
    grid = list(dict.fromkeys(grid))  # a point shared by both sweeps is timed once
    median_bw = jax.jit(kernels.median_bandwidth)
    for dim, num in grid:
        x = jax.random.normal(jax.random.fold_in(key, dim * 100003 + num), (num, dim))
        h = float(median_bw(x))
        calls = {"median_ms": (median_bw, (x,))}
        for name in KERNEL_NAMES:
            for label, bandwidth in ((name, None), (f"{name}_fixed_h", h)):
                est = make_kernel_estimator(name, bandwidth)
                calls[label] = (update_and_score_fn(est), (est.init(key, x), x, key))
        row = {"dim": dim, "particles": num}
        row.update({k: 1e3 * v for k, v in interleaved_times(calls, args.scaling_reps).items()})
        rows.append(row)
        log(f"  scaling d={dim:5d} M={num:5d}: " + ", ".join(
            f"{k} {v:.2f} ms" for k, v in row.items() if k not in ("dim", "particles")))
    return rows


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def fmt_err(x: float) -> str:
    if not np.isfinite(x):
        return "nan"
    return f"{x:.3f}" if x >= 0.01 else f"{x:.2e}"


def fmt_ms(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def build_tables(results: list[dict], scaling: list[dict], args) -> str:
    cells = {}
    for r in results:
        cells[(r["target"], r["dim"], r["particles"], r["estimator"])] = r
    configs = sorted(
        {(r["target"], r["dim"], r["particles"]) for r in results},
        key=lambda c: (args.targets.index(c[0]), c[1], c[2]),
    )
    kernels = [k for k in KERNEL_NAMES if k in args.kernels]
    nets = [o for o in NETWORK_OBJECTIVES if o in args.objectives]
    out = []

    if configs:  # a scaling-only run has no accuracy or per-update tables
        # Accuracy.
        header = ["target", "d", "M"] + [LABELS[e] for e in kernels + nets]
        if "ssm_vr" in nets and kernels:
            header.append("SSM-VR / best kernel")
        rows = []
        for c in configs:
            row = [c[0], str(c[1]), str(c[2])]
            for e in kernels + nets:
                r = cells.get((*c, e))
                row.append("" if r is None else fmt_err(r["error"]))
            if "ssm_vr" in nets and kernels:
                best = min(cells[(*c, k)]["error"] for k in kernels if (*c, k) in cells)
                vr = cells.get((*c, "ssm_vr"))
                row.append("" if vr is None else f"{vr['error'] / best:.3f}")
            rows.append(row)
        out.append(
            "### Relative squared score error\n\n"
            "E‖ŝ − s‖² / E‖s‖². Kernel estimators: in-sample on the M particles they were "
            "fitted on, "
            f"mean of {args.reps} repetitions. Networks: after {args.steps} "
            + ("steps of `fit` on one fixed set of M samples" if args.fixed_batch else
               "streaming steps (fresh batch of M samples and one Adam step per update)")
            + f", on {args.eval_samples} fresh samples.\n\n" + markdown_table(header, rows)
        )

        # Wall time.
        header = ["target", "d", "M"]
        header += [f"{LABELS[e]} upd+score ms" for e in kernels]
        header += [f"{LABELS[e]} ms/step" for e in nets]
        rows = []
        for c in configs:
            row = [c[0], str(c[1]), str(c[2])]
            for e in kernels:
                r = cells.get((*c, e))
                row.append("" if r is None else fmt_ms(r["update_score_ms"]))
            for e in nets:
                r = cells.get((*c, e))
                row.append("" if r is None else fmt_ms(r["step_ms"]))
            rows.append(row)
        out.append(
            "### Wall time per update\n\n"
            "Kernel estimators: one jitted `update` + `score` on M particles. Networks: one jitted "
            f"`update` (one optimizer step) on M samples. Median of {args.time_reps} calls after "
            "compilation, milliseconds; the networks of one row are timed in turn (interleaved), "
            "so that they share the same machine load.\n\n" + markdown_table(header, rows)
        )

    # Network detail: convergence along the stream and total training time.
    if nets:
        header = ["target", "d", "M", "objective"]
        marks = None
        rows = []
        for c in configs:
            for e in nets:
                r = cells.get((*c, e))
                if r is None:
                    continue
                if marks is None:
                    marks = list(r["errors_at"])
                    header += [f"err @ {m}" for m in marks] + ["ms/step", "train s"]
                row = [c[0], str(c[1]), str(c[2]), LABELS[e]]
                row += [fmt_err(r["errors_at"][m]) for m in marks]
                row += [fmt_ms(r["step_ms"]), f"{r['train_s']:.1f}"]
                rows.append(row)
        out.append(
            "### Score networks along the stream\n\n"
            "Error on fresh samples after the given number of streaming steps; `train s` is the "
            f"wall time of all {args.steps} steps (batch drawing included, compilation and "
            "evaluation excluded).\n\n" + markdown_table(header, rows)
        )

    # FD-SSM vs SSM side by side.
    if "ssm" in nets and "fd_ssm" in nets:
        header = ["target", "d", "M", "SSM ms/step", "FD-SSM ms/step", "SSM / FD-SSM time",
                  "SSM err", "FD-SSM err"]
        rows = []
        for c in configs:
            a, b = cells.get((*c, "ssm")), cells.get((*c, "fd_ssm"))
            if a is None or b is None:
                continue
            rows.append([c[0], str(c[1]), str(c[2]), fmt_ms(a["step_ms"]), fmt_ms(b["step_ms"]),
                         f"{a['step_ms'] / b['step_ms']:.2f}", fmt_err(a["error"]),
                         fmt_err(b["error"])])
        out.append(
            "### FD-SSM vs SSM\n\n"
            "Per-step times from the same run, timed in turn on the same machine load (as in "
            "the wall-time table); errors as in the accuracy table. Both use the same "
            "projection keys.\n\n" + markdown_table(header, rows)
        )

    # Cost scaling.
    if scaling:
        columns = [("stein", "Stein"), ("stein_fixed_h", "Stein, fixed h"), ("ssge", "SSGE"),
                   ("ssge_fixed_h", "SSGE, fixed h"), ("median_ms", "median heuristic")]

        def scaling_table(rows_in, axis):
            header = ["d", "M"]
            for _, label in columns:
                header += [f"{label} ms", "slope"]
            rows_in = sorted(rows_in, key=lambda r: r[axis])
            rows, prev = [], None
            for r in rows_in:
                row = [str(r["dim"]), str(r["particles"])]
                for col, _ in columns:
                    if prev is None:
                        slope = "–"
                    else:
                        ratio = math.log(r[axis] / prev[axis])
                        slope = f"{math.log(r[col] / prev[col]) / ratio:.2f}"
                    row += [fmt_ms(r[col]), slope]
                rows.append(row)
                prev = r
            return markdown_table(header, rows)

        by_m = [r for r in scaling if r["dim"] == args.scaling_dim
                and r["particles"] in args.scaling_particles]
        by_d = [r for r in scaling if r["particles"] == args.scaling_dim_particles
                and r["dim"] in args.scaling_dims]
        text = (
            "### Kernel estimators: cost of update + score\n\n"
            "Standard-normal particles; median of "
            f"{args.scaling_reps} jitted calls (the five variants of a row timed in turn), "
            "milliseconds. Each estimator with its default "
            "median-heuristic bandwidth and with the same bandwidth fixed (passed as a number); "
            "`median heuristic` is `kernels.median_bandwidth` alone. `slope` is the local "
            "log-log slope (d log t / d log M, or d log t / d log d) from the previous row.\n\n"
        )
        if by_m:
            text += f"Against M at d = {args.scaling_dim}:\n\n" + scaling_table(by_m, "particles")
        if by_d:
            text += (f"\n\nAgainst d at M = {args.scaling_dim_particles}:\n\n"
                     + scaling_table(by_d, "dim"))
        out.append(text)

    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def str_list(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Accuracy and wall time of the score estimators in implicitvi.estimators."
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke run (d=3; M=100; 50 steps; 32-32 net); under a minute, "
                        "mostly compilation")
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
    p.add_argument("--steps", type=int, default=2000,
                   help="T: streaming update steps per network")
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
    p.add_argument("--scaling-dim", type=int, default=50, help="d of the cost-vs-M check")
    p.add_argument("--scaling-particles", type=int_list, default=[100, 250, 500, 1000, 2000],
                   help="M values of the cost-vs-M check")
    p.add_argument("--scaling-dim-particles", type=int, default=500,
                   help="M of the cost-vs-d check")
    p.add_argument("--scaling-dims", type=int_list, default=[10, 100, 1000],
                   help="d values of the cost-vs-d check")
    p.add_argument("--scaling-reps", type=int, default=9, help="timed calls per point (median)")
    p.add_argument("--no-scaling", action="store_true", help="skip the cost-scaling check")
    p.add_argument("--energy-dims", type=int_list, default=[10, 50, 100],
                   help="d of the energy-model objective-cost check (empty to skip)")
    p.add_argument("--energy-particles", type=int, default=500,
                   help="samples per objective evaluation in the energy-model check")
    p.add_argument("--seed", type=int, default=0, help="seed of targets, samples and networks")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown tables here")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.particles = [3], [100]
        args.reps, args.steps, args.hidden = 2, 50, [32, 32]
        args.eval_samples, args.time_reps = 500, 3
        args.scaling_particles, args.scaling_dims = [100, 200], [10, 20]
        args.scaling_dim, args.scaling_dim_particles, args.scaling_reps = 10, 100, 3
    for t in args.targets:
        if t not in TARGETS:
            p.error(f"unknown target {t!r}; choose from {list(TARGETS)}")
    for k in args.kernels:
        if k not in KERNEL_NAMES:
            p.error(f"unknown kernel estimator {k!r}; choose from {list(KERNEL_NAMES)}")
    for o in args.objectives:
        if o not in NETWORK_OBJECTIVES:
            p.error(f"unknown objective {o!r}; choose from {list(NETWORK_OBJECTIVES)}")
    return args


def environment() -> str:
    flags = os.environ.get("XLA_FLAGS")
    blas = os.environ.get("OPENBLAS_NUM_THREADS")
    return (
        f"JAX {jax.__version__} on {jax.default_backend()} "
        f"({jax.device_count()} device(s); {platform.machine()}, {os.cpu_count()} logical CPUs), "
        f"Python {platform.python_version()}, implicitvi {implicitvi.__version__}"
        + (f", XLA_FLAGS={flags!r}" if flags else "")
        + (f", OPENBLAS_NUM_THREADS={blas}" if blas else "")
    )


def main(args: argparse.Namespace) -> str:
    start = time.perf_counter()
    root = jax.random.PRNGKey(args.seed)
    log(environment())
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
                    r = bench_kernel(name, target, num, jax.random.fold_in(run_key, 1),
                                     args.reps, args.time_reps)
                    results.append(r)
                    log(f"{t_name:8s} d={dim:3d} M={num:4d} {LABELS[name]:7s} "
                        f"err={fmt_err(r['error'])} ({r['update_score_ms']:.2f} ms)")
                rows, calls = {}, {}
                for obj in args.objectives:
                    rows[obj], calls[obj] = bench_network(
                        obj, target, num, jax.random.fold_in(run_key, 2), eval_x, eval_s, args
                    )
                for obj, seconds in interleaved_times(calls, args.time_reps).items():
                    r = rows[obj]
                    r["step_ms"] = 1e3 * seconds
                    results.append(r)
                    trail = " ".join(f"{k}:{fmt_err(v)}" for k, v in r["errors_at"].items())
                    log(f"{t_name:8s} d={dim:3d} M={num:4d} {LABELS[obj]:7s} err {trail} "
                        f"in-sample {fmt_err(r['error_in_sample'])} "
                        f"({r['step_ms']:.2f} ms/step, {r['train_s']:.1f} s)")
    scaling = [] if args.no_scaling else bench_scaling(args, jax.random.fold_in(root, 99))
    energy = bench_energy(args, jax.random.fold_in(root, 98)) if args.energy_dims else ""
    elapsed = time.perf_counter() - start

    tables = build_tables(results, scaling, args)
    if energy:
        tables += "\n### Energy-model objective cost (s = −∇E)\n\n" + energy + "\n"
    settings = (
        f"Settings: steps T={args.steps}"
        f"{' of fit on one fixed set (--fixed-batch)' if args.fixed_batch else ' (streaming)'}, "
        f"network hidden={tuple(args.hidden)} (softplus MLP), "
        f"Adam lr={args.lr:g}, one projection per sample (SSM, SSM-VR, FD-SSM, Gaussian), "
        f"DSM sigma={args.sigma:g}, FD-SSM eps={args.eps:g}, Stein eta=0.01 (RBF), "
        f"SSGE threshold=0.99 (RBF), median-heuristic bandwidths, float32, seed {args.seed}.\n"
        f"{environment()}. Total benchmark time: {elapsed:.0f} s.\n"
    )
    report = settings + "\n" + tables
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"args": {k: (str(v) if isinstance(v, Path) else v)
                            for k, v in vars(args).items()},
                   "environment": environment(), "seconds": elapsed,
                   "results": results, "scaling": scaling}
        args.json.write_text(json.dumps(payload, indent=1))
    return report


if __name__ == "__main__":
    main(parse_args())
