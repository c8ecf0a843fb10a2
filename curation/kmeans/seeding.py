"""Seeding of the k-means fit: greedy k-means++ (`kmeans_plusplus`, around the jitted `_kmeanspp_kernel`, which
``curation/hierarchical.py`` also calls directly), k-means|| (`_kmeans_parallel`, Bahmani et al. 2012,
arXiv:1203.6402: a few rounds of D^2 oversampling, then k-means++ on the weighted candidates) and `_initial_centroids`,
which picks the seeding that ``init`` names. Nothing here depends on `search` or `lloyd`: k-means|| gets its
blockwise distance pass from the fit as a `nearest` callback.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from curation.kmeans.common import _EXACT, _as_points, _key

# Row counts are rounded up to a multiple of this so that fits on slightly different n share one compilation.
_SEED_BUCKET = 1024


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
