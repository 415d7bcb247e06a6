"""Score estimation from samples alone: Stein, SSGE and a sliced-score-matching network.

Three 2-D distributions with known scores (a correlated Gaussian, a two-component mixture and a
banana) are sampled; each estimator sees only the samples. The script prints the relative squared
error ‖ŝ − s‖² / ‖s‖² of each estimator and its wall time, and draws the estimated score fields
beside the true ones.

    python examples/score_estimation.py --num-samples 500 --net-steps 2000 --out score_fields.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from implicitvi.estimators import SSGE, ScoreNet, Stein


def gaussian(key, n):
    cov = jnp.array([[1.0, 0.8], [0.8, 1.0]])
    x = jax.random.normal(key, (n, 2)) @ jnp.linalg.cholesky(cov).T
    return x, -jnp.linalg.solve(cov, x.T).T


def mixture(key, n):
    """½ N((−1.5, 0), 0.5²I) + ½ N((1.5, 0), 0.5²I)."""
    k1, k2 = jax.random.split(key)
    means = jnp.array([[-1.5, 0.0], [1.5, 0.0]])
    x = means[jax.random.bernoulli(k1, 0.5, (n,)).astype(int)] + 0.5 * jax.random.normal(k2, (n, 2))
    logits = -jnp.sum((x[:, None] - means) ** 2, axis=-1) / (2 * 0.25)
    weights = jax.nn.softmax(logits, axis=1)
    return x, jnp.einsum("nk,nkd->nd", weights, -(x[:, None] - means) / 0.25)


def banana(key, n):
    """x₁ ~ N(0, 1), x₂ | x₁ ~ N(x₁² − 1, 0.5²)."""
    e = jax.random.normal(key, (n, 2))
    x1, x2 = e[:, 0], e[:, 0] ** 2 - 1 + 0.5 * e[:, 1]
    r = (x2 - x1**2 + 1) / 0.25
    return jnp.stack([x1, x2], 1), jnp.stack([-x1 + 2 * x1 * r, -r], 1)


TARGETS = {"gaussian": gaussian, "mixture": mixture, "banana": banana}


def relative_error(estimate, truth):
    return float(jnp.sum((estimate - truth) ** 2) / jnp.sum(truth**2))


def fit_kernel(key, est, x):
    """Fit ``est`` on the samples ``x`` and score them there."""
    fn = jax.jit(lambda x: est.score(est.init(key, x), x))
    fn(x).block_until_ready()
    start = time.perf_counter()
    scores = fn(x).block_until_ready()
    return scores, time.perf_counter() - start


def fit_network(key, sampler, n, steps):
    """Train on a stream of fresh batches, as a score network does inside variational inference."""
    est = ScoreNet(hidden=(64, 64), optimizer=optax.adam(3e-3))
    draw = jax.jit(lambda k: sampler(k, n)[0])
    state = est.init(key, draw(key))
    update = jax.jit(est.update)
    start = time.perf_counter()
    for step in range(steps):
        k = jax.random.fold_in(key, step)
        state = update(k, state, draw(k))
    jax.block_until_ready(state)
    return est, state, time.perf_counter() - start


def main(args):
    key = jax.random.PRNGKey(args.seed)
    rows, fields = [], {}
    for t, (name, sampler) in enumerate(TARGETS.items()):
        x, truth = sampler(jax.random.fold_in(key, t), args.num_samples)
        estimates = {}
        for label, est in (("Stein", Stein()), ("SSGE", SSGE())):
            estimates[label], seconds = fit_kernel(key, est, x)
            rows.append((name, label, relative_error(estimates[label], truth), seconds))
        net, state, seconds = fit_network(jax.random.fold_in(key, 100 + t), sampler, args.num_samples, args.net_steps)
        estimates["SSM-VR net"] = net.score(state, x)
        rows.append((name, "SSM-VR net", relative_error(estimates["SSM-VR net"], truth), seconds))
        fields[name] = (x, truth, estimates)

    print(f"{'target':<10} {'estimator':<12} {'rel. sq. error':>15} {'seconds':>9}")
    for name, label, err, seconds in rows:
        print(f"{name:<10} {label:<12} {err:>15.4f} {seconds:>9.3f}")
    if args.out:
        plot(fields, args.out)
        print(f"wrote {args.out}")
    return {(name, label): err for name, label, err, _ in rows}


def plot(fields, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["truth", "Stein", "SSGE", "SSM-VR net"]
    fig, axes = plt.subplots(len(fields), len(columns), figsize=(3 * len(columns), 3 * len(fields)))
    for row, (name, (x, truth, estimates)) in enumerate(fields.items()):
        shown = np.asarray(x[:150])
        for col, label in enumerate(columns):
            s = np.asarray((truth if label == "truth" else estimates[label])[:150])
            ax = axes[row, col]
            ax.scatter(np.asarray(x[:, 0]), np.asarray(x[:, 1]), s=2, c="0.7")
            ax.quiver(shown[:, 0], shown[:, 1], s[:, 0], s[:, 1], angles="xy", color="C0", width=0.004)
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=500, help="particles per estimate")
    parser.add_argument("--net-steps", type=int, default=2000, help="streaming steps of the network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="score_fields.png", help="PNG path ('' to skip the plot)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
