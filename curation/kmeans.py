"""Blockwise k-means in JAX: greedy k-means++ / k-means|| seeding, jitted Lloyd iterations, nearest-centroid assignment.

Every kernel walks the points in row blocks of static shape (and the centroids in tiles when K is large), reducing
each ``||c||^2 - 2 x.c`` tile to its minimum (or, screening in bfloat16, its two best candidates, re-scored in
float32) before the next, so memory is O(block x tile) and never O(N x K). L2 data are centred first, so the
expanded distance does not cancel. Each Lloyd step sums the members of every centroid with one segment sum over the
device's points; with a mesh the points are sharded along N and each device reduces its own points before a single
``psum`` per iteration. Large fits skip work that cannot change the result: after the first updates most centroids
stop moving, so each point is scored against the moved centroids only, and re-scored in full only where a kept
lower bound on the other centroids' scores does not settle it (`_lloyd_local`). The host sees one transfer at the end
of a fit.
This module holds numeric kernels only: hierarchy and sampling logic live in ``hierarchical.py`` and ``sampling.py``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

_MODES = ("l2", "cosine")
# Float32 products in float32: JAX's default precision rounds their inputs to TF32 on recent GPUs (bfloat16 on TPU),
# which would void the screening bound and shift the centroids.
_EXACT = lax.Precision.HIGHEST
# Elements of one [block, tile] distance tile; ~1M f32 (4 MiB) measured best on a 2-core CPU for d in 64..256.
_TILE_ELEMENTS = 1 << 20
_MAX_TILE_K = 4096
_TILE_ALIGN = 64
# Lloyd fits with at least this many centroids and iterations, and n_iters * n * k * d multiply-adds, skip
# unchanged work.
_SKIP_MIN_K = 256
_SKIP_MIN_ITERS = 4
_SKIP_MIN_WORK = 1 << 38
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
    # A row with a NaN or an infinity has a non-finite sum; only an overflowing sum needs the elementwise check,
    # whose [n, d] mask would cost more than the sum.
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(x.sum(axis=1)).all()
    if not finite and (bad := ~np.isfinite(x).all(axis=1)).any():
        raise ValueError(f"{name} has {int(bad.sum())} rows with NaN/Inf values; "
                         f"first bad row is {int(np.argmax(bad))}")
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


def _aligned_empty(shape) -> np.ndarray:
    """An uninitialised float32 array on a 64-byte boundary, which a CPU device adopts without a copy (numpy's
    16-byte alignment makes `device_put` copy: ~0.1 s for 200 MB)."""
    size = math.prod(shape) * 4
    raw = np.empty(size + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + size].view(np.float32).reshape(shape)


def _blocks(x: np.ndarray, block: int, n_shards: int, shift: np.ndarray | None = None):
    """Pads x (minus `shift`) to a multiple of block * n_shards rows, reshaped to [n_blocks, block, d], plus a mask."""
    n, d = x.shape
    n_blocks = -(-n // (block * n_shards * _BLOCK_BUCKET)) * n_shards * _BLOCK_BUCKET
    padded = _aligned_empty((n_blocks * block, d))
    np.subtract(x, 0.0 if shift is None else shift, out=padded[:n])  # one pass over the data
    padded[n:] = 0.0
    valid = np.zeros(n_blocks * block, bool)
    valid[:n] = True
    return padded.reshape(n_blocks, block, d), valid.reshape(n_blocks, block)


def _place(mesh, *arrays):
    if mesh is None:  # device_put copies once; jnp.asarray measured ~1.7x slower on a 200 MB array
        return tuple(jax.device_put(a) for a in arrays)
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    return tuple(jax.device_put(a, sharding) for a in arrays)


# ------------------------------------------------------------------------------------------------------ kernels


def _nearest(xb: jax.Array, tiles: "_Tiles", *, second: bool = False, x_err=None):
    """Nearest centroid for one row block, scores being ``||c||^2 - 2 x.c`` (squared distance minus ``||x||^2``).

    Returns (index int32 [B], score [B]) and, with `second`, also a lower bound [B] on the score of every other
    centroid, for which `x_err` [B, 2] gives the rows' `_rounding`.

    Plain float32 keeps the running minimum per tile; ties resolve to the lowest index, as argmin. The argmin is
    written as min + equality + min-index because XLA:CPU vectorises plain min reductions but not the variadic
    argmin reduction (measured ~1.7x faster end to end).

    With a narrower `compute_dtype` (bfloat16), or when the second best is wanted, the matmul only screens: its two
    best candidates are re-scored exactly in float32. The assignment is then the exact one except where the true
    nearest centroid is not among them, a near-tie within screening error. Each score is packed with its column
    into one order-preserving int32 key (the score's low bits give way to the index), so a single min reduction
    yields both the minimum and its argmin. The bound is the exact runner-up or, for the columns not re-scored, the
    second candidate's screened score minus a screening error.
    """
    c_tiles, c_sq_tiles, c_q = tiles.c, tiles.c_sq, tiles.c_q
    n_tiles, tile_k, d = c_tiles.shape
    in_dtype = c_q.dtype
    screen = second or in_dtype != jnp.float32
    xq = xb.astype(in_dtype)
    ids = jnp.arange(tile_k, dtype=jnp.int32)[:, None]
    index_bits = max(1, (tile_k - 1).bit_length())
    low = (1 << index_bits) - 1
    worst = jnp.iinfo(jnp.int32).max

    def scores(c_t, c_sq_t):  # [tile_k, B]: reducing over the major axis vectorises across rows (~1.3x on CPU)
        return c_sq_t[:, None] + lax.dot_general(c_t, xq, (((1,), (1,)), ((), ())), precision=_EXACT,
                                                 preferred_element_type=jnp.float32)

    def exact_best(c_t, c_sq_t, offset):
        s = scores(c_t, c_sq_t)
        m = jnp.min(s, axis=0)
        return jnp.min(jnp.where(s == m[None, :], ids, tile_k), axis=0) + offset, m

    def screened(c_t, c_sq_t, offset):  # the two best (global column, truncated key) pairs, best first
        b = lax.bitcast_convert_type(scores(c_t, c_sq_t), jnp.int32)
        key = (jnp.where(b < 0, b ^ 0x7FFFFFFF, b) & ~low) | ids
        k1 = jnp.min(key, axis=0)
        k2 = jnp.min(jnp.where(key == k1[None, :], worst, key), axis=0)  # keys are unique within a tile
        return (k1 & low) + offset, k1 & ~low, (k2 & low) + offset, k2 & ~low

    def exchange(p, q):  # (first, second) of two candidates by truncated score, then column (earlier tile first)
        swap = (q[1] < p[1]) | ((q[1] == p[1]) & (q[0] < p[0]))
        return (tuple(jnp.where(swap, v, u) for u, v in zip(p, q)),
                tuple(jnp.where(swap, u, v) for u, v in zip(p, q)))

    def merge(a, b):  # best candidates of two sets
        if not screen:
            better = b[1] < a[1]
            return jnp.where(better, b[0], a[0]), jnp.where(better, b[1], a[1])
        # Both pairs sorted: the two best are the lesser of a1, b2 and of a2, b1 (a bitonic half), in some order.
        first, _ = exchange(a[:2], b[2:])
        second, _ = exchange(a[2:], b[:2])
        first, second = exchange(first, second)
        return first + second

    tile_best = screened if screen else exact_best
    rows = xb.shape[0]
    if screen:
        init = (jnp.zeros(rows, jnp.int32), jnp.full(rows, worst)) * 2
    else:
        init = (jnp.zeros(rows, jnp.int32), jnp.full(rows, jnp.inf))
    if n_tiles == 1:
        best = tile_best(c_q[0], c_sq_tiles[0], 0)
    else:
        offsets = jnp.arange(n_tiles, dtype=jnp.int32) * tile_k
        best, _ = lax.scan(lambda carry, inputs: (merge(carry, tile_best(*inputs)), None), init,
                           (c_q, c_sq_tiles, offsets))
    if not screen:
        return best
    i1, _, i2, last_key = best
    # Both candidates' rows gathered at once and scored as one batched product (measured ~1.2x two gathers).
    cand = jnp.take(c_tiles.reshape(-1, d), jnp.stack([i1, i2], axis=1), axis=0)  # [B, 2, d]
    dots = lax.dot_general(cand, xb[:, :, None], (((2,), (1,)), ((0,), (0,))), precision=_EXACT)[..., 0]
    e1, e2 = (c_sq_tiles.reshape(-1)[i] - 2.0 * dots[:, j] for j, i in enumerate((i1, i2)))
    runner_up = (e2 < e1) | ((e2 == e1) & (i2 < i1))
    idx, score = jnp.where(runner_up, i2, i1), jnp.where(runner_up, e2, e1)
    if not second:
        return idx, score
    # Every other column has a key above the second candidate's, so its screened score is at least that key's
    # truncated score (decoded below, rounded down), and its exact score at most one screening error lower.
    # Screened and exact scores differ by twice the dot product's error: from rounding the inputs,
    # |x.c - xq.cq| <= |x - xq| |c| + |xq| |c - cq| (Cauchy-Schwarz, |xq| <= |x| + |x - xq|), and from two float32
    # sums of d terms, each within d 2^-24 |x| |c|.
    t = last_key & ~low
    decoded = lax.bitcast_convert_type(jnp.where(t < 0, t ^ 0x7FFFFFFF, t), jnp.float32)
    decoded = jnp.where(t >= 0x7F800000, jnp.inf, decoded)  # +inf (padding) and the empty key
    c_norm, c_err = tiles.c_norm, tiles.c_err
    dot_err = x_err[:, 0] * c_norm + x_err[:, 1] * (c_err + 2.0 * d * 2.0 ** -24 * (c_norm + c_err))
    return idx, score, jnp.minimum(jnp.where(runner_up, e1, e2), decoded - 2.0 * dot_err)


def _rounding(x: jax.Array, compute_dtype) -> jax.Array:
    """[..., 2]: |x - xq| and |x| + |x - xq| per row, xq being x in the compute dtype: the point side of
    `_nearest`'s screening error, the same in every pass."""
    err = jnp.sqrt(jnp.sum(jnp.square(x - x.astype(compute_dtype).astype(jnp.float32)), axis=-1))
    return jnp.stack([err, jnp.sqrt(jnp.sum(x * x, axis=-1)) + err], axis=-1)


class _Tiles(NamedTuple):
    """Centroids cut into tiles for `_nearest`, with what every row block would otherwise recompute."""

    c: jax.Array  # [n_tiles, tile_k, d] float32, zero padded
    c_sq: jax.Array  # [n_tiles, tile_k] squared norms, +inf on padding (which never wins)
    c_q: jax.Array  # -2 c in the compute dtype (scaling by -2 is exact and saves a multiply per score)
    c_norm: jax.Array  # largest centroid norm
    c_err: jax.Array  # largest |c - c_q|


def _tile_centroids(c: jax.Array, tile_k: int, compute_dtype, n_valid=None) -> _Tiles:
    """Pads centroids to a multiple of tile_k and reshapes them to tiles; rows from `n_valid` on count as padding."""
    k, d = c.shape
    n_tiles = -(-k // tile_k)
    pad = n_tiles * tile_k - k
    c = jnp.pad(c, ((0, pad), (0, 0)))
    live = jnp.arange(n_tiles * tile_k) < (k if n_valid is None else n_valid)
    c_sq = jnp.where(live, jnp.sum(c * c, axis=1), jnp.inf)
    c_q = (-2.0 * c).astype(compute_dtype)
    c_err = 0.5 * jnp.sqrt(jnp.max(jnp.sum(jnp.square(2.0 * c + c_q.astype(jnp.float32)), axis=1)))
    c_norm = jnp.sqrt(jnp.max(jnp.where(live, c_sq, 0.0)))
    return _Tiles(c.reshape(n_tiles, tile_k, d), c_sq.reshape(n_tiles, tile_k), c_q.reshape(n_tiles, tile_k, d),
                  c_norm, c_err)


def _block_assign(xblocks, xsq, c, *, tile_k, compute_dtype, cosine):
    tiles = _tile_centroids(c, tile_k, compute_dtype)

    def body(inputs):
        xb, xs = inputs
        idx, m = _nearest(xb, tiles)
        return idx, _distance(xs, m, cosine)

    return lax.map(body, (xblocks, xsq))


def _distance(xs, score, cosine):
    dist = jnp.maximum(xs + score, 0.0)
    return 0.5 * dist if cosine else dist


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


def _shard(fn, mesh, in_specs, out_specs):
    if mesh is None:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


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
        dots = jnp.matmul(x, cands.T, precision=_EXACT)
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
        run = _assign_fn(mesh, min(padded.size, _MAX_TILE_K), "l2", compute_dtype)
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
