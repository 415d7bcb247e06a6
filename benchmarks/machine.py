r"""Measure a machine on any JAX backend in one command: one table of what the other benchmarks
measure at length, each at the size that matters and cut to fit about 8 minutes on two CPU cores.

* **Step cost:** one jitted ``svi.update`` of ``AutoImplicit`` (SSM) and ``AutoSemiImplicit``
  with ``ImplicitELBO``, over ``AutoMultivariateNormal`` with ``Trace_ELBO``, at 16 particles
  on :func:`models.stoch_vol` with ``D - 3`` time points (as ``step_cost.py``), the three timed
  in turn (``common.budgeted_times``) so that their ratio is taken under the same load.
* **VAE step:** one jitted ``svi.update`` of the VAEs of :mod:`autoencoders` at the MNIST scale
  of Song et al. (784 inputs, batch 128, z = 8, 256-256 networks) on random binary data: the
  Gaussian encoder (the ordinary ELBO) and the implicit encoder with SSM, Stein and SSGE (100
  draws per image), timed in turn.
* **AIS:** ``implicitvi.evaluation.ais_log_likelihood`` at the paper's settings (1000
  temperatures, 16 chains, 10 leapfrog steps) for the tanh decoder z = 8 → 256 → 256 → 784 on
  random binary images: test images per second after compilation, and the time all 10,000
  MNIST test images would take.
* **Kernel estimators:** one jitted ``update`` + ``score`` of Stein and SSGE with the
  median-heuristic bandwidth (``kernel_cost.estimator_call``) against the number of particles M
  at d = 50, timed in turn.
* **Tests** (``--tests``): the wall time of the fast test suite, ``python -m pytest -q``.

Each point is timed for as many rounds (up to ``--reps``) as fit in ``--budget`` seconds, judged
by its first timed round, and reports the median (``common.budgeted_times``).

Usage::

    python benchmarks/machine.py                  # → results/machine_cpu.json (machine_gpu.json on a GPU)
    python benchmarks/machine.py --quick          # smoke run, under a minute
    python benchmarks/machine.py --tests --json benchmarks/results/machine_gpu.json

On a CPU, XLA and OpenBLAS run single-threaded unless ``XLA_FLAGS`` / ``OPENBLAS_NUM_THREADS``
are set (see ``step_cost.py``).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import kernel_cost
import step_cost
from autoencoder_eval import decoder_log_likelihood
from autoencoders import decoder_net, vae_svi
from common import budgeted_times, fmt_ms, int_list, markdown_table, table, write_json
from models import KERNEL_NAMES, stoch_vol_data

from implicitvi import evaluation

ROOT = Path(__file__).resolve().parents[1]
GUIDES = (("implicit-ssm", "AutoImplicit (SSM)"), ("semi-implicit", "AutoSemiImplicit"))
BASELINE = "mvn"
VAES = (("gaussian", None, "Gaussian encoder (ELBO)"), ("implicit", "ssm", "implicit, SSM"),
        ("implicit", "stein", "implicit, Stein"), ("implicit", "ssge", "implicit, SSGE"))
DATA_DIM, PIXEL_P = 784, 0.13  # MNIST's size and roughly its share of pixels that are on


def timed_ms(calls: dict, args) -> tuple[dict[str, float], int]:
    """Median milliseconds of each call and the rounds timed (``common.budgeted_times`` with
    ``--reps`` rounds at most and ``--budget`` seconds)."""
    seconds, reps = budgeted_times(calls, args.reps, args.budget)
    return {k: 1e3 * v for k, v in seconds.items()}, reps


def bench_step_cost(args) -> list[dict]:
    """Milliseconds of each guide's and the baseline's step at every D, and their ratios."""
    cfg = argparse.Namespace(particles=args.particles, lr=1e-2, warmup=0)
    rows = []
    for dim in args.dims:
        data = stoch_vol_data(dim - 3)
        runs = {name: step_cost.compiled_update(name, data, cfg)
                for name in (BASELINE, *(g for g, _ in GUIDES))}
        calls = {name: (r["update"], (r["state"],)) for name, r in runs.items()}
        ms, reps = timed_ms(calls, args)
        for name, label in GUIDES:
            rows.append({"guide": label, "dim": dim, "particles": args.particles, "reps": reps,
                         "ms": ms[name], "baseline_ms": ms[BASELINE],
                         "ratio": ms[name] / ms[BASELINE]})
            print(f"step cost D={dim}: {label} {ms[name]:.2f} ms, MVN {ms[BASELINE]:.2f} ms",
                  flush=True)
    return rows


def random_images(key, rows: int) -> jax.Array:
    """Binary images (rows, 784), each pixel on with MNIST's average probability."""
    return jax.random.bernoulli(key, PIXEL_P, (rows, DATA_DIM)).astype(jnp.float32)


def bench_vae(args, key) -> list[dict]:
    """Milliseconds of one VAE training step for each encoder, timed in turn."""
    x = random_images(key, args.batch)
    hidden = tuple(args.hidden)
    calls = {}
    for encoder, estimator, label in VAES:
        svi = vae_svi(encoder, estimator, 1e-3, kernel_samples=args.kernel_samples)
        state = svi.init(key, x, args.latent_dim, hidden)
        update = jax.jit(lambda s, svi=svi: svi.update(s, x, args.latent_dim, hidden))
        calls[label] = (update, (state,))
    ms, reps = timed_ms(calls, args)
    print("VAE step: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), flush=True)
    return [{"encoder": k, "batch": args.batch, "latent_dim": args.latent_dim, "reps": reps,
             "ms": v} for k, v in ms.items()]


def bench_ais(args, key) -> dict:
    """Test images per second of AIS with a random decoder, timed on a second call."""
    k_params, k_x, k_ais = jax.random.split(key, 3)
    hidden = tuple(args.hidden)
    _, params = decoder_net(hidden, DATA_DIM)[0](k_params, (-1, args.latent_dim))
    log_lik = decoder_log_likelihood({"decoder$params": params}, hidden, DATA_DIM, "tanh")
    x = random_images(k_x, args.ais_rows)

    def run():
        return evaluation.ais_log_likelihood(
            k_ais, log_lik, x, args.latent_dim, schedule=args.ais_temperatures,
            num_chains=args.ais_chains, num_leapfrog=args.ais_leapfrog,
            batch_size=args.ais_rows).log_likelihood

    start = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - start
    start = time.perf_counter()
    ll = jax.block_until_ready(run())
    seconds = time.perf_counter() - start
    rate = args.ais_rows / seconds
    print(f"AIS: {args.ais_rows} images in {seconds:.1f} s ({rate:.2f} images/s)", flush=True)
    return {"rows": args.ais_rows, "temperatures": args.ais_temperatures,
            "chains": args.ais_chains, "leapfrog": args.ais_leapfrog, "seconds": seconds,
            "first_call_seconds": first, "images_per_second": rate,
            "test_set_hours": 10_000 / rate / 3600, "finite": bool(jnp.isfinite(ll).all())}


def bench_kernels(args, key) -> list[dict]:
    """Milliseconds of Stein's and SSGE's ``update`` + ``score`` at every M, timed in turn."""
    rows = []
    for num in args.kernel_m:
        x = jax.random.normal(jax.random.fold_in(key, num), (num, args.kernel_dim))
        calls = {name: kernel_cost.estimator_call(name, key, x) for name in KERNEL_NAMES}
        ms, reps = timed_ms(calls, args)
        rows.append({"dim": args.kernel_dim, "particles": num, "reps": reps, **ms})
        print(f"kernels M={num}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()), flush=True)
    return rows


def bench_tests() -> dict:
    """Wall time of ``python -m pytest -q`` from the repository root, and its summary line."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else ""
    print(f"tests: {summary} ({seconds:.0f} s wall)", flush=True)
    return {"seconds": seconds, "returncode": proc.returncode, "summary": summary}


def duration(seconds: float) -> str:
    """``s`` below two minutes, ``min`` below two hours, else ``h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def step_rows(out: dict) -> list[list[str]]:
    """Each guide's step over AutoMultivariateNormal's, and both in milliseconds."""
    rows = []
    for r in out["step_cost"]:
        result = f"{r['ratio']:.2f}× ({fmt_ms(r['ms'])} / {fmt_ms(r['baseline_ms'])} ms)"
        size = f"D = {r['dim']}, {r['particles']} particles"
        rows.append([f"step / AutoMultivariateNormal step: {r['guide']}", size, result])
    return rows


def vae_rows(out: dict) -> list[list[str]]:
    """Milliseconds per VAE training step, one row an encoder."""
    return [[f"VAE training step: {r['encoder']}",
             f"784 → z = {r['latent_dim']}, batch {r['batch']}", f"{fmt_ms(r['ms'])} ms"]
            for r in out["vae"]]


def ais_row(out: dict) -> list[str]:
    """AIS images per second and the projected time for the 10,000 MNIST test images."""
    a = out["ais"]
    size = (f"{a['temperatures']} temperatures, {a['chains']} chains, {a['leapfrog']} leapfrog, "
            f"{a['rows']} images")
    test_set = duration(a["test_set_hours"] * 3600)
    result = f"{a['images_per_second']:.3g} images/s; 10,000 test images: {test_set}"
    return ["AIS, z = 8 decoder", size, result]


def kernel_rows(out: dict) -> list[list[str]]:
    """Milliseconds of each kernel estimator against M, with the log-log slope from the row
    before."""
    rows = []
    for name, label in (("stein", "Stein"), ("ssge", "SSGE")):
        prev = None
        for r in out["kernels"]:
            slope = "" if prev is None else " (slope {:.2f})".format(
                math.log(r[name] / prev[name]) / math.log(r["particles"] / prev["particles"]))
            rows.append([f"{label} update + score", f"M = {r['particles']}, d = {r['dim']}",
                         f"{fmt_ms(r[name])} ms{slope}"])
            prev = r
    return rows


def machine_table(out: dict) -> dict:
    """The one table: what was measured, at what size, and the result."""
    rows = step_rows(out) + vae_rows(out) + [ais_row(out)] + kernel_rows(out)
    if out.get("tests"):
        t = out["tests"]
        summary = f"{t['summary'] or 'no summary'}, exit {t['returncode']}"
        rows.append(["fast test suite", "python -m pytest -q",
                     f"{duration(t['seconds'])} ({summary})"])
    rows.append(["whole run", f"backend {out['backend']} ({out['device_kind']})",
                 duration(out["seconds"])])
    return table(["measurement", "size", "result"], rows, "llr")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run on small sizes")
    p.add_argument("--tests", action="store_true", help="also time the fast test suite")
    p.add_argument("--dims", type=int_list, default=[103, 503, 2000], help="step-cost D values")
    p.add_argument("--particles", type=int, default=16, help="step-cost particles")
    p.add_argument("--reps", type=int, default=20, help="most timed rounds of a point")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed rounds a point")
    p.add_argument("--batch", type=int, default=128, help="VAE batch")
    p.add_argument("--latent-dim", type=int, default=8, help="VAE and AIS latent dimension")
    p.add_argument("--hidden", type=int_list, default=[256, 256], help="VAE and AIS widths")
    p.add_argument("--kernel-samples", type=int, default=100, help="Stein/SSGE draws per image")
    p.add_argument("--ais-rows", type=int, default=None,
                   help="images of the timed AIS call (default 2 on a CPU, else 100)")
    p.add_argument("--ais-temperatures", type=int, default=1000)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--ais-leapfrog", type=int, default=10)
    p.add_argument("--kernel-dim", type=int, default=50, help="d of the kernel-cost check")
    p.add_argument("--kernel-m", type=int_list, default=[500, 1000, 2000, 5000],
                   help="M values of the kernel-cost check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="results file (default results/machine_BACKEND.json)")
    args = p.parse_args(argv)
    if args.ais_rows is None:
        args.ais_rows = 2 if jax.default_backend() == "cpu" else 100
    if args.quick:
        args.dims, args.particles, args.reps, args.budget = [13], 4, 3, 1.0
        args.batch, args.hidden, args.kernel_samples = 16, [32], 10
        args.ais_rows, args.ais_temperatures, args.ais_chains, args.ais_leapfrog = 4, 20, 4, 2
        args.kernel_m = [50, 100]
    return args


def main(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    keys = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    out = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "section_seconds": {}}
    sections = {"step_cost": lambda: bench_step_cost(args), "vae": lambda: bench_vae(args, keys[0]),
                "ais": lambda: bench_ais(args, keys[1]), "kernels": lambda: bench_kernels(args, keys[2])}
    if args.tests:
        sections["tests"] = bench_tests
    for name, fn in sections.items():
        t0 = time.perf_counter()
        out[name] = fn()
        out["section_seconds"][name] = time.perf_counter() - t0
        print(f"-- {name}: {out['section_seconds'][name]:.0f} s", flush=True)
    out["seconds"] = time.perf_counter() - start
    out["tables"] = {"machine": machine_table(out)}
    print(markdown_table(**out["tables"]["machine"]))
    out["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
    path = write_json(f"machine_{out['backend']}", out, args.json)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main(parse_args())
