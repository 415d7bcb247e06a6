import numpy as np
import pytest
import reference
from helpers import KEY, Q, X

from implicitvi.estimators import Stein


@pytest.mark.parametrize("base", ["zero", "normal"])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("bandwidth", [None, 0.7])
def test_stein_matches_dense_reference(kernel, bandwidth, base):
    est = Stein(bandwidth=bandwidth, eta=0.05, kernel=kernel, base=base)
    h = reference.median_heuristic(X) if bandwidth is None else bandwidth
    state = est.init(KEY, X)
    np.testing.assert_allclose(state.bandwidth, h, rtol=1e-12)
    np.testing.assert_allclose(
        est.score(state, X), reference.stein_in_sample(X, h, 0.05, kernel, base), rtol=1e-5, atol=1e-10
    )
    np.testing.assert_allclose(
        est.score(state, Q),
        reference.stein_out_of_sample(X, Q, h, 0.05, kernel, base),
        rtol=1e-5,
        atol=1e-10,
    )
