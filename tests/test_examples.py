"""Each example runs end to end with tiny arguments."""

import importlib.util
from pathlib import Path

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
