"""The loop's own state: where a run is in its epochs and what the current epoch serves.

`RunState` holds the counters the epoch loop keeps between steps (epoch, the step it started at,
re-clusterings so far and the epoch of the latest one), the pool size the loss table was built for,
the current subset and served `Selection`, the report of every re-clustering so far, and one record
per launch that trained the run (its steps, training and wall seconds). It is saved
as one checkpoint item beside the train state and the data iterator, so a resumed run continues the
same epoch with the same selection and the same history.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from oceansar.data.selection import Selection


@dataclasses.dataclass
class RunState:
    """Counters, selections and pruning reports of a run (see the module docstring)."""

    num_samples: int
    subset: Selection
    served: Selection
    epoch: int = 0
    epoch_start_step: int = 0
    resamplings: int = 0
    last_resampling_epoch: int | None = None
    reports: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_tree(self) -> dict[str, np.ndarray]:
        """Arrays for one Orbax item; reports and segments travel as UTF-8 JSON bytes so the item stays whole."""
        scalars = {k: np.int64(-1 if getattr(self, k) is None else getattr(self, k))
                   for k in ("num_samples", "epoch", "epoch_start_step", "resamplings", "last_resampling_epoch")}
        return {**scalars,
                "subset_indices": self.subset.indices, "subset_weights": self.subset.weights,
                "served_indices": self.served.indices, "served_weights": self.served.weights,
                "reports": _json_bytes(self.reports), "segments": _json_bytes(self.segments)}

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> "RunState":
        last = int(tree["last_resampling_epoch"])
        return cls(num_samples=int(tree["num_samples"]),
                   subset=Selection(np.asarray(tree["subset_indices"]), np.asarray(tree["subset_weights"])),
                   served=Selection(np.asarray(tree["served_indices"]), np.asarray(tree["served_weights"])),
                   epoch=int(tree["epoch"]), epoch_start_step=int(tree["epoch_start_step"]),
                   resamplings=int(tree["resamplings"]), last_resampling_epoch=None if last < 0 else last,
                   reports=_from_json_bytes(tree["reports"]), segments=_from_json_bytes(tree.get("segments")))


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), np.uint8)


def _from_json_bytes(array) -> list:
    return [] if array is None else json.loads(np.asarray(array, np.uint8).tobytes().decode() or "[]")
