"""Run metrics: one JSON object per log step in `metrics.jsonl`, the same scalars in TensorBoard,
and plots of a finished run.

Only process 0 writes, so a pod run produces one file. Values are converted to plain Python floats
here, never earlier, so that the training loop can hand over device arrays fetched a step late.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import numpy as np


def _to_python(value: Any):
    arr = np.asarray(value)
    if arr.ndim == 0:
        v = arr.item()
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return v
    return arr.tolist()


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it is installed
    (2 s per process) only to accept its tensors, and every value written here is a Python float."""
    import sys

    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter  # heavy import, writer processes only
    finally:
        if block:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Appends scalars to `<workdir>/metrics.jsonl` and to TensorBoard event files.

    The log is one run's: `truncate_after(step)` (what a resumed run calls with its restored step,
    and a fresh one with 0) drops the records of steps it will repeat, in the JSONL file and, through
    TensorBoard's purge step, in the event files, so no step is ever logged twice.
    """

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
        self.enabled = enabled
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self._tb = None
        self._purge_step: int | None = None

    def truncate_after(self, step: int) -> None:
        """Forgets every record past `step` (all of them for 0): the run continues from `step`."""
        if self.enabled:
            truncate_after(self.path, step)
            self._purge_step = step + 1

    def _board(self):
        if self._tb is None:
            SummaryWriter = _summary_writer_class()
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=self._purge_step)
        return self._tb

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _to_python(v) for k, v in metrics.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        board = self._board()
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                board.add_scalar(k, v, int(step))
        board.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(path: str | pathlib.Path, step: int) -> None:
    """Drops records past `step`: a resumed run rewrites the steps it repeats, once."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    records = [r for r in read_jsonl(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def plot_run(records: list[dict[str, Any]], out: str | pathlib.Path,
             keys: tuple[str, ...] = ("train/loss", "eval/knn/top1_k20", "eval/linear/top1",
                                      "train/teacher_entropy")) -> None:
    """One panel per metric against examples seen."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    present = [k for k in keys if any(k in r for r in records)]
    if not present:
        return
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present):
        pts = [(r.get("examples_seen", r["step"]), r[key]) for r in records
               if isinstance(r.get(key), (int, float))]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("examples seen")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
