"""Orbax checkpoints of a training run: one composite item per save.

A save holds everything needed to continue exactly: the train state (student, teacher, optimizer,
centre, loss statistics, rng), the Grain iterator position inside the current epoch, and the loop's
run state (`oceansar.train.run_state.RunState`: counters, the epoch's Selection, pruning reports).
Saves are asynchronous and atomic (Orbax commits a step only once it is fully written), so a run
killed at any moment restarts from the last committed step. A step whose train state is not
finite is never saved: the caller checks first and `save` refuses otherwise.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

# Replica-parallel saving splits every replicated array into one slice per device so that each writes a part. For the
# many small tensors of a ViT (biases, norms, per-sample tables of a few MB) the slicing costs more than it saves:
# with 8 devices it was 1,270 slice dispatches and 0.8 s per save of a tiny model. Only arrays whose per-replica
# slice reaches 4 MiB are split; larger ones still write in parallel.
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _register_array_handler() -> None:
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # Orbax warns on every override; this one is deliberate
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
            override=True)
    finally:
        absl_logger.setLevel(level)


_register_array_handler()


class Checkpointer:
    """Saves and restores the composite training checkpoint of one workdir."""

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2,
                 async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, *, state: Any, data_iterator: grain.DatasetIterator | None,
             run: dict[str, np.ndarray]) -> bool:
        """Starts an asynchronous save of `step`; returns False if that step already exists.

        `data_iterator` None: a run whose batches are a function of its step (fine-tuning) saves no reader.
        """
        items = {"state": ocp.args.StandardSave(state),
                 "run": ocp.args.StandardSave({k: np.asarray(v) for k, v in run.items()})}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        args = ocp.args.Composite(**items)
        saved = self._manager.save(step, args=args)
        if not saved:
            logging.info("checkpoint step %d already exists; not overwritten", step)
        return saved

    def restore_run(self, step: int) -> dict[str, np.ndarray]:
        """The run-state arrays of `step` (read before the data iterator exists)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(run=ocp.args.StandardRestore()))
        return {k: np.asarray(v) for k, v in restored.run.items()}

    def restore_state(self, step: int, *, abstract_state: Any,
                      data_iterator: grain.DatasetIterator | None = None) -> Any:
        """Restores the train state into `abstract_state`'s shapes and shardings, and moves
        `data_iterator` (of the checkpoint's epoch), when given, to the saved position."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items)).state

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a pytree of arrays, the target of a sharded restore."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
