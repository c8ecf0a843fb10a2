"""Frozen-feature extraction: a jitted embedding function over a random-access source, in static-shape batches.

Here lives `extract_features`, which turns any source (an object with `__len__` and `__getitem__`
returning dicts with an "image" and scalar fields such as "label", "wind_speed", "hs", "sample_id") into
a features matrix plus those fields, ready for `probes.evaluate_features`. The records come from the
project's Grain pipeline (`oceansar.data.pipeline.inference_dataset`): whole batches through
`read_batch(indices)` where the source has it (the in-memory cache), else record by record, read ahead of
the device on Grain's threads. With a mesh, each process reads only its rows of each global batch, and the
features and fields are gathered to every process. The device computes one batch while the previous one's
features travel back, and every batch has the same shape (the last is padded with copies of its last
record, the padding dropped), so `embed_fn` compiles once. Building `embed_fn` (which model, which tokens)
is the caller's business.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from oceansar.data import pipeline


def _to_host(features: jax.Array) -> np.ndarray:
    if features.is_fully_addressable:
        return np.asarray(features)
    return np.asarray(multihost_utils.process_allgather(features, tiled=True))


def _process_block(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
    """(shard_index, shard_count): which contiguous block of each global batch this process's devices hold.

    For a data mesh over every device, process by process (`oceansar.sharding.make_mesh`), this is
    (`jax.process_index()`, `jax.process_count()`); it is read from the sharding so that a batch's rows
    can never be placed apart from the indices they were read for.
    """
    spans = set()
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        start, stop, _ = index[0].indices(batch_size)
        spans.add((start, stop))
    if not spans:
        raise ValueError(f"process {jax.process_index()} holds no device of the mesh")
    lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
    covered = np.zeros(batch_size, bool)
    for start, stop in spans:
        covered[start:stop] = True
    width = hi - lo
    if not covered[lo:hi].all() or batch_size % width or lo % width:
        raise ValueError(f"process {jax.process_index()}'s devices hold rows {sorted(spans)} of a batch of "
                         f"{batch_size}; extract_features needs each process to hold one of equal contiguous "
                         f"blocks")
    return lo // width, batch_size // width


def _allgather_rows(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenates each process's 1-D arrays in process order, bit-exact (as bytes: no int64 -> int32)."""
    as_bytes = {k: np.ascontiguousarray(v).view(np.uint8).reshape(v.shape[0], v.dtype.itemsize)
                for k, v in local.items()}
    gathered = multihost_utils.process_allgather(as_bytes, tiled=True)
    return {k: np.ascontiguousarray(gathered[k]).view(v.dtype).reshape(-1) for k, v in local.items()}


def extract_features(embed_fn: Callable[[jax.Array], jax.Array], source, *, batch_size: int,
                     indices: np.ndarray | None = None, mesh: jax.sharding.Mesh | None = None,
                     progress: bool = False, desc: str = "features") -> dict[str, np.ndarray]:
    """Embeds source records in fixed-size batches and gathers their scalar fields.

    Args:
      embed_fn: jitted function images [B, H, W, C] (the source's dtype) -> features [B, D].
      source: random-access source; `source[i]` is a dict with "image" and scalar fields. If it also has
        `read_batch(indices) -> {"image": [n, ...], field: [n]}`, whole batches are read through it.
      batch_size: images per embed_fn call; every call has this batch size (the last batch is padded by
        repeating its last record).
      indices: source indices to embed, in output order; all of them when None.
      mesh: when given, each batch is a global array sharded over its "data" axis (batch_size must divide
        evenly), and each process reads only the rows its devices hold. When None, embed_fn gets the
        numpy batch as it is, and every process reads (and embeds) every record.
      progress: show a tqdm bar.
      desc: the bar's label.

    Returns:
      {"features": [N, D] float32, "sample_id": [N] int64 (the record's own sample_id when it carries one,
      else its source index), and every other numeric scalar field of the records (e.g. "label",
      "wind_speed", "hs"), each [N]}, the same on every process.

    Raises:
      ValueError: on an empty selection, a bad batch size or mesh, records of differing image shape or
        fields, or embed_fn output that is not [batch_size, D].
    """
    indices, sharding, (shard_index, shard_count) = _check_inputs(source, indices, batch_size, mesh)
    dataset = pipeline.inference_dataset(source, indices, batch_size=batch_size, shard_index=shard_index,
                                         shard_count=shard_count)

    n = indices.size
    features, local_fields = [], []
    in_flight = None  # (device features, number of real rows) of the previous batch
    iterator = iter(dataset)
    try:
        with tqdm.tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
            for b, batch in enumerate(iterator):
                images = batch.pop("image")
                if sharding is not None:
                    images = jax.make_array_from_process_local_data(sharding, images)
                output = embed_fn(images)
                if not isinstance(output, jax.Array):
                    raise ValueError(f"embed_fn must be a jitted function returning a jax.Array, got "
                                     f"{type(output).__name__}")
                if output.ndim != 2 or output.shape[0] != batch_size:
                    raise ValueError(f"embed_fn must return [batch_size={batch_size}, D] features, got shape "
                                     f"{tuple(output.shape)}")
                if output.is_fully_addressable:
                    output.copy_to_host_async()
                # Only now wait for the previous batch: its transfer overlapped this batch's dispatch.
                if in_flight is not None:
                    features.append(_to_host(in_flight[0])[:in_flight[1]])
                    bar.update(in_flight[1])
                in_flight = (output, min(batch_size, n - b * batch_size))
                local_fields.append(batch)
            features.append(_to_host(in_flight[0])[:in_flight[1]])
            bar.update(in_flight[1])
    finally:
        iterator.close()

    local = {name: np.concatenate([f[name] for f in local_fields]) for name in local_fields[0]}
    fields = _gather_fields(local, n, batch_size=batch_size, shard_index=shard_index, shard_count=shard_count)
    return {"features": np.concatenate(features).astype(np.float32), **fields}


def _check_inputs(source, indices, batch_size: int, mesh):
    """(indices as int64, the batch sharding or None, (shard_index, shard_count)); ValueError on bad input."""
    indices = pipeline.check_indices(np.arange(len(source)) if indices is None else indices, len(source))
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if mesh is None:
        return indices, None, (0, 1)
    if batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} is not divisible by the mesh's {mesh.size} devices")
    sharding = NamedSharding(mesh, P(mesh.axis_names))  # every axis: data and, under FSDP, fsdp
    return indices, sharding, _process_block(sharding, batch_size)


def _gather_fields(local: dict[str, np.ndarray], n: int, *, batch_size: int, shard_index: int,
                   shard_count: int) -> dict[str, np.ndarray]:
    """The records' scalar fields in `indices` order, padding dropped, gathered from every process."""
    if shard_count == 1:
        valid = local.pop("valid")
        return {name: values[valid] for name, values in local.items()}
    # Each process holds its rows of every batch: gather them with their positions in `indices`.
    positions, _ = pipeline.inference_rows(n, batch_size=batch_size, shard_index=shard_index,
                                           shard_count=shard_count)
    where = _allgather_rows({"valid": local.pop("valid"), "position": positions.reshape(-1)})
    valid, positions = where["valid"], where["position"]
    fields = {}
    for name, values in _allgather_rows(local).items():
        fields[name] = np.empty(n, values.dtype)
        fields[name][positions[valid]] = values[valid]
    return fields
