"""Particles and batches sharded over a mesh of four CPU devices.

The number of host devices is fixed when JAX starts, so the fits run in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (this file, run as a script). There each
fit runs twice from the same key, on one device and sharded over the four (the same compiled
update stepped in a loop, whose program is also searched for its partitioning), and both results
come back to the test: they must agree to floating-point tolerance (only the order of the reductions
over particles differs), and the sharded step must be compiled as a partitioned program.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_COMPILE, run_as_script

STEPS = 20
DEVICES = 4


def _script(out):
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    import optax
    from helpers import X_REG, Y_REG, regression
    from jax.sharding import Mesh
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    from implicitvi.infer import AutoSemiImplicit, ImplicitELBO, run_minibatch

    assert jax.device_count() == DEVICES, jax.devices()
    report, arrays = {}, {}

    def svi_for(mesh):
        elbo = ImplicitELBO(num_particles=8, mesh=mesh)
        return SVI(regression, AutoSemiImplicit(regression), optax.adam(1e-2), elbo)

    for label, mesh in [("one", None), ("mesh", Mesh(jax.devices(), ("p",)))]:
        svi = svi_for(mesh)
        state = svi.init(jax.random.PRNGKey(0), X_REG, Y_REG)
        update = jax.jit(lambda s, svi=svi: svi.update(s, X_REG, Y_REG)).lower(state).compile()
        if mesh is not None:
            report["svi_partitions"] = f"num_partitions={DEVICES}" in update.as_text()
        losses = []
        for _ in range(STEPS):
            state, loss = update(state)
            losses.append(loss)
        arrays[f"svi/{label}/losses"] = jnp.stack(losses)
        for name, leaf in jax.tree_util.tree_leaves_with_path(svi.get_params(state)):
            arrays[f"svi/{label}/{jax.tree_util.keystr(name)}"] = leaf

    data = jnp.asarray(np.random.default_rng(0).normal(2.0, 1.0, size=(40, 3)), jnp.float32)

    def location_model(x):
        mu = numpyro.sample("mu", dist.Normal(0, 10).expand([3]).to_event(1))
        with numpyro.plate("batch", x.shape[0]):
            numpyro.sample("x", dist.Normal(mu, 1).to_event(1), obs=x)

    for label, mesh in [("one", None), ("local", "local")]:
        svi = SVI(location_model, AutoNormal(location_model), optax.adam(0.05), Trace_ELBO())
        result = run_minibatch(svi, jax.random.PRNGKey(1), data, STEPS, batch_size=8,
                               chunk_size=10, progress_bar=False, mesh=mesh)
        arrays[f"batches/{label}/losses"] = result.losses
        arrays[f"batches/{label}/loc"] = svi.get_params(result.state)["mu_auto_loc"]

    errors = {}
    for name, call in {
        "particles": lambda: ImplicitELBO(num_particles=6, mesh="local"),
        "empty": lambda: ImplicitELBO(num_particles=8, mesh=[]),
        "kind": lambda: ImplicitELBO(num_particles=8, mesh="gpu"),
        "not_devices": lambda: ImplicitELBO(num_particles=8, mesh=["cpu"]),
        "empty_mesh": lambda: ImplicitELBO(num_particles=8, mesh=Mesh(np.zeros(0, object), ("p",))),
        "batch": lambda: run_minibatch(svi, jax.random.PRNGKey(1), data, 2, batch_size=6,
                                       progress_bar=False, mesh="local"),
    }.items():
        try:
            call()
            errors[name] = None
        except (ValueError, TypeError) as err:
            errors[name] = f"{type(err).__name__}: {err}"
    report["errors"] = errors
    np.savez(Path(out) / "fits.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    print(json.dumps(report))


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    flags = f"--xla_force_host_platform_device_count={DEVICES} {FAST_COMPILE}"
    return run_as_script(__file__, tmp_path_factory.mktemp("sharding"), xla_flags=flags)


def test_sharded_particles_agree_with_one_device(sharded_run):
    fits = sharded_run["fits"]
    names = [k.removeprefix("svi/one/") for k in fits if k.startswith("svi/one/")]
    assert "losses" in names and len(names) > 3
    for name in names:
        # 20 Adam steps; the per-step difference is float32 rounding (~1e-7 relative).
        np.testing.assert_allclose(fits[f"svi/mesh/{name}"], fits[f"svi/one/{name}"],
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    assert sharded_run["svi_partitions"], "the sharded SVI step was not compiled for 4 devices"


def test_sharded_batches_agree_with_one_device(sharded_run):
    fits = sharded_run["fits"]
    for name in ("losses", "loc"):
        np.testing.assert_allclose(fits[f"batches/local/{name}"], fits[f"batches/one/{name}"],
                                   rtol=1e-4, atol=1e-5, err_msg=name)


def test_meshes_that_do_not_fit_are_named(sharded_run):
    errors = sharded_run["errors"]
    assert "num_particles (6) must be a multiple of the 4 devices" in errors["particles"]
    assert "ValueError: mesh: the device list is empty" == errors["empty"]
    assert "ValueError: mesh must be None, 'local', a sequence of devices or a jax.sharding.Mesh, got 'gpu'" == errors["kind"]
    assert "TypeError: mesh must be None, 'local', a sequence of devices or a jax.sharding.Mesh, got list" == errors["not_devices"]
    assert "ValueError: mesh has no devices" == errors["empty_mesh"]
    assert "batch_size (6) must be a multiple of the 4 devices" in errors["batch"]


if __name__ == "__main__":
    _script(sys.argv[1])
