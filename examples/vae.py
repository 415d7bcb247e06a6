"""Variational auto-encoder with an implicit encoder, trained with sliced score matching.

The setting of Song, Garg, Shi & Ermon (UAI 2019, §5.3): the encoder q(z | x) is a neural sampler
[x, ε] → 256 → 256 (tanh) → z with ε ~ N(0, I), dim ε = dim z, whose density is unknown; the
entropy gradient of the ELBO comes from a conditional score network s(z | x) on concat(z, x)
(256 → 256) trained by SSM-VR on the encoder's own samples, one step per model step, inside the
same ``svi.update``. The decoder is Bernoulli, z → 256 → 256 (tanh) → x. Baselines by flag: a Gaussian
encoder (the ordinary ELBO), and the implicit encoder with the Stein or spectral Stein estimator
fitted on ``--kernel-samples`` encoder draws per x, of which the decoder sees the first (as
the paper's code does).

Data: scikit-learn's 8×8 digits by default (no download), or MNIST from ``--data`` (the classic
``mnist.pkl.gz`` or a directory with the four IDX files), binarized afresh for every batch.
Checkpoints go to ``--out-dir`` every ``--checkpoint-every`` steps; ``--resume`` continues from
there. At the end the script plots samples, reconstructions and the loss curve, and estimates the
test log-likelihood by the importance-weighted bound on ``--iwae-rows`` test images and by
annealed importance sampling on ``--ais-rows`` of them.

    python examples/vae.py --data mnist.pkl.gz --latent-dim 8 --steps 100000 --ais-rows 1000
"""

from __future__ import annotations

import os

# LAPACK on the CPU (the kernel estimators' Cholesky factors and eigendecompositions of 100 × 100
# Gram matrices) comes from OpenBLAS, whose threads cost more than they save at that size and, on
# a busy CPU, wait for one another: there, SSGE on a batch of 128 sets of 100 draws took 1.1 s
# with its threads and 0.08 s without. Single-threaded unless the caller chose otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.example_libraries import stax
from numpyro.distributions import constraints
from numpyro.infer import SVI, Trace_ELBO

from implicitvi import datasets, evaluation
from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.infer import ImplicitELBO, implicit_sample, run_minibatch


def mlp_layers(hidden, out_dim, activation):
    layers = []
    for width in hidden:
        layers += [stax.Dense(width), activation]
    return [*layers, stax.Dense(out_dim)]


def mlp(hidden, out_dim, activation):
    return stax.serial(*mlp_layers(hidden, out_dim, activation))


ACTIVATIONS = {"softplus": stax.Softplus, "tanh": stax.Tanh}


def decoder_net(hidden, data_dim, activation="tanh"):
    """The decoder z → hidden → data_dim logits, with ``activation`` ("tanh" or "softplus")."""
    return mlp(hidden, data_dim, ACTIVATIONS[activation])


def bernoulli_decoder(activation="tanh"):
    """Model p(z) p(x | z) with a Bernoulli decoder of hidden ``activation``."""

    def model(x, latent_dim, hidden):
        batch, data_dim = x.shape
        decode = numpyro.module("decoder", decoder_net(hidden, data_dim, activation), (batch, latent_dim))
        with numpyro.plate("batch", batch):
            z = numpyro.sample("z", dist.Normal(0, 1).expand([latent_dim]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    return model


def noise_mlp(hidden, out_dim, data_dim):
    """The MLP f([x, ε]) → out_dim (tanh) as ``(init, apply)`` with ``apply(params, x, eps)``:
    ``x`` is (n, data_dim), ``eps`` (n, k) or (n, m, k) for m draws per row. The first layer's
    x-part is computed once per row, not once per draw; the parameters are those of
    ``mlp(hidden, out_dim, stax.Tanh)`` on the concatenation."""
    layers = mlp_layers(hidden, out_dim, stax.Tanh)
    init, _ = stax.serial(*layers)
    _, rest = stax.serial(*layers[1:])

    def apply(params, x, eps):
        (w, b), *later = params
        hx = x @ w[:data_dim] + b
        return rest(later, (hx if eps.ndim == 2 else hx[:, None, :]) + eps @ w[data_dim:])

    return init, apply


def draw_noise(batch, latent_dim, draws, dtype):
    """ε of shape (batch, k), or (batch, draws, k) when the entropy takes ``draws`` draws per x."""
    shape = (batch, latent_dim) if draws is None else (batch, draws, latent_dim)
    return jax.random.normal(numpyro.prng_key(), shape, dtype)


def site_args(w, draws):
    """``latent`` and ``entropy_draws`` of the implicit site for w of :func:`draw_noise`'s shape:
    with further draws, the model sees the first and the entropy term all of them (Song et al.)."""
    return (w, None) if draws is None else (w[:, 0], w)


def implicit_encoder(estimator, draws=None):
    """Guide q(z | x) = law of f([x, ε]); its entropy gradient comes from ``estimator``, at
    ``draws`` encoder draws per x if given (the kernel estimators), else at the one draw."""

    def guide(x, latent_dim, hidden):
        batch, data_dim = x.shape
        net = noise_mlp(hidden, latent_dim, data_dim)
        encode = numpyro.module("encoder", net, (batch, data_dim + latent_dim))
        w, entropy_draws = site_args(encode(x, draw_noise(batch, latent_dim, draws, x.dtype)), draws)
        with numpyro.plate("batch", batch):
            implicit_sample(
                "z",
                w,
                support=constraints.real_vector,
                context=x,
                estimator=estimator,
                entropy_draws=entropy_draws,
            )

    return guide


def whitened_implicit_encoder(estimator, draws=None):
    """Guide z = μ(x) + σ(x) ⊙ w, w = ε + tanh(α) · tanh(g([x, ε])): an implicit encoder whose
    affine part is exact, so that only the entropy of w (near-normal) is score-estimated —
    H[z | x] = Σ log σ(x) + H[w | x] — as :class:`~implicitvi.infer.AutoImplicit` does for
    global latents. With α = 0 at the start it is the Gaussian encoder."""

    def guide(x, latent_dim, hidden):
        batch, data_dim = x.shape
        gaussian = numpyro.module("encoder", mlp(hidden, 2 * latent_dim, stax.Tanh), (batch, data_dim))
        net = noise_mlp(hidden, latent_dim, data_dim)
        residual = numpyro.module("residual", net, (batch, data_dim + latent_dim))
        gate = numpyro.param("residual_gate", jnp.zeros(()))
        loc, log_scale = jnp.split(gaussian(x), 2, axis=-1)
        eps = draw_noise(batch, latent_dim, draws, x.dtype)
        w, entropy_draws = site_args(eps + jnp.tanh(gate) * jnp.tanh(residual(x, eps)), draws)
        with numpyro.plate("batch", batch):
            implicit_sample(
                "z",
                loc + jnp.exp(log_scale) * w,
                latent=w,
                log_abs_det_jacobian=log_scale.sum(-1),
                support=constraints.real_vector,
                context=x,
                estimator=estimator,
                entropy_draws=entropy_draws,
            )

    return guide


def gaussian_encoder(x, latent_dim, hidden):
    """Guide q(z | x) = N(μ(x), diag σ(x)²), the ordinary VAE."""
    batch, data_dim = x.shape
    encode = numpyro.module("encoder", mlp(hidden, 2 * latent_dim, stax.Tanh), (batch, data_dim))
    loc, log_scale = jnp.split(encode(x), 2, axis=-1)
    with numpyro.plate("batch", batch):
        numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))


def make_svi(args):
    optim = optax.rmsprop(args.lr)
    if args.encoder == "gaussian":
        return SVI(bernoulli_decoder(args.decoder_activation), gaussian_encoder, optim, Trace_ELBO())
    # The whitened encoder's w is near-normal: its estimators shrink towards the normal score.
    base = "normal" if args.encoder == "whitened" else "zero"
    if args.estimator == "ssm":
        estimator = ScoreNet(
            objective="ssm_vr",
            num_projections=1,
            hidden=(256, 256),
            conditional=True,
            optimizer=optax.rmsprop(args.lr),
            base=base,
        )
        elbo = ImplicitELBO(num_particles=1)
        draws = None
    else:
        cls = {"stein": Stein, "ssge": SSGE}[args.estimator]
        estimator = cls(eta=1e-3, base=base) if cls is Stein else cls(eta=1e-3, threshold=0.99, base=base)
        # As Song et al.: the entropy at kernel_samples draws per x, the decoder at the first.
        elbo = ImplicitELBO(num_particles=1)
        draws = args.kernel_samples
    guide = whitened_implicit_encoder if args.encoder == "whitened" else implicit_encoder
    return SVI(bernoulli_decoder(args.decoder_activation), guide(estimator, draws), optim, elbo)


def load_data(args):
    if args.data is None:
        return datasets.load_digits()
    return datasets.load_mnist(args.data)


def run_name(args):
    """File stem of the run's checkpoint, figure and results, e.g. ``vae_implicit_ssm_z8``."""
    estimator = "" if args.encoder == "gaussian" else f"_{args.estimator}"
    return f"vae_{args.encoder}{estimator}_z{args.latent_dim}{activation_suffix(args)}{seed_suffix(args)}"


def seed_suffix(args):
    """``_seedN`` for ``--seed N`` other than 0, so that runs of several seeds keep their own files."""
    return "" if args.seed == 0 else f"_seed{args.seed}"


def binarized_test_images(data):
    """The test images (n, data_dim), binarized once with a fixed key. It does not depend on
    ``--seed``: every model and every seed is scored on the same binary images, so that per-image
    results can be paired. (The key is the third of four split from ``PRNGKey(0)``, the key of
    all earlier results.)"""
    key = jax.random.split(jax.random.PRNGKey(0), 4)[2]
    return datasets.binarize(key, jnp.asarray(data.test.images))


def activation_suffix(args):
    """``_softplus`` for a softplus decoder: the default (tanh) names no activation."""
    return "" if args.decoder_activation == "tanh" else f"_{args.decoder_activation}"


def activation_config(args):
    """The decoder activation's checkpoint entry; absent for softplus, the only decoder before
    the option existed, so that those checkpoints still match."""
    return {} if args.decoder_activation == "softplus" else {"decoder_activation": args.decoder_activation}


def run_config(args):
    """What a checkpoint must match to be resumed."""
    return {
        "model": "vae",
        "data": "digits" if args.data is None else os.path.basename(os.path.normpath(args.data)),
        "latent_dim": args.latent_dim,
        "encoder": args.encoder,
        "estimator": None if args.encoder == "gaussian" else args.estimator,
        "kernel_samples": args.kernel_samples,
        "hidden": list(args.hidden),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        **activation_config(args),
    }


def decoder_log_likelihood(params, hidden, data_dim, activation):
    """log p(x | z) for one latent vector and one binary image."""
    apply = decoder_net(hidden, data_dim, activation)[1]

    def log_lik(z, x):
        return dist.Bernoulli(logits=apply(params["decoder$params"], z)).log_prob(x).sum()

    return log_lik


def decoder_mean(params, hidden, data_dim, activation):
    """The jitted decoder mean z (n, latent_dim) → sigmoid(logits) (n, data_dim), for figures."""
    apply = decoder_net(hidden, data_dim, activation)[1]
    return jax.jit(lambda z: jax.nn.sigmoid(apply(params["decoder$params"], z)))


def encoder_draws(guide, params, x, latent_dim, hidden, key, num):
    """``num`` encoder samples per row of ``x``: (num, n, latent_dim)."""

    def one(k):
        seeded = numpyro.handlers.substitute(numpyro.handlers.seed(guide, k), data=params)
        return numpyro.handlers.trace(seeded).get_trace(x, latent_dim, hidden)["z"]["value"]

    return jax.lax.map(one, jax.random.split(key, num))


def save_figures(path, decode_mean, test_x, recon_x, losses, batch_size, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = int(round(np.sqrt(test_x.shape[-1])))

    def grid(images, cols):
        rows = len(images) // cols
        tiles = np.asarray(images[: rows * cols]).reshape(rows, cols, side, side)
        return tiles.transpose(0, 2, 1, 3).reshape(rows * side, cols * side)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
    axes[0].imshow(grid(decode_mean, 8), cmap="gray")
    axes[0].set_title("samples (decoder means, z ~ p(z))")
    pairs = np.stack([np.asarray(test_x[:32]), np.asarray(recon_x[:32])], 1).reshape(64, -1)
    axes[1].imshow(grid(pairs, 8), cmap="gray")
    axes[1].set_title("test images | reconstructions")
    for ax in axes[:2]:
        ax.axis("off")
    per_image = np.asarray(losses) / batch_size
    window = max(1, len(per_image) // 200)
    smooth = np.convolve(per_image, np.ones(window) / window, mode="valid")
    axes[2].plot(np.arange(len(smooth)) + window, smooth)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("loss per image (nats)")
    axes[2].set_title("training loss")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def standard_error(values):
    """Standard error of the mean over test images (0 for a single image)."""
    values = np.asarray(values, np.float64)
    return float(np.std(values, ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0


def evaluate(key, args, log_lik, test_x, loc, scale):
    """Test log-likelihood: the IWAE bound with the Gaussian proposal N(loc, S Sᵀ) per row
    (``scale``: standard deviations (n, d) or Cholesky factors S (n, d, d)), and AIS."""
    results = {}
    iwae_key, ais_key = jax.random.split(key)
    if args.iwae_rows:
        start = time.perf_counter()
        iwae = evaluation.iwae_log_likelihood(
            iwae_key, log_lik, test_x[: args.iwae_rows], loc, scale, num_samples=args.iwae_samples
        )
        results["iwae_nll"] = float(-np.mean(iwae.log_likelihood))
        results["iwae_nll_se"] = standard_error(iwae.log_likelihood)
        results["iwae_nll_per_image"] = -np.asarray(iwae.log_likelihood)
        results["iwae_rows"] = int(args.iwae_rows)
        results["iwae_seconds"] = time.perf_counter() - start
    if args.ais_rows:
        start = time.perf_counter()
        ais = evaluation.ais_log_likelihood(
            ais_key,
            log_lik,
            test_x[: args.ais_rows],
            args.latent_dim,
            schedule=args.ais_temperatures,
            num_chains=args.ais_chains,
            num_leapfrog=args.ais_leapfrog,
        )
        results["ais_nll"] = float(-np.mean(ais.log_likelihood))
        results["ais_nll_se"] = standard_error(ais.log_likelihood)
        results["ais_nll_per_image"] = -np.asarray(ais.log_likelihood)
        results["ais_rows"] = int(args.ais_rows)
        results["ais_seconds"] = time.perf_counter() - start
    return results


def train(args, svi, data, name, config, key, *model_args):
    """Train, or resume from the run's checkpoint, on the training images; returns the
    :class:`~implicitvi.infer.TrainResult` and the wall time of this run."""
    os.makedirs(args.out_dir, exist_ok=True)
    start = time.perf_counter()
    result = run_minibatch(
        svi,
        key,
        jnp.asarray(data.train.images),
        args.steps,
        *model_args,
        batch_size=args.batch_size,
        transform=datasets.binarize,
        chunk_size=args.chunk,
        checkpoint=args.checkpoint or os.path.join(args.out_dir, f"{name}.npz"),
        checkpoint_every=args.checkpoint_every,
        config=config,
        resume=args.resume,
        progress_bar=args.progress_bar,
    )
    seconds = time.perf_counter() - start
    last = result.losses[-min(1000, len(result.losses)) :].mean() / args.batch_size
    # With an implicit site the loss value leaves out the entropy (only its gradient is known).
    print(f"{name}: {len(result.losses)} steps, {seconds:.1f} s this run, "
          f"loss per image over the last steps {last:.2f} nats")
    return result, seconds


def report(args, name, results, result, seconds):
    """Print the evaluation and write it to OUT_DIR/NAME.json, and the per-image values (for
    paired comparisons between models on the same images) to OUT_DIR/NAME_per_image.npz."""
    per_image = {k: results.pop(k) for k in list(results) if k.endswith("_per_image")}
    if per_image:
        np.savez(os.path.join(args.out_dir, f"{name}_per_image.npz"), **per_image)
    results.update({"name": name, "steps": int(len(result.losses)), "train_seconds_this_run": seconds})
    for k, v in results.items():
        print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    with open(os.path.join(args.out_dir, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def main(args):
    data = load_data(args)
    train_key, eval_key, _, fig_key = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    svi = make_svi(args)
    name = run_name(args)
    hidden = tuple(args.hidden)
    result, seconds = train(args, svi, data, name, run_config(args), train_key, args.latent_dim, hidden)
    params = svi.get_params(result.state)

    test_x = binarized_test_images(data)
    data_dim = test_x.shape[-1]
    log_lik = decoder_log_likelihood(params, hidden, data_dim, args.decoder_activation)
    rows = max(args.iwae_rows, 64)
    draws = encoder_draws(svi.guide, params, test_x[:rows], args.latent_dim, hidden, eval_key, args.proposal_draws)
    decode = decoder_mean(params, hidden, data_dim, args.decoder_activation)
    save_figures(
        os.path.join(args.out_dir, f"{name}.png"),
        decode(jax.random.normal(fig_key, (64, args.latent_dim))),
        test_x,
        decode(draws[0, :64]),
        result.losses,
        args.batch_size,
        f"{name}: {len(result.losses)} steps",
    )
    # The encoder has no density; a Gaussian moment-matched to its draws, widened so that its
    # tails cover the posterior's, is a valid proposal for the bound.
    loc, scale_tril = evaluation.gaussian_proposal(
        jnp.swapaxes(draws[:, : args.iwae_rows], 0, 1), widen=args.proposal_widen
    )
    results = evaluate(eval_key, args, log_lik, test_x, loc, scale_tril)
    # How spread out q(z | x) is: the draws' standard deviation, averaged over latent dimensions
    # and the first 64 test images (whatever --iwae-rows is, so that runs compare). An implicit
    # encoder that learns to ignore its noise tends to 0 here.
    results["encoder_sd"] = float(np.std(np.asarray(draws[:, :64]), axis=0).mean())
    return report(args, name, results, result, seconds)


def add_autoencoder_arguments(p, out_dir):
    """The data, training, checkpoint and evaluation flags that the VAE and WAE examples share."""
    p.add_argument("--data", default=None, help="mnist.pkl.gz or a directory with MNIST IDX files (default: sklearn digits)")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--decoder-activation", choices=sorted(ACTIVATIONS), default="tanh",
                   help="hidden activation of the decoder (tanh, as the paper's code)")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chunk", type=int, default=500, help="steps per jitted chunk")
    p.add_argument("--checkpoint-every", type=int, default=5000)
    p.add_argument("--out-dir", default=out_dir)
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: OUT_DIR/NAME.npz, NAME naming the configuration)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--iwae-rows", type=int, default=10_000)
    p.add_argument("--iwae-samples", type=int, default=1000)
    p.add_argument("--ais-rows", type=int, default=0)
    p.add_argument("--ais-temperatures", type=int, default=1000)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--ais-leapfrog", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")


def check_latent_dim(p, args):
    if args.latent_dim < 1:
        p.error(f"--latent-dim must be >= 1, got {args.latent_dim}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_autoencoder_arguments(p, "vae_out")
    p.add_argument("--encoder", choices=["implicit", "whitened", "gaussian"], default="implicit",
                   help="implicit: the paper's [x, ε] → z sampler; whitened: z = μ(x) + σ(x)(ε + residual); gaussian: the ordinary VAE")
    p.add_argument("--estimator", choices=["ssm", "stein", "ssge"], default="ssm")
    p.add_argument("--kernel-samples", type=int, default=100, help="encoder draws per x for the entropy term of stein/ssge")
    p.add_argument("--proposal-draws", type=int, default=128, help="encoder draws for the IWAE proposal")
    p.add_argument("--proposal-widen", type=float, default=1.5)
    args = p.parse_args(argv)
    check_latent_dim(p, args)
    return args


if __name__ == "__main__":
    main(parse_args())
