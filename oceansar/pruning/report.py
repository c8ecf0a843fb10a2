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

import numpy as np


def engagement(labels: np.ndarray, groups: np.ndarray | None, indices: np.ndarray) -> dict[str, float]:
    """How far a selection moved away from its pool's redundancy, from the pool's hidden truth.

    Args:
      labels: [N] hidden class of every pool sample.
      groups: [N] hidden near-duplicate group of every pool sample, or None when unknown.
      indices: the selection's pool indices (repeats count as often as they are visited).

    Returns:
      `head_share` (share of the pool's most frequent class), `effective_classes` (exp of the class
      entropy), and with groups `near_duplicate_share` (visits that are not the first visit of their
      group) and `duplicate_groups` (groups visited more than once).
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels[indices], minlength=int(labels.max()) + 1).astype(np.float64)
    shares = counts / max(counts.sum(), 1.0)
    nonzero = shares[shares > 0]
    out = {"head_share": float(shares[np.argmax(np.bincount(labels))]),
           "effective_classes": float(np.exp(-np.sum(nonzero * np.log(nonzero))))}
    if groups is not None:
        _, per_group = np.unique(np.asarray(groups)[indices], return_counts=True)
        out["near_duplicate_share"] = float((per_group - 1).sum() / max(len(indices), 1))
        out["duplicate_groups"] = int((per_group > 1).sum())
    return out


def selection_summary(source, selection) -> dict[str, float]:
    """Size, kept fraction, mean weight and, where the source knows its hidden truth (the simulator, a
    redundant pool, a labelled folder), the class shares and engagement of a selection next to the pool's."""
    out = {"selection_size": len(selection),
           "pruning/kept_fraction": len(selection) / len(source),
           "pruning/weight_mean": float(selection.weights.mean())}
    labels = source.labels() if callable(getattr(source, "labels", None)) else None
    if labels is None:
        return out
    groups = source.groups() if callable(getattr(source, "groups", None)) else None
    names = getattr(source, "class_names", None) or [str(c) for c in range(int(np.max(labels)) + 1)]
    counts = np.bincount(labels[selection.indices], minlength=len(names))
    out.update({f"pruning/class_share/{name}": float(c) / len(selection) for name, c in zip(names, counts)})
    out.update({f"pruning/{k}": v for k, v in engagement(labels, groups, selection.indices).items()})
    out.update({f"pool/{k}": v for k, v in engagement(labels, groups, np.arange(len(source))).items()})
    return out


def write_reports(workdir: str | pathlib.Path, reports: list[dict[str, Any]]) -> None:
    """Writes a run's re-clustering reports (its run state's history) to `pruning/resamplings.json`."""
    path = pathlib.Path(workdir) / "pruning" / "resamplings.json"
    if reports or path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(reports))


def resampling_scalars(record: dict[str, Any]) -> dict[str, float]:
    """Scalar summaries of one re-clustering's kept cluster sizes, for the metrics log."""
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


ENGAGEMENT = ("head_share", "effective_classes", "near_duplicate_share", "duplicate_groups")
ENGAGEMENT_PLOTTED = ("head_share", "near_duplicate_share")


def plot_pruning(metrics: list[dict[str, Any]], resamplings: list[dict[str, Any]],
                 out: str | pathlib.Path) -> bool:
    """Class shares of the selection against examples seen, and cluster sizes before/after.

    Returns:
      Whether a figure was written (False when there is nothing to draw).
    """
    share_keys = sorted({k for r in metrics for k in r if k.startswith("pruning/class_share/")})
    engaged = [k for k in ENGAGEMENT_PLOTTED if any(f"pruning/{k}" in r for r in metrics)]
    panels = ((["shares"] if share_keys else []) + (["engagement"] if engaged else [])
              + (["leaf", "top"] if resamplings else []))
    if not panels:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "engagement":
            rows = [r for r in metrics if f"pruning/{engaged[0]}" in r]
            x = [r["examples_seen"] for r in rows]
            for key, color in zip(engaged, ("tab:red", "tab:blue")):
                ax.plot(x, [r[f"pruning/{key}"] for r in rows], color=color, label=f"selection {key}")
                ax.axhline(rows[0][f"pool/{key}"], color=color, ls=":", label=f"pool {key}")
            ax.set_xlabel("examples seen")
            ax.set_title("redundancy of the served selection")
            ax.legend(fontsize=7)
        elif panel == "shares":
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
