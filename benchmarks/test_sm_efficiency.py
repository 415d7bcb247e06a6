"""The score-matching efficiency benchmark: its estimators and its theory, against independent
computations (hand-derived scores and NumPy brute force) and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sm_efficiency as bench
import sm_estimators as estimators
import sm_theory as theory
from common import read_json

# One sample shape for every fit, so each (family, method) is compiled once.
REPS, N = 3, 300


def draw(name, s, seed=0):
    """Samples from p_θ* drawn with NumPy (not the benchmark's samplers)."""
    rng = np.random.default_rng(seed)
    if name == "logistic":
        return rng.logistic(0.0, math.sqrt(3 * (1 + s**2)) / math.pi, (REPS, N))
    return s * rng.choice([-1.0, 1.0], (REPS, N)) + rng.standard_normal((REPS, N))


# Per-sample losses written out by hand, independently of the benchmark's autodiff, as
# functions of a parameter grid `t` (column) and the data `x` (row).


def nll_mixture_mean(x, t, s):
    return -np.log(0.5 * np.exp(-0.5 * (x - t) ** 2) + 0.5 * np.exp(-0.5 * (x + t) ** 2))


def nll_mixture_weight(x, a, s):
    w = 1 / (1 + np.exp(-a))
    return -np.log(w * np.exp(-0.5 * (x - s) ** 2) + (1 - w) * np.exp(-0.5 * (x + s) ** 2))


def nll_logistic(x, t, s):
    b = math.sqrt(3 * (1 + s**2)) / math.pi
    u = (x - t) / b
    return u + 2 * np.log1p(np.exp(-u))


def sm_mixture_mean(x, t, s):
    # ψ = −x + t tanh(tx), ψ' = −1 + t² sech²(tx).
    psi = -x + t * np.tanh(t * x)
    return 0.5 * psi**2 - 1 + t**2 / np.cosh(t * x) ** 2


def sm_mixture_weight(x, a, s):
    # With r = w φ(x−s) / p(x) the responsibility of the right mode: ψ = −x + s(2r − 1) and,
    # since r' = 2s r(1 − r), ψ' = −1 + 4s² r(1 − r).
    w = 1 / (1 + np.exp(-a))
    right, left = w * np.exp(-0.5 * (x - s) ** 2), (1 - w) * np.exp(-0.5 * (x + s) ** 2)
    r = right / (right + left)
    psi = -x + s * (2 * r - 1)
    return 0.5 * psi**2 - 1 + 4 * s**2 * r * (1 - r)


def sm_logistic(x, t, s):
    # ψ = −tanh(u/2)/b, ψ' = −sech²(u/2)/(2b²), so ℓ = (tanh²(u/2) − ½)/b².
    b = math.sqrt(3 * (1 + s**2)) / math.pi
    th = np.tanh((x - t) / (2 * b))
    return (th**2 - 0.5) / b**2


CASES = {  # family, setting, brute-force range, MLE loss, SM loss
    "mixture-mean": (1.5, (0.01, 4.0), nll_mixture_mean, sm_mixture_mean),
    "mixture-weight": (2.0, (-4.0, 4.0), nll_mixture_weight, sm_mixture_weight),
    "logistic": (1.0, (-1.5, 1.5), nll_logistic, sm_logistic),
}


def brute_force(loss, x, s, lo, hi, num=8001):
    """Minimiser of mean loss over a fine grid, then over a finer grid around it."""
    for _ in range(2):
        t = np.linspace(lo, hi, num)
        values = np.mean(loss(x[None, :], t[:, None], s), axis=1)
        k = int(np.argmin(values))
        step = t[1] - t[0]
        lo, hi = t[max(k - 1, 0)], t[min(k + 1, num - 1)]
    return t[k], step


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("method", ["mle", "sm"])
def test_fit_matches_brute_force(name, method):
    s, (lo, hi), nll, sm = CASES[name]
    x = draw(name, s)
    est = estimators.fit(estimators.FAMILIES[name], method, x, s)
    assert est.theta.shape == (REPS,)
    assert bool(jnp.all(estimators.verified(est)))
    for i in range(REPS):
        ref, step = brute_force(nll if method == "mle" else sm, x[i], s, lo, hi)
        assert abs(float(est.theta[i]) - ref) <= 2 * step


def test_mle_solves_score_equation():
    # ∂θ log p = −θ + x tanh(θx), so the mixture-mean MLE solves mean(x tanh(θx)) = θ.
    s = 1.5
    x = draw("mixture-mean", s, seed=1)
    theta = np.asarray(estimators.fit(estimators.FAMILIES["mixture-mean"], "mle", x, s).theta)
    residual = np.mean(x * np.tanh(theta[:, None] * x), axis=1) - theta
    np.testing.assert_allclose(residual, 0.0, atol=1e-10)


def gaussian_log_density(x, theta, sigma):
    return -0.5 * ((x - theta) / sigma) ** 2 - jnp.log(sigma) - 0.5 * math.log(2 * math.pi)


GAUSSIAN = estimators.Family(
    "gaussian", gaussian_log_density, lambda s: 0.0,
    lambda key, s, shape: s * jax.random.normal(key, shape),
    lambda x, s: (jnp.min(x), jnp.max(x)), lambda s: (-12.0 * s, 12.0 * s),
)


@pytest.mark.parametrize("method", ["mle", "sm"])
def test_gaussian_location_estimators_are_the_sample_mean(method):
    # ψ = −(x − θ)/σ², ψ' = −1/σ²: J(θ) = mean (x − θ)²/(2σ⁴) − 1/σ², minimised at x̄.
    x = 2.0 * np.random.default_rng(2).standard_normal((REPS, N)) + 0.3
    est = estimators.fit(GAUSSIAN, method, x, 2.0)
    np.testing.assert_allclose(est.theta, x.mean(axis=1), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_gaussian_location_theory(sigma):
    assert theory.fisher_information(GAUSSIAN, sigma) == pytest.approx(1 / sigma**2, rel=1e-8)
    assert theory.asymptotic_variance(GAUSSIAN, "sm", sigma) == pytest.approx(sigma**2, rel=1e-8)


def test_logistic_theory_closed_form():
    # t = tanh(u/2) is uniform on (−1, 1) under the logistic: I = 1/(3b²) and the SM sandwich
    # E[t²(1−t²)²] / (E[(1−3t²)(1−t²)]/2)² · b² = (8/105) / (2/15)² · b² = 30b²/7.
    s = 1.0
    b2 = 3 * (1 + s**2) / math.pi**2
    family = estimators.FAMILIES["logistic"]
    assert theory.asymptotic_variance(family, "mle", s) == pytest.approx(3 * b2, rel=1e-8)
    assert theory.asymptotic_variance(family, "sm", s) == pytest.approx(30 * b2 / 7, rel=1e-8)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_poincare_constant_of_gaussian(sigma):
    # Var f ≤ σ² E f'² for N(0, σ²), with equality at f(x) = x.
    x = np.linspace(-12 * sigma, 12 * sigma, 20001)
    assert theory.poincare_constant(x, -0.5 * (x / sigma) ** 2) == pytest.approx(sigma**2, rel=1e-5)


def test_fit_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        estimators.fit(estimators.FAMILIES["logistic"], "mom", np.zeros((REPS, N)), 1.0)


def test_main_runs(tmp_path, capsys):
    out = tmp_path / "fig.png"
    # The logistic fits and theory at s = 1 are compiled by the tests above.
    argv = ["--reps", str(REPS), "--n", str(N), "--settings", "1", "--families", "logistic",
            "--boot", "50", "--out", str(out), "--json", str(tmp_path / "r.json")]
    rows = bench.main(bench.parse_args(argv))
    assert [r.family for r in rows] == ["logistic"]
    assert rows[0].theory_sm / rows[0].theory_mle == pytest.approx(10 / 7, rel=1e-8)
    assert "| 1 | 0 |" in capsys.readouterr().out
    assert out.stat().st_size > 0
    table = read_json(tmp_path / "r.json")["results"]["tables"]["logistic"]
    assert table["rows"][0][:2] == ["1", "0"]
