"""Each benchmark script at its smallest configuration writes a results file with its tables.

The runs that compile many programs (tens of seconds on two busy cores) are marked ``slow``.
"""

import compare_guides
import gaussian_score_matching
import kernel_cost
import lgcp_scale
import posterior_accuracy
import pytest
import score_estimation
import ssm_density
import step_cost
from common import read_json, write_json


def tables(path):
    data = read_json(path)
    assert {"date", "command", "cpu"} <= set(data["machine"])
    return data["results"]["tables"]


@pytest.mark.slow
def test_score_estimation(tmp_path):
    out = tmp_path / "r.json"
    score_estimation.main(score_estimation.parse_args(
        ["--targets", "gaussian", "--dims", "3", "--particles", "100", "--kernels", "stein",
         "--objectives", "ssm,fd_ssm", "--hidden", "8", "--steps", "4", "--reps", "1",
         "--time-reps", "1", "--eval-samples", "50", "--json", str(out)]))
    t = tables(out)
    assert set(t) == {"error", "wall_time", "stream", "fd_vs_ssm"}
    assert t["error"]["rows"][0][:3] == ["gaussian", "3", "100"]


@pytest.mark.slow
def test_kernel_cost(tmp_path):
    out = tmp_path / "r.json"
    kernel_cost.main(kernel_cost.parse_args(
        ["--scaling-dim", "3", "--scaling-particles", "20,40", "--scaling-dims", "3",
         "--scaling-dim-particles", "20", "--scaling-reps", "1", "--energy-dims", "2",
         "--energy-particles", "10", "--hidden", "4", "--time-reps", "1", "--json", str(out)]))
    t = tables(out)
    assert [r[1] for r in t["against_m"]["rows"]] == ["20", "40"]
    assert t["energy"]["rows"][0][0] == "2"


@pytest.mark.slow
def test_gaussian_score_matching(tmp_path):
    out = tmp_path / "r.json"
    gaussian_score_matching.main(gaussian_score_matching.parse_args(
        ["--dim", "2", "--sizes", "50", "--n", "50", "--steps", "2", "--json", str(out)]))
    assert len(tables(out)["by_steps"]["rows"]) == len(gaussian_score_matching.METHODS)


@pytest.mark.slow
def test_ssm_density(tmp_path):
    out = tmp_path / "r.json"
    ssm_density.main(ssm_density.parse_args(
        ["--dims", "2", "--steps", "3", "--methods", "ssm_vr,dsm", "--train", "64", "--test", "20",
         "--hidden", "4", "--layers", "1", "--time-reps", "1", "--json", str(out)]))
    assert [r[2] for r in tables(out)["by_dim"]["rows"]] == [
        "true density", "untrained N(0, I)", "SSM-VR", "DSM"]


@pytest.mark.slow
def test_posterior_accuracy(tmp_path):
    out = tmp_path / "r.json"
    posterior_accuracy.main(
        ["--quick", "--guides", "normal", "--steps", "5", "--warmup", "20", "--samples", "20",
         "--draws", "20", "--cache-dir", str(tmp_path), "--json", str(out)])
    rows = tables(out)["eight_schools_lr0.01"]["rows"]
    assert [r[0] for r in rows] == ["NUTS floor (chain 2 vs chain 1)", "AutoNormal"]


@pytest.mark.slow
def test_step_cost(tmp_path):
    out = tmp_path / "r.json"
    step_cost.main(["--big-dim", "10", "--steps", "2", "--warmup", "1", "--particles", "2",
                    "--json", str(out)])
    n = len(step_cost.CONFIGS)
    assert [r[1] for r in tables(out)["step_cost"]["rows"]] == ["103"] * n + ["13"] * n


@pytest.mark.slow
def test_lgcp_scale(tmp_path):
    out = tmp_path / "r.json"
    lgcp_scale.main(lgcp_scale.parse_args(
        ["--quick", "--dims", "16", "--guides", "implicit-ssm,normal", "--json", str(out)]))
    rows = read_json(out)["results"]["rows"]
    assert [(r["guide"], r["dim"]) for r in rows] == [("AutoImplicit", 16), ("AutoNormal", 16)]
    assert all(r["step_ms"] > 0 and r["compile_s"] > 0 and r["params"] > 0 for r in rows)
    assert rows[0]["score_ms"] > 0 and rows[0]["transform_ms"] > 0
    assert all(r["memory"] is None or r["memory"] > 0 for r in rows)
    table_rows = tables(out)["scale"]["rows"]
    assert [r[:2] for r in table_rows] == [[r["guide"], str(r["dim"])] for r in rows]
    assert table_rows[0][6] != "—" and table_rows[1][6] == "—"  # score estimator: AutoImplicit only


def test_lgcp_scale_skips_guides_by_their_memory():
    # float32, 8 copies of a D × D factor: 3.2 GB at D = 10,000, 51 GB at D = 40,000
    assert lgcp_scale.skip_reason("mvn", 10_000, 16, max_gb=6) is None
    reason = lgcp_scale.skip_reason("implicit-ssm", 40_000, 16, max_gb=6)
    assert reason.startswith("skipped: D×D Cholesky factor needs 51.") and "6 GB" in reason
    assert lgcp_scale.skip_reason("normal", 40_000, 16, max_gb=6) is None
    assert lgcp_scale.parts("semi-implicit", 10)["mixing MLP"] == 10 * 64 + 64 + 64 * 64 + 64 + 64 * 20 + 20


def test_compare_guides_picks_the_best_baseline_per_metric_and_rate(tmp_path):
    def runs(guide, lr, mean, sd, error=None):
        return [{"guide": guide, "lr": lr, "seed": i, "error": error, "non_finite": error is not None,
                 **({} if error else {"mean_err": m, "sd_err": s})} for i, (m, s) in enumerate(zip(mean, sd))]

    blocks = [
        {"model": "m", "lr": 0.01, "guides": {
            "mvn": runs("mvn", 0.01, [0.3, 0.1, 0.2], [0.5, 0.5, 0.5]),
            "iaf": runs("iaf", 0.01, [0.4, 0.4, 0.4], [0.2, 0.3, 0.1]),
            "implicit-ssm": runs("implicit-ssm", 0.01, [0.0] * 3, [0.0] * 3)}},  # not a baseline
        {"model": "m", "lr": 0.001, "guides": {"mvn": runs("mvn", 0.001, [0.05] * 3, [0.9] * 3)}},
    ]
    first = write_json("posterior_accuracy", {"blocks": blocks}, tmp_path / "a.json")
    ours = [{"model": "m", "lr": 0.01, "guides": {
        "semi-implicit": runs("semi-implicit", 0.01, [0.15, 0.25, 0.35], [0.1] * 3)
        + runs("semi-implicit", 0.01, [0.0], [0.0], error="FloatingPointError: x")}}]
    second = write_json("posterior_accuracy", {"blocks": ours}, tmp_path / "b.json")
    out = tmp_path / "c.json"
    compare_guides.main([str(first), str(second), "--json", str(out)])
    t = tables(out)
    assert t["lr0.01"]["rows"] == [["m", "0.200 (AutoMultivariateNormal)", "0.250",
                                    "0.200 (AutoIAFNormal)", "0.100", "1/4"]]
    assert t["best_rate"]["rows"] == [["m", "0.050 (AutoMultivariateNormal)", "0.250",
                                       "0.200 (AutoIAFNormal)", "0.100"]]
    # A further guide's medians beside the chosen one's, per metric.
    compare_guides.main([str(first), str(second), "--also", "implicit-ssm", "--json", str(out)])
    t = tables(out)
    assert t["lr0.01"]["header"][1:4] == ["best baseline mean err", "AutoImplicit (SSM) mean err",
                                          "AutoSemiImplicit mean err"]
    assert t["lr0.01"]["rows"] == [["m", "0.200 (AutoMultivariateNormal)", "0.000", "0.250",
                                    "0.200 (AutoIAFNormal)", "0.000", "0.100", "1/4"]]


@pytest.mark.slow
def test_machine(tmp_path):
    import math

    import machine

    out = tmp_path / "r.json"
    machine.main(machine.parse_args(["--quick", "--json", str(out)]))
    data = read_json(out)
    results = data["results"]
    assert results["backend"] == data["machine"]["backend"]
    ratios = [r["ratio"] for r in results["step_cost"]]
    assert len(ratios) == len(machine.GUIDES) and all(0 < r < math.inf for r in ratios)
    assert [r["encoder"] for r in results["vae"]] == [label for *_, label in machine.VAES]
    assert all(0 < r["ms"] < math.inf for r in results["vae"])
    assert results["ais"]["finite"] and 0 < results["ais"]["images_per_second"] < math.inf
    assert [r["particles"] for r in results["kernels"]] == [50, 100]
    rows = tables(out)["machine"]["rows"]
    assert len(rows) == len(ratios) + len(machine.VAES) + 1 + 2 * 2 + 1
