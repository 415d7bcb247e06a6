r"""Density estimation by score matching: exact SM, SSM, SSM-VR, DSM and FD-SSM against dimension.

Song, Garg, Shi & Ermon (UAI 2019, §5) train deep density models by sliced score matching and
report that SSM's test scores come close to exact score matching's while its cost per step
does not grow with the dimension ``d``, whereas exact SM needs ``d`` Jacobian columns. This
script repeats that comparison on data whose density is known.

* **Data.** :math:`\mathcal{N}(\mu, \Sigma)` in ``d`` dimensions with a random non-diagonal
  covariance :math:`\Sigma = R\,\mathrm{diag}(\lambda)R^\top` (``λ`` log-spaced in
  ``[0.1, 1]``, ``R`` a random rotation) and :math:`\mu \sim \mathcal{N}(0, I)`;
  ``--train`` training and ``--test`` held-out points.
* **Model.** A flow, as the NICE models of the SSM paper (Dinh, Krueger & Bengio 2015) with a
  linear layer in front so that the family contains the truth:
  :math:`f(x) = e^{s} \odot g_L \circ \dots \circ g_1(W(x - c))`, where each :math:`g_l` is an
  additive coupling (the second half of the coordinates shifted by a softplus MLP of the first,
  hidden ``--hidden``, halves swapped after each layer; ``--layers`` of them). The energy
  :math:`E(x) = \tfrac12\|f(x)\|^2` is fitted as an unnormalized model (score
  :math:`-\nabla_x E` by autodiff, objectives through
  :func:`implicitvi.score_model.fit_score_model`); the flow's normalizer is known, so the test
  log-likelihood :math:`-E(x) + \log|\det W| + \sum_i s_i - \tfrac d2\log 2\pi` is exact. The
  model starts at :math:`\mathcal{N}(0, I)` (``W = I``, ``c``, ``s`` and the coupling output
  layers at zero).
* **Training.** Every objective gets the same steps at a given ``d`` (``--steps``, one value
  per dimension: fewer at large ``d``, where exact SM is slow), the same minibatches of
  ``--batch`` points, Adam with a learning rate decayed exponentially from ``--lr`` to
  ``--lr`` / 100 over the steps, one Gaussian projection per sample (SSM, SSM-VR, FD-SSM),
  DSM ``σ = --sigma``, FD-SSM ``ε = --eps``, and the same seed.
* **Metrics,** all on the held-out points, for every method: the exact (Hyvärinen) score-matching
  loss; the Fisher divergence :math:`\tfrac12 \mathbb{E}\|s_\theta(x) - \nabla\log p(x)\|^2` to
  the true density; the negative log-likelihood in nats (mean over points). The true density
  and the untrained model are given as reference rows.
* **Time per step:** one jitted ``value_and_grad`` of each objective on the same batch and key,
  the methods timed in turn after compilation, median of ``--time-reps`` rounds (the optimizer
  update, identical for all, left out); ``train s``: the whole fit, compilation included.

Usage::

    python benchmarks/ssm_density.py                      # d = 10, 50, 100, 300 → results/ssm_density.json
    python benchmarks/ssm_density.py --quick              # smoke run
    python benchmarks/ssm_density.py --figure ssm_density.png
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import (
    int_list,
    interleaved_times,
    markdown_table,
    str_list,
    table,
    write_json,
)

from implicitvi.nets import MLP
from implicitvi.score_model import fit_score_model, model_score, score_matching_loss

METHODS = ("exact", "ssm", "ssm_vr", "dsm", "fd_ssm")
LABELS = {"exact": "exact SM", "ssm": "SSM", "ssm_vr": "SSM-VR", "dsm": "DSM", "fd_ssm": "FD-SSM"}


def gaussian_data(key, dim, num_train, num_test):
    """Train and test points of N(μ, Σ), with the precision Σ⁻¹ and μ."""
    k_rot, k_mu, k_train, k_test = jax.random.split(key, 4)
    rot, _ = jnp.linalg.qr(jax.random.normal(k_rot, (dim, dim)))
    eig = jnp.logspace(-1.0, 0.0, dim)
    mu = jax.random.normal(k_mu, (dim,))
    scale = rot * jnp.sqrt(eig)  # Σ^{1/2} = R diag(√λ)
    precision = (rot / eig) @ rot.T
    draw = lambda k, n: mu + jax.random.normal(k, (n, dim)) @ scale.T
    log_det_sigma = float(jnp.sum(jnp.log(eig)))
    return draw(k_train, num_train), draw(k_test, num_test), mu, precision, log_det_sigma


def flow(dim, hidden, layers):
    """``(init, energy, nll)`` of the flow model: a linear layer, NICE couplings, a diagonal scale.

    ``energy(params, x)`` is ½‖f(x)‖² per row (what score matching sees; the normalizer of the
    flow does not depend on ``x``); ``nll(params, x)`` is the mean of −log q(x) over rows,
    with log q(x) = −½‖f(x)‖² + log|det W| + Σᵢ sᵢ − (d/2) log 2π.
    """
    half = dim // 2
    net = MLP(hidden, zero_output=True)

    def init(key):
        keys = jax.random.split(key, layers)
        return {
            "shift": jnp.zeros(dim),
            "linear": jnp.eye(dim),
            "couplings": [net.init(k, half, dim - half) for k in keys],
            "log_scale": jnp.zeros(dim),
        }

    def energy(params, x):
        x = (x - params["shift"]) @ params["linear"].T
        for coupling in params["couplings"]:
            a, b = x[:, :half], x[:, half:]
            # Shift the second half by a function of the first, then swap (both volume-preserving).
            x = jnp.concatenate([b + net.apply(coupling, a), a], axis=1)
        return 0.5 * jnp.sum((x * jnp.exp(params["log_scale"])) ** 2, axis=1)

    def nll(params, x):
        log_det = jnp.linalg.slogdet(params["linear"])[1] + jnp.sum(params["log_scale"])
        return jnp.mean(energy(params, x)) - log_det + 0.5 * dim * math.log(2 * math.pi)

    return init, energy, nll


def options(method, args):
    """The objective's own keyword arguments."""
    return {"dsm": {"sigma": args.sigma}, "fd_ssm": {"eps": args.eps}}.get(method, {})


def chunked_mean(fn, x, chunk):
    """Mean over rows of ``x`` of a per-batch mean ``fn``, evaluated ``chunk`` rows at a time."""
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk]
        total += float(fn(part)) * part.shape[0]
    return total / x.shape[0]


def evaluator(model, mu, precision, chunk):
    """``evaluate(params, test)``: test exact-SM loss, Fisher divergence to the truth, NLL (nats).

    The jitted pieces are built once per model, so every fitted parameter set reuses them.
    """
    _, energy, nll = model

    @jax.jit
    def sm(params, x):
        return score_matching_loss(energy, params, x, objective="exact")

    @jax.jit
    def fisher(params, x):
        residual = model_score(energy, params)(x) + (x - mu) @ precision
        return 0.5 * jnp.mean(jnp.sum(residual**2, axis=1))

    def evaluate(params, test):
        return {
            "sm": chunked_mean(lambda x: sm(params, x), test, chunk),
            "fisher": chunked_mean(lambda x: fisher(params, x), test, chunk),
            "nll": float(jax.jit(nll)(params, test)),
        }

    return evaluate


def true_metrics(test, mu, precision, log_det_sigma):
    """The same metrics for the true N(μ, Σ): J = mean ½‖Σ⁻¹(x − μ)‖² − tr Σ⁻¹, FD = 0."""
    test, mu, precision = (np.asarray(a, np.float64) for a in (test, mu, precision))
    centred = test - mu
    white = centred @ precision
    dim = test.shape[1]
    return {
        "sm": float(np.mean(0.5 * np.sum(white**2, axis=1)) - np.trace(precision)),
        "fisher": 0.0,
        "nll": float(np.mean(0.5 * np.sum(white * centred, axis=1))
                     + 0.5 * log_det_sigma + 0.5 * dim * math.log(2 * math.pi)),
    }


def bench_dim(dim, steps, key, args):
    k_data, k_init, k_fit, k_time = jax.random.split(key, 4)
    train, test, mu, precision, log_det_sigma = gaussian_data(k_data, dim, args.train, args.test)
    model = flow(dim, tuple(args.hidden), args.layers)
    init, energy, _ = model
    params0 = init(k_init)
    evaluate = evaluator(model, mu, precision, args.chunk)
    rows = {"truth": true_metrics(test, mu, precision, log_det_sigma),
            "init": evaluate(params0, test)}

    batch = train[: args.batch]
    calls = {}
    for method in args.methods:
        def loss(p, k, method=method):
            return score_matching_loss(energy, p, batch, k, objective=method, **options(method, args))

        calls[method] = (jax.jit(jax.value_and_grad(loss)), (params0, k_time))
    step_s = interleaved_times(calls, args.time_reps)

    schedule = optax.exponential_decay(args.lr, steps, 0.01)
    for method in args.methods:
        t0 = time.perf_counter()
        params, _ = fit_score_model(
            k_fit, energy, params0, train, objective=method, optimizer=optax.adam(schedule),
            num_steps=steps, batch_size=args.batch, **options(method, args),
        )
        jax.block_until_ready(params)
        seconds = time.perf_counter() - t0
        rows[method] = evaluate(params, test)
        rows[method].update(step_ms=1e3 * step_s[method], train_s=seconds)
        r = rows[method]
        print(f"d={dim:4d} {LABELS[method]:8s} {r['step_ms']:9.2f} ms/step, fit {seconds:6.1f} s, "
              f"test SM {r['sm']:.3f}, Fisher {r['fisher']:.3f}, NLL {r['nll']:.3f}", flush=True)
    return rows


def build_table(results, args):
    header = ["d", "steps", "method", "ms/step", "× SSM-VR", "train s", "test SM loss",
              "test Fisher div.", "test NLL (nats)"]
    rows = []
    for dim, (steps, cells) in results.items():
        for name in ("truth", "init", *args.methods):
            r = cells[name]
            label = {"truth": "true density", "init": "untrained N(0, I)", **LABELS}[name]
            timed = "step_ms" in r
            rows.append([
                str(dim), str(steps) if timed else "", label,
                f"{r['step_ms']:.2f}" if timed else "",
                f"{r['step_ms'] / cells['ssm_vr']['step_ms']:.2f}" if timed and "ssm_vr" in cells
                else "",
                f"{r['train_s']:.1f}" if timed else "",
                f"{r['sm']:.2f}", f"{r['fisher']:.3f}", f"{r['nll']:.2f}",
            ])
    return table(header, rows)


def plot(results, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(results)
    cells = [results[d][1] for d in dims]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name in (*args.methods, "init"):
        style = ({"color": "k", "ls": "--", "label": "untrained"} if name == "init"
                 else {"marker": "o", "label": LABELS[name]})
        if name != "init":
            axes[0].plot(dims, [c[name]["step_ms"] for c in cells], **style)
        axes[1].plot(dims, [c[name]["fisher"] / d for c, d in zip(cells, dims)], **style)
        axes[2].plot(dims, [(c[name]["nll"] - c["truth"]["nll"]) / d for c, d in zip(cells, dims)],
                     **style)
    titles = ["time per step (ms)", "test Fisher divergence / d", "test NLL − true NLL, per dim"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("d")
        ax.set_title(title)
        ax.set_xticks(dims, [str(d) for d in dims])
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.figure, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: d = 4, 8; 30 steps")
    p.add_argument("--dims", type=int_list, default=[10, 50, 100, 300], help="even dimensions d")
    p.add_argument("--steps", type=int_list, default=[2000, 1000, 1000, 500],
                   help="training steps, one per dimension")
    p.add_argument("--methods", type=str_list, default=list(METHODS),
                   help=f"comma-separated subset of: {','.join(METHODS)}")
    p.add_argument("--batch", type=int, default=64, help="minibatch size")
    p.add_argument("--hidden", type=int_list, default=[64, 64], help="coupling MLP widths")
    p.add_argument("--layers", type=int, default=4, help="additive coupling layers")
    p.add_argument("--lr", type=float, default=1e-2,
                   help="initial Adam learning rate (decayed to 1/100 of it over the steps)")
    p.add_argument("--sigma", type=float, default=0.05, help="DSM noise level")
    p.add_argument("--eps", type=float, default=1e-2, help="FD-SSM finite-difference step")
    p.add_argument("--train", type=int, default=10000, help="training points")
    p.add_argument("--test", type=int, default=1000, help="held-out points")
    p.add_argument("--chunk", type=int, default=100, help="rows per exact-SM evaluation call")
    p.add_argument("--time-reps", type=int, default=21, help="timed rounds per method (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None,
                   help="results file (default benchmarks/results/ssm_density.json)")
    p.add_argument("--figure", type=Path, default=None, help="PNG path of the figure")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.steps, args.train, args.test, args.time_reps = [4, 8], [30, 30], 500, 200, 2
    if len(args.steps) != len(args.dims):
        p.error(f"--steps needs one value per dimension ({len(args.dims)}), got {len(args.steps)}")
    for method in args.methods:
        if method not in METHODS:
            p.error(f"unknown method {method!r}; choose from {list(METHODS)}")
    if any(d % 2 for d in args.dims):
        p.error("dimensions must be even (the coupling layers split them in halves)")
    return args


def main(args):
    start = time.perf_counter()
    root = jax.random.PRNGKey(args.seed)
    results = {d: (steps, bench_dim(d, steps, jax.random.fold_in(root, d), args))
               for d, steps in zip(args.dims, args.steps)}
    tables = {"by_dim": build_table(results, args)}
    print(markdown_table(**tables["by_dim"]))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k != "json"}
    out = {"settings": settings, "seconds": time.perf_counter() - start,
           "results": {str(d): {"steps": steps, "cells": cells} for d, (steps, cells) in results.items()},
           "tables": tables}
    print(f"wrote {write_json('ssm_density', out, args.json)}")
    if args.figure is not None:
        plot(results, args)
        print(f"wrote {args.figure}")
    return out


if __name__ == "__main__":
    main(parse_args())
