import numpy as np
import pytest
import reference
from helpers import KEY, RNG, Q, X

from implicitvi.estimators import SSGE


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(threshold=0.9, kernel="imq"),
        dict(num_eigen=6, eta=0.1),
        dict(num_eigen=60, eta=1e-3, bandwidth=1.5),
        dict(base="normal"),
        dict(num_eigen=6, eta=0.1, base="normal", kernel="imq"),
    ],
)
def test_ssge_matches_dense_reference(options):
    est = SSGE(**options)
    h = options.get("bandwidth") or reference.median_heuristic(X)
    state = est.init(KEY, X)
    for queries in (X, Q):
        expected, num_eigen = reference.ssge(
            X,
            queries,
            h,
            eta=options.get("eta", 0.0),
            num_eigen=options.get("num_eigen"),
            threshold=options.get("threshold", 0.99),
            name=options.get("kernel", "rbf"),
            base=options.get("base", "zero"),
        )
        assert int(state.num_eigen) == num_eigen
        np.testing.assert_allclose(est.score(state, queries), expected, rtol=1e-5, atol=1e-10)


def test_ssge_threshold_one_without_ridge_stays_finite():
    # K is numerically rank-deficient for tightly clustered points; eigenvalues at rounding level
    # are dropped instead of being inverted.
    x = RNG.normal(size=(80, 1)) * 1e-3
    est = SSGE(threshold=1.0, bandwidth=10.0)
    scores = est.score(est.init(KEY, x), x)
    assert np.all(np.isfinite(scores))


def test_too_many_eigenfunctions_is_named():
    with pytest.raises(ValueError, match=r"num_eigen must be at most the number of samples \(60\)"):
        SSGE(num_eigen=61).init(KEY, X)
