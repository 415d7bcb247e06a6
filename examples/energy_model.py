"""An energy model fitted by score matching to a multimodal 2-D data set, sampled by Langevin.

The data are generated here: eight Gaussians on a circle (default), two concentric rings or two
moons. The model is p(x) ∝ exp(−E(x)) with E an MLP (softplus) plus a weak quadratic term
‖x‖² / (2 · 4²) that keeps exp(−E) integrable whatever the network does far from the data. It is
fitted with ``implicitvi.score_model.fit_score_model`` by the objective given with
``--objective`` (SSM-VR by default), and sampled by unadjusted Langevin dynamics on its score
−∇E, started from uniform noise over the plotted square.

The script prints the loss and, as a check of the fit, the squared maximum mean discrepancy
(RBF kernel, median-heuristic bandwidth, unbiased estimate) of the Langevin samples against
held-out data, beside the same MMD² for the uniform starting points and for a second draw of the
data (what a perfect sampler would get). Score matching cannot see the relative weights of
well-separated modes (the score inside each mode does not depend on them), so a model that puts
every mode in the right place can still weigh them wrongly: the MMD includes that error.

    python examples/energy_model.py --dataset eight_gaussians --steps 3000 --out energy_model.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from implicitvi import kernels
from implicitvi.nets import MLP
from implicitvi.score_model import fit_score_model, langevin_sample, model_score

CONFINEMENT = 4.0  # scale of the quadratic term of the energy
LIMIT = 3.5  # half-width of the plotted square and of the uniform Langevin start


def eight_gaussians(key, n):
    """Equal mixture of N(2(cos θ_k, sin θ_k), 0.2² I), θ_k = kπ/4."""
    k_mode, k_noise = jax.random.split(key)
    angle = jnp.pi / 4 * jax.random.randint(k_mode, (n,), 0, 8)
    centers = 2.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    return centers + 0.2 * jax.random.normal(k_noise, (n, 2))


def rings(key, n):
    """Two concentric rings of radii 1 and 2.5, radial noise 0.1, points spread by arc length."""
    k_ring, k_angle, k_noise = jax.random.split(key, 3)
    radius = jnp.where(jax.random.bernoulli(k_ring, 2.5 / 3.5, (n,)), 2.5, 1.0)
    radius = radius + 0.1 * jax.random.normal(k_noise, (n,))
    angle = jax.random.uniform(k_angle, (n,), maxval=2 * jnp.pi)
    return radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)


def moons(key, n):
    """Two interleaved half circles, centred and scaled to about [−2, 2], noise 0.1."""
    k_moon, k_angle, k_noise = jax.random.split(key, 3)
    upper = jax.random.bernoulli(k_moon, 0.5, (n,))
    t = jax.random.uniform(k_angle, (n,), maxval=jnp.pi)
    x = jnp.where(upper, jnp.cos(t), 1.0 - jnp.cos(t)) - 0.5
    y = jnp.where(upper, jnp.sin(t), 0.5 - jnp.sin(t)) - 0.25
    points = 1.6 * jnp.stack([x, y], axis=1)
    return points + 0.1 * jax.random.normal(k_noise, (n, 2))


DATASETS = {"eight_gaussians": eight_gaussians, "rings": rings, "moons": moons}


def make_energy(hidden):
    net = MLP(hidden)

    def energy(params, x):
        return net.apply(params, x)[..., 0] + 0.5 * jnp.sum(x**2, axis=-1) / CONFINEMENT**2

    return net, energy


@jax.jit
def mmd2(x, y):
    """Unbiased MMD² with the RBF kernel at the median-heuristic bandwidth of the pooled points."""
    h = kernels.median_bandwidth(jnp.concatenate([x, y]))
    kxx, kyy, kxy = kernels.rbf(x, x, h), kernels.rbf(y, y, h), kernels.rbf(x, y, h)
    n, m = x.shape[0], y.shape[0]
    within_x = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    within_y = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return within_x + within_y - 2 * jnp.mean(kxy)


def main(args):
    key = jax.random.PRNGKey(args.seed)
    k_data, k_test, k_ref, k_init, k_fit, k_start, k_chain = jax.random.split(key, 7)
    sample = jax.jit(DATASETS[args.dataset], static_argnums=1)
    data = sample(k_data, args.num_data)
    net, energy = make_energy(tuple(args.hidden))
    params = net.init(k_init, 2, 1)

    start = time.perf_counter()
    params, losses = fit_score_model(
        k_fit,
        energy,
        params,
        data,
        objective=args.objective,
        optimizer=optax.adam(args.lr),
        num_steps=args.steps,
        batch_size=min(args.batch_size, args.num_data),
    )
    seconds = time.perf_counter() - start
    window = max(1, args.steps // 10)
    print(f"{args.dataset}: {args.objective} fit, {args.steps} steps in {seconds:.1f} s")
    print(
        f"loss: first {window} steps {float(jnp.mean(losses[:window])):.3f}, "
        f"last {window} steps {float(jnp.mean(losses[-window:])):.3f}"
    )

    init = jax.random.uniform(k_start, (args.num_samples, 2), minval=-LIMIT, maxval=LIMIT)
    samples = langevin_sample(
        k_chain,
        model_score(energy, params),
        init,
        step_size=args.step_size,
        num_steps=args.langevin_steps,
    )
    test = sample(k_test, args.num_samples)
    mmd = {
        "langevin": float(mmd2(samples, test)),
        "uniform": float(mmd2(init, test)),
        "data": float(mmd2(sample(k_ref, args.num_samples), test)),
    }
    print(f"MMD² to held-out data: Langevin samples {mmd['langevin']:.4f}, "
          f"uniform start {mmd['uniform']:.4f}, second data draw {mmd['data']:.4f}")
    if args.out:
        grid_energy = jax.jit(lambda x: energy(params, x))
        plot(np.asarray(data), np.asarray(samples), grid_energy, losses, args)
        print(f"wrote {args.out}")
    return {"losses": np.asarray(losses), "mmd2": mmd}


def plot(data, samples, energy_fn, losses, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = jnp.linspace(-LIMIT, LIMIT, 200)
    gx, gy = jnp.meshgrid(grid, grid)
    e = energy_fn(jnp.stack([gx.ravel(), gy.ravel()], axis=1)).reshape(gx.shape)
    density = np.exp(-np.asarray(e - jnp.min(e)))  # exp(−E), normalized on the grid below
    density /= density.sum() * float(grid[1] - grid[0]) ** 2

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    axes[0].scatter(data[:, 0], data[:, 1], s=2, c="k", alpha=0.4)
    axes[0].set_title(f"data ({args.dataset})")
    axes[1].imshow(density, origin="lower", extent=(-LIMIT, LIMIT, -LIMIT, LIMIT), cmap="viridis")
    axes[1].set_title("learned density exp(−E)")
    axes[2].scatter(samples[:, 0], samples[:, 1], s=2, c="C3", alpha=0.4)
    axes[2].set_title(f"Langevin samples ({args.langevin_steps} steps)")
    for ax in axes[:3]:
        ax.set_xlim(-LIMIT, LIMIT)
        ax.set_ylim(-LIMIT, LIMIT)
        ax.set_aspect("equal")
    axes[3].plot(np.asarray(losses), lw=0.5)
    axes[3].set_xlabel("step")
    axes[3].set_title(f"{args.objective} loss")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="eight_gaussians")
    parser.add_argument("--objective", choices=["exact", "ssm", "ssm_vr", "dsm", "fd_ssm"],
                        default="ssm_vr", help="score-matching objective")
    parser.add_argument("--num-data", type=int, default=4000, help="training points")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128],
                        help="hidden widths of the energy MLP")
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="Langevin chains (and held-out points for the MMD)")
    parser.add_argument("--langevin-steps", type=int, default=1000)
    parser.add_argument("--step-size", type=float, default=1e-3, help="Langevin step size ε")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="energy_model.png", help="PNG path ('' to skip the plot)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
