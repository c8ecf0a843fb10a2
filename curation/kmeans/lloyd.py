"""Lloyd iterations and the public `kmeans` fit (with its `KMeansResult`). Each iteration assigns every point with
`search._nearest` and sums the members of every centroid with one segment sum over the device's points; with a mesh
the points are sharded along N and each device reduces its own points before a single ``psum`` per iteration. Large
fits skip work that cannot change the result: after the first updates most centroids stop moving, so each point is
scored against the moved centroids only (`_moved_pass`), and re-scored in full (`_rescore`, `_full_pass`) only where
a kept lower bound on the other centroids' scores does not settle it (`_lloyd_local`); smaller fits run plain
iterations (`_plain_local`). A fit, iterations and final assignment, is one jitted device program (`_lloyd_fn`), and
the host sees one transfer at the end of it.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from curation.kmeans import search
from curation.kmeans.common import _as_points, _check_mode, _key, _normalize, _normalize_np
from curation.kmeans.search import (_TILE_ALIGN, _TILE_ELEMENTS, _assign_fn, _block_assign, _distance, _nearest,
                                    _prepare, _rounding, _shard, _tile_centroids)
from curation.kmeans.seeding import _initial_centroids

# Lloyd fits with at least this many centroids and iterations, and n_iters * n * k * d multiply-adds, skip
# unchanged work.
_SKIP_MIN_K = 256
_SKIP_MIN_ITERS = 4
_SKIP_MIN_WORK = 1 << 38


@dataclasses.dataclass
class KMeansResult:
    """Result of a k-means fit.

    Attributes:
        centroids: [k, d] float32 centroids (unit norm in cosine mode).
        assignment: [n] int32 index of each point's centroid.
        distance: [n] float32 squared L2 distance to the assigned centroid ("l2") or 1 - cos ("cosine").
        inertia: Sum of `distance`, accumulated in float64.
    """

    centroids: np.ndarray
    assignment: np.ndarray
    distance: np.ndarray
    inertia: float


def _update(c, sums, counts, cosine):
    mean = sums / jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
    new = jnp.where((counts > 0)[:, None], mean, c)  # an empty cluster keeps its centroid
    return _normalize(new) if cosine else new


def _moved_step(k: int) -> int:
    """Width granularity of the pass over moved centroids: an eighth of K, aligned (so up to 8 static widths)."""
    return -(-k // (8 * _TILE_ALIGN)) * _TILE_ALIGN


def _full_pass(xblocks, x_err, c, *, tile_k, compute_dtype):
    """Every point against every centroid: flat (assignment, exact score, bound on the other scores); `x_err` is
    the blocks' `_rounding`."""
    tiles = _tile_centroids(c, tile_k, compute_dtype)
    out = lax.map(lambda inputs: _nearest(inputs[0], tiles, second=True, x_err=inputs[1]), (xblocks, x_err))
    return tuple(o.reshape(-1) for o in out)


def _over_rows(mask, block: int, fn, init):
    """Runs fn(rows, carry) over the indices where `mask` holds, compacted into full blocks of `block` rows (the
    last one padded with an out-of-range index, which gathers fill and scatters drop)."""
    n = mask.shape[0]
    rows = jnp.nonzero(mask, size=n, fill_value=n)[0].astype(jnp.int32)
    count = jnp.sum(mask)
    return lax.fori_loop(0, (count + block - 1) // block,
                         lambda i, carry: fn(lax.dynamic_slice_in_dim(rows, i * block, block), carry), init)


def _rescore(xblocks, x_err, c, redo, state, *, tile_k, compute_dtype):
    """The full pass for the points in `redo` only, written into state = (assignment, score, bound)."""
    block, d = xblocks.shape[1:]
    x_flat, err_flat = xblocks.reshape(-1, d), x_err.reshape(-1, 2)
    tiles = _tile_centroids(c, tile_k, compute_dtype)

    def fn(r, st):
        xr, er = (v.at[r].get(mode="fill", fill_value=0.0) for v in (x_flat, err_flat))
        out = _nearest(xr, tiles, second=True, x_err=er)
        return tuple(s.at[r].set(o, mode="drop") for s, o in zip(st, out))

    return _over_rows(redo, block, fn, state)


def _moved_pass(xblocks, x_err, c, moved, a, sa, lb, *, tile_k, compute_dtype):
    """Scores every point against the moved centroids only; returns the new (assignment, score, bound) and which
    points are settled: those whose best of the moved centroids and their own beats their bound on the rest.

    The moved centroids are gathered to the front and scored in one static width, the smallest multiple of
    `_moved_step` that holds them (a `lax.switch` over up to 8 widths): a loop over narrow tiles would convert and
    pack every row block once per tile (on a 2-core CPU, 1.1x slower for the whole pass at 3/8 of K)."""
    n_blocks, block, d = xblocks.shape
    k = c.shape[0]
    step = _moved_step(k)
    widths = range(step, k + step, step)
    m = jnp.sum(moved)
    order = jnp.argsort(~moved, stable=True).astype(jnp.int32)  # moved centroids first
    c_first = c[order]

    def per_block(tiles, inputs):
        xb, eb, ab, sab, lbb = inputs
        i1, e1, m_lb = _nearest(xb, tiles, second=True, x_err=eb)
        j1 = order[jnp.minimum(i1, k - 1)]
        own = ~moved[ab]  # a centroid that did not move keeps its known exact score
        own_wins = own & ((sab < e1) | ((sab == e1) & (ab < j1)))
        best, best_s = jnp.where(own_wins, ab, j1), jnp.where(own_wins, sab, e1)
        others = jnp.where(own_wins, jnp.minimum(e1, m_lb), jnp.where(own, jnp.minimum(sab, m_lb), m_lb))
        return best, best_s, jnp.minimum(lbb, others), best_s < lbb

    def scan(width):
        n_tiles = -(-width // tile_k)
        tiles = _tile_centroids(c_first[:width], -(-width // n_tiles), compute_dtype, n_valid=m)
        group = 1  # narrow widths take several row blocks at a time, keeping the tile near _TILE_ELEMENTS
        while group < 8 and n_blocks % (2 * group) == 0 and 2 * group * block * tiles.c.shape[1] <= _TILE_ELEMENTS:
            group *= 2
        rows = (xblocks.reshape(-1, d), x_err.reshape(-1, 2), a, sa, lb)
        out = lax.map(functools.partial(per_block, tiles),
                      tuple(v.reshape(n_blocks // group, group * block, *v.shape[1:]) for v in rows))
        return tuple(o.reshape(-1) for o in out)

    branch = jnp.clip((m + step - 1) // step, 1, len(widths)) - 1
    return lax.switch(branch, [functools.partial(scan, w) for w in widths])


def _lloyd_local(xblocks, xsq, valid, c0, *, n_iters, tile_k, compute_dtype, cosine, reduce):
    """Lloyd iterations that skip provably unchanged work, exactly (up to screening near-ties).

    Between two iterations usually only some centroids move (a centroid whose members did not change stays put,
    bit for bit), and a point's scores against the others do not change. Every point keeps its centroid's exact
    score and a lower bound on every other centroid's score; after an update it is scored against the moved
    centroids only (`_moved_pass`). If the best of those and its own centroid beats the bound, that is its nearest
    centroid; otherwise it is re-scored against all centroids (`_rescore`, those points compacted into full blocks).
    The member sums are updated from the points that changed cluster only. When most centroids moved, the iteration
    is a plain full pass.
    """
    n_blocks, block, d = xblocks.shape
    k = c0.shape[0]
    x_flat, valid_flat = xblocks.reshape(-1, d), valid.reshape(-1)
    width_step = _moved_step(k)
    n_widths = -(-k // width_step)
    x_err = _rounding(xblocks, compute_dtype)
    passes = dict(tile_k=tile_k, compute_dtype=compute_dtype)
    full = functools.partial(_full_pass, xblocks, x_err, **passes)

    def incremental(c, moved, a, sa, lb):
        a, sa, lb, settled = _moved_pass(xblocks, x_err, c, moved, a, sa, lb, **passes)
        return _rescore(xblocks, x_err, c, ~settled & valid_flat, (a, sa, lb), **passes)

    def stats_delta(a_old, a_new):
        def fn(r, acc):
            xr = x_flat.at[r].get(mode="fill", fill_value=0.0)
            old, new = (v.at[r].get(mode="fill", fill_value=k) for v in (a_old, a_new))
            sums, counts = acc
            sums = sums.at[new].add(xr, mode="drop").at[old].add(-xr, mode="drop")
            return sums, counts.at[new].add(1, mode="drop").at[old].add(-1, mode="drop")

        init = (jnp.zeros((k, d), jnp.float32), jnp.zeros(k, jnp.int32))
        sums, counts = _over_rows((a_old != a_new) & valid_flat, block, fn, init)
        return reduce(sums), reduce(counts)

    a, sa, lb = full(c0)
    seg = jnp.where(valid_flat, a, k)  # padding rows go to an out-of-range segment and are dropped
    sums = reduce(jax.ops.segment_sum(x_flat, seg, num_segments=k))
    counts = reduce(jax.ops.segment_sum(valid_flat.astype(jnp.int32), seg, num_segments=k))

    def step(_, carry):
        c, a, sa, lb, sums, counts = carry
        new_c = _update(c, sums, counts, cosine)
        moved = jnp.any(new_c != c, axis=1)
        worth_it = (jnp.sum(moved) + width_step - 1) // width_step * 8 <= 7 * n_widths
        a2, sa2, lb2 = lax.cond(worth_it, lambda: incremental(new_c, moved, a, sa, lb), lambda: full(new_c))
        d_sums, d_counts = stats_delta(a, a2)
        return new_c, a2, sa2, lb2, sums + d_sums, counts + d_counts

    c, a, sa, _, _, _ = lax.fori_loop(0, n_iters, step, (c0, a, sa, lb, sums, counts))
    return c, a.reshape(n_blocks, block), _distance(xsq, sa.reshape(n_blocks, block), cosine)


def _plain_local(xblocks, xsq, valid, c0, *, n_iters, tile_k, compute_dtype, cosine, reduce):
    """Plain Lloyd iterations, every point against every centroid each time: for fits too small for skipping to
    repay its longer compilation."""
    k, d = c0.shape

    def step(_, c):
        tiles = _tile_centroids(c, tile_k, compute_dtype)
        idx, _ = lax.map(lambda xb: _nearest(xb, tiles), xblocks)
        seg = jnp.where(valid, idx, k).reshape(-1)  # padding rows go to an out-of-range segment and are dropped
        sums = jax.ops.segment_sum(xblocks.reshape(-1, d), seg, num_segments=k)
        counts = jax.ops.segment_sum(valid.reshape(-1).astype(jnp.int32), seg, num_segments=k)
        return _update(c, reduce(sums), reduce(counts), cosine)

    c = lax.fori_loop(0, n_iters, step, c0)
    idx, dist = _block_assign(xblocks, xsq, c, tile_k=tile_k, compute_dtype=compute_dtype, cosine=cosine)
    return c, idx, dist


@functools.lru_cache(maxsize=64)
def _lloyd_fn(mesh, n_iters: int, tile_k: int, mode: str, compute_dtype, skip: bool):
    """Jitted Lloyd fit: n_iters iterations then a final assignment, all in one device program."""
    axis = None if mesh is None else mesh.axis_names[0]
    reduce = (lambda v: v) if mesh is None else (lambda v: lax.psum(v, axis))
    local = functools.partial(_lloyd_local if skip else _plain_local, n_iters=n_iters, tile_k=tile_k,
                              compute_dtype=compute_dtype, cosine=mode == "cosine", reduce=reduce)
    spec = P(axis)
    return jax.jit(_shard(local, mesh, (spec, spec, spec, P()), (P(), spec, spec)))


def kmeans(x, k: int, *, n_iters: int = 20, key: jax.Array | int = 0, mode: str = "l2",
           init: str | np.ndarray = "kmeans++", block_size: int | None = None,
           mesh: jax.sharding.Mesh | None = None, compute_dtype=jnp.float32) -> KMeansResult:
    """Lloyd k-means with blockwise fused distance + argmin, optionally sharded over a mesh along N.

    Args:
        x: [n, d] points (any float dtype; computed in float32).
        k: Number of clusters, 1 <= k <= n.
        n_iters: Lloyd iterations (fixed; no tolerance stop so runs are reproducible and comparable).
        key: jax PRNG key or int seed for the initialisation.
        mode: "l2" or "cosine" (spherical k-means: points and centroids normalised every iteration).
        init: "kmeans++" (greedy), "kmeans||" (cheap seeding for large k), "random", or a [k, d] array.
        block_size: Rows per block; default fills a ~4 MiB distance tile.
        mesh: Optional mesh; points are sharded over its first axis, partial sums reduced with one psum per iteration.
        compute_dtype: Distance matmul input dtype, float32 accumulation. jnp.bfloat16 (GPUs, and CPUs with
            AVX512-BF16) screens the two best candidates of each point, which are re-scored exactly in float32:
            the assignment differs from float32's only in near-ties within bfloat16 rounding.

    Returns:
        KMeansResult with centroids, assignment, distance and inertia.
    """
    _check_mode(mode)
    x = _as_points(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got k={k}")
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0, got {n_iters}")
    key = _key(key)
    xn = _normalize_np(x) if mode == "cosine" else x
    # Lloyd runs on centred data in L2 mode (as scikit-learn): the expanded distance loses no precision to a
    # large common offset. The exact mean (not a subsample's, which measured 2.9e-10 -> 5.9e-7 relative inertia
    # from scikit-learn's on benchmarks/kmeans.py) keeps the rounding, and so the near-ties, scikit-learn's.
    # Spherical k-means needs its unit-norm points as they are.
    shift = x.mean(axis=0, dtype=np.float64).astype(np.float32) if mode == "l2" else np.zeros(x.shape[1], np.float32)
    _, tile_k, (xblocks, xsq, valid) = _prepare(xn, k, "l2", block_size, mesh, shift)

    def nearest(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every point's nearest among the points `rows` (k-means|| rounds), on the blocks the fit uses. Candidate
        counts are data-dependent: padding them to a power of two with copies of the first row (which wins its
        ties, being first) lets every round reuse a few compiled shapes."""
        padded = np.concatenate([rows, np.repeat(rows[:1], (1 << (rows.size - 1).bit_length()) - rows.size)])
        run = _assign_fn(mesh, min(padded.size, search._MAX_TILE_K), "l2", compute_dtype)
        idx, dist = run(xblocks, xsq, jnp.asarray(xn[padded] - shift))
        idx = np.asarray(idx).reshape(-1)[:n]
        return np.where(idx < rows.size, idx, 0), np.asarray(dist).reshape(-1)[:n]

    c0 = _initial_centroids(xn, k, init, key, nearest)
    if mode == "cosine":
        c0 = _normalize_np(c0)
    # Skipping unchanged work needs iterations in which most centroids stay put (the first two updates move nearly
    # all of them), and its program takes longer to compile: for 200k x 256 -> 1024 (10 iterations, ~2^39 work) on
    # a 2-core CPU, 2.9 s vs 0.5 s, after which a warm fit takes 3.3 s vs 4.2 s in bfloat16 and 5.0 vs 7.5 s in
    # float32. It is used from a quarter of that work on: larger fits, or compiled fits that are reused
    # (resampling rounds, re-clustering a pool of fixed size), repay the compilation.
    skip = k >= _SKIP_MIN_K and n_iters >= _SKIP_MIN_ITERS and n_iters * n * k * x.shape[1] >= _SKIP_MIN_WORK
    fit = _lloyd_fn(mesh, int(n_iters), tile_k, mode, compute_dtype, skip)
    c, idx, dist = fit(xblocks, xsq, valid, jnp.asarray(c0 - shift, jnp.float32))
    distance = np.asarray(dist).reshape(-1)[:n]
    return KMeansResult(centroids=np.asarray(c) + shift, assignment=np.asarray(idx).reshape(-1)[:n],
                        distance=distance, inertia=float(distance.sum(dtype=np.float64)))
