"""What a pruned run reports about its selections: the resampling log and the pruning figure.

Every re-clustering of a cluster-balanced policy appends a record (epoch, examples seen, points
embedded and kept, leaf and top-level cluster sizes before and after balanced sampling) to
`<workdir>/pruning/resamplings.json`; a resumed run first drops the records of epochs the
checkpoint had not reached, so the file always describes the run's one history. `plot_pruning`
draws the class shares of the served selection over training (on the simulator, whose hidden
labels exist: the picture of pruning rebalancing the tail) and the cluster-size distributions
before and after sampling (log-log rank plots, as in seed 002's figure 4).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any


class ResamplingLog:
    """The JSON list of a run's re-clusterings, written by the main process."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
        self.path = pathlib.Path(workdir) / "pruning" / "resamplings.json"
        self.enabled = enabled
        self.records: list[dict[str, Any]] = (
            json.loads(self.path.read_text()) if self.path.exists() else [])

    def truncate_after(self, epoch: int) -> None:
        """Forgets re-clusterings of epochs later than `epoch` (a resumed run redoes them)."""
        self.records = [r for r in self.records if r["epoch"] <= epoch]
        self._write()

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._write()

    def _write(self) -> None:
        if self.enabled and (self.records or self.path.exists()):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.records))


def resampling_scalars(record: dict[str, Any]) -> dict[str, float]:
    """Scalar summaries of one re-clustering's kept cluster sizes, for the metrics log."""
    import numpy as np

    out = {}
    for level in ("leaf", "top"):
        before = np.asarray(record[f"{level}_sizes_before"])
        after = np.asarray(record[f"{level}_sizes_after"])
        occupied = before > 0
        out[f"pruning/{level}_clusters_kept"] = int((after > 0).sum())
        out[f"pruning/{level}_kept_max"] = int(after.max())
        out[f"pruning/{level}_kept_median"] = float(np.median(after[occupied]))
        # max/median cluster size before vs after: how much balanced sampling flattened the mix
        out[f"pruning/{level}_imbalance_before"] = float(before.max() / max(np.median(before[occupied]), 1))
        out[f"pruning/{level}_imbalance_after"] = float(after.max() / max(np.median(after[occupied]), 1))
    return out


def plot_pruning(metrics: list[dict[str, Any]], resamplings: list[dict[str, Any]],
                 out: str | pathlib.Path) -> bool:
    """Class shares of the selection against examples seen, and cluster sizes before/after.

    Returns:
      Whether a figure was written (False when there is nothing to draw).
    """
    share_keys = sorted({k for r in metrics for k in r if k.startswith("pruning/class_share/")})
    panels = (["shares"] if share_keys else []) + (["leaf", "top"] if resamplings else [])
    if not panels:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "shares":
            rows = [r for r in metrics if share_keys[0] in r]
            x = [r["examples_seen"] for r in rows]
            for key in share_keys:
                ax.plot(x, [max(r[key], 1e-4) for r in rows], label=key.rsplit("/", 1)[-1])
            ax.set_yscale("log")
            ax.set_xlabel("examples seen")
            ax.set_title("class share of the served selection")
            ax.legend(fontsize=6, ncol=2)
        else:
            shown = resamplings if len(resamplings) <= 2 else [resamplings[0], resamplings[-1]]
            for rec, style in zip(shown, ("-", "--")):
                for when, color in (("before", "tab:gray"), ("after", "tab:blue")):
                    sizes = np.sort(np.asarray(rec[f"{panel}_sizes_{when}"]))[::-1]
                    sizes = sizes[sizes > 0]
                    ax.loglog(np.arange(1, sizes.size + 1), sizes, style, color=color,
                              label=f"epoch {rec['epoch']}, {when}")
            ax.set_xlabel("cluster rank")
            ax.set_ylabel("points")
            ax.set_title(f"{panel} cluster sizes, embedded vs kept")
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True
