"""SemDeDup kernel against a straightforward numpy implementation of the rule, plus planted near-duplicates.

`semdedup_reference` below is the parity reference (also imported by benchmarks/dedup.py): per cluster, order the
members, form the full similarity matrix, keep its strict upper triangle and take column maxima, as the original
SemDeDup code does.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curation import dedup


def reference_order(members: np.ndarray, distance: np.ndarray, ordering: str, priority: np.ndarray) -> np.ndarray:
    """Members (ascending index) in SemDeDup order: ties broken by index through the stable sort."""
    if ordering == "hard":
        return members[np.argsort(-distance[members], kind="stable")]
    if ordering == "easy":
        return members[np.argsort(distance[members], kind="stable")]
    return members[np.argsort(priority[members], kind="stable")]


def semdedup_reference(x: np.ndarray, assignment: np.ndarray, distance: np.ndarray, eps_list, ordering: str = "hard",
                       key: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Kept mask [n, n_eps] and M [n] of one SemDeDup pass, cluster by cluster.

    As in the original, M = max(0, max_{i<j} s_ij) (the zeroed lower triangle enters the column max) and -inf for
    a cluster's first member; for eps < 1 the decision M > 1 - eps is the same as with the plain maximum.
    """
    n = x.shape[0]
    priority = np.random.default_rng(key).permutation(n)
    m = np.full(n, -np.inf, np.float32)
    order = np.argsort(assignment, kind="stable")
    for members in np.split(order, np.flatnonzero(np.diff(assignment[order])) + 1):
        members = reference_order(members, distance, ordering, priority)
        e = x[members]
        s = np.triu(e @ e.T, k=1)
        col_max = s.max(axis=0)
        col_max[0] = -np.inf
        m[members] = col_max
    kept = np.stack([~(m > 1.0 - eps) for eps in eps_list], axis=1)
    return kept, m


def clustered(n: int, d: int, k: int, seed: int, spread: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    sizes = rng.multinomial(n - 1, rng.dirichlet(np.full(k, 0.7)))
    assignment = np.concatenate([np.repeat(np.arange(k), sizes), [k]]).astype(np.int32)  # one singleton cluster
    centres = np.concatenate([centres, rng.standard_normal((1, d)).astype(np.float32)])
    x = centres[assignment] + spread * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return x[perm], assignment[perm]


EPS = (0.05, 0.3, 0.5)
SMALL_TILES = dict(block_size=8, group=2, units_per_call=16)


@pytest.mark.parametrize("ordering", ["hard", "easy", "random"])
def test_kept_set_equals_reference(ordering):
    x, assignment = clustered(500, 16, 9, seed=1)
    distance = dedup.centroid_distance(x, assignment)
    kept_ref, m_ref = semdedup_reference(x, assignment, distance, EPS, ordering, key=3)
    finite = np.isfinite(m_ref)
    # The comparison is exact only away from float32 rounding of the threshold: make sure the data has no M there.
    assert min(np.abs(m_ref[finite] - (1 - e)).min() for e in EPS) > 1e-5
    res = dedup.semdedup(x, n_clusters=9, eps_list=EPS, ordering=ordering, key=3, assignment=assignment,
                         distance=distance, **SMALL_TILES)
    np.testing.assert_array_equal(res.kept, kept_ref)
    np.testing.assert_array_equal(np.isfinite(res.max_similarity), finite)
    np.testing.assert_allclose(np.maximum(res.max_similarity[finite], 0), m_ref[finite], atol=1e-6)
    assert 0 < (~res.kept).sum() < res.kept.size  # the eps grid actually removes some and keeps some
    assert res.kept[np.flatnonzero(np.bincount(assignment)[assignment] == 1)].all()  # the singleton


def planted_duplicates(seed: int = 0, n_base: int = 120, d: int = 32):
    """Distinct base points (pairwise cosine < 0.9) plus 1-3 copies of some, each within cosine distance
    5e-4 .. 1e-2 of it and of each other."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, d)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    sims = base @ base.T
    np.fill_diagonal(sims, -1)
    assert sims.max() < 0.9
    source = np.repeat(np.arange(40), rng.integers(1, 4, 40))
    copies = base[source] + 0.01 * rng.standard_normal((source.size, d)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    x = np.concatenate([base, copies])
    group = np.concatenate([np.arange(n_base), source])
    perm = rng.permutation(x.shape[0])
    return x[perm], group[perm]


def test_planted_near_duplicates_removed_at_the_right_eps():
    x, group = planted_duplicates()
    res = dedup.semdedup(x, n_clusters=6, eps_list=(0.02, 5e-4), key=0, **SMALL_TILES)
    # eps = 0.02: exactly one member of every duplicate group survives, every distinct point is kept.
    kept = res.kept[:, 0]
    assert np.array_equal(np.sort(group[kept]), np.arange(group.max() + 1))
    # eps = 5e-4 is below the planted closeness: nothing is removed.
    assert res.kept[:, 1].all()


def test_bf16_matmul_keeps_the_planted_decision():
    x, group = planted_duplicates(seed=2)
    f32 = dedup.semdedup(x, n_clusters=4, eps_list=(0.02,), **SMALL_TILES)
    bf16 = dedup.semdedup(x, n_clusters=4, eps_list=(0.02,), compute_dtype=jnp.bfloat16, assignment=f32.assignment,
                          **SMALL_TILES)
    np.testing.assert_array_equal(bf16.kept, f32.kept)


def test_repeated_passes_recluster_survivors():
    x, assignment = clustered(400, 8, 6, seed=4, spread=0.9)
    res = dedup.semdedup(x, n_clusters=12, eps_list=(0.05, 0.1), n_passes=3, key=1, **SMALL_TILES)
    one = dedup.semdedup(x, n_clusters=12, eps_list=(0.05, 0.1), n_passes=1, key=1, **SMALL_TILES)
    assert res.survivors_per_pass.shape == (3, 2)
    np.testing.assert_array_equal(res.survivors_per_pass[0], one.kept.sum(axis=0))
    assert (np.diff(res.survivors_per_pass, axis=0) <= 0).all()
    np.testing.assert_array_equal(res.survivors_per_pass[-1], res.kept.sum(axis=0))
    assert not (res.kept & ~one.kept).any()
    # Re-clustering makes later passes find pairs the first clustering split: they are not no-ops here.
    assert (res.survivors_per_pass[-1] < res.survivors_per_pass[0]).any()


def test_sharded_equals_unsharded():
    x, assignment = clustered(300, 8, 5, seed=5)
    distance = dedup.centroid_distance(x, assignment)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    plain = dedup.max_earlier_similarity(x, assignment, distance, **SMALL_TILES)
    sharded = dedup.max_earlier_similarity(x, assignment, distance, mesh=mesh, **SMALL_TILES)
    np.testing.assert_array_equal(sharded, plain)


def test_bad_input_is_a_clear_error():
    x, assignment = clustered(50, 4, 3, seed=6)
    with pytest.raises(ValueError, match="L2-normalised"):
        dedup.semdedup(3 * x, n_clusters=3, eps_list=(0.1,))
    with pytest.raises(ValueError, match="eps"):
        dedup.semdedup(x, n_clusters=3, eps_list=(1.5,))
    with pytest.raises(ValueError, match="NaN"):
        dedup.semdedup(np.where(np.arange(50)[:, None] == 7, np.nan, x), n_clusters=3, eps_list=(0.1,))
    with pytest.raises(ValueError, match="n_clusters"):
        dedup.semdedup(x, n_clusters=51, eps_list=(0.1,))
