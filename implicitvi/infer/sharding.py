r"""Data parallelism over a device mesh, through XLA's SPMD partitioner (``jax.sharding``).

:class:`~implicitvi.infer.ImplicitELBO` shards its particles, and
:func:`~implicitvi.infer.run_minibatch` its batches, along one axis of a
:class:`jax.sharding.Mesh`: the leading axis of the particles' PRNG keys (or of the batch) is
constrained to be split across that axis's devices, and XLA partitions the vectorized
computation after it. Nothing else changes: values that need all particles (a score estimator's
fit, the ELBO's mean) are gathered by the partitioner, so results agree with one device up to
the order of floating-point reductions.

Usage, on one host: ``ImplicitELBO(num_particles=16, mesh="local")`` and
``run_minibatch(..., mesh="local")``, or a mesh of your own, ``Mesh(jax.devices()[:4], ("data",))``.

Several hosts (as JAX runs them: one process per host, the same program in each): call
``jax.distributed.initialize()`` first in every process, then pass ``mesh=jax.devices()`` (the
devices of all processes). Each process must then hold the same data, parameters and keys, as
JAX's multi-process programs require. What is tested: one host with four (forced) CPU devices,
``tests/infer/test_sharding.py``, where fits agree with one device to float32 rounding and the
step compiles to a four-way partitioned program. Not tested: GPUs and TPUs, several processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["as_mesh", "shard_leading"]

AXIS = "data"
"""Name of the axis of the mesh built from a list of devices."""


def as_mesh(mesh, name: str = "mesh") -> tuple[Mesh, str] | None:
    """``(mesh, axis)`` for ``mesh``: ``None`` (no sharding) → ``None``; ``"local"`` → all local
    devices; a sequence of devices → a 1-D mesh over them; a :class:`jax.sharding.Mesh` → itself,
    sharded along its first axis."""
    if mesh is None:
        return None
    if isinstance(mesh, Mesh):
        if mesh.devices.size == 0:
            raise ValueError(f"{name} has no devices")
        return mesh, mesh.axis_names[0]
    if isinstance(mesh, str):
        if mesh != "local":
            raise ValueError(
                f"{name} must be None, 'local', a sequence of devices or a jax.sharding.Mesh, "
                f"got {mesh!r}"
            )
        mesh = jax.local_devices()
    if not isinstance(mesh, Sequence) or not all(isinstance(d, jax.Device) for d in mesh):
        raise TypeError(
            f"{name} must be None, 'local', a sequence of devices or a jax.sharding.Mesh, "
            f"got {type(mesh).__name__}"
        )
    if len(mesh) == 0:
        raise ValueError(f"{name}: the device list is empty")
    return Mesh(np.asarray(mesh), (AXIS,)), AXIS


def check_divisible(size: int, sharding, what: str) -> None:
    """``size`` rows split evenly over the devices of ``sharding = (mesh, axis)``."""
    if sharding is None:
        return
    mesh, axis = sharding
    devices = mesh.shape[axis]
    if size % devices:
        raise ValueError(
            f"{what} ({size}) must be a multiple of the {devices} devices of the mesh's axis "
            f"'{axis}', so that each device holds the same number"
        )


def shard_leading(x, sharding):
    """``x`` (an array or pytree) with its leading axis split over ``sharding = (mesh, axis)``;
    ``x`` itself when ``sharding`` is ``None``."""
    if sharding is None:
        return x
    mesh, axis = sharding
    spec = NamedSharding(mesh, PartitionSpec(axis))
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, spec), x)
