"""Implicit variational inference on a funnel: centered eight schools.

The eight-schools data (Rubin 1981) ship with ArviZ. In the centered parameterization
θ_j ~ N(μ, τ²) the posterior is a funnel in (θ, log τ) that a Gaussian guide cannot follow.
The script fits AutoNormal, AutoMultivariateNormal and AutoImplicit (a neural sampler trained
with a score-estimated entropy gradient) with the same number of steps and particles, compares
each with NUTS in NumPyro's unconstrained space — median over coordinates of
|mean_q − mean_NUTS| / sd_NUTS and of |log(sd_q / sd_NUTS)|, and the kernel Stein discrepancy
against the model's posterior — prints the table and plots θ₁ against log τ.

    python examples/implicit_vi.py --steps 5000 --particles 16 --out eight_schools.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_median

from implicitvi.diagnostics import kernel_stein_discrepancy, moment_errors, unconstrained_score
from implicitvi.infer import AutoImplicit, ImplicitELBO

# Standard errors of the eight schools' effects (Rubin 1981); the effects come from ArviZ.
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def load_effects():
    import arviz as az

    return np.asarray(az.load_arviz_data("centered_eight")["observed_data"]["obs"].values)


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    with numpyro.plate("school", len(sigma)):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def fit_guide(name, key, args, num_steps, particles, lr):
    if name == "AutoImplicit":
        guide, elbo = AutoImplicit(eight_schools), ImplicitELBO(num_particles=particles)
    else:
        cls = {"AutoNormal": AutoNormal, "AutoMultivariateNormal": AutoMultivariateNormal}[name]
        guide = cls(eight_schools, init_loc_fn=init_to_median)
        elbo = Trace_ELBO(num_particles=particles)
    svi = SVI(eight_schools, guide, optax.adam(lr), elbo)
    start = time.perf_counter()
    result = svi.run(key, num_steps, *args, progress_bar=False)
    seconds = time.perf_counter() - start
    draws = guide.sample_posterior(jax.random.fold_in(key, 1), result.params, sample_shape=(2000,))
    return {k: draws[k] for k in ("mu", "tau", "theta")}, seconds


def main(args):
    y = load_effects()
    model_args = (SIGMA, y)
    key = jax.random.PRNGKey(args.seed)
    mcmc = MCMC(
        NUTS(eight_schools, target_accept_prob=0.95, init_strategy=init_to_median),
        num_warmup=args.nuts_warmup,
        num_samples=args.nuts_samples,
        progress_bar=False,
    )
    mcmc.run(key, *model_args)
    reference = mcmc.get_samples()
    score_fn, to_unconstrained = unconstrained_score(eight_schools, model_args)
    ref_u = to_unconstrained(reference)

    rows, draws = [], {"NUTS": reference}
    ksd = lambda u: float(kernel_stein_discrepancy(u[:1000], score_fn))  # noqa: E731
    rows.append(("NUTS", 0.0, 0.0, ksd(ref_u), float("nan")))
    for i, name in enumerate(args.guides):
        samples, seconds = fit_guide(
            name, jax.random.fold_in(key, i + 1), model_args, args.steps, args.particles, args.lr
        )
        draws[name] = samples
        u = to_unconstrained(samples)
        errors = moment_errors(u, ref_u)
        rows.append((name, errors["mean_z"], errors["log_sd"], ksd(u), seconds))

    print(f"centered eight schools, {args.steps} steps, {args.particles} particles, lr {args.lr}")
    print(f"{'guide':<24} {'mean error (z)':>15} {'log-sd error':>13} {'KSD':>8} {'seconds':>8}")
    for name, mean_z, log_sd, k, seconds in rows:
        print(f"{name:<24} {mean_z:>15.3f} {log_sd:>13.3f} {k:>8.3f} {seconds:>8.1f}")
    if args.out:
        plot(draws, args.out)
        print(f"wrote {args.out}")
    return {name: {"mean_z": mean_z, "log_sd": log_sd, "ksd": k} for name, mean_z, log_sd, k, _ in rows}


def plot(draws, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(draws), figsize=(3.2 * len(draws), 3.2), sharex=True, sharey=True)
    for ax, (name, d) in zip(np.atleast_1d(axes), draws.items()):
        ax.scatter(np.asarray(d["theta"][:, 0]), np.log(np.asarray(d["tau"])), s=2, alpha=0.3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("θ₁")
    np.atleast_1d(axes)[0].set_ylabel("log τ")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--nuts-warmup", type=int, default=1000)
    parser.add_argument("--nuts-samples", type=int, default=2000)
    parser.add_argument(
        "--guides",
        nargs="+",
        default=["AutoNormal", "AutoMultivariateNormal", "AutoImplicit"],
        choices=["AutoNormal", "AutoMultivariateNormal", "AutoImplicit"],
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="eight_schools.png", help="PNG path ('' to skip)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
