r"""Statistical efficiency of score matching against maximum likelihood, in one dimension.

Koehler, Heckett & Risteski, *Statistical Efficiency of Score Matching: The View from
Isoperimetry* (ICLR 2023), relate the asymptotic variance of the score-matching (SM) estimator
to that of the maximum-likelihood estimator (MLE) through the isoperimetry of the model
distribution: when its Poincaré / log-Sobolev constant is small (e.g. a strongly log-concave
distribution) SM is within a factor polynomial in that constant of the MLE, and when the
distribution has a sparse cut — two modes with little mass between them — SM can be much less
efficient, for a family rich enough to move mass across the cut: the score sees such a parameter
only inside the cut, so its variance grows like the inverse mass of the cut, which is also how
the Poincaré constant grows (exponentially in the separation of the modes). This script
measures the variance ratio and compares it with the asymptotic theory.

Families and estimators are in ``sm_estimators.py``, the theory in ``sm_theory.py``.

Usage::

    python benchmarks/sm_efficiency.py                 # 2000 repetitions of n = 2000, 7 settings
    python benchmarks/sm_efficiency.py --quick         # smoke run, about 20 s
    python benchmarks/sm_efficiency.py --reps 500 --n 4000 --out efficiency.png
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy
from common import markdown_table, table, write_json
from sm_estimators import FAMILIES, GRID_SIZE, NEWTON_STEPS, Family, fit, verified
from sm_theory import asymptotic_variance, family_poincare_constant

SETTINGS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)


# --------------------------------------------------------------------------------------------
# Empirical study
# --------------------------------------------------------------------------------------------


class Row(NamedTuple):
    """One setting of one family: empirical and predicted variances, and :math:`C_P`."""

    family: str
    s: float
    theta: float
    var_mle: float  # n·Var over repetitions
    var_sm: float
    ratio: float
    ci: tuple[float, float]
    theory_mle: float
    theory_sm: float
    poincare: float
    failed_mle: int  # fits that are not a verified interior minimum
    failed_sm: int


def ratio_interval(key: jax.Array, mle: jax.Array, sm: jax.Array, num_boot: int,
                   level: float = 0.95) -> tuple[float, float]:
    r"""Percentile bootstrap interval of :math:`\mathrm{Var}(\hat\theta_{\rm SM}) /
    \mathrm{Var}(\hat\theta_{\rm MLE})`, resampling repetitions (both estimators on the same
    samples, so the pair is resampled together). ``mle``, ``sm``: shape ``(reps,)``."""
    idx = jax.random.randint(key, (num_boot, mle.shape[0]), 0, mle.shape[0])
    ratios = jnp.var(sm[idx], axis=1) / jnp.var(mle[idx], axis=1)
    q = jnp.quantile(ratios, jnp.array([(1 - level) / 2, (1 + level) / 2]))
    return float(q[0]), float(q[1])


def study(family: Family, s: float, key: jax.Array, reps: int, n: int, num_boot: int) -> Row:
    r"""Both estimators on ``reps`` samples of size ``n`` from :math:`p_{\theta^\star}`."""
    k_sample, k_boot = jax.random.split(key)
    x = family.sample(k_sample, s, (reps, n))
    mle, sm = fit(family, "mle", x, s), fit(family, "sm", x, s)
    var_mle = n * float(jnp.var(mle.theta, ddof=1))
    var_sm = n * float(jnp.var(sm.theta, ddof=1))
    return Row(
        family=family.name, s=s, theta=float(family.true_theta(s)),
        var_mle=var_mle, var_sm=var_sm, ratio=var_sm / var_mle,
        ci=ratio_interval(k_boot, mle.theta, sm.theta, num_boot),
        theory_mle=asymptotic_variance(family, "mle", s),
        theory_sm=asymptotic_variance(family, "sm", s),
        poincare=family_poincare_constant(family, s),
        failed_mle=int(jnp.sum(~verified(mle))), failed_sm=int(jnp.sum(~verified(sm))),
    )


def family_table(rows: list[Row]) -> dict:
    """One family's rows as a results table (see ``common.table``)."""
    header = ["s", "θ*", "n·Var MLE", "n·Var SM", "ratio SM/MLE [95% CI]", "1/I", "sandwich SM",
              "predicted ratio", "C_P", "not verified (MLE, SM)"]
    return table(header, [
        [f"{r.s:g}", f"{r.theta:g}", f"{r.var_mle:.4g}", f"{r.var_sm:.4g}",
         f"{r.ratio:.4g} [{r.ci[0]:.4g}, {r.ci[1]:.4g}]", f"{r.theory_mle:.4g}",
         f"{r.theory_sm:.4g}", f"{r.theory_sm / r.theory_mle:.4g}", f"{r.poincare:.4g}",
         f"{r.failed_mle}, {r.failed_sm}"] for r in rows], "r" * len(header))


def plot(rows: list[Row], path: str) -> None:
    """Ratio (empirical with CI, predicted) and :math:`C_P` against ``s``; ratio against
    :math:`C_P`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"mixture-mean": "C0", "mixture-weight": "C3", "logistic": "C2"}
    drawn = set()
    for name, color in colors.items():
        fam = [r for r in rows if r.family == name]
        if not fam:
            continue
        s = np.array([r.s for r in fam])
        emp = np.array([r.ratio for r in fam])
        err = np.abs(np.array([r.ci for r in fam]).T - emp)
        pred = np.array([r.theory_sm / r.theory_mle for r in fam])
        cp = np.array([r.poincare for r in fam])
        left.plot(s, pred, "-", color=color, label=f"{name}: sandwich ratio")
        left.errorbar(s, emp, yerr=err, fmt="o", color=color, ms=4, capsize=2,
                      label=f"{name}: empirical ratio (95% CI)")
        right.plot(cp, pred, "-", color=color, label=f"{name}: sandwich")
        right.errorbar(cp, emp, yerr=err, fmt="o", color=color, ms=4, capsize=2,
                       label=f"{name}: empirical")
        # The two mixtures share p_θ*, hence C_P: draw it once, in black.
        label = "mixtures" if name.startswith("mixture") else name
        if label not in drawn:
            drawn.add(label)
            left.plot(s, cp, "--", color="k" if label == "mixtures" else color, alpha=0.6,
                      label=f"{label}: $C_P$")
    cp_all = np.array([r.poincare for r in rows])
    span = np.array([cp_all.min(), cp_all.max()])
    right.plot(span, span, ":", color="grey", label="ratio = $C_P$")
    left.set(yscale="log", xlabel="setting s (modes at ±s; logistic: variance 1 + s²)",
             ylabel="n·Var(SM) / n·Var(MLE), and $C_P$",
             title="Efficiency of SM relative to MLE")
    right.set(xscale="log", yscale="log", xlabel="Poincaré constant $C_P$ of $p_{θ^*}$",
              ylabel="n·Var(SM) / n·Var(MLE)", title="Ratio against $C_P$")
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Statistical efficiency of score matching against maximum likelihood "
                    "(Koehler, Heckett & Risteski 2023) on 1-D families."
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 200 repetitions of n = 500, settings 1, 2, 3")
    p.add_argument("--reps", type=int, default=None, help="repetitions per setting; default 2000")
    p.add_argument("--n", type=int, default=None, help="sample size; default 2000")
    p.add_argument("--settings", type=float, nargs="+", default=None,
                   help=f"settings s; default {' '.join(f'{v:g}' for v in SETTINGS)}")
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples for the CI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="figure file (none by default)")
    p.add_argument("--json", default=None,
                   help="results file (default benchmarks/results/sm_efficiency.json)")
    args = p.parse_args(argv)
    defaults = {"reps": 200, "n": 500, "settings": [1.0, 2.0, 3.0]} if args.quick else {
        "reps": 2000, "n": 2000, "settings": list(SETTINGS)}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.reps < 2 or args.n < 2:
        p.error("--reps and --n must be at least 2")
    if min(args.settings) <= 0:
        p.error("settings must be positive")
    return args


def main(args: argparse.Namespace) -> list[Row]:
    start = time.perf_counter()
    root = jax.random.PRNGKey(args.seed)
    print(f"SM vs MLE efficiency: {args.reps} repetitions of n = {args.n}, settings "
          f"{', '.join(f'{v:g}' for v in args.settings)}, seed {args.seed}; grid {GRID_SIZE} "
          f"+ at most {NEWTON_STEPS} safeguarded Newton steps; {args.boot} bootstrap resamples.\n"
          f"JAX {jax.__version__} ({jax.default_backend()}), NumPy {np.__version__}, "
          f"SciPy {scipy.__version__}, Python {platform.python_version()}, float64.",
          flush=True)
    rows, tables = [], {}
    for i, name in enumerate(args.families):
        family = FAMILIES[name]
        fam_rows = []
        for j, s in enumerate(args.settings):
            key = jax.random.fold_in(jax.random.fold_in(root, i), j)
            fam_rows.append(study(family, s, key, args.reps, args.n, args.boot))
        tables[name] = family_table(fam_rows)
        print(f"\n{name}\n\n{markdown_table(**tables[name])}", flush=True)
        rows += fam_rows
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    out = {"settings": settings, "seconds": time.perf_counter() - start,
           "rows": [r._asdict() for r in rows], "tables": tables}
    print(f"wrote {write_json('sm_efficiency', out, args.json)}")
    if args.out:
        plot(rows, args.out)
        print(f"Figure: {args.out}.")
    return rows


if __name__ == "__main__":
    main(parse_args())
