"""Frozen-feature extraction: a jitted embedding function over a random-access source, in static-shape batches.

Here lives `extract_features`, which turns any source (an object with `__len__` and `__getitem__`
returning dicts with an "image" and scalar fields such as "label", "wind_speed", "hs", "sample_id") into
a features matrix plus those fields, ready for `probes.evaluate_features`. A source that holds its records
in arrays (`read_batch(indices)`, as the in-memory cache) is read a whole batch at a time; any other is
read record by record on a small thread pool. Either way reads run one batch ahead of the device, the
device computes one batch while the previous one's features travel back, and every batch has the same
shape (the last is padded, its padding dropped), so `embed_fn` compiles once. Building `embed_fn`
(which model, which tokens) is the caller's business.
"""
from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P


def _scalar_fields(record: dict, index: int) -> dict:
    if "image" not in record:
        raise ValueError(f"source record {index} has no 'image' field (keys: {sorted(record)})")
    fields = {}
    for key, value in record.items():
        if key == "image":
            continue
        value = np.asarray(value)
        if value.ndim == 0 and value.dtype.kind in "biuf":
            fields[key] = value
    return fields


def _read_batch(source, indices: np.ndarray, pool: concurrent.futures.ThreadPoolExecutor):
    """Starts reading one batch; returns a function that waits for it and gives (images, {field: [n]})."""
    if hasattr(source, "read_batch"):  # columnar source: one fancy index instead of a record per row
        future = pool.submit(source.read_batch, indices)

        def columns(batch_size: int, field_names):
            batch = dict(future.result())
            images = np.asarray(batch.pop("image"))
            fields = {k: np.asarray(v) for k, v in batch.items()
                      if np.asarray(v).ndim == 1 and np.asarray(v).dtype.kind in "biuf"}
            if field_names is not None and sorted(fields) != list(field_names):
                raise ValueError(f"source batch from record {int(indices[0])} has scalar fields {sorted(fields)} "
                                 f"but earlier batches have {list(field_names)}")
            pad = np.repeat(images[-1:], batch_size - len(images), axis=0)  # see _assemble on padding
            return np.concatenate([images, pad]), fields
        return columns
    futures = [pool.submit(source.__getitem__, int(i)) for i in indices]
    return lambda batch_size, field_names: _assemble(futures, indices, batch_size, field_names)


def _assemble(futures, indices: np.ndarray, batch_size: int, field_names: Sequence[str] | None):
    """(images [batch_size, ...], {field: [n_real]}) from one batch of record futures, padding the images."""
    images, fields = [], []
    for future, index in zip(futures, indices):
        record = future.result()
        record_fields = _scalar_fields(record, int(index))
        if field_names is None:
            field_names = sorted(record_fields)
        if sorted(record_fields) != list(field_names):
            raise ValueError(f"source record {int(index)} has scalar fields {sorted(record_fields)} but earlier "
                             f"records have {list(field_names)}")
        fields.append(record_fields)
        image = np.asarray(record["image"])
        if images and (image.shape != images[0].shape or image.dtype != images[0].dtype):
            raise ValueError(f"source record {int(index)} has image {image.shape} {image.dtype} but record "
                             f"{int(indices[0])} has {images[0].shape} {images[0].dtype}: batches need one shape")
        images.append(image)
    # Padding repeats the last real image rather than zeros, so that embed_fn never sees an input
    # (e.g. a constant image under per-image standardisation) that real data cannot produce.
    images.extend([images[-1]] * (batch_size - len(images)))
    names = sorted(fields[0])
    return np.stack(images), {name: np.stack([f[name] for f in fields]) for name in names}


def _to_host(features: jax.Array) -> np.ndarray:
    if features.is_fully_addressable:
        return np.asarray(features)
    return np.asarray(multihost_utils.process_allgather(features, tiled=True))


def extract_features(embed_fn: Callable[[jax.Array], jax.Array], source, *, batch_size: int,
                     indices: np.ndarray | None = None, mesh: jax.sharding.Mesh | None = None,
                     progress: bool = False, desc: str = "features",
                     num_threads: int = 4) -> dict[str, np.ndarray]:
    """Embeds source records in fixed-size batches and gathers their scalar fields.

    Args:
      embed_fn: jitted function images [B, H, W, C] (the source's dtype) -> features [B, D].
      source: random-access source; `source[i]` is a dict with "image" and scalar fields. If it also has
        `read_batch(indices) -> {"image": [n, ...], field: [n]}`, whole batches are read through it.
      batch_size: images per embed_fn call; every call has this batch size (the last batch is padded).
      indices: source indices to embed, in output order; all of them when None.
      mesh: when given, each batch is sharded over its "data" axis (batch_size must divide evenly).
        Under several processes every process reads every record and gets every feature.
      progress: show a tqdm bar.
      desc: the bar's label.
      num_threads: host threads reading records; reads run one batch ahead of the device.

    Returns:
      {"features": [N, D] float32, "sample_id": [N] int64 (the record's own sample_id when it carries one,
      else its source index), and every other numeric scalar field of the records (e.g. "label",
      "wind_speed", "hs"), each [N]}.

    Raises:
      ValueError: on an empty selection, a bad batch size or mesh, records of differing image shape or
        fields, or embed_fn output that is not [batch_size, D].
    """
    if indices is None:
        indices = np.arange(len(source), dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        raise ValueError("extract_features got no indices to embed")
    if indices.min() < 0 or indices.max() >= len(source):
        raise ValueError(f"indices must lie in [0, len(source)={len(source)}), got range "
                         f"[{int(indices.min())}, {int(indices.max())}]")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sharding = None
    if mesh is not None:
        if "data" not in mesh.axis_names:
            raise ValueError(f"mesh has axes {mesh.axis_names}; extract_features shards over a 'data' axis")
        if batch_size % mesh.shape["data"]:
            raise ValueError(f"batch_size={batch_size} is not divisible by the mesh's data axis "
                             f"({mesh.shape['data']} devices)")
        sharding = NamedSharding(mesh, P("data"))

    batches = [indices[start:start + batch_size] for start in range(0, indices.size, batch_size)]
    features, fields = [], []
    field_names = None
    in_flight = None  # (device features, number of real rows) of the previous batch
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool, \
            tqdm.tqdm(total=indices.size, desc=desc, unit="img", disable=not progress) as bar:
        pending = _read_batch(source, batches[0], pool)
        for b, batch_indices in enumerate(batches):
            images, batch_fields = pending(batch_size, field_names)
            field_names = sorted(batch_fields)
            if b + 1 < len(batches):
                pending = _read_batch(source, batches[b + 1], pool)
            images = jax.device_put(images, sharding) if sharding is not None else images
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
            in_flight = (output, batch_indices.size)
            fields.append(batch_fields)
        features.append(_to_host(in_flight[0])[:in_flight[1]])
        bar.update(in_flight[1])

    result = {"features": np.concatenate(features).astype(np.float32)}
    for name in field_names:
        result[name] = np.concatenate([f[name] for f in fields])
    if "sample_id" in result:
        result["sample_id"] = result["sample_id"].astype(np.int64)
    else:
        result["sample_id"] = indices.copy()
    return result
