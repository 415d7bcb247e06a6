"""Each example runs end to end with tiny arguments."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_score_estimation_example(tmp_path, capsys):
    example = load("score_estimation")
    out = tmp_path / "fields.png"
    example.main(example.parse_args(["--num-samples", "40", "--net-steps", "3", "--out", str(out)]))
    printed = capsys.readouterr().out
    for label in ("Stein", "SSGE", "SSM-VR net", "banana"):
        assert label in printed
    assert out.stat().st_size > 0


def test_implicit_vi_example(tmp_path, capsys):
    example = load("implicit_vi")
    out = tmp_path / "funnel.png"
    argv = ["--steps", "20", "--particles", "4", "--nuts-warmup", "50", "--nuts-samples", "100"]
    example.main(example.parse_args(argv + ["--out", str(out)]))
    printed = capsys.readouterr().out
    for label in ("NUTS", "AutoNormal", "AutoMultivariateNormal", "AutoImplicit"):
        assert label in printed
    assert out.stat().st_size > 0


TINY_AUTOENCODER = ["--steps", "20", "--chunk", "10", "--checkpoint-every", "10", "--iwae-rows", "8",
                    "--iwae-samples", "16", "--ais-rows", "2", "--ais-temperatures", "5", "--ais-chains", "2",
                    "--no-progress-bar"]


def test_vae_example_trains_resumes_and_evaluates(tmp_path, capsys):
    example = load("vae")
    argv = TINY_AUTOENCODER + ["--out-dir", str(tmp_path), "--proposal-draws", "16"]
    results = example.main(example.parse_args(argv))
    assert results["steps"] == 20 and np.isfinite(results["ais_nll"]) and np.isfinite(results["iwae_nll"])
    assert results["ais_nll_se"] >= 0 and results["iwae_nll_se"] > 0 and results["encoder_sd"] > 0
    per_image = np.load(tmp_path / "vae_implicit_ssm_z8_per_image.npz")
    assert per_image["ais_nll_per_image"].shape == (2,) and per_image["iwae_nll_per_image"].shape == (8,)
    np.testing.assert_allclose(per_image["ais_nll_per_image"].mean(), results["ais_nll"], rtol=1e-6)
    assert (tmp_path / "vae_implicit_ssm_z8.png").stat().st_size > 0
    # A re-run resumes; one with another latent size refuses the checkpoint.
    resumed = example.main(example.parse_args(argv + ["--resume", "--steps", "30"]))
    assert resumed["steps"] == 30
    with pytest.raises(ValueError, match="another configuration .*latent_dim: 8 in the checkpoint, 4 now"):
        checkpoint = str(tmp_path / "vae_implicit_ssm_z8.npz")
        example.main(example.parse_args(argv + ["--resume", "--latent-dim", "4", "--checkpoint", checkpoint]))


def test_vae_example_with_a_kernel_estimator_a_softplus_decoder_and_another_seed(tmp_path):
    example = load("vae")
    argv = TINY_AUTOENCODER + ["--out-dir", str(tmp_path), "--proposal-draws", "16", "--estimator", "stein",
                               "--kernel-samples", "4", "--decoder-activation", "softplus", "--seed", "1"]
    results = example.main(example.parse_args(argv))
    assert results["steps"] == 20 and np.isfinite(results["ais_nll"]) and np.isfinite(results["iwae_nll"])
    assert results["ais_nll_se"] >= 0 and results["iwae_nll_se"] > 0
    # A seed other than 0 names its own files.
    assert (tmp_path / "vae_implicit_stein_z8_softplus_seed1.png").stat().st_size > 0


def test_wae_example_with_score_and_mmd_regularizers(tmp_path):
    example = load("wae")
    for regularizer in ("ssm", "mmd"):
        argv = TINY_AUTOENCODER + ["--out-dir", str(tmp_path), "--regularizer", regularizer]
        results = example.main(example.parse_args(argv))
        assert results["steps"] == 20 and np.isfinite(results["ais_nll"])
        assert (tmp_path / f"wae_{regularizer}_z8.png").stat().st_size > 0


def test_autoencoder_examples_refuse_a_latent_dimension_below_one(capsys):
    for name in ("vae", "wae"):
        with pytest.raises(SystemExit):
            load(name).parse_args(["--latent-dim", "0"])
        assert "--latent-dim must be >= 1, got 0" in capsys.readouterr().err
