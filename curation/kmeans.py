"""Blockwise k-means in JAX: greedy k-means++ / k-means|| seeding, jitted Lloyd iterations, nearest-centroid assignment.

Every kernel walks the points in row blocks of static shape (and the centroids in tiles when K is large), reducing
each ``||c||^2 - 2 x.c`` tile to its minimum (or, screening in bfloat16, its two best candidates, re-scored in
float32) before the next, so memory is O(block x tile) and never O(N x K). L2 data are centred first, so the
expanded distance does not cancel. Each Lloyd step sums the members of every centroid with one segment sum over the
device's points; with a mesh the points are sharded along N and each device reduces its own points before a single
``psum`` per iteration. The host sees one transfer at the end of a fit.
This module holds numeric kernels only: hierarchy and sampling logic live in ``hierarchical.py`` and ``sampling.py``.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

_MODES = ("l2", "cosine")
# Elements of one [block, tile] distance tile; ~1M f32 (4 MiB) measured best on a 2-core CPU for d in 64..256.
_TILE_ELEMENTS = 1 << 20
_MAX_TILE_K = 4096
_TILE_ALIGN = 64
# Row counts are rounded up to these multiples so that fits on slightly different n share one compilation.
_SEED_BUCKET = 1024
_BLOCK_BUCKET = 4


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


# ----------------------------------------------------------------------------------------------- validation / glue


def _as_points(x, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} rows with NaN/Inf values; first bad row is {int(np.argmax(bad))}")
    return x


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")


def _key(key) -> jax.Array:
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def _normalize_np(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _normalize(x: jax.Array) -> jax.Array:
    return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def _tiling(k: int, block_size: int | None) -> tuple[int, int]:
    """(row block, centroid tile) sizes: the tile covers all of K up to _MAX_TILE_K, rows fill _TILE_ELEMENTS.

    Larger K is split into equal tiles (rounded up to _TILE_ALIGN), so padding wastes at most a few percent of the
    matmul (k = 10000 in tiles of 4096 would compute 12288 columns; in three tiles of 3392, 10176)."""
    tile_k = k
    if k > _MAX_TILE_K:
        tile_k = -(-k // -(-k // _MAX_TILE_K))
        tile_k = min(_MAX_TILE_K, -(-tile_k // _TILE_ALIGN) * _TILE_ALIGN)
    if block_size is None:
        block_size = int(min(4096, max(128, _TILE_ELEMENTS // tile_k // _TILE_ALIGN * _TILE_ALIGN)))
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return int(block_size), tile_k


def _n_shards(mesh) -> int:
    return 1 if mesh is None else int(mesh.shape[mesh.axis_names[0]])


def _blocks(x: np.ndarray, block: int, n_shards: int, shift: np.ndarray | None = None):
    """Pads x (minus `shift`) to a multiple of block * n_shards rows, reshaped to [n_blocks, block, d], plus a mask."""
    n, d = x.shape
    n_blocks = -(-n // (block * n_shards * _BLOCK_BUCKET)) * n_shards * _BLOCK_BUCKET
    padded = np.zeros((n_blocks * block, d), np.float32)
    padded[:n] = x
    if shift is not None:
        padded[:n] -= shift
    valid = np.zeros(n_blocks * block, bool)
    valid[:n] = True
    return padded.reshape(n_blocks, block, d), valid.reshape(n_blocks, block)


def _place(mesh, *arrays):
    if mesh is None:
        return tuple(jnp.asarray(a) for a in arrays)
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    return tuple(jax.device_put(a, sharding) for a in arrays)


# ------------------------------------------------------------------------------------------------------ kernels


def _nearest(xb: jax.Array, c_tiles: jax.Array, c_sq_tiles: jax.Array, compute_dtype) -> tuple[jax.Array, jax.Array]:
    """Nearest centroid for one row block: (index int32 [B], min over k of ||c_k||^2 - 2 x.c_k [B]).

    In float32 the scan over centroid tiles keeps the running minimum; ties resolve to the lowest index, as argmin.
    The argmin is written as min + equality + min-index because XLA:CPU vectorises plain min reductions but not the
    variadic argmin reduction (measured ~1.7x faster end to end).

    With a narrower `compute_dtype` (bfloat16) the matmul only screens: its two best candidates are re-scored
    exactly in float32, so the assignment is the float32 one except where the true nearest centroid is not among the
    two best low-precision scores, a near-tie within bfloat16 rounding whose effect on the inertia is of that size.
    Each score is packed with its column into one order-preserving int32 key (the score's low bits give way to the
    index), so a single min reduction yields both the minimum and its argmin and the top two take two passes.
    """
    n_tiles, tile_k, _ = c_tiles.shape
    screen = jnp.dtype(compute_dtype) != jnp.float32
    xq = xb.astype(compute_dtype)
    c_q = c_tiles.astype(compute_dtype)
    ids = jnp.arange(tile_k, dtype=jnp.int32)[:, None]
    index_bits = max(1, (tile_k - 1).bit_length())
    low = (1 << index_bits) - 1

    def scores(c_t, c_sq_t):  # [tile_k, B]: reducing over the major axis vectorises across rows (~1.3x on CPU)
        dots = lax.dot_general(c_t, xq, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        return c_sq_t[:, None] - 2.0 * dots

    def exact_best(c_t, c_sq_t, offset):
        s = scores(c_t, c_sq_t)
        m = jnp.min(s, axis=0)
        return jnp.min(jnp.where(s == m[None, :], ids, tile_k), axis=0) + offset, m

    def screened_best2(c_t, c_sq_t, offset):  # (key1, key2) with the global column in the low bits
        b = lax.bitcast_convert_type(scores(c_t, c_sq_t), jnp.int32)
        key = (jnp.where(b < 0, b ^ 0x7FFFFFFF, b) & ~low) | ids
        k1 = jnp.min(key, axis=0)
        k2 = jnp.min(jnp.where(key == k1[None, :], jnp.iinfo(jnp.int32).max, key), axis=0)
        return (k1 & low) + offset, k1 & ~low, (k2 & low) + offset, k2 & ~low

    tile_best = screened_best2 if screen else exact_best
    if n_tiles == 1:
        best = tile_best(c_q[0], c_sq_tiles[0], 0)
    else:
        def merge(a, b):  # best (and second best) of two candidate sets; `a` (the earlier tiles) wins ties
            if not screen:
                better = b[1] < a[1]
                return jnp.where(better, b[0], a[0]), jnp.where(better, b[1], a[1])
            ai1, am1, ai2, am2 = a
            bi1, bm1, bi2, bm2 = b
            b_first = bm1 < am1
            # the second best is the loser of the two firsts or the winner's own second
            li, lm = jnp.where(b_first, ai1, bi1), jnp.where(b_first, am1, bm1)
            wi, wm = jnp.where(b_first, bi2, ai2), jnp.where(b_first, bm2, am2)
            loser = lm < wm
            return (jnp.where(b_first, bi1, ai1), jnp.where(b_first, bm1, am1),
                    jnp.where(loser, li, wi), jnp.where(loser, lm, wm))

        def body(carry, inputs):
            return merge(carry, tile_best(*inputs)), None

        rows = xb.shape[0]
        none = jnp.zeros(rows, jnp.int32)
        if screen:
            worst = jnp.full(rows, jnp.iinfo(jnp.int32).max)
            init = (none, worst, none, worst)
        else:
            init = (none, jnp.full(rows, jnp.inf))
        offsets = jnp.arange(n_tiles, dtype=jnp.int32) * tile_k
        best, _ = lax.scan(body, init, (c_q, c_sq_tiles, offsets))
    if not screen:
        return best
    i1, _, i2, _ = best
    c_flat, c_sq_flat = c_tiles.reshape(-1, c_tiles.shape[-1]), c_sq_tiles.reshape(-1)
    e1, e2 = (c_sq_flat[i] - 2.0 * jnp.sum(xb * c_flat[i], axis=1) for i in (i1, i2))
    second = (e2 < e1) | ((e2 == e1) & (i2 < i1))
    return jnp.where(second, i2, i1), jnp.where(second, e2, e1)


def _tile_centroids(c: jax.Array, tile_k: int) -> tuple[jax.Array, jax.Array]:
    """Pads centroids to a multiple of tile_k (padding never wins: +inf norm) and reshapes to tiles."""
    k, d = c.shape
    n_tiles = -(-k // tile_k)
    c_sq = jnp.sum(c * c, axis=1)
    pad = n_tiles * tile_k - k
    c = jnp.pad(c, ((0, pad), (0, 0)))
    c_sq = jnp.pad(c_sq, (0, pad), constant_values=jnp.inf)
    return c.reshape(n_tiles, tile_k, d), c_sq.reshape(n_tiles, tile_k)


def _block_stats(xblocks, valid, c, *, tile_k, compute_dtype):
    """Local (per device) Lloyd statistics: member sums [k, d] and counts [k]."""
    k, d = c.shape
    c_tiles, c_sq_tiles = _tile_centroids(c, tile_k)
    idx, _ = lax.map(lambda xb: _nearest(xb, c_tiles, c_sq_tiles, compute_dtype), xblocks)
    seg = jnp.where(valid, idx, k).reshape(-1)  # padding rows go to an out-of-range segment and are dropped
    sums = jax.ops.segment_sum(xblocks.reshape(-1, d), seg, num_segments=k)
    counts = jax.ops.segment_sum(valid.reshape(-1).astype(jnp.int32), seg, num_segments=k)
    return sums, counts


def _block_assign(xblocks, xsq, c, *, tile_k, compute_dtype, cosine):
    c_tiles, c_sq_tiles = _tile_centroids(c, tile_k)

    def body(inputs):
        xb, xs = inputs
        idx, m = _nearest(xb, c_tiles, c_sq_tiles, compute_dtype)
        dist = jnp.maximum(xs + m, 0.0)
        return idx, (0.5 * dist if cosine else dist)

    return lax.map(body, (xblocks, xsq))


def _update(c, sums, counts, cosine):
    mean = sums / jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
    new = jnp.where((counts > 0)[:, None], mean, c)  # an empty cluster keeps its centroid
    return _normalize(new) if cosine else new


def _shard(fn, mesh, in_specs, out_specs):
    if mesh is None:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


@functools.lru_cache(maxsize=64)
def _lloyd_fn(mesh, n_iters: int, tile_k: int, mode: str, compute_dtype):
    """Jitted Lloyd fit: n_iters iterations then a final assignment, all in one device program."""
    cosine = mode == "cosine"
    axis = None if mesh is None else mesh.axis_names[0]
    reduce = (lambda v: v) if mesh is None else (lambda v: lax.psum(v, axis))

    def local(xblocks, xsq, valid, c0):
        def step(_, c):
            sums, counts = _block_stats(xblocks, valid, c, tile_k=tile_k, compute_dtype=compute_dtype)
            return _update(c, reduce(sums), reduce(counts), cosine)

        c = lax.fori_loop(0, n_iters, step, c0)
        idx, dist = _block_assign(xblocks, xsq, c, tile_k=tile_k, compute_dtype=compute_dtype, cosine=cosine)
        return c, idx, dist

    spec = P(axis)
    return jax.jit(_shard(local, mesh, (spec, spec, spec, P()), (P(), spec, spec)))


@functools.lru_cache(maxsize=64)
def _assign_fn(mesh, tile_k: int, mode: str, compute_dtype):
    cosine = mode == "cosine"
    axis = None if mesh is None else mesh.axis_names[0]

    def local(xblocks, xsq, c):
        return _block_assign(xblocks, xsq, c, tile_k=tile_k, compute_dtype=compute_dtype, cosine=cosine)

    spec = P(axis)
    return jax.jit(_shard(local, mesh, (spec, spec, P()), (spec, spec)))


def _prepare(x: np.ndarray, k: int, mode: str, block_size, mesh, shift=None):
    if mode == "cosine":
        x = _normalize_np(x)
    block, tile_k = _tiling(k, block_size)
    # Small problems shrink the block, rounded up to a power of two: refits on data-dependent numbers of
    # points (hierarchical resampling rounds) then reuse a handful of compiled shapes.
    rows = max(8, -(-x.shape[0] // (_n_shards(mesh) * _BLOCK_BUCKET)))
    block = min(block, 1 << (rows - 1).bit_length())
    xblocks, valid = _blocks(x, block, _n_shards(mesh), shift)
    xsq = np.einsum("nbd,nbd->nb", xblocks, xblocks)
    return x, tile_k, _place(mesh, xblocks, xsq, valid)


# ------------------------------------------------------------------------------------------------------ seeding


@functools.partial(jax.jit, static_argnames=("k", "n_trials"))
def _kmeanspp_kernel(x, weights, key, *, k: int, n_trials: int):
    """Greedy k-means++: each step draws n_trials candidates by D^2 sampling and keeps the one lowering the potential
    most; all candidates of a step are scored in one [n, n_trials] matmul and the k steps run in one fori_loop."""
    n, d = x.shape
    x_sq = jnp.sum(x * x, axis=1)

    def sq_dist(cands):
        dots = x @ cands.T
        return jnp.maximum(x_sq[:, None] - 2.0 * dots + jnp.sum(cands * cands, axis=1)[None, :], 0.0)

    def draw(key, closest, count):
        cum = jnp.cumsum(weights * closest)
        u = jax.random.uniform(key, (count,), jnp.float32) * cum[-1]
        return jnp.clip(jnp.searchsorted(cum, u, side="right"), 0, n - 1)

    key, first_key = jax.random.split(key)
    first = jax.random.categorical(first_key, jnp.log(jnp.maximum(weights, 1e-30)))
    centers = jnp.zeros((k, d), jnp.float32).at[0].set(x[first])
    closest = sq_dist(x[first][None])[:, 0]

    def step(i, carry):
        centers, closest, key = carry
        key, sub = jax.random.split(key)
        cand = draw(sub, closest, n_trials)
        new_closest = jnp.minimum(closest[:, None], sq_dist(x[cand]))
        best = jnp.argmin(jnp.sum(weights[:, None] * new_closest, axis=0))
        return centers.at[i].set(x[cand[best]]), new_closest[:, best], key

    centers, _, _ = lax.fori_loop(1, k, step, (centers, closest, key))
    return centers


def kmeans_plusplus(x, k: int, *, key, n_local_trials: int | None = None, sample_weight=None) -> np.ndarray:
    """Greedy k-means++ seeding (D^2 sampling with 2 + int(ln k) candidates per step, as scikit-learn).

    Args:
        x: [n, d] points.
        k: Number of centroids, 1 <= k <= n.
        key: jax PRNG key or int seed.
        n_local_trials: Candidates per step; default 2 + int(ln k).
        sample_weight: Optional [n] non-negative weights (for seeding on weighted candidates, as in k-means||).

    Returns:
        [k, d] float32 initial centroids (rows of x).
    """
    x = _as_points(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got k={k}")
    trials = int(n_local_trials) if n_local_trials is not None else 2 + int(math.log(k))
    weights = np.ones(n, np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
    if weights.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {weights.shape}")
    # Pad n to a bucket with weight-0 copies of row 0 (never drawn) so resampling rounds reuse one compilation.
    n_pad = -(-n // _SEED_BUCKET) * _SEED_BUCKET - n
    x = np.concatenate([x, np.broadcast_to(x[:1], (n_pad, x.shape[1]))])
    weights = np.concatenate([weights, np.zeros(n_pad, np.float32)])
    out = _kmeanspp_kernel(jnp.asarray(x), jnp.asarray(weights), _key(key), k=k, n_trials=max(1, trials))
    return np.asarray(out)


def _kmeans_parallel(x: np.ndarray, k: int, key: jax.Array, nearest, *, rounds: int = 5,
                     oversampling: float = 2.0) -> np.ndarray:
    """k-means|| seeding (Bahmani et al. 2012): a few rounds of independent D^2 oversampling over all points, then
    greedy k-means++ on the candidates weighted by how many points each is nearest to. Each round is one blockwise
    distance pass against that round's new candidates only (`nearest(rows)` gives every point's index into `rows`
    and squared distance), and the owner of every point is kept across rounds, so seeding costs about
    2 * oversampling / rounds Lloyd passes per round instead of k sequential scans of the data."""
    n = x.shape[0]
    per_round = oversampling * k / rounds
    key, sub = jax.random.split(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(sub)).ravel())
    chosen = rng.integers(n, size=1)
    owner, closest = nearest(chosen)
    closest = closest.astype(np.float64)
    for _ in range(rounds):
        potential = closest.sum()
        if potential <= 0:
            break
        prob = np.minimum(1.0, per_round * closest / potential)
        new = np.flatnonzero(rng.random(n) < prob)
        if new.size == 0:
            continue
        idx, dist = nearest(new)
        closer = dist < closest  # strict: an earlier candidate keeps its ties
        owner[closer] = chosen.size + idx[closer]
        closest = np.minimum(closest, dist)
        chosen = np.concatenate([chosen, new])
    if chosen.size <= k:  # too few candidates: top up uniformly from the rest
        rest = np.setdiff1d(np.arange(n), chosen)
        return np.concatenate([x[chosen], x[rng.choice(rest, size=k - chosen.size, replace=False)]], axis=0)
    weights = np.bincount(owner, minlength=chosen.size).astype(np.float32)
    return kmeans_plusplus(x[chosen], k, key=key, sample_weight=weights)


def _initial_centroids(x, k, init, key, nearest):
    if isinstance(init, str):
        if init == "kmeans++":
            return kmeans_plusplus(x, k, key=key)
        if init == "kmeans||":
            return _kmeans_parallel(x, k, key, nearest)
        if init == "random":
            return x[np.asarray(jax.random.choice(key, x.shape[0], (k,), replace=False))]
        raise ValueError(f"init must be 'kmeans++', 'kmeans||', 'random' or a [k, d] array, got {init!r}")
    c0 = _as_points(init, "init")
    if c0.shape != (k, x.shape[1]):
        raise ValueError(f"init centroids must have shape ({k}, {x.shape[1]}), got {c0.shape}")
    return c0


# ------------------------------------------------------------------------------------------------------ public API


def assign(x, centroids, *, mode: str = "l2", block_size: int | None = None, mesh=None,
           compute_dtype=jnp.float32) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every point, blockwise (never an N x K matrix).

    Args:
        x: [n, d] points.
        centroids: [k, d] centroids.
        mode: "l2" (squared Euclidean) or "cosine" (1 - cos; inputs are normalised).
        block_size: Rows per block; default from K.
        mesh: Optional mesh; points are sharded over its first axis.
        compute_dtype: Distance matmul input dtype; bfloat16 screens two candidates re-scored in float32 (as
            in `kmeans`).

    Returns:
        (assignment int32 [n], distance float32 [n]).
    """
    _check_mode(mode)
    x = _as_points(x)
    c = _as_points(centroids, "centroids")
    if c.shape[1] != x.shape[1]:
        raise ValueError(f"dimension mismatch: x has d={x.shape[1]} but centroids have d={c.shape[1]}")
    if mode == "cosine":
        c = _normalize_np(c)
    n = x.shape[0]
    # L2 distances are translation invariant: centring on the centroids' mean keeps ||c||^2 - 2 x.c free of
    # cancellation for data far from the origin.
    shift = c.mean(axis=0, dtype=np.float64).astype(np.float32) if mode == "l2" else None
    x, tile_k, (xblocks, xsq, _) = _prepare(x, c.shape[0], mode, block_size, mesh, shift)
    c = c if shift is None else c - shift
    idx, dist = _assign_fn(mesh, tile_k, mode, compute_dtype)(xblocks, xsq, jnp.asarray(c))
    return np.asarray(idx).reshape(-1)[:n], np.asarray(dist).reshape(-1)[:n]


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
    # large common offset. Spherical k-means needs its unit-norm points as they are.
    shift = x.mean(axis=0, dtype=np.float64).astype(np.float32) if mode == "l2" else np.zeros(x.shape[1], np.float32)
    _, tile_k, (xblocks, xsq, valid) = _prepare(xn, k, "l2", block_size, mesh, shift)

    def nearest(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every point's nearest among the points `rows` (k-means|| rounds), on the blocks the fit uses. Candidate
        counts are data-dependent: padding them to a power of two with copies of the first row (which wins its
        ties, being first) lets every round reuse a few compiled shapes."""
        padded = np.concatenate([rows, np.repeat(rows[:1], (1 << (rows.size - 1).bit_length()) - rows.size)])
        run = _assign_fn(mesh, min(padded.size, _MAX_TILE_K), "l2", compute_dtype)
        idx, dist = run(xblocks, xsq, jnp.asarray(xn[padded] - shift))
        idx = np.asarray(idx).reshape(-1)[:n]
        return np.where(idx < rows.size, idx, 0), np.asarray(dist).reshape(-1)[:n]

    c0 = _initial_centroids(xn, k, init, key, nearest)
    if mode == "cosine":
        c0 = _normalize_np(c0)
    fit = _lloyd_fn(mesh, int(n_iters), tile_k, mode, compute_dtype)
    c, idx, dist = fit(xblocks, xsq, valid, jnp.asarray(c0 - shift, jnp.float32))
    distance = np.asarray(dist).reshape(-1)[:n]
    return KMeansResult(centroids=np.asarray(c) + shift, assignment=np.asarray(idx).reshape(-1)[:n],
                        distance=distance, inertia=float(distance.sum(dtype=np.float64)))
