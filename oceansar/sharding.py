"""Device mesh and sharding rules for data-parallel training.

One `Mesh` with a `data` axis spans every device of every host, and `jax.jit` runs on it through
`NamedSharding`: the train state is replicated, batches are split along their leading axis, and
XLA inserts the cross-device reductions. Multi-host batches are assembled from each process's local slice
with `jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A one-axis `data` mesh over the first `num_devices` devices (all by default).

    Axis types are explicit (`Auto`): recent JAX defaults to `Explicit`, which changes how
    unsharded inputs are treated by `shard_map` and sharding-in-types.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={n} but {len(devices)} devices are visible")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Turns this process's slice of a global batch into global arrays sharded over `data`."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def replicate(mesh: Mesh, tree):
    """Places a pytree (host or device) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
