"""The MNIST benchmark driver's paired comparison of per-image results."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "mnist_vae_wae.py"
spec = importlib.util.spec_from_file_location("mnist_vae_wae", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_compare_pairs_runs_image_by_image_on_the_images_both_scored(tmp_path, capsys):
    first = np.array([90.0, 120.0, 60.0, 100.0])
    # The second run is worse by 1 or 3 nats per image: mean 2, sample sd 2/√3, so se 1/√3.
    second = first + np.array([1.0, 3.0, 1.0, 3.0])
    # The third scored two more images; only the first four are paired.
    third = np.concatenate([first - 0.5, [500.0, 500.0]])
    paths = []
    for name, nll in (("a", first), ("b", second), ("c", third)):
        path = tmp_path / f"{name}_per_image.npz"
        np.savez(path, ais_nll_per_image=nll)
        paths.append(str(path))
    bench.main(bench.parse_args(["--compare", *paths]))
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "| run | images | AIS NLL | minus a, paired |"
    assert rows[2] == "| a | 4 | 92.50 | +0.00 ± 0.00 |"
    assert rows[3] == f"| b | 4 | 94.50 | +2.00 ± {1 / np.sqrt(3):.2f} |"
    assert rows[4] == "| c | 4 | 92.00 | -0.50 ± 0.00 |"


def test_running_without_data_or_compare_is_refused():
    with pytest.raises(SystemExit, match="--data is required"):
        bench.main(bench.parse_args([]))
