"""SemDeDup (Abbas et al. 2023): semantic deduplication of L2-normalised embeddings.

The rule reproduced exactly (arXiv 2303.09540 and its reference code): cluster the embeddings (spherical
k-means), order each cluster's members ("hard": farthest from the centroid first; "easy": closest first; "random"), let
M_j = max over EARLIER members i < j of the cosine similarity s_ij (removed members included), and remove j iff
M_j > 1 - eps; the first member of a cluster (and so every singleton) is always kept. Several eps are decided from one
computation of M.

The kernel never forms an N x N (or n_c x n_c) matrix. Points are sorted by (cluster, order), so every cluster is a
contiguous run, and the sorted array is cut into tiles of `block_size` rows. Column tile J only needs the row tiles
from the one holding the start of its first cluster up to J itself (the triangular band), i.e. the diagonals
k = 0 .. J - lo(J). A work unit is (a group of `group` consecutive column tiles, one diagonal k): both operands are
contiguous slices (no gather), one batched matmul, a mask (same cluster, and i < j on the diagonal), a column max and a
running max. The units are enumerated in numpy and run `units_per_call` at a time in one jitted loop of static shape.
Clusters of every size are packed back to back instead of being padded to power-of-two buckets (small clusters share
tiles, a cluster of any size is just more units, nothing is padded but the last tile), there is one compilation per
(block_size, group, units_per_call, d, dtype), and memory is O(N d + group * block_size^2). The measured reason for
this shape over vmapped per-cluster buckets or gathered tile pairs: on XLA:CPU a batched gather of tiles cost as much
as the matmul it fed, and power-of-two padding of a 300-member cluster wastes 2.9x the flops.

Numpy glue does the ordering and the tile enumeration; clustering comes from `curation.kmeans`. Nothing here imports
oceansar.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from curation import kmeans as kmeans_lib

ORDERINGS = ("hard", "easy", "random")


@dataclasses.dataclass
class SemDeDupResult:
    """Outcome of `semdedup`.

    Attributes:
        kept: [n, n_eps] bool, column e is the kept set for `eps_list[e]` (after all passes).
        eps_list: the eps values, in column order.
        max_similarity: [n] float32, M_j of the first pass (-inf for the first member of a cluster).
        assignment: [n] int32 cluster of each point in the first pass.
        survivors_per_pass: [n_passes, n_eps] int64, number of points kept after each pass.
    """

    kept: np.ndarray
    eps_list: tuple[float, ...]
    max_similarity: np.ndarray
    assignment: np.ndarray
    survivors_per_pass: np.ndarray


def cluster_order(assignment: np.ndarray, distance: np.ndarray, ordering: str = "hard", key: int = 0) -> np.ndarray:
    """Permutation that sorts points by cluster, then by the SemDeDup member order.

    Ties are broken deterministically: "hard" sorts by (distance descending, index ascending), "easy" by (distance
    ascending, index ascending), "random" by the rank `np.random.default_rng(key).permutation(n)` gives each point.

    Args:
        assignment: [n] int cluster ids.
        distance: [n] distance of each point to its centroid (ignored for "random").
        ordering: "hard", "easy" or "random".
        key: seed of the "random" ordering.

    Returns:
        [n] int64 permutation; `perm[k]` is the original index of the k-th point in sorted order.
    """
    assignment = np.asarray(assignment)
    n = assignment.shape[0]
    index = np.arange(n)
    if ordering == "hard":
        priority = -np.asarray(distance, np.float32)
    elif ordering == "easy":
        priority = np.asarray(distance, np.float32)
    elif ordering == "random":
        priority = np.random.default_rng(key).permutation(n)
    else:
        raise ValueError(f"ordering must be one of {ORDERINGS}, got {ordering!r}")
    return np.lexsort((index, priority, assignment))


def _diagonal_units(sorted_assignment: np.ndarray, block_size: int, group: int) -> tuple[np.ndarray, int]:
    """Work units (first column tile of a group, diagonal offset k) covering every same-cluster (earlier, later) pair.

    Column tile J needs the row tiles from the one holding the start of its first cluster up to J, i.e. diagonals
    k = 0 .. J - lo(J). A unit covers the tile pairs (J - k, J) for the `group` consecutive column tiles of one group,
    so both operands are contiguous slices; a group runs the diagonals its neediest column requires.
    """
    n = sorted_assignment.shape[0]
    n_blocks = -(-n // (block_size * group)) * group
    position = np.arange(n)
    is_start = np.ones(n, bool)
    is_start[1:] = sorted_assignment[1:] != sorted_assignment[:-1]
    cluster_start = np.maximum.accumulate(np.where(is_start, position, 0))
    col = np.arange(n_blocks)
    first_row = np.minimum(col * block_size, n - 1)
    n_diagonals = col - cluster_start[first_row] // block_size + 1
    per_group = n_diagonals.reshape(-1, group).max(axis=1)
    group_start = np.repeat(np.arange(0, n_blocks, group), per_group)
    k = np.arange(group_start.shape[0]) - np.repeat(np.cumsum(per_group) - per_group, per_group)
    return np.stack([group_start, k], axis=1).astype(np.int32), n_blocks


def _aligned_zeros(shape: tuple[int, int]) -> np.ndarray:
    """float32 zeros on a 64-byte boundary: XLA:CPU then adopts the buffer without a copy (a 300k x 256 copy into
    fresh pages cost ~1 s here, more than the whole similarity kernel)."""
    n_bytes = int(np.prod(shape)) * 4
    raw = np.zeros(n_bytes + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    return raw[offset:offset + n_bytes].view(np.float32).reshape(shape)


def _units_max(m, x_blocks, seg_blocks, units, *, block_size, group):
    """Running M ([n_blocks, block_size] float32) after the masked column maxima of `units`.

    `x_blocks` and `seg_blocks` carry `group` leading dummy tiles so that row slices of early groups never start
    below zero (a clamped slice would pair the wrong tiles).
    """
    d = x_blocks.shape[-1]
    pos = jnp.arange(block_size)

    def body(u, m):
        col0, k = units[u, 0], units[u, 1]
        xc = jax.lax.dynamic_slice(x_blocks, (col0 + group, 0, 0), (group, block_size, d))
        xr = jax.lax.dynamic_slice(x_blocks, (col0 + group - k, 0, 0), (group, block_size, d))
        sc = jax.lax.dynamic_slice(seg_blocks, (col0 + group, 0), (group, block_size))
        sr = jax.lax.dynamic_slice(seg_blocks, (col0 + group - k, 0), (group, block_size))
        s = jnp.einsum("gid,gjd->gij", xr, xc, preferred_element_type=jnp.float32,
                       precision=jax.lax.Precision.HIGHEST)
        # Within a diagonal tile (k == 0) only rows before the column count; for k > 0 every row is earlier.
        earlier = (pos[:, None] < pos[None, :]) | (k > 0)
        mask = (sr[:, :, None] == sc[:, None, :]) & earlier
        part = jnp.max(jnp.where(mask, s, -jnp.inf), axis=1)
        old = jax.lax.dynamic_slice(m, (col0, 0), (group, block_size))
        return jax.lax.dynamic_update_slice(m, jnp.maximum(old, part), (col0, 0))

    return jax.lax.fori_loop(0, units.shape[0], body, m)


@functools.lru_cache(maxsize=None)
def _compiled_units_max(block_size: int, group: int, mesh: jax.sharding.Mesh | None):
    kernel = functools.partial(_units_max, block_size=block_size, group=group)
    if mesh is None:
        return jax.jit(kernel, donate_argnums=(0,))
    spec = jax.sharding.PartitionSpec

    # Each device runs its share of the units against the replicated embeddings; one max-reduce merges the maxima.
    def sharded(m, x_blocks, seg_blocks, units):
        m = jax.lax.pcast(m, mesh.axis_names, to="varying")
        return jax.lax.pmax(kernel(m, x_blocks, seg_blocks, units), mesh.axis_names)

    return jax.jit(jax.shard_map(sharded, mesh=mesh, in_specs=(spec(), spec(), spec(), spec(mesh.axis_names)),
                                 out_specs=spec()), donate_argnums=(0,))


def max_earlier_similarity(
    x: np.ndarray | jax.Array,
    assignment: np.ndarray,
    distance: np.ndarray | None = None,
    *,
    ordering: str = "hard",
    key: int = 0,
    block_size: int = 64,
    group: int = 2,
    units_per_call: int = 512,
    compute_dtype=jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """M_j = max cosine similarity of point j to the members before it in its cluster's SemDeDup order.

    Args:
        x: [n, d] L2-normalised embeddings.
        assignment: [n] int cluster ids (any integers; clusters need not be contiguous).
        distance: [n] distance to the cluster centroid, required for "hard" and "easy" orderings.
        ordering: "hard" (farthest first, the SemDeDup default), "easy" or "random"; see `cluster_order` for ties.
        key: seed of the "random" ordering.
        block_size: rows per tile (64 suits CPUs; 128-256 suit GPUs).
        group: consecutive column tiles per work unit.
        units_per_call: work units per kernel call (a static shape); with a mesh, a multiple of its device count.
        compute_dtype: dtype of the similarity matmul (bfloat16 for GPU speed); accumulation and the comparison
            stay float32.
        mesh: optional mesh; work units are sharded over all of its axes, embeddings replicated.

    Returns:
        [n] float32 M in the original point order; -inf for the first member of each cluster.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be [n, d], got shape {x.shape}")
    n, d = x.shape
    assignment = np.asarray(assignment)
    if assignment.shape != (n,):
        raise ValueError(f"assignment must have shape ({n},), got {assignment.shape}")
    if ordering != "random" and (distance is None or np.shape(distance) != (n,)):
        raise ValueError(f"ordering={ordering!r} needs distance of shape ({n},), got "
                         f"{None if distance is None else np.shape(distance)}")
    if mesh is not None and units_per_call % mesh.size:
        raise ValueError(f"units_per_call={units_per_call} must be a multiple of the mesh's {mesh.size} devices")
    perm = cluster_order(assignment, distance, ordering, key)
    sorted_assignment = assignment[perm]
    units, n_blocks = _diagonal_units(sorted_assignment, block_size, group)
    n_pad = n_blocks * block_size

    # `group` dummy tiles in front (see `_units_max`) and padding rows at the end carry cluster ids no real point
    # has, so they never enter a real column's max.
    lead = group * block_size
    seg = np.full(lead + n_pad, -1, np.int32)
    _, seg[lead:lead + n] = np.unique(sorted_assignment, return_inverse=True)
    x_sorted = _aligned_zeros((lead + n_pad, d))
    np.take(x.astype(np.float32, copy=False), perm, axis=0, out=x_sorted[lead:lead + n])
    x_blocks = jax.device_put(x_sorted.reshape(-1, block_size, d)).astype(compute_dtype)
    seg_blocks = jnp.asarray(seg.reshape(-1, block_size))
    m = jnp.full((n_blocks, block_size), -jnp.inf, jnp.float32)

    n_calls = -(-units.shape[0] // units_per_call)
    # Repeating a unit is harmless (max is idempotent), so the last call is padded with the first unit.
    fill = n_calls * units_per_call - units.shape[0]
    units = np.concatenate([units, np.repeat(units[:1], fill, axis=0)]).reshape(n_calls, units_per_call, 2)
    kernel = _compiled_units_max(block_size, group, mesh)
    if mesh is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        x_blocks, seg_blocks, m = jax.device_put((x_blocks, seg_blocks, m), replicated)
    for c in range(n_calls):
        m = kernel(m, x_blocks, seg_blocks, jnp.asarray(units[c]))
    out = np.empty(n, np.float32)
    out[perm] = np.asarray(m).reshape(-1)[:n]
    return out


@functools.partial(jax.jit, static_argnames=("n_clusters",))
def _spherical_centroid_distance(x, assignment, *, n_clusters):
    sums = jax.ops.segment_sum(x, assignment, num_segments=n_clusters)
    centroids = sums / jnp.maximum(jnp.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return 1.0 - jnp.sum(x * centroids[assignment], axis=1)


def centroid_distance(x: np.ndarray | jax.Array, assignment: np.ndarray) -> np.ndarray:
    """Cosine distance of each point to its cluster's spherical centroid (normalised mean of the members).

    Args:
        x: [n, d] L2-normalised embeddings.
        assignment: [n] int cluster ids.

    Returns:
        [n] float32 distances, 1 - cos(x_i, c_{a_i}).
    """
    _, dense = np.unique(np.asarray(assignment), return_inverse=True)
    n_clusters = int(dense.max()) + 1 if dense.size else 0
    return np.asarray(_spherical_centroid_distance(jnp.asarray(x, jnp.float32), jnp.asarray(dense, jnp.int32),
                                                   n_clusters=n_clusters))


def _check_embeddings(x: np.ndarray | jax.Array, normalize: bool) -> np.ndarray:
    # Host numpy on purpose: the kernel sorts on the host, and one more device copy of a 300k x 256 set is 300 MB.
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be [n, d] embeddings, got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if not np.isfinite(norms).all():
        raise ValueError(f"x has a NaN/Inf row (first at index {int(np.flatnonzero(~np.isfinite(norms))[0])})")
    if normalize:
        if (norms == 0).any():
            raise ValueError(f"x has an all-zero row (index {int(np.flatnonzero(norms == 0)[0])})")
        return x / norms[:, None]
    worst = float(np.abs(norms - 1.0).max())
    if worst > 1e-3:
        raise ValueError(f"x rows must be L2-normalised (max |norm - 1| = {worst:.3g}); pass normalize=True")
    return x


def semdedup(
    x: np.ndarray | jax.Array,
    *,
    n_clusters: int,
    eps_list: Sequence[float],
    n_passes: int = 1,
    ordering: str = "hard",
    key: int = 0,
    assignment: np.ndarray | None = None,
    distance: np.ndarray | None = None,
    normalize: bool = False,
    kmeans_iters: int = 20,
    block_size: int = 64,
    group: int = 2,
    units_per_call: int = 512,
    compute_dtype=jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
) -> SemDeDupResult:
    """SemDeDup: remove members whose similarity to an earlier member of their cluster exceeds 1 - eps.

    Pass 1 uses `assignment` (and `distance`, or the distance to the spherical centroid of the given clusters) when
    given, else spherical k-means with `n_clusters`. Each later pass re-clusters the survivors of the previous pass
    (with min(n_clusters, survivors) clusters and seed key + pass) and applies the rule again: without re-clustering a
    later pass would change nothing. With several eps each eps runs its own chain of passes, so `kept[:, e]` is
    exactly what `n_passes` passes at `eps_list[e]` alone keep; pass 1 is shared.

    Args:
        x: [n, d] embeddings, L2-normalised unless `normalize=True`.
        n_clusters: k of the spherical k-means (ignored in pass 1 when `assignment` is given).
        eps_list: eps values in (0, 1); a point is removed when M_j > 1 - eps (compared in float32).
        n_passes: number of passes.
        ordering: "hard" (farthest from the centroid first, SemDeDup's default), "easy" or "random".
        key: seed of k-means and of the "random" ordering.
        assignment: optional [n] cluster ids for pass 1.
        distance: optional [n] distances to the centroid matching `assignment`.
        normalize: L2-normalise `x` first instead of requiring unit rows.
        kmeans_iters: Lloyd iterations per clustering.
        block_size: rows per similarity tile.
        group: consecutive column tiles per work unit.
        units_per_call: work units per kernel call.
        compute_dtype: similarity matmul dtype (float32, or bfloat16 on GPUs).
        mesh: optional mesh over which k-means and the tile pairs are sharded.

    Returns:
        A `SemDeDupResult`.
    """
    eps_list = tuple(float(e) for e in eps_list)
    if not eps_list or not all(0.0 < e < 1.0 for e in eps_list):
        raise ValueError(f"eps_list must be non-empty with every eps in (0, 1), got {eps_list}")
    if n_passes < 1:
        raise ValueError(f"n_passes must be >= 1, got {n_passes}")
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {ORDERINGS}, got {ordering!r}")
    x = _check_embeddings(x, normalize)
    n = x.shape[0]
    if assignment is None and not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}] (the number of points), got {n_clusters}")
    kernel = functools.partial(max_earlier_similarity, ordering=ordering, block_size=block_size,
                               group=group, units_per_call=units_per_call, compute_dtype=compute_dtype, mesh=mesh)

    def cluster(points: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        res = kmeans_lib.kmeans(points, k, n_iters=kmeans_iters, key=seed, mode="cosine", mesh=mesh)
        return np.asarray(res.assignment), np.asarray(res.distance)

    if assignment is None:
        assignment, distance = cluster(x, n_clusters, key)
    else:
        assignment = np.asarray(assignment)
        if assignment.shape != (n,):
            raise ValueError(f"assignment must have shape ({n},), got {assignment.shape}")
        if distance is None:
            distance = centroid_distance(x, assignment)
    m = kernel(x, assignment, distance, key=key)
    thresholds = [1.0 - e for e in eps_list]
    kept = np.stack([~(m > t) for t in thresholds], axis=1)
    survivors = np.zeros((n_passes, len(eps_list)), np.int64)
    survivors[0] = kept.sum(axis=0)
    for e, t in enumerate(thresholds):
        for p in range(1, n_passes):
            idx = np.flatnonzero(kept[:, e])
            sub = x[idx]
            sub_assignment, sub_distance = cluster(sub, min(n_clusters, idx.size), key + p)
            sub_m = kernel(sub, sub_assignment, sub_distance, key=key + p)
            kept[idx[sub_m > t], e] = False
            survivors[p, e] = kept[:, e].sum()
    return SemDeDupResult(kept=kept, eps_list=eps_list, max_similarity=m,
                          assignment=assignment.astype(np.int32), survivors_per_pass=survivors)
