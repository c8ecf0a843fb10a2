"""What a pruned run reports about its selections: the re-clustering reports and the pruning figure.

Every re-clustering of a cluster-balanced policy yields a report (epoch, examples seen, points embedded
and kept, leaf and top-level cluster sizes before and after balanced sampling). The reports live in the
run state, and so in the checkpoint: a resumed run carries exactly the history of the step it resumed
from, and `write_reports` mirrors it to `<workdir>/pruning/resamplings.json`. `plot_pruning` draws the
class shares of the served selection over training (on the simulator, whose hidden labels exist: the
picture of pruning rebalancing the tail) and the cluster-size distributions before and after sampling
(log-log rank plots).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any


def write_reports(workdir: str | pathlib.Path, reports: list[dict[str, Any]]) -> None:
    """Writes a run's re-clustering reports (its run state's history) to `pruning/resamplings.json`."""
    path = pathlib.Path(workdir) / "pruning" / "resamplings.json"
    if reports or path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(reports))


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
