r"""Cost benchmark: how the kernel estimators' time grows with ``M`` and ``d``, and what the
sliced objectives cost when the score is the gradient of an energy.

* **Scaling.** One jitted ``update`` + in-sample ``score`` of ``Stein`` and ``SSGE``
  (:func:`models.kernel_estimator`) on standard-normal particles, against ``M`` at fixed ``d``
  and against ``d`` at fixed ``M``, to compare with their documented
  :math:`O(M^2 d + M^3)` cost. Each estimator is timed with the default median-heuristic
  bandwidth and with the same bandwidth passed as a number, and ``kernels.median_bandwidth`` is
  timed alone: the difference separates the bandwidth rule from the Gram-matrix and
  linear-algebra work. Median of ``--scaling-reps`` calls, the five variants of a point timed in
  turn; ``slope`` is the local log-log slope from the previous row.
* **Energy objectives.** For a score *network* :math:`v^\top\nabla s\,v` is one forward-mode
  product and FD-SSM saves nothing. For an energy model, :math:`s = -\nabla E`, SSM's
  :math:`v^\top\nabla s\,v` is a Hessian-vector product of ``E`` and its parameter gradient a
  third-order derivative, which FD-SSM replaces by two more gradient evaluations (Pang et al.
  2020). Times one jitted ``value_and_grad`` in the parameters of an MLP energy.

Usage::

    python benchmarks/kernel_cost.py           # → results/kernel_cost.json
    python benchmarks/kernel_cost.py --quick   # smoke run

Run single-threaded on a shared machine (see ``score_estimation.py``).
"""

from __future__ import annotations

import argparse
import functools
import math

import jax
from common import fmt_ms, int_list, interleaved_times, table, write_json
from models import KERNEL_NAMES, kernel_estimator, update_and_score

from implicitvi import kernels, objectives
from implicitvi.nets import MLP

COLUMNS = (("stein", "Stein"), ("stein_fixed_h", "Stein, fixed h"), ("ssge", "SSGE"),
           ("ssge_fixed_h", "SSGE, fixed h"), ("median_ms", "median heuristic"))


def estimator_call(name: str, key, x, bandwidth=None) -> tuple:
    """``(fn, args)`` of one jitted ``update`` + ``score`` of the estimator ``name`` on ``x``."""
    est = kernel_estimator(name, bandwidth)
    return update_and_score(est), (key, est.init(key, x), x)


def bench_scaling(args, key) -> list[dict]:
    """Milliseconds of the five variants at every ``(d, M)`` of the two sweeps."""
    grid = [(args.scaling_dim, m) for m in args.scaling_particles]
    grid += [(d, args.scaling_dim_particles) for d in args.scaling_dims]
    median_bw = jax.jit(kernels.median_bandwidth)
    rows = []
    for dim, num in dict.fromkeys(grid):  # a point shared by both sweeps is timed once
        x = jax.random.normal(jax.random.fold_in(key, dim * 100003 + num), (num, dim))
        h = float(median_bw(x))
        calls = {"median_ms": (median_bw, (x,))}
        for name in KERNEL_NAMES:
            for label, bandwidth in ((name, None), (f"{name}_fixed_h", h)):
                calls[label] = estimator_call(name, key, x, bandwidth)
        row = {"dim": dim, "particles": num}
        row.update({k: 1e3 * v for k, v in interleaved_times(calls, args.scaling_reps).items()})
        print(f"scaling d={dim} M={num}: " + ", ".join(
            f"{k} {v:.2f} ms" for k, v in row.items() if k not in ("dim", "particles")), flush=True)
        rows.append(row)
    return rows


def scaling_table(rows: list[dict], axis: str) -> dict:
    header = ["d", "M"] + [h for _, label in COLUMNS for h in (f"{label} ms", "slope")]
    out, prev = [], None
    for r in sorted(rows, key=lambda r: r[axis]):
        row = [r["dim"], r["particles"]]
        for col, _ in COLUMNS:
            slope = "–" if prev is None else (
                f"{math.log(r[col] / prev[col]) / math.log(r[axis] / prev[axis]):.2f}")
            row += [fmt_ms(r[col]), slope]
        out.append(row)
        prev = r
    return table(header, out)


def bench_energy(args, key) -> list[dict]:
    """Milliseconds of one ``value_and_grad`` of SSM, SSM-VR and FD-SSM for ``s = −∇E``."""
    net = MLP(tuple(args.hidden))
    objs = {"SSM": objectives.sliced, "SSM-VR": objectives.sliced_vr,
            "FD-SSM": functools.partial(objectives.fd_sliced, eps=args.eps)}
    rows = []
    for dim in args.energy_dims:
        k_params, k_x, k_proj = jax.random.split(jax.random.fold_in(key, dim), 3)
        params = net.init(k_params, dim, 1)
        x = jax.random.normal(k_x, (args.energy_particles, dim))

        def make_step(objective, x=x):
            def loss(p, k):
                def score_fn(z):
                    return -jax.vmap(jax.grad(lambda v: net.apply(p, v)[0]))(z)

                return objective(score_fn, x, k)

            return jax.jit(jax.value_and_grad(loss))

        calls = {name: (make_step(fn), (params, k_proj)) for name, fn in objs.items()}
        times = interleaved_times(calls, args.time_reps)
        ssm, fd = (float(calls[n][0](params, k_proj)[0]) for n in ("SSM", "FD-SSM"))
        rows.append({"dim": dim, "particles": args.energy_particles,
                     **{f"{n}_ms": 1e3 * t for n, t in times.items()},
                     "objective_rel_diff": abs(fd - ssm) / abs(ssm)})
        print(f"energy d={dim}: " + ", ".join(f"{n} {1e3 * t:.2f} ms" for n, t in times.items()),
              flush=True)
    return rows


def energy_table(rows: list[dict]) -> dict:
    header = ["d", "M", "SSM ms", "SSM-VR ms", "FD-SSM ms", "FD-SSM / SSM", "objective rel. diff."]
    return table(header, [
        [r["dim"], r["particles"], fmt_ms(r["SSM_ms"]), fmt_ms(r["SSM-VR_ms"]),
         fmt_ms(r["FD-SSM_ms"]), f"{r['FD-SSM_ms'] / r['SSM_ms']:.2f}",
         f"{r['objective_rel_diff']:.1e}"] for r in rows])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Cost of the kernel estimators and of the sliced "
                                            "objectives on an energy model.")
    p.add_argument("--quick", action="store_true", help="smoke run on small sizes")
    p.add_argument("--scaling-dim", type=int, default=50, help="d of the cost-vs-M check")
    p.add_argument("--scaling-particles", type=int_list, default=[100, 250, 500, 1000, 2000],
                   help="M values of the cost-vs-M check")
    p.add_argument("--scaling-dim-particles", type=int, default=500,
                   help="M of the cost-vs-d check")
    p.add_argument("--scaling-dims", type=int_list, default=[10, 100, 1000],
                   help="d values of the cost-vs-d check")
    p.add_argument("--scaling-reps", type=int, default=9, help="timed calls per point (median)")
    p.add_argument("--energy-dims", type=int_list, default=[10, 50, 100],
                   help="d of the energy-model objective-cost check (empty to skip)")
    p.add_argument("--energy-particles", type=int, default=500,
                   help="samples per objective evaluation in the energy-model check")
    p.add_argument("--hidden", type=int_list, default=[256, 256], help="energy MLP widths")
    p.add_argument("--eps", type=float, default=1e-2, help="FD-SSM finite-difference step")
    p.add_argument("--time-reps", type=int, default=30, help="timed energy calls (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="results file (default results/kernel_cost.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.scaling_particles, args.scaling_dims = [100, 200], [10, 20]
        args.scaling_dim, args.scaling_dim_particles, args.scaling_reps = 10, 100, 3
        args.energy_dims, args.energy_particles, args.hidden, args.time_reps = [5], 50, [32], 3
    return args


def main(args: argparse.Namespace) -> dict:
    # The keys of the scaling and energy checks as they were inside score_estimation.py.
    root = jax.random.PRNGKey(args.seed)
    scaling = bench_scaling(args, jax.random.fold_in(root, 99))
    energy = bench_energy(args, jax.random.fold_in(root, 98)) if args.energy_dims else []
    by_m = [r for r in scaling if r["dim"] == args.scaling_dim
            and r["particles"] in args.scaling_particles]
    by_d = [r for r in scaling if r["particles"] == args.scaling_dim_particles
            and r["dim"] in args.scaling_dims]
    tables = {"against_m": scaling_table(by_m, "particles"), "against_d": scaling_table(by_d, "dim")}
    if energy:
        tables["energy"] = energy_table(energy)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    out = {"settings": settings, "scaling": scaling, "energy": energy, "tables": tables}
    print(f"wrote {write_json('kernel_cost', out, args.json)}")
    return out


if __name__ == "__main__":
    main(parse_args())
