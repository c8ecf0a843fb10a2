"""Device mesh and sharding rules for data-parallel and fully sharded (FSDP) training.

One `Mesh` with a `data` and an `fsdp` axis spans every device of every host, and `jax.jit` runs on it through
`NamedSharding`: batches are split along their leading axis over both axes; each parameter (and its optimizer
state) is split over `fsdp` along its largest dimension divisible by the axis size when it holds at least
`fsdp_min_size` elements (big_vision's rule), and replicated otherwise; XLA inserts the all-gathers of the forward
pass and the reduce-scatters of the gradients. With `fsdp=1` this is plain data parallelism. Multi-host batches
are assembled from each process's local slice with `jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def make_mesh(num_devices: int | None = None, fsdp: int = 1) -> Mesh:
    """A `data` x `fsdp` mesh over the first `num_devices` devices (all by default), `fsdp` devices per group.

    Axis types are explicit (`Auto`): recent JAX defaults to `Explicit`, which changes how
    unsharded inputs are treated by `shard_map` and sharding-in-types.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={n} but {len(devices)} devices are visible")
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"config.mesh.fsdp: {fsdp} does not divide the {n} devices")
    return jax.make_mesh((n // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices[:n])


def param_sharding(mesh: Mesh, shape: tuple[int, ...], *, min_size: int) -> NamedSharding:
    """A parameter's sharding: its largest dimension divisible by the `fsdp` axis split over it (the last such one
    on ties), or replicated when the axis has one device, the tensor is small or no dimension divides."""
    groups = mesh.shape[FSDP_AXIS]
    if groups == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return replicated(mesh)
    candidates = [i for i, d in enumerate(shape) if d % groups == 0]
    if not candidates:
        return replicated(mesh)
    axis = max(candidates, key=lambda i: (shape[i], i))
    spec = [None] * len(shape)
    spec[axis] = FSDP_AXIS
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device (`data` and `fsdp`), other axes whole."""
    return NamedSharding(mesh, P(mesh.axis_names))


def shard_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Turns this process's slice of a global batch into global arrays sharded over `data`."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def replicate(mesh: Mesh, tree):
    """Places a pytree (host or device) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
