r"""Hyvärinen's Gaussian example: score-matching estimators of a Gaussian's mean and precision.

For the unnormalized model :math:`E(x) = \tfrac12 (x - m)^\top P (x - m)` the score
:math:`-P(x - m) = -Px + b` (with :math:`b = Pm`) is linear in :math:`(P, b)`, so Hyvärinen's
objective :math:`J = \tfrac1n\sum_i \tfrac12\|{-P x_i + b}\|^2 - \operatorname{tr} P` is a
quadratic in :math:`(P, b)` and its minimizer solves a linear system. Hyvärinen (2005, §3)
shows that it is the sample mean :math:`\bar x` and the inverse of the (biased, 1/n) sample
covariance :math:`S`. This script

1. computes the minimizer of the exact objective by one Newton step on the parameters
   :math:`\theta = (\text{upper triangle of } P, b)` (Hessian and gradient of ``J`` by autodiff;
   exact because ``J`` is quadratic) and compares it with :math:`\bar x` and :math:`S^{-1}`
   computed by NumPy;
2. fits the same model with :func:`implicitvi.score_model.fit_score_model` by exact SM, SSM,
   SSM-VR, FD-SSM and DSM on one fixed data set (full batch: the only randomness is the
   projections or the noise) for an increasing number of steps, and reports the relative error
   :math:`\|\hat P - P^*\|_F / \|P^*\|_F` and :math:`\|\hat m - m^*\|` to the closed form
   :math:`(P^*, m^*) = (S^{-1}, \bar x)`. DSM's own minimizer is :math:`(S + \sigma^2 I)^{-1}`
   (the score of the data smoothed by the noise), so it stops at that bias;
3. repeats the fits for an increasing number of samples ``n`` and reports the error to the
   true :math:`(\Sigma^{-1}, \mu)`, beside the closed form's own error.

Data: :math:`\mathcal{N}(\mu, \Sigma)` in ``--dim`` dimensions, :math:`\Sigma = R\,
\mathrm{diag}(\lambda)R^\top` with ``λ`` log-spaced in ``[0.2, 1]``, ``R`` a random rotation,
:math:`\mu \sim \mathcal{N}(0, I)`. Optimizer: Adam, learning rate ``--lr`` decayed
exponentially to ``--lr`` × 1e-3 over the steps of each fit; model initialized at
:math:`P = I, m = 0`. Float64.

    python benchmarks/gaussian_score_matching.py --figure gaussian_sm.png   # → results/gaussian_score_matching.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import optax
from common import int_list, markdown_table, table, write_json

from implicitvi.score_model import fit_score_model, score_matching_loss

# (label, objective, options); DSM at two noise levels shows its bias-variance trade-off.
METHODS = (
    ("exact SM", "exact", {}),
    ("SSM", "ssm", {}),
    ("SSM-VR", "ssm_vr", {}),
    ("FD-SSM", "fd_ssm", {}),
    ("DSM σ=0.1", "dsm", {"sigma": 0.1}),
    ("DSM σ=0.03", "dsm", {"sigma": 0.03}),
)


def quadratic_energy(params, x):
    """E(x) = ½ xᵀPx − bᵀx with P = sym(W), i.e. ½(x − m)ᵀP(x − m) + const for m = P⁻¹b."""
    p = 0.5 * (params["W"] + params["W"].T)
    return 0.5 * jnp.einsum("ni,ij,nj->n", x, p, x) - x @ params["b"]


def mean_and_precision(params):
    p = np.asarray(0.5 * (params["W"] + params["W"].T))
    return np.linalg.solve(p, np.asarray(params["b"])), p


def gaussian(key, dim):
    k_rot, k_mu = jax.random.split(key)
    rot, _ = np.linalg.qr(np.asarray(jax.random.normal(k_rot, (dim, dim))))
    eig = np.logspace(np.log10(0.2), 0.0, dim)
    return np.asarray(jax.random.normal(k_mu, (dim,))), (rot * eig) @ rot.T


def newton_minimizer(x):
    """Minimizer of the exact SM objective over (upper triangle of P, b), by one Newton step."""
    d = x.shape[1]
    rows, cols = np.triu_indices(d)

    def unpack(theta):
        upper = jnp.zeros((d, d)).at[rows, cols].set(theta[: rows.size])
        return {"W": upper + upper.T - jnp.diag(jnp.diag(upper)), "b": theta[rows.size :]}

    objective = lambda theta: score_matching_loss(quadratic_energy, unpack(theta), x)
    zero = jnp.zeros(rows.size + d)
    theta = -jnp.linalg.solve(jax.hessian(objective)(zero), jax.grad(objective)(zero))
    return mean_and_precision(unpack(theta))


def fit(key, x, objective, options, steps, lr):
    d = x.shape[1]
    schedule = optax.exponential_decay(lr, steps, 1e-3)
    params, _ = fit_score_model(
        key, quadratic_energy, {"W": jnp.eye(d), "b": jnp.zeros(d)}, x, objective=objective,
        optimizer=optax.adam(schedule), num_steps=steps, **options,
    )
    return mean_and_precision(params)


def errors(mean, precision, mean_ref, precision_ref):
    return (np.linalg.norm(precision - precision_ref) / np.linalg.norm(precision_ref),
            np.linalg.norm(mean - mean_ref))


def fmt(x):
    return f"{x:.1e}"


def main(args):
    start = time.perf_counter()
    key = jax.random.PRNGKey(args.seed)
    mu, sigma = gaussian(key, args.dim)
    true_precision = np.linalg.inv(sigma)
    chol = np.linalg.cholesky(sigma)
    draw = lambda n, i: mu + np.asarray(
        jax.random.normal(jax.random.fold_in(key, i), (n, args.dim))) @ chol.T

    # 1. Closed form against the sample mean and inverse sample covariance.
    closed = {}
    rows = []
    for i, n in enumerate(args.sizes):
        x = draw(n, i)
        mean_ref, precision_ref = x.mean(axis=0), np.linalg.inv(np.cov(x.T, bias=True))
        closed[n] = (x, *newton_minimizer(x))
        m_star, p_star = closed[n][1:]
        rows.append([str(n), fmt(np.max(np.abs(m_star - mean_ref))),
                     fmt(np.max(np.abs(p_star - precision_ref)) / np.max(np.abs(precision_ref)))])
    # (No "|" in the headers: they would split the markdown columns.)
    header = ["n", "largest error of m* (abs.)", "largest error of P* / largest entry of S⁻¹"]
    table_closed = table(header, rows)

    # 2. Convergence to the closed form against the number of steps, at n = args.n.
    x, m_star, p_star = closed[args.n]
    s = np.cov(x.T, bias=True)
    by_steps = {}
    for label, objective, options in METHODS:
        by_steps[label] = [errors(*fit(key, x, objective, options, t, args.lr), m_star, p_star)
                           for t in args.steps]
        trail = " ".join(f"{t}:{e[0]:.1e}" for t, e in zip(args.steps, by_steps[label]))
        print(f"{label:10s} {trail}", flush=True)
    floors = {
        label: errors(m_star, np.linalg.inv(s + options["sigma"] ** 2 * np.eye(args.dim)),
                      m_star, p_star)[0]
        for label, objective, options in METHODS if objective == "dsm"
    }
    rows = [[label] + [fmt(e[0]) for e in by_steps[label]]
            + [fmt(by_steps[label][-1][1]), fmt(floors[label]) if label in floors else ""]
            for label, _, _ in METHODS]
    header = (["method"] + [f"P err @ {t}" for t in args.steps]
              + [f"m err @ {args.steps[-1]}", "DSM bias floor"])
    table_steps = table(header, rows)

    # 3. Error to the truth against n, at the largest number of steps.
    steps = args.steps[-1]
    by_size = {"closed form": [errors(m, p, mu, true_precision) for _, m, p in closed.values()]}
    for label, objective, options in METHODS:
        by_size[label] = [
            errors(*fit(key, closed[n][0], objective, options, steps, args.lr), mu, true_precision)
            for n in args.sizes
        ]
    rows = [[label] + [f"{fmt(e[0])} / {fmt(e[1])}" for e in errs]
            for label, errs in by_size.items()]
    table_sizes = table(["estimator"] + [f"n = {n}" for n in args.sizes], rows)

    seconds = time.perf_counter() - start
    tables = {"closed_form": table_closed, "by_steps": table_steps, "by_size": table_sizes}
    for name, t in tables.items():
        print(f"\n{name}\n\n{markdown_table(**t)}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k != "json"}
    out = {"settings": settings, "seconds": seconds, "tables": tables}
    print(f"wrote {write_json('gaussian_score_matching', out, args.json)}")
    if args.figure is not None:
        plot(args, by_steps, by_size, floors)
        print(f"wrote {args.figure}")
    return out


def plot(args, by_steps, by_size, floors):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, errs in by_steps.items():
        line, = axes[0].plot(args.steps, [e[0] for e in errs], marker="o", label=label)
        if label in floors:
            axes[0].axhline(floors[label], color=line.get_color(), ls=":", lw=1)
    for label, errs in by_size.items():
        # The closed form goes on top: exact SM coincides with it.
        style = {"color": "k", "ls": "--", "zorder": 3} if label == "closed form" else {}
        axes[1].plot(args.sizes, [e[0] for e in errs], marker="o", label=label, **style)
    axes[0].set_xlabel("optimizer steps")
    axes[0].set_title(f"‖P̂ − P*‖ / ‖P*‖ to the closed form (n = {args.n}); DSM bias dotted",
                      fontsize=10)
    axes[1].set_xlabel("samples n")
    axes[1].set_title(f"‖P̂ − Σ⁻¹‖ / ‖Σ⁻¹‖ to the truth ({args.steps[-1]} steps)", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.figure, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=5)
    p.add_argument("--n", type=int, default=1000, help="samples of the convergence-in-steps table")
    p.add_argument("--sizes", type=int_list, default=[100, 1000, 10000], help="sample sizes n")
    p.add_argument("--steps", type=int_list, default=[100, 300, 1000, 3000, 10000],
                   help="steps of the fits (one fit per value)")
    p.add_argument("--lr", type=float, default=0.1, help="initial Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None,
                   help="results file (default benchmarks/results/gaussian_score_matching.json)")
    p.add_argument("--figure", type=Path, default=None, help="PNG path of the figure")
    args = p.parse_args(argv)
    if args.n not in args.sizes:
        p.error(f"--n ({args.n}) must be one of --sizes {args.sizes}")
    return args


if __name__ == "__main__":
    main(parse_args())
