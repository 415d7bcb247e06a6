"""The reparameterized models the NUTS references run on describe the benchmark models.

For every model whose reference runs on a non-centered twin, a prior draw of the twin mapped by
``ref_to_model`` must give the observed sites the same log-likelihood under the model as under
the twin, and the mapped draws' prior quantiles must match the model's own prior draws.
"""

import jax
import numpy as np
import pytest
from models import MODELS
from numpyro import handlers
from numpyro.infer import Predictive
from posterior_accuracy import latent_sites

TWINNED = sorted(name for name, spec in MODELS.items() if spec.ref_to_model is not None)


def observed_log_likelihood(model, args, latents):
    """log p(data | latents): the model's observed sites given ``latents``."""
    free = set(latent_sites(model, args))
    trace = handlers.trace(handlers.condition(handlers.seed(model, 0), latents)).get_trace(*args)
    return sum(float(site["fn"].log_prob(site["value"]).sum()) for name, site in trace.items()
               if site["type"] == "sample" and name not in free)


@pytest.mark.slow  # a few seconds of compilation per model; it checks benchmark data, not the library
@pytest.mark.parametrize("name", TWINNED)
def test_reference_twin_maps_onto_the_model(name):
    spec = MODELS[name]
    args = spec.args()
    prior_args = args[:-1] + (None,) if args else args  # the observations left free
    num = 4000
    twin = Predictive(spec.ref_model, num_samples=num)(jax.random.PRNGKey(1), *prior_args)
    own = Predictive(spec.model, num_samples=num)(jax.random.PRNGKey(2), *prior_args)
    mapped = spec.ref_to_model(twin)
    assert sorted(mapped) == sorted(latent_sites(spec.model, args))
    twin_latents = latent_sites(spec.ref_model, args)
    for i in range(3):  # exact: single draws, the data observed, both parameterizations
        expected = observed_log_likelihood(spec.ref_model, args, {k: twin[k][i] for k in twin_latents})
        got = observed_log_likelihood(spec.model, args, {k: v[i] for k, v in mapped.items()})
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    levels = np.array([0.1, 0.5, 0.9])
    for site, value in mapped.items():  # in distribution: prior quantiles of every coordinate
        a = np.quantile(np.asarray(value).reshape(num, -1), levels, axis=0)
        b = np.quantile(np.asarray(own[site]).reshape(num, -1), levels, axis=0)
        assert np.all(np.abs(a - b) < 0.15 * (b[2] - b[0])), (site, a, b)
