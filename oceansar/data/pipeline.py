"""The Grain input pipeline: a source becomes static-shape batches of numpy arrays, for one process.

Two passes live here, both reading records through `_ReadRecord`:

- `epoch_dataset`, one training epoch: selection -> shuffle from (seed, epoch) -> truncate to
  whole global batches -> per-process slice -> read records and attach `weight` -> batch ->
  optional worker processes; with `steps_per_epoch` and `epoch_order` (the epoch's permutation,
  exposed so pruning code and tests can reason about it). Global batch k of an epoch is
  `order[k*B*P:(k+1)*B*P]` (B = per-process batch, P = process count), and process p takes its
  p-th contiguous block of B rows.
- `inference_dataset`, an in-order pass over a list of source indices (the reader behind
  `oceansar.evals.features.extract_features`); with `inference_rows`, the positions each process
  reads. Global batch k is `indices[k*B:(k+1)*B]` (B = global batch), the last padded to B by
  repeating its last index and marked by a `valid` mask, and process p takes rows
  `[p*B/P, (p+1)*B/P)` of each. A source with `read_batch(indices)` (the in-memory cache) is read a
  whole batch per call, any other record by record; either way reads run ahead of the consumer.

In both, the examples of a global batch do not depend on the process count, only their
placement does. Augmentation does not live here (it runs on device); neither does device
placement (the caller shards host batches onto the mesh). Numpy and Grain only: no JAX import,
so worker processes stay light.
"""
from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

import grain
import numpy as np
from absl import flags

from oceansar.data.selection import Selection

# `data.worker_count = AUTO_WORKERS` sizes the pool from the host. The cap: past a few dozen workers each
# holds its buffered batches in shared memory while the step cannot consume more.
AUTO_WORKERS = -1
MAX_AUTO_WORKERS = 32


def host_worker_count(requested: int) -> int:
    """Grain workers for `data.worker_count`: itself when >= 0; for `AUTO_WORKERS`, the cores this process
    may run on (its affinity, which SLURM's --cpus-per-task sets) less one for the training loop, at most
    `MAX_AUTO_WORKERS`."""
    if requested != AUTO_WORKERS:
        return requested
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(max(usable - 1, 0), MAX_AUTO_WORKERS)


def ignore_signals(*_) -> None:
    """Makes a reader process ignore SIGTERM and SIGINT (Grain's `worker_init_fn`, a pool's initializer).

    A scheduler signals the whole process group; the training loop saves at the next step and then
    shuts its readers down, which it cannot do if they died first and broke the pipeline under it.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def steps_per_epoch(selection_len: int, batch_size: int, shard_count: int = 1) -> int:
    """Full global batches in an epoch over `selection_len` rows (the remainder is dropped).

    Args:
      selection_len: rows in the epoch's Selection.
      batch_size: per-process batch size.
      shard_count: number of processes.
    """
    if batch_size <= 0 or shard_count <= 0:
        raise ValueError(f"batch_size and shard_count must be positive, got {batch_size}, "
                         f"{shard_count}")
    return int(selection_len) // (int(batch_size) * int(shard_count))


def epoch_order(selection_len: int, *, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of selection rows, a pure function of (seed, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
    return rng.permutation(int(selection_len)).astype(np.int64)


def _training_record(source: Any, record: dict) -> dict[str, Any]:
    """A record as a training batch ships it: every field, images uint8 or float16, `sample_id` int64."""
    record = dict(record)
    image = np.asarray(record["image"])
    if image.dtype.kind == "f" and image.dtype != np.float16:
        # Batches cross process boundaries and go to the device: 2 bytes per float pixel.
        image = image.astype(np.float16)
    elif image.dtype.kind != "f" and image.dtype != np.uint8:
        raise TypeError(f"{type(source).__name__} returned an image of dtype "
                        f"{image.dtype}; sources must return uint8 or float16 images")
    record["image"] = image
    record["sample_id"] = np.int64(record["sample_id"])
    return record


def _numeric_scalars(record: dict, index: int) -> dict[str, np.ndarray]:
    """The numeric 0-d fields of a record (`label`, `wind_speed`, ...); strings and arrays are left out."""
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


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What every record of an inference pass must look like: what its first record (`index`) looks like."""

    index: int
    image_shape: tuple[int, ...]
    image_dtype: np.dtype
    fields: tuple[str, ...]  # sorted names of the records' numeric scalar fields

    @classmethod
    def of_record(cls, record: dict, index: int) -> "_Layout":
        fields = tuple(sorted(_numeric_scalars(record, index)))  # checks that there is an image
        image = np.asarray(record["image"])
        return cls._checked(index, image.shape, image.dtype, fields)

    @classmethod
    def of_columns(cls, batch: dict, index: int) -> "_Layout":
        image, fields = _columns(batch, index)
        return cls._checked(index, image.shape[1:], image.dtype, tuple(sorted(fields)))

    @classmethod
    def _checked(cls, index, image_shape, image_dtype, fields) -> "_Layout":
        if "valid" in fields:
            raise ValueError(f"source record {index} has a field 'valid', the name inference batches "
                             f"give their padding mask")
        return cls(int(index), tuple(image_shape), np.dtype(image_dtype), fields)

    def check_record(self, record: dict, index: int) -> dict[str, Any]:
        """`record`'s image (as the source gives it) and numeric scalar fields, `sample_id` int64."""
        fields = _numeric_scalars(record, index)
        if tuple(sorted(fields)) != self.fields:
            raise ValueError(f"source record {index} has scalar fields {sorted(fields)} but record "
                             f"{self.index} has {list(self.fields)}")
        image = np.asarray(record["image"])
        if image.shape != self.image_shape or image.dtype != self.image_dtype:
            raise ValueError(f"source record {index} has image {image.shape} {image.dtype} but record "
                             f"{self.index} has {self.image_shape} {self.image_dtype}: batches need one "
                             f"shape")
        fields["sample_id"] = np.int64(fields["sample_id"] if "sample_id" in fields else index)
        return {"image": image, **fields}

    def check_batch(self, batch: dict, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The same for a `read_batch(indices)` result: images [n, ...] and fields [n]."""
        first = int(indices[0])
        image, fields = _columns(batch, first)
        if tuple(sorted(fields)) != self.fields:
            raise ValueError(f"source batch from record {first} has scalar fields {sorted(fields)} but "
                             f"record {self.index} has {list(self.fields)}")
        n = indices.shape[0]
        shapes = {k: v.shape for k, v in fields.items()}
        if image.shape != (n,) + self.image_shape or image.dtype != self.image_dtype:
            raise ValueError(f"source batch from record {first} has images {image.shape} {image.dtype} "
                             f"for {n} records, but record {self.index} has image {self.image_shape} "
                             f"{self.image_dtype}: batches need one shape")
        if any(shape != (n,) for shape in shapes.values()):
            raise ValueError(f"source batch from record {first} has fields of shapes {shapes} for {n} "
                             f"records")
        fields["sample_id"] = (fields["sample_id"] if "sample_id" in fields else indices).astype(np.int64)
        return {"image": image, **fields}


def _columns(batch: dict, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(images, numeric 1-D fields) of a `read_batch` result whose first record is `index`."""
    if "image" not in batch:
        raise ValueError(f"source batch from record {index} has no 'image' field (keys: {sorted(batch)})")
    fields = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if key != "image" and value.ndim == 1 and value.dtype.kind in "biuf":
            fields[key] = value
    return np.asarray(batch["image"]), fields


class _ReadRecord(grain.transforms.Map):
    """Reads the source record at one position of a list of source indices, plus per-position columns.

    Without a layout (training) the record ships whole, as `_training_record` makes it. With one
    (inference) it ships its image as the source gives it and its numeric scalar fields, both checked
    against the layout, and `sample_id` is the record's own or else its source index. The columns
    (`weight` for training, `valid` for inference) are indexed by position. Holds only this
    process's positions, so pickling it into workers stays small.
    """

    def __init__(self, source: Any, indices: np.ndarray, columns: dict[str, np.ndarray],
                 layout: _Layout | None = None):
        self._source = source
        self._indices = indices
        self._columns = columns
        self._layout = layout

    def map(self, position: int) -> dict[str, Any]:
        position = int(position)
        index = int(self._indices[position])
        record = self._source[index]
        if self._layout is None:
            record = _training_record(self._source, record)
        else:
            record = self._layout.check_record(record, index)
        for name, column in self._columns.items():
            record[name] = column[position]
        return record


class _ReadBatch(grain.transforms.Map):
    """Reads batch k of an inference pass with one `source.read_batch` call."""

    def __init__(self, source: Any, indices: np.ndarray, valid: np.ndarray, layout: _Layout):
        self._source = source
        self._indices = indices  # [batches, rows]
        self._valid = valid
        self._layout = layout

    def map(self, batch: int) -> dict[str, np.ndarray]:
        indices = self._indices[int(batch)]
        out = self._layout.check_batch(dict(self._source.read_batch(indices)), indices)
        out["valid"] = self._valid[int(batch)]
        return out


def epoch_dataset(source: Any, selection: Selection, *, seed: int, epoch: int, batch_size: int,
                  shard_index: int = 0, shard_count: int = 1, worker_count: int = 0,
                  worker_buffer_size: int = 2, read_threads: int = 0) -> grain.IterDataset:
    """One epoch of batches over `selection` of `source`, for one process.

    Args:
      source: random-access source (`len`, `__getitem__` -> dict with `image`, `sample_id`, ...);
        it must be picklable when `worker_count > 0`.
      selection: the source indices this epoch visits and their loss weights.
      seed: run seed; with `epoch` it fixes the order.
      epoch: epoch number.
      batch_size: per-process batch size.
      shard_index: this process's index (`jax.process_index()` in the caller).
      shard_count: number of processes (`jax.process_count()`).
      worker_count: Grain worker processes; 0 reads in this process. Batches are formed in the
        workers, so whole uint8/float16 batches cross the process boundary.
      worker_buffer_size: batches each worker keeps ready.
      read_threads: Grain read-ahead threads per process. 0 is fastest for in-memory or
        CPU-bound sources on few cores; raise it for sources that wait on slow storage.

    Returns:
      A `grain.IterDataset` of dicts of numpy arrays: `image` [B, H, W, C] uint8 or float16,
      `sample_id` [B] int64, `weight` [B] float32, plus the source's targets (`label`, ...).
      Exactly `steps_per_epoch(len(selection), batch_size, shard_count)` batches.

    Raises:
      ValueError: the selection is smaller than one global batch, an index is outside the source,
        or the shard arguments are inconsistent.
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must lie in [0, {shard_count}), got {shard_index}")
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    selection.validate(len(source))
    steps = steps_per_epoch(len(selection), batch_size, shard_count)
    if steps == 0:
        raise ValueError(
            f"the selection has {len(selection)} rows, fewer than one global batch of "
            f"{batch_size} x {shard_count} processes = {batch_size * shard_count}")
    order = epoch_order(len(selection), seed=seed, epoch=epoch)
    rows = order[:steps * batch_size * shard_count].reshape(steps, shard_count, batch_size)
    rows = rows[:, shard_index].reshape(-1)
    read = _ReadRecord(source, selection.indices[rows], {"weight": selection.weights[rows]})
    ds = (grain.MapDataset.range(rows.shape[0])
          .map(read)
          .batch(batch_size, drop_remainder=True)
          .to_iter_dataset(grain.ReadOptions(num_threads=read_threads)))
    if worker_count > 0:
        # Grain's workers read an absl flag; outside absl.app.run it would be unparsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=worker_buffer_size), worker_init_fn=ignore_signals)
    return ds


def check_indices(indices, source_len: int) -> np.ndarray:
    """`indices` as a flat int64 array of source indices; ValueError when empty or outside the source."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        raise ValueError("no indices to read")
    if indices.min() < 0 or indices.max() >= source_len:
        raise ValueError(f"indices must lie in [0, len(source)={source_len}), got range "
                         f"[{int(indices.min())}, {int(indices.max())}]")
    return indices


def inference_rows(num_rows: int, *, batch_size: int, shard_index: int = 0,
                   shard_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Which positions of an inference pass over `num_rows` rows process `shard_index` reads.

    Global batch k holds positions `[k*B, (k+1)*B)` (B = `batch_size`, global); past the end they
    repeat the last position `num_rows - 1`. The process reads rows `[p*B/P, (p+1)*B/P)` of each.

    Returns:
      (positions [K, B/P] int64, valid [K, B/P] bool), K = ceil(num_rows / B); `valid` is False
      exactly on the padding.

    Raises:
      ValueError: `num_rows` < 1, `batch_size` < 1, `batch_size` not divisible by `shard_count`,
        or `shard_index` outside [0, shard_count).
    """
    if num_rows < 1:
        raise ValueError(f"an inference pass needs at least one row, got {num_rows}")
    if batch_size < 1 or shard_count < 1:
        raise ValueError(f"batch_size and shard_count must be positive, got {batch_size}, {shard_count}")
    if batch_size % shard_count:
        raise ValueError(f"batch_size={batch_size} is not divisible by shard_count={shard_count}: "
                         f"every process takes the same number of rows of each global batch")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must lie in [0, {shard_count}), got {shard_index}")
    per_shard = batch_size // shard_count
    num_batches = -(-int(num_rows) // batch_size)
    positions = np.arange(num_batches * batch_size, dtype=np.int64).reshape(
        num_batches, shard_count, per_shard)[:, shard_index]
    valid = positions < num_rows
    return np.minimum(positions, num_rows - 1), valid


def inference_dataset(source: Any, indices: np.ndarray, *, batch_size: int, shard_index: int = 0,
                      shard_count: int = 1, read_threads: int = 4) -> grain.IterDataset:
    """One process's batches of an in-order pass over `indices` of `source` (features, scores).

    Global batch k is `indices[k*B:(k+1)*B]` (B = `batch_size`); the last is padded to B by
    repeating its last index (so padding is a real image, never zeros), and process p takes rows
    `[p*B/P, (p+1)*B/P)` of each (P = `shard_count`); see `inference_rows`. Every record must have
    the image shape and dtype and the numeric scalar fields of the first, `source[indices[0]]`.

    Args:
      source: random-access source (`len`, `__getitem__` -> dict with `image` and scalar fields).
        If it also has `read_batch(indices) -> {"image": [n, ...], field: [n]}` (the in-memory
        cache), each batch is read with one call; otherwise record by record.
      indices: source indices, in pass order (repeats allowed).
      batch_size: global batch size, divisible by `shard_count`.
      shard_index: this process's block of each global batch (`jax.process_index()` for a mesh
        whose data axis lists devices process by process).
      shard_count: number of blocks (`jax.process_count()`).
      read_threads: Grain read-ahead. With `read_batch`, the next batch is read on one thread
        while the consumer works on this one. Record by record, each of `read_threads` threads
        reads a whole batch, so up to that many batches are read ahead in parallel: 4 keep 4
        records waiting on storage at once (a source that holds the GIL while it reads, like the
        simulator, gains nothing from more than 1). 0 reads synchronously, when the consumer
        asks.

    Returns:
      A `grain.IterDataset` of ceil(len(indices) / B) dicts: `image` [B/P, ...] (the source's
      dtype), `sample_id` [B/P] int64 (the record's own, else its source index), the records'
      other numeric scalar fields (`label`, `wind_speed`, `hs`, ...) [B/P], and `valid` [B/P] bool,
      False on padding rows.

    Raises:
      ValueError: no indices, an index outside the source, bad batch or shard arguments, a first
        record without an image; while iterating, a record (or `read_batch` result) whose image
        shape, dtype or scalar fields differ from the first record's, naming it.
    """
    indices = check_indices(indices, len(source))
    if read_threads < 0:
        raise ValueError(f"read_threads must be >= 0, got {read_threads}")
    positions, valid = inference_rows(indices.size, batch_size=batch_size, shard_index=shard_index,
                                      shard_count=shard_count)
    rows = indices[positions]  # [batches, B/P] source indices
    per_shard = rows.shape[1]
    if hasattr(source, "read_batch"):
        layout = _Layout.of_columns(dict(source.read_batch(indices[:1])), int(indices[0]))
        return (grain.MapDataset.range(rows.shape[0])
                .map(_ReadBatch(source, rows, valid, layout))
                .to_iter_dataset(grain.ReadOptions(num_threads=min(read_threads, 1),
                                                   prefetch_buffer_size=1)))
    layout = _Layout.of_record(source[int(indices[0])], int(indices[0]))
    read = _ReadRecord(source, rows.reshape(-1), {"valid": valid.reshape(-1)}, layout)
    # Batched before the read-ahead: each Grain thread reads a whole batch. Read-ahead by record
    # (a future per record) costs Grain ~0.2 ms a record, more than an in-memory record takes.
    return (grain.MapDataset.range(rows.size)
            .map(read)
            .batch(per_shard, drop_remainder=True)
            .to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                               prefetch_buffer_size=read_threads)))
