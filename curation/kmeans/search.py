"""Nearest-centroid search, the kernel under both `assign` and every Lloyd pass. Points are centred (L2, so the
expanded distance does not cancel), padded to row blocks of static shape (`_prepare`, `_blocks`; row counts are
bucketed so that fits on slightly different n share one compilation) and placed on the device or sharded along N
over a mesh (`_place`); the centroids are cut into tiles when K is large (`_tiling`, `_tile_centroids`, `_Tiles`).
`_nearest` reduces each ``||c||^2 - 2 x.c`` tile to its minimum (or, screening in bfloat16, to its two best
candidates, found through packed int32 keys and re-scored in float32) before the next, so memory is O(block x tile)
and never O(N x K); with the second best it also bounds every other centroid's score, using the points' `_rounding`.
`_block_assign` runs it over all blocks, `_assign_fn` jits that (sharded with `_shard`), and `assign` is the public
entry point.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from curation.kmeans.common import _EXACT, _as_points, _check_mode, _normalize_np

# Elements of one [block, tile] distance tile; ~1M f32 (4 MiB) measured best on a 2-core CPU for d in 64..256.
_TILE_ELEMENTS = 1 << 20
_MAX_TILE_K = 4096
_TILE_ALIGN = 64
# Row block counts are rounded up to a multiple of this so that fits on slightly different n share one compilation.
_BLOCK_BUCKET = 4


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


# Over 80 lines: its per-tile kernels are closures over one tile layout (column ids, key bits) and read as one with
# the docstring.
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


def _shard(fn, mesh, in_specs, out_specs):
    if mesh is None:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


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
