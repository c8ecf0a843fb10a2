"""The Selection: which source samples an epoch visits, and with what loss weight.

A pruning policy produces a Selection; the Grain epoch pipeline consumes it. It is plain numpy
(no JAX) so that Grain worker processes can unpickle it without starting an accelerator backend.
This module is also the one owner of the selection file format that `--mode=curate` writes and the
static policy reads: `kept_indices.npy` (int64 source indices), an optional `weights.npy` (float32)
and `summary.json` (which names `num_embeddings`, the size of the pool it was curated from).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from oceansar.errors import DataError, DataNotFoundError

KEPT_FILE = "kept_indices.npy"
WEIGHTS_FILE = "weights.npy"
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class Selection:
    """Source indices to visit in one epoch and the per-sample loss weight of each.

    Attributes:
      indices: int64 array [n] of source indices (repeats allowed: balanced sampling may
        oversample a small cluster).
      weights: float32 array [n], the multiplier of each visit's per-sample loss.
    """

    indices: np.ndarray
    weights: np.ndarray

    def __post_init__(self):
        indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)
        if indices.shape != weights.shape:
            raise ValueError(
                f"Selection.indices has {indices.shape[0]} entries but Selection.weights has "
                f"{weights.shape[0]}")
        if indices.size and indices.min() < 0:
            raise ValueError("Selection.indices must be non-negative source indices")
        if not np.all(np.isfinite(weights)) or (weights.size and weights.min() < 0):
            raise ValueError("Selection.weights must be finite and non-negative")
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "weights", weights)

    @classmethod
    def full(cls, n: int) -> "Selection":
        """Every one of the n source samples once, weight 1."""
        return cls(np.arange(n, dtype=np.int64), np.ones(n, np.float32))

    @classmethod
    def subset(cls, indices, weights=None) -> "Selection":
        """The given indices, weight 1 unless weights are given."""
        indices = np.asarray(indices, dtype=np.int64)
        if weights is None:
            weights = np.ones(indices.shape, np.float32)
        return cls(indices, weights)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def validate(self, source_len: int) -> None:
        """Raises ValueError if any index is outside a source of `source_len` samples."""
        if self.indices.size and self.indices.max() >= source_len:
            raise ValueError(
                f"Selection has index {int(self.indices.max())} but the source has only "
                f"{source_len} samples")

    def save(self, directory: str | pathlib.Path, *, summary: dict | None = None) -> pathlib.Path:
        """Writes the selection files into `directory`; weights only when some differ from 1."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / KEPT_FILE, self.indices)
        if np.any(self.weights != 1):
            np.save(directory / WEIGHTS_FILE, self.weights)
        (directory / SUMMARY_FILE).write_text(json.dumps(
            summary or {}, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))
        return directory

    @classmethod
    def load(cls, directory: str | pathlib.Path, *, num_samples: int | None = None) -> "Selection":
        """A selection written by `save` (`--mode=curate`).

        Args:
          directory: the directory holding the selection files.
          num_samples: the source's size; when given, the selection must have been curated from
            exactly that many samples (its summary's `num_embeddings`) and index inside it.

        Raises:
          DataNotFoundError: no selection in `directory`.
          DataError: a selection of another pool, or indices outside it.
        """
        directory = pathlib.Path(directory)
        kept_file = directory / KEPT_FILE
        if not kept_file.is_file():
            raise DataNotFoundError(f"{kept_file} not found: not a selection written by --mode=curate")
        weights = np.load(directory / WEIGHTS_FILE) if (directory / WEIGHTS_FILE).is_file() else None
        if num_samples is not None:
            summary = directory / SUMMARY_FILE
            curated_from = json.loads(summary.read_text()).get("num_embeddings") if summary.is_file() else None
            if curated_from is not None and curated_from != num_samples:
                raise DataError(f"the selection in {directory} was curated from {curated_from} embeddings but "
                                f"the pretraining source has {num_samples} samples")
        try:
            selection = cls.subset(np.load(kept_file), weights)
            if num_samples is not None:
                selection.validate(num_samples)
        except ValueError as e:  # the files' contents, not the caller's code, are at fault
            raise DataError(f"{directory}: {e}") from e
        return selection
