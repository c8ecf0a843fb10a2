"""The Selection: which source samples an epoch visits, and with what loss weight.

A pruning policy produces a Selection; the Grain epoch pipeline consumes it. It is plain numpy
(no JAX) so that Grain worker processes can unpickle it without starting an accelerator backend.
"""
from __future__ import annotations

import dataclasses

import numpy as np


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

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"indices": self.indices, "weights": self.weights}

    @classmethod
    def from_arrays(cls, arrays) -> "Selection":
        return cls(np.asarray(arrays["indices"]), np.asarray(arrays["weights"]))
