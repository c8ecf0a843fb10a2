"""Hierarchical k-means with resampling (Vo et al. 2024): the clustering half of balanced data curation.

Level 1 clusters the data points; level l > 1 clusters the centroids of level l - 1. After each level's first k-means,
resampling rounds refit the centroids (fresh k-means++ init) on the r members closest to, or drawn uniformly from,
each cluster, then reassign every point of that level, which spreads centroids over the support of the data instead
of its density. An optional two-step first level splits each of k clusters into s with its own k-means (batched,
one vmapped program per size bucket) to reach very large k cheaply. Sampling a subset lives in `sampling.py`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from curation import kmeans as km


@dataclasses.dataclass
class Level:
    """One level of the hierarchy.

    Attributes:
        centroids: [k_l, d] centroids.
        assignment: [n_{l-1}] int32 cluster of each data point (level 1) or of each level-(l-1) centroid.
        distance: [n_{l-1}] float32 distance of each member to its centroid (squared L2 or 1 - cos).
    """

    centroids: np.ndarray
    assignment: np.ndarray
    distance: np.ndarray


@dataclasses.dataclass
class Hierarchy:
    """Levels of a hierarchical k-means, `levels[0]` clustering the data points."""

    levels: list[Level]

    @property
    def n_points(self) -> int:
        return int(self.levels[0].assignment.shape[0])

    def flat_sizes(self) -> list[np.ndarray]:
        """Number of data points under each cluster, per level (int64)."""
        sizes = [np.bincount(self.levels[0].assignment, minlength=len(self.levels[0].centroids)).astype(np.int64)]
        for level in self.levels[1:]:
            sizes.append(np.bincount(level.assignment, weights=sizes[-1],
                                     minlength=len(level.centroids)).astype(np.int64))
        return sizes

    def leaf_clusters(self) -> tuple[np.ndarray, np.ndarray]:
        """Data points grouped by leaf cluster, each group sorted by ascending distance to its centroid.

        Returns:
            (order, offsets): `order[offsets[j]:offsets[j + 1]]` are the members of leaf j, closest first
            (int64 [n] and [k_1 + 1]); `np.split(order, offsets[1:-1])` gives the per-leaf lists.
        """
        leaf = self.levels[0].assignment
        order = np.lexsort((self.levels[0].distance, leaf)).astype(np.int64)
        offsets = np.zeros(len(self.levels[0].centroids) + 1, np.int64)
        np.cumsum(np.bincount(leaf, minlength=len(self.levels[0].centroids)), out=offsets[1:])
        return order, offsets

    def leaf_of_level(self, level: int) -> np.ndarray:
        """Cluster at `level` (0-based) of every data point, int64 [n]."""
        owner = self.levels[0].assignment.astype(np.int64)
        for lv in self.levels[1:level + 1]:
            owner = lv.assignment.astype(np.int64)[owner]
        return owner


def _per_level(value, n_levels: int, name: str) -> list[int]:
    if isinstance(value, (int, np.integer)):
        return [int(value)] * n_levels
    value = [int(v) for v in value]
    if len(value) != n_levels:
        raise ValueError(f"{name} has {len(value)} entries but n_clusters has {n_levels} levels")
    return value


def _resample_indices(assignment, distance, r: int, strategy: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of the r members closest to (or drawn uniformly from) each cluster; whole clusters when smaller."""
    score = distance if strategy == "closest" else rng.random(assignment.size)
    order = np.lexsort((score, assignment))
    a = assignment[order]
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    rank = np.arange(a.size) - np.repeat(starts, np.diff(np.r_[starts, a.size]))
    return np.sort(order[rank < r])


@functools.partial(jax.jit, static_argnames=("s", "n_iters", "cosine"))
def _split_batch(xg, wg, keys, *, s: int, n_iters: int, cosine: bool):
    """k-means into s parts for a batch of padded clusters [G, m, d] with member weights [G, m] (0 = padding)."""

    def one(x, w, key):
        c = km._kmeanspp_kernel(x, w, key, k=s, n_trials=2 + int(np.log(s)))

        def nearest(c):
            dots = jnp.matmul(x, c.T, precision=km._EXACT)
            d2 = jnp.sum(x * x, 1)[:, None] - 2.0 * dots + jnp.sum(c * c, 1)[None, :]
            return jnp.argmin(d2, axis=1), jnp.maximum(jnp.min(d2, axis=1), 0.0)

        def step(_, c):
            a, _ = nearest(c)
            onehot = jax.nn.one_hot(a, s, dtype=jnp.float32) * w[:, None]
            counts = onehot.sum(0)
            mean = jnp.matmul(onehot.T, x, precision=km._EXACT) / jnp.maximum(counts, 1e-30)[:, None]
            new = jnp.where((counts > 0)[:, None], mean, c)
            return km._normalize(new) if cosine else new

        c = lax.fori_loop(0, n_iters, step, c)
        a, d = nearest(c)
        return c, a, (0.5 * d if cosine else d)

    return jax.vmap(one)(xg, wg, keys)


def _split_level(x, parent: km.KMeansResult, s: int, n_iters: int, key, mode: str) -> Level:
    """Splits every cluster of `parent` into up to s sub-clusters; returns the level over the data points."""
    n, d = x.shape
    xn = km._normalize_np(x) if mode == "cosine" else x
    k = len(parent.centroids)
    order = np.argsort(parent.assignment, kind="stable")
    sizes = np.bincount(parent.assignment, minlength=k)
    offsets = np.r_[0, np.cumsum(sizes)]
    bucket = np.maximum(s, 1 << np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64))
    centroids = np.zeros((k, s, d), np.float32)
    sub = np.zeros(n, np.int64)
    dist = np.zeros(n, np.float32)
    for b in np.unique(bucket[sizes > 0]):
        members = np.flatnonzero((bucket == b) & (sizes > 0))
        xg = np.zeros((members.size, b, d), np.float32)
        wg = np.zeros((members.size, b), np.float32)
        for g, j in enumerate(members):  # host copy per cluster; the k-means itself is one batched program
            xg[g, :sizes[j]] = xn[order[offsets[j]:offsets[j + 1]]]
            wg[g, :sizes[j]] = 1.0
        keys = jax.random.split(jax.random.fold_in(key, int(b)), members.size)
        c, a, dd = (np.asarray(v) for v in _split_batch(jnp.asarray(xg), jnp.asarray(wg), keys, s=s,
                                                         n_iters=n_iters, cosine=mode == "cosine"))
        centroids[members] = c
        valid = wg > 0
        rows = order[np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in members])]
        sub[rows] = (members[:, None] * s + a)[valid]
        dist[rows] = dd[valid]
    used, new_id = np.unique(sub, return_inverse=True)  # drop sub-clusters that got no member
    return Level(centroids=centroids.reshape(k * s, d)[used], assignment=new_id.astype(np.int32), distance=dist)


def hierarchical_kmeans(x, n_clusters: Sequence[int], *, n_resamples: Sequence[int] | int = 10,
                        sample_sizes: Sequence[int] | None = None, strategy: str = "closest", n_iters: int = 20,
                        n_splits: int = 1, key=0, mode: str = "l2", mesh=None,
                        init: str = "kmeans++", compute_dtype=jnp.float32) -> Hierarchy:
    """Hierarchical k-means with resampling (Vo et al. 2024).

    Args:
        x: [n, d] points (embeddings).
        n_clusters: k per level, bottom (data) level first, e.g. [50_000, 10_000, 5_000, 1_000].
        n_resamples: Resampling rounds after each level's first k-means (int or per level).
        sample_sizes: Points per cluster in a resampling round, per level; default half the level's mean cluster
            size. Levels with r <= 1 skip resampling.
        strategy: "closest" or "random" pick of the r resampled members.
        n_iters: Lloyd iterations of every k-means.
        n_splits: If > 1, the first level is k_1 clusters each split into n_splits by its own k-means (no
            resampling on that level, as in the reference implementation).
        key: int seed or jax PRNG key.
        mode: "l2" or "cosine".
        mesh: Optional mesh for the data-level k-means (points sharded along N).
        init: Initialisation of each k-means ("kmeans++" or, for very large k, "kmeans||").
        compute_dtype: Distance matmul dtype of every k-means and assignment; bfloat16 screens candidates that
            are then re-scored in float32 (see `kmeans.kmeans`).

    Returns:
        Hierarchy with one Level per entry of n_clusters.
    """
    x = km._as_points(x)
    n_levels = len(n_clusters)
    if n_levels == 0:
        raise ValueError("n_clusters must list at least one level")
    if strategy not in ("closest", "random"):
        raise ValueError(f"strategy must be 'closest' or 'random', got {strategy!r}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    resamples = _per_level(n_resamples, n_levels, "n_resamples")
    key = km._key(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    levels: list[Level] = []
    points = x
    for l, k in enumerate(n_clusters):
        k = int(k)
        what = "data points" if l == 0 else f"centroids of level {l}"
        effective = k * n_splits if l == 0 else k
        if not 1 <= effective <= points.shape[0]:
            raise ValueError(f"n_clusters[{l}]={k}{f' x n_splits={n_splits}' if l == 0 and n_splits > 1 else ''} "
                             f"must be in [1, {points.shape[0]}] (number of {what})")
        lkey = jax.random.fold_in(key, l)
        lmesh = mesh if l == 0 else None
        fit = km.kmeans(points, k, n_iters=n_iters, key=lkey, mode=mode, mesh=lmesh, init=init,
                        compute_dtype=compute_dtype)
        if l == 0 and n_splits > 1:
            level = _split_level(points, fit, n_splits, n_iters, jax.random.fold_in(lkey, 1), mode)
        else:
            level = Level(fit.centroids, fit.assignment, fit.distance)
            r = (sample_sizes[l] if sample_sizes is not None
                 else max(1, int(round(points.shape[0] / (2 * k)))))
            for step in range(resamples[l] if r > 1 else 0):
                picked = _resample_indices(level.assignment, level.distance, int(r), strategy, rng)
                refit = km.kmeans(points[picked], min(k, picked.size), n_iters=n_iters, mode=mode,
                                  key=jax.random.fold_in(lkey, step + 2), init=init, compute_dtype=compute_dtype)
                a, dist = km.assign(points, refit.centroids, mode=mode, mesh=lmesh, compute_dtype=compute_dtype)
                level = Level(refit.centroids, a, dist)
        levels.append(level)
        points = level.centroids
    return Hierarchy(levels)
