"""The Grain epoch pipeline: a source and a Selection become one epoch of static-shape batches.

Here live `epoch_dataset` (selection -> shuffle from (seed, epoch) -> truncate to whole global
batches -> per-process slice -> read records and attach `weight` -> batch -> optional worker
processes), `steps_per_epoch`, `epoch_order` (the epoch's permutation, exposed so pruning code and
tests can reason about it), and the Orbax argument helper that puts the iterator into a composite
checkpoint. Augmentation does not live here (it runs on device); neither does device placement
(the training loop shards host batches onto the mesh). Numpy and Grain only: no JAX import, so
worker processes stay light.

Global batch k of an epoch is `order[k*B*P:(k+1)*B*P]` (B = per-process batch, P = process count),
and process p takes its p-th contiguous block of B rows. So the examples of a global batch do not
depend on the process count, only their placement does.
"""
from __future__ import annotations

from typing import Any

import grain
import numpy as np
from absl import flags

from oceansar.data.selection import Selection


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


class _ReadRecord(grain.transforms.Map):
    """Reads the source record of one selection row and attaches the row's loss weight.

    Holds only this process's rows of the selection, so pickling it into workers stays small.
    """

    def __init__(self, source: Any, indices: np.ndarray, weights: np.ndarray):
        self._source = source
        self._indices = indices
        self._weights = weights

    def map(self, position: int) -> dict[str, np.ndarray]:
        position = int(position)
        record = dict(self._source[int(self._indices[position])])
        image = np.asarray(record["image"])
        if image.dtype.kind == "f" and image.dtype != np.float16:
            # Batches cross process boundaries and go to the device: 2 bytes per float pixel.
            image = image.astype(np.float16)
        elif image.dtype.kind != "f" and image.dtype != np.uint8:
            raise TypeError(f"{type(self._source).__name__} returned an image of dtype "
                            f"{image.dtype}; sources must return uint8 or float16 images")
        record["image"] = image
        record["sample_id"] = np.int64(record["sample_id"])
        record["weight"] = np.float32(self._weights[position])
        return record


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
    read = _ReadRecord(source, selection.indices[rows], selection.weights[rows])
    ds = (grain.MapDataset.range(rows.shape[0])
          .map(read)
          .batch(batch_size, drop_remainder=True)
          .to_iter_dataset(grain.ReadOptions(num_threads=read_threads)))
    if worker_count > 0:
        # Grain's workers read an absl flag; outside absl.app.run it would be unparsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
    return ds


def iterator_checkpoint_args(iterator: grain.DatasetIterator, *, restore: bool = False) -> Any:
    """Orbax args for a Grain iterator inside a composite checkpoint.

    Save: `ocp.args.Composite(data=iterator_checkpoint_args(it), ...)`. Restore into a fresh
    iterator of the same epoch's dataset: `ocp.args.Composite(data=iterator_checkpoint_args(it,
    restore=True), ...)`; Grain's handler sets the state in place (and returns the iterator).
    The state is a small JSON file per process, so a multi-host run restores every process's
    position.
    """
    if restore:
        return grain.checkpoint.CheckpointRestore(iterator)
    return grain.checkpoint.CheckpointSave(iterator)
