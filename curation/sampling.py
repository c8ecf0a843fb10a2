"""Balanced hierarchical sampling (Vo et al. 2024) over a `Hierarchy`, with OceanSAR-1's eta within-leaf policy.

The budget is spread over the top-level clusters by water-filling cap allocation on their flat sizes (number of
data points underneath), recursively into sub-clusters, and finally inside each leaf by a picking strategy. All
groups of one level are allocated at once (a vectorised bisection per group), so the host glue is a handful of numpy
passes per level, not a Python loop over clusters or samples. No clustering happens here (see `hierarchical.py`).
"""
from __future__ import annotations

import numpy as np

from curation.hierarchical import Hierarchy

STRATEGIES = ("random", "closest", "farthest", "eta")


def _rank_within(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rank (0-based) of each element within its group by ascending score (stable)."""
    order = np.lexsort((score, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    run = np.repeat(starts, np.diff(np.r_[starts, g.size]))
    rank = np.empty(group.size, np.int64)
    rank[order] = np.arange(group.size) - run
    return rank


def _grouped_cap_allocation(sizes: np.ndarray, group: np.ndarray, targets: np.ndarray, rng: np.random.Generator,
                            multiplier: int = 1) -> np.ndarray:
    """Water-filling cap allocation done independently inside every group.

    Within group g, members with capacities a_i = sizes_i * multiplier receive min(t_g, a_i) with t_g the largest
    integer keeping the sum within targets[g]; the leftover goes +1 to members with a_i > t_g drawn at random.
    """
    a = np.asarray(sizes, np.int64) * int(multiplier)
    n_groups = targets.size
    totals = np.bincount(group, weights=a, minlength=n_groups).astype(np.int64)
    targets = np.minimum(np.asarray(targets, np.int64), totals)
    # Largest t with sum(min(t, a)) <= target: bisection on [0, max a + 1) for all groups at once.
    lo = np.zeros(n_groups, np.int64)
    hi = np.full(n_groups, a.max(initial=0) + 1, np.int64)
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        filled = np.bincount(group, weights=np.minimum(mid[group], a), minlength=n_groups)
        ok = filled <= targets
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    alloc = np.minimum(lo[group], a)
    leftover = targets - np.bincount(group, weights=alloc, minlength=n_groups).astype(np.int64)
    eligible = a > lo[group]
    rank = _rank_within(np.where(eligible, group, n_groups), rng.random(a.size))
    alloc += (eligible & (rank < leftover[group])).astype(np.int64)
    return alloc


def cap_allocation(sizes: np.ndarray, target: int, *, rng: np.random.Generator, multiplier: int = 1) -> np.ndarray:
    """Spreads `target` over clusters as evenly as their capacities allow (water-filling).

    Args:
        sizes: [c] non-negative cluster sizes.
        target: Budget to spread.
        rng: Generator for the random +1 given to the leftover.
        multiplier: Each cluster may be taken up to `multiplier` times its size.

    Returns:
        int64 [c] allocation, summing exactly to min(target, sum(sizes * multiplier)), each <= sizes * multiplier.
    """
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or (sizes < 0).any():
        raise ValueError(f"sizes must be a 1-D array of non-negative counts, got shape {sizes.shape}")
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    if sizes.size == 0:
        return np.zeros(0, np.int64)
    return _grouped_cap_allocation(sizes, np.zeros(sizes.size, np.int64), np.array([target]), rng, multiplier)


def balanced_sample(hierarchy: Hierarchy, target: int, *, key: int | np.random.Generator, strategy: str = "random",
                    eta: float = 0.5, multiplier: int = 1) -> np.ndarray:
    """Balanced hierarchical sample of `target` data points.

    Args:
        hierarchy: Output of `hierarchical_kmeans`.
        target: Number of indices to return (<= n * multiplier).
        key: Seed or Generator; the result is a deterministic function of it.
        strategy: Within-leaf pick for the part of a quota below the leaf size: "random" (uniform), "closest"
            (nearest to the centroid), "farthest", or "eta": round((1 - eta) * q) closest, the rest uniform among the
            remaining members (eta=0 is "closest", eta=1 is "random"; OceanSAR-1).
        eta: Diversity knob for strategy "eta", in [0, 1].
        multiplier: Small clusters may be repeated up to this many times.

    Returns:
        int64 indices into the original points, grouped by leaf cluster (repeats possible when multiplier > 1).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if multiplier < 1:
        raise ValueError(f"multiplier must be >= 1, got {multiplier}")
    n = hierarchy.n_points
    if not 0 <= target <= n * multiplier:
        raise ValueError(f"target={target} must be in [0, n * multiplier = {n * multiplier}] (n={n} points)")
    rng = key if isinstance(key, np.random.Generator) else np.random.default_rng(key)

    flat = hierarchy.flat_sizes()
    top = len(hierarchy.levels) - 1
    quota = cap_allocation(flat[top], target, rng=rng, multiplier=multiplier)
    for level in range(top - 1, -1, -1):
        parent = hierarchy.levels[level + 1].assignment.astype(np.int64)
        quota = _grouped_cap_allocation(flat[level], parent, quota, rng, multiplier)

    leaf = hierarchy.levels[0].assignment.astype(np.int64)
    order, offsets = hierarchy.leaf_clusters()
    size = np.diff(offsets)
    q = quota
    n_rep = np.where(size > 0, q // np.maximum(size, 1), 0)
    rest = q - n_rep * size
    sorted_leaf = leaf[order]
    pos = np.arange(n) - offsets[sorted_leaf]  # rank by distance to the leaf centroid, ascending
    s = size[sorted_leaf]
    r = rest[sorted_leaf]
    if strategy == "closest":
        pick = pos < r
    elif strategy == "farthest":
        pick = (s - 1 - pos) < r
    elif strategy == "random":
        pick = _rank_within(sorted_leaf, rng.random(n)) < r
    else:
        n_close = np.floor((1.0 - eta) * rest + 0.5).astype(np.int64)[sorted_leaf]  # round half up
        close = pos < n_close
        far_rank = _rank_within(np.where(close, -1, sorted_leaf), rng.random(n))
        pick = close | (~close & (far_rank < r - n_close))
    counts = n_rep[sorted_leaf] + pick
    return np.repeat(order, counts).astype(np.int64)
