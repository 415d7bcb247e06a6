"""MNIST test log-likelihoods of VAEs with implicit encoders and of WAEs (Song et al., UAI 2019).

Trains (or resumes) one configuration of :mod:`autoencoders` or :mod:`wasserstein` in the
paper's setting — RMSProp 1e-3, batch 128, 100k steps, every batch binarized afresh — and
evaluates the test negative log-likelihood by the IWAE bound on the first ``--iwae-rows`` test
images and by AIS (sigmoid schedule of 1000 temperatures, 16 chains, HMC with 10 leapfrog steps)
on the first ``--ais-rows``, all of one fixed binarization. Each run is named after its configuration
(``vae_implicit_ssm_z8``, ``wae_mmd_z8_softplus_seed1``); ``--out-dir`` holds its checkpoint
``NAME.npz`` (a checkpoint of another configuration is refused), its results ``NAME.json``, its
per-image values ``NAME_per_image.npz``, a figure ``NAME.png`` of samples, reconstructions and
the loss curve, and the AIS values so far, ``NAME_ais.npz``, saved every ``--ais-block`` images:
an evaluation stopped part way resumes there.

    python benchmarks/mnist_vae_wae.py vae --data mnist.pkl.gz --latent-dim 8 --estimator stein
    python benchmarks/mnist_vae_wae.py wae --data mnist.pkl.gz --latent-dim 8 --regularizer ssm
    python benchmarks/mnist_vae_wae.py vae --data mnist.pkl.gz --resume --ais-rows 1000

``paper`` runs, resumes or re-evaluates the paper's configurations and prints them beside its
Table 4. ``compare`` pairs runs image by image: each run's AIS NLL minus the first run's on the
test images both scored. The images' own spread (a standard deviation of about 30 nats)
dominates the standard error of each run's mean; pairing removes it.

    python benchmarks/mnist_vae_wae.py paper --data mnist.pkl.gz --out-dir runs --ais-rows 1000
    python benchmarks/mnist_vae_wae.py compare runs/vae_implicit_ssm_z8_per_image.npz \\
        runs/vae_gaussian_z8_per_image.npz

Without ``--data``, ``vae`` and ``wae`` run on scikit-learn's 8×8 digits.
"""

from __future__ import annotations

import os

# LAPACK on the CPU comes from OpenBLAS, whose threads cost more than they save on the kernel
# estimators' 100 × 100 Gram matrices. It must be set before JAX loads LAPACK.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from autoencoder_eval import (
    binarized_test_images,
    decoder_log_likelihood,
    encoder_draws,
    evaluate,
    paired_table,
    save_figure,
    semi_implicit_score_agreement,
)
from autoencoders import ACTIVATIONS, ENTROPY_SCORES, decoder_net, mlp, vae_svi
from common import markdown_table, write_json
from wasserstein import wae_svi

from implicitvi import datasets, evaluation
from implicitvi.infer import run_minibatch
from implicitvi.infer.primitives import state_name

# name: (subcommand and flags, the paper's AIS NLL in nats; Song et al. 2019, Table 4)
PAPER = {
    "vae-elbo-8": (["vae", "--encoder", "gaussian", "--latent-dim", "8"], 96.87),
    "vae-ssm-8": (["vae", "--estimator", "ssm", "--latent-dim", "8"], 95.50),
    "vae-stein-8": (["vae", "--estimator", "stein", "--latent-dim", "8"], 96.71),
    "vae-ssge-8": (["vae", "--estimator", "ssge", "--latent-dim", "8"], 96.60),
    "vae-elbo-32": (["vae", "--encoder", "gaussian", "--latent-dim", "32"], 89.06),
    "vae-ssm-32": (["vae", "--estimator", "ssm", "--latent-dim", "32"], 89.25),
    "vae-stein-32": (["vae", "--estimator", "stein", "--latent-dim", "32"], 91.84),
    "vae-ssge-32": (["vae", "--estimator", "ssge", "--latent-dim", "32"], 94.67),
    "wae-ssm-8": (["wae", "--regularizer", "ssm", "--latent-dim", "8"], 98.24),
    "wae-stein-8": (["wae", "--regularizer", "stein", "--latent-dim", "8"], 99.05),
    "wae-ssge-8": (["wae", "--regularizer", "ssge", "--latent-dim", "8"], 98.81),
    "wae-mmd-8": (["wae", "--regularizer", "mmd", "--latent-dim", "8"], None),
    "wae-ssm-32": (["wae", "--regularizer", "ssm", "--latent-dim", "32"], 90.37),
    "wae-stein-32": (["wae", "--regularizer", "stein", "--latent-dim", "32"], 91.70),
    "wae-ssge-32": (["wae", "--regularizer", "ssge", "--latent-dim", "32"], 92.55),
    "wae-mmd-32": (["wae", "--regularizer", "mmd", "--latent-dim", "32"], None),
}


# VAE encoders whose entropy needs no --estimator: the Gaussian's is exact, the semi-implicit
# encoder's network is always fitted by regression.
OWN_ESTIMATOR = ("gaussian", "semi-implicit")


def run_name(args):
    """File stem of a run: ``vae_{encoder}[_{estimator}][_frame{C}][_{entropy score}][_iwae{K}]_z{d}`` or
    ``wae_{regularizer}_z{d}``, then ``_softplus`` for a softplus decoder and ``_seedN`` for a
    seed other than 0."""
    if args.command == "vae":
        kind = args.encoder.replace("-", "_")
        if args.encoder not in OWN_ESTIMATOR:
            kind = f"{kind}_{args.estimator}"
        if args.frame_components:
            kind = f"{kind}_frame{args.frame_components}"
        if args.entropy_score != "network":
            kind = f"{kind}_{args.entropy_score}"
        if args.iwae_particles > 1:
            kind = f"{kind}_iwae{args.iwae_particles}"
    else:
        kind = args.regularizer
    activation = "" if args.decoder_activation == "tanh" else f"_{args.decoder_activation}"
    seed = "" if args.seed == 0 else f"_seed{args.seed}"
    return f"{args.command}_{kind}_z{args.latent_dim}{activation}{seed}"


def run_config(args):
    """What a checkpoint must match to be resumed. The decoder activation is absent for softplus,
    the only decoder when the first checkpoints were written, so that those still match."""
    if args.command == "vae":
        estimator = None if args.encoder in OWN_ESTIMATOR else args.estimator
        model = {"encoder": args.encoder, "estimator": estimator,
                 "kernel_samples": args.kernel_samples}
        if args.frame_components:  # absent at 0, as in the checkpoints written before the option
            model["frame_components"] = args.frame_components
        if args.entropy_score != "network":  # likewise
            model["entropy_score"] = args.entropy_score
        if args.iwae_particles > 1:  # likewise
            model["iwae_particles"] = args.iwae_particles
    else:
        model = {"regularizer": args.regularizer, "lam": args.lam}
    activation = {} if args.decoder_activation == "softplus" else {"decoder_activation": args.decoder_activation}
    return {
        "model": args.command,
        "data": "digits" if args.data is None else os.path.basename(os.path.normpath(args.data)),
        "latent_dim": args.latent_dim,
        **model,
        "hidden": list(args.hidden),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        **activation,
    }


def train(args, svi, data, name, key, *model_args):
    """Train, or resume from OUT_DIR/NAME.npz, on the training images; returns the
    :class:`~implicitvi.infer.TrainResult` and this run's wall time."""
    os.makedirs(args.out_dir, exist_ok=True)
    start = time.perf_counter()
    result = run_minibatch(
        svi, key, jnp.asarray(data.train.images), args.steps, *model_args,
        batch_size=args.batch_size, transform=datasets.binarize, chunk_size=args.chunk,
        checkpoint=args.checkpoint or os.path.join(args.out_dir, f"{name}.npz"),
        checkpoint_every=args.checkpoint_every, config=run_config(args), resume=args.resume,
        progress_bar=args.progress_bar,
    )
    seconds = time.perf_counter() - start
    last = result.losses[-min(1000, len(result.losses)) :].mean() / args.batch_size
    # With an implicit site the loss leaves out the entropy (only its gradient is known).
    print(f"{name}: {len(result.losses)} steps, {seconds:.1f} s this run, "
          f"loss per image over the last steps {last:.2f} nats")
    return result, seconds


def run(args):
    """Train and evaluate the configuration ``args``; write and return its results."""
    data = datasets.load_digits() if args.data is None else datasets.load_mnist(args.data)
    train_key, eval_key, _, fig_key = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    hidden = tuple(args.hidden)
    name = run_name(args)
    if args.command == "vae":
        svi = vae_svi(args.encoder, args.estimator, args.lr, args.decoder_activation, args.kernel_samples,
                      args.frame_components, args.entropy_score, args.iwae_particles)
        model_args = (args.latent_dim, hidden)
    else:
        svi = wae_svi(args.regularizer, args.lr, args.decoder_activation)
        model_args = (args.latent_dim, hidden, args.lam)
    result, seconds = train(args, svi, data, name, train_key, *model_args)
    params = svi.get_params(result.state)
    test_x = binarized_test_images(data)
    log_lik = decoder_log_likelihood(params, hidden, test_x.shape[-1], args.decoder_activation)
    ais_path = os.path.join(args.out_dir, f"{name}_ais.npz")
    if args.command == "vae":
        draws = encoder_draws(svi.guide, params, test_x[: max(args.iwae_rows, 64)], args.latent_dim,
                              hidden, eval_key, args.proposal_draws)
        # The encoder has no density; a Gaussian moment-matched to its draws, widened so that its
        # tails cover the posterior's, is a valid proposal for the bound.
        loc, scale = evaluation.gaussian_proposal(
            jnp.swapaxes(draws[:, : args.iwae_rows], 0, 1), widen=args.proposal_widen
        )
        results = evaluate(eval_key, args, log_lik, test_x, loc, scale, ais_path, len(result.losses))
        # The spread of q(z | x) over the first 64 test images: an implicit encoder that learns
        # to ignore its noise tends to 0 here.
        results["encoder_sd"] = float(np.std(np.asarray(draws[:, :64]), axis=0).mean())
        if args.encoder == "semi-implicit":
            agreement = semi_implicit_score_agreement(
                eval_key, params, result.state.mutable_state[state_name("z")]["score"], test_x[:64],
                hidden, frame_components=args.frame_components)
            results.update({f"score_corr_{k}": v for k, v in agreement.items()})
        codes = draws[0]
    else:
        codes = jax.jit(mlp(hidden, args.latent_dim)[1])(params["encoder$params"], test_x)
        # A deterministic encoder: the proposal is a Gaussian around each code, its scale a
        # fraction of the codes' spread over the test set.
        loc = codes[: args.iwae_rows]
        scale = jnp.broadcast_to(args.proposal_scale * codes.std(0), loc.shape)
        results = evaluate(eval_key, args, log_lik, test_x, loc, scale, ais_path, len(result.losses))
    decode = jax.jit(lambda z: jax.nn.sigmoid(decoder_net(hidden, test_x.shape[-1], args.decoder_activation)[1](
        params["decoder$params"], z)))
    save_figure(os.path.join(args.out_dir, f"{name}.png"), decode(jax.random.normal(fig_key, (64, args.latent_dim))),
                test_x, decode(codes[:64]), result.losses / args.batch_size, f"{name}: {len(result.losses)} steps")
    return report(args, name, results, len(result.losses), seconds)


def report(args, name, results, steps, seconds):
    """Print the results; write them to OUT_DIR/NAME.json and the per-image values, for paired
    comparisons on the same images, to OUT_DIR/NAME_per_image.npz."""
    per_image = {k: results.pop(k) for k in list(results) if k.endswith("_per_image")}
    if per_image:
        np.savez(os.path.join(args.out_dir, f"{name}_per_image.npz"), **per_image)
    results.update({"name": name, "steps": int(steps), "train_seconds_this_run": seconds})
    for k, v in results.items():
        print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    write_json(name, results, os.path.join(args.out_dir, f"{name}.json"))
    return results


def paper(args):
    """Run every configuration of ``args.configs`` (resuming where a checkpoint exists) and
    return the markdown table beside the paper's numbers."""
    results = {}
    for config in args.configs:
        flags = PAPER[config][0] + [
            "--data", args.data, "--out-dir", args.out_dir, "--steps", str(args.steps),
            "--iwae-rows", str(args.iwae_rows), "--ais-rows", str(args.ais_rows), "--no-progress-bar",
        ]
        parsed = parse_args(flags)
        parsed.resume = os.path.exists(os.path.join(args.out_dir, f"{run_name(parsed)}.npz"))
        results[config] = run(parsed)
        jax.clear_caches()
    write_json("mnist_vae_wae", results)
    rows = []
    for config, r in results.items():
        iwae = f"{r['iwae_nll']:.2f} ± {r['iwae_nll_se']:.2f} ({r['iwae_rows']})" if "iwae_nll" in r else "–"
        ais = f"{r['ais_nll']:.2f} ± {r['ais_nll_se']:.2f} ({r['ais_rows']})" if "ais_nll" in r else "–"
        rows.append([config, r["steps"], iwae, ais, PAPER[config][1] or "–"])
    return markdown_table(["model", "steps", "IWAE NLL (rows)", "AIS NLL (rows)", "paper (AIS)"], rows)


def main(args):
    if args.command == "compare":
        print(paired_table(args.paths))
    elif args.command == "paper":
        print(paper(args))
    else:
        return run(args)


def add_run_arguments(p, out_dir):
    p.add_argument("--data", default=None, help="mnist.pkl.gz or a directory with the MNIST IDX files (default: sklearn digits)")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--decoder-activation", choices=sorted(ACTIVATIONS), default="tanh")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chunk", type=int, default=500, help="steps per jitted chunk")
    p.add_argument("--checkpoint-every", type=int, default=5000)
    p.add_argument("--out-dir", default=out_dir)
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: OUT_DIR/NAME.npz)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--iwae-rows", type=int, default=10_000)
    p.add_argument("--iwae-samples", type=int, default=1000)
    p.add_argument("--ais-rows", type=int, default=0)
    p.add_argument("--ais-block", type=int, default=500,
                   help="AIS rows between saves of OUT_DIR/NAME_ais.npz, from which a run resumes")
    p.add_argument("--ais-temperatures", type=int, default=1000)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--ais-leapfrog", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    vae = sub.add_parser("vae", help="train and evaluate one VAE")
    add_run_arguments(vae, "vae_out")
    vae.add_argument("--encoder", choices=["implicit", "whitened", "semi-implicit", "gaussian"],
                     default="implicit")
    vae.add_argument("--estimator", choices=["ssm", "stein", "ssge"], default="ssm")
    vae.add_argument("--kernel-samples", type=int, default=100, help="encoder draws per x for stein/ssge")
    vae.add_argument("--frame-components", type=int, default=None,
                     help="semi-implicit encoder: mixing draws for the moment frame of its score "
                          "(default 64; 0: none, as the checkpoints written before the frame)")
    vae.add_argument("--entropy-score", choices=ENTROPY_SCORES, default="network",
                     help="semi-implicit encoder: its score network, the linearized score at each draw, "
                          "or the conditional score at the mode of the mixing noise")
    vae.add_argument("--iwae-particles", type=int, default=1,
                     help="gaussian encoder: train by the importance-weighted bound of this many draws "
                          "per image (default 1: the ELBO)")
    vae.add_argument("--proposal-draws", type=int, default=128, help="encoder draws for the IWAE proposal")
    vae.add_argument("--proposal-widen", type=float, default=1.5)
    wae = sub.add_parser("wae", help="train and evaluate one WAE")
    add_run_arguments(wae, "wae_out")
    wae.add_argument("--regularizer", choices=["ssm", "stein", "ssge", "mmd"], default="ssm")
    wae.add_argument("--lam", type=float, default=10.0, help="weight λ of the latent regularizer")
    wae.add_argument("--proposal-scale", type=float, default=0.1, help="IWAE proposal scale, relative to the codes' spread")
    table = sub.add_parser("paper", help="run the paper's configurations and print the table")
    table.add_argument("--data", required=True, help="mnist.pkl.gz or a directory with the MNIST IDX files")
    table.add_argument("--out-dir", default="mnist_runs")
    table.add_argument("--configs", nargs="+", choices=list(PAPER), default=list(PAPER))
    table.add_argument("--steps", type=int, default=100_000)
    table.add_argument("--iwae-rows", type=int, default=10_000)
    table.add_argument("--ais-rows", type=int, default=1000)
    pairs = sub.add_parser("compare", help="pair runs' per-image AIS NLLs against the first's")
    pairs.add_argument("paths", nargs="+", metavar="PER_IMAGE_NPZ")
    args = p.parse_args(argv)
    if args.command in ("vae", "wae") and args.latent_dim < 1:
        p.error(f"--latent-dim must be >= 1, got {args.latent_dim}")
    if args.command in ("vae", "wae") and args.ais_block < 1:
        p.error(f"--ais-block must be >= 1, got {args.ais_block}")
    if args.command == "vae" and args.frame_components is not None:
        if args.frame_components < 0:
            p.error(f"--frame-components must be >= 0, got {args.frame_components}")
        if args.frame_components and args.encoder != "semi-implicit":
            p.error(f"--frame-components applies to --encoder semi-implicit only, got --encoder {args.encoder}")
        if args.frame_components and args.entropy_score != "network":
            p.error(f"--frame-components applies to --entropy-score network only, got {args.entropy_score}")
    elif args.command == "vae":
        network = args.encoder == "semi-implicit" and args.entropy_score == "network"
        args.frame_components = 64 if network else 0
    if args.command == "vae" and args.entropy_score != "network" and args.encoder != "semi-implicit":
        p.error(f"--entropy-score applies to --encoder semi-implicit only, got --encoder {args.encoder}")
    if args.command == "vae" and args.iwae_particles < 1:
        p.error(f"--iwae-particles must be >= 1, got {args.iwae_particles}")
    if args.command == "vae" and args.iwae_particles > 1 and args.encoder != "gaussian":
        p.error(f"--iwae-particles applies to --encoder gaussian only, got --encoder {args.encoder}")
    if args.command == "wae" and args.lam <= 0:
        p.error(f"--lam must be > 0, got {args.lam}")
    return args


if __name__ == "__main__":
    main(parse_args())
