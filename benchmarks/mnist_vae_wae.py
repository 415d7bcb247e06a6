"""MNIST test log-likelihoods of VAEs with implicit encoders and of WAEs (Song et al., UAI 2019).

Trains (or resumes) every configuration with ``examples/vae.py`` / ``examples/wae.py`` — the
paper's setting: RMSProp 1e-3, batch 128, 100k steps, dynamic binarization — then evaluates the
test negative log-likelihood by the IWAE bound and by AIS (sigmoid schedule of 1000 temperatures,
16 chains, HMC with 10 leapfrog steps) on the first ``--ais-rows`` test images of a fixed
binarization, and prints a table next to the paper's numbers. Each configuration's checkpoint
and results live in ``--out-dir``; a re-run resumes or only re-evaluates.

    python benchmarks/mnist_vae_wae.py --data mnist.pkl.gz --out-dir runs --ais-rows 1000

``--compare`` instead pairs runs image by image: given the ``NAME_per_image.npz`` files the
examples save, it prints each run's AIS NLL minus the first run's on the test images both
scored. The images' own spread (a standard deviation of about 30 nats) dominates the standard
error of each run's mean, and pairing removes it.

    python benchmarks/mnist_vae_wae.py --compare runs/vae_implicit_ssm_z8_per_image.npz \
        runs/vae_implicit_stein_z8_per_image.npz runs/vae_gaussian_z8_per_image.npz
"""

from __future__ import annotations

import os

# Single-threaded OpenBLAS (LAPACK on the CPU) unless the caller chose otherwise: see
# examples/vae.py. It must be set before JAX loads its LAPACK: the examples' own setting comes too
# late when this driver loads them.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# name: (example, flags, the paper's NLL in nats; Song et al. 2019, Table 4)
CONFIGS = {
    "vae-elbo-8": ("vae", ["--encoder", "gaussian", "--latent-dim", "8"], 96.87),
    "vae-ssm-8": ("vae", ["--estimator", "ssm", "--latent-dim", "8"], 95.50),
    "vae-stein-8": ("vae", ["--estimator", "stein", "--latent-dim", "8"], 96.71),
    "vae-ssge-8": ("vae", ["--estimator", "ssge", "--latent-dim", "8"], 96.60),
    "vae-elbo-32": ("vae", ["--encoder", "gaussian", "--latent-dim", "32"], 89.06),
    "vae-ssm-32": ("vae", ["--estimator", "ssm", "--latent-dim", "32"], 89.25),
    "vae-stein-32": ("vae", ["--estimator", "stein", "--latent-dim", "32"], 91.84),
    "vae-ssge-32": ("vae", ["--estimator", "ssge", "--latent-dim", "32"], 94.67),
    "wae-ssm-8": ("wae", ["--regularizer", "ssm", "--latent-dim", "8"], 98.24),
    "wae-stein-8": ("wae", ["--regularizer", "stein", "--latent-dim", "8"], 99.05),
    "wae-ssge-8": ("wae", ["--regularizer", "ssge", "--latent-dim", "8"], 98.81),
    "wae-mmd-8": ("wae", ["--regularizer", "mmd", "--latent-dim", "8"], None),
    "wae-ssm-32": ("wae", ["--regularizer", "ssm", "--latent-dim", "32"], 90.37),
    "wae-stein-32": ("wae", ["--regularizer", "stein", "--latent-dim", "32"], 91.70),
    "wae-ssge-32": ("wae", ["--regularizer", "ssge", "--latent-dim", "32"], 92.55),
    "wae-mmd-32": ("wae", ["--regularizer", "mmd", "--latent-dim", "32"], None),
}


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(config, args):
    example, flags, _ = CONFIGS[config]
    module = load(example)
    argv = flags + [
        "--data", args.data, "--out-dir", args.out_dir, "--steps", str(args.steps),
        "--iwae-rows", str(args.iwae_rows), "--ais-rows", str(args.ais_rows), "--no-progress-bar",
    ]
    parsed = module.parse_args(argv)
    checkpoint = os.path.join(args.out_dir, f"{module.run_name(parsed)}.npz")
    if os.path.exists(checkpoint):
        parsed.resume = True
    results = module.main(parsed)
    jax.clear_caches()
    return results


def table(results):
    lines = [
        "| model | steps | IWAE NLL (rows) | AIS NLL (rows) | paper (AIS) |",
        "|---|---|---|---|---|",
    ]
    for config, r in results.items():
        paper = CONFIGS[config][2]
        iwae = f"{r['iwae_nll']:.2f} ± {r['iwae_nll_se']:.2f} ({r['iwae_rows']})" if "iwae_nll" in r else "–"
        ais = f"{r['ais_nll']:.2f} ± {r['ais_nll_se']:.2f} ({r['ais_rows']})" if "ais_nll" in r else "–"
        lines.append(f"| {config} | {r['steps']} | {iwae} | {ais} | {paper if paper else '–'} |")
    return "\n".join(lines)


def compare(paths):
    """Markdown table of per-image AIS NLLs paired against the first file's: on the first n test
    images that both runs scored, the mean of d = NLL(run) − NLL(first) and its standard error
    std(d) / √n."""
    first = np.load(paths[0])["ais_nll_per_image"]
    lines = [
        f"| run | images | AIS NLL | minus {run_label(paths[0])}, paired |",
        "|---|---|---|---|",
    ]
    for path in paths:
        nll = np.load(path)["ais_nll_per_image"]
        n = min(len(nll), len(first))
        d = nll[:n] - first[:n]
        se = d.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        lines.append(f"| {run_label(path)} | {n} | {nll[:n].mean():.2f} | {d.mean():+.2f} ± {se:.2f} |")
    return "\n".join(lines)


def run_label(path):
    return os.path.basename(path).removesuffix(".npz").removesuffix("_per_image")


def main(args):
    if args.compare:
        print(compare(args.compare))
        return
    if args.data is None:
        raise SystemExit("--data is required to train or evaluate (or give --compare)")
    os.makedirs(args.out_dir, exist_ok=True)
    results = {config: run(config, args) for config in args.configs}
    print(table(results))
    with open(os.path.join(args.out_dir, "table.json"), "w") as f:
        json.dump(results, f, indent=1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="mnist.pkl.gz or a directory with the MNIST IDX files")
    p.add_argument("--out-dir", default="mnist_runs")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--iwae-rows", type=int, default=10_000)
    p.add_argument("--ais-rows", type=int, default=1000)
    p.add_argument("--compare", nargs="+", metavar="PER_IMAGE_NPZ",
                   help="pair these runs' per-image AIS NLLs against the first's instead of running")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
