"""Blockwise JAX k-means against a tiny float64 numpy Lloyd reference, sharded against unsharded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curation import kmeans as km


def _numpy_lloyd(x, c, n_iters):
    x = x.astype(np.float64)
    c = c.astype(np.float64).copy()
    for _ in range(n_iters):
        a = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(len(c)):
            if (a == j).any():
                c[j] = x[a == j].mean(0)
    d = ((x[:, None] - c[None]) ** 2).sum(-1)
    a = d.argmin(1)
    return c, a, d[np.arange(len(x)), a]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((203, 8)).astype(np.float32)


@pytest.mark.parametrize("block_size", [None, 37])
def test_lloyd_matches_numpy_reference(data, block_size):
    c0 = data[:11].copy()
    res = km.kmeans(data, 11, n_iters=4, init=c0, block_size=block_size)
    c, a, d = _numpy_lloyd(data, c0, 4)
    np.testing.assert_allclose(res.centroids, c, atol=1e-5)
    np.testing.assert_array_equal(res.assignment, a)
    np.testing.assert_allclose(res.distance, d, rtol=1e-4, atol=1e-4)
    assert res.inertia == pytest.approx(d.sum(), rel=1e-5)
    assert res.assignment.dtype == np.int32 and res.distance.dtype == np.float32


def test_centroid_tiles_match_single_tile(data, monkeypatch):
    c0 = data[:11].copy()
    whole = km.kmeans(data, 11, n_iters=2, init=c0, block_size=64)
    monkeypatch.setattr(km.search, "_MAX_TILE_K", 4)  # 11 centroids -> 3 tiles, the last one padded
    tiled = km.kmeans(data, 11, n_iters=2, init=c0, block_size=64)
    np.testing.assert_array_equal(tiled.assignment, whole.assignment)
    np.testing.assert_allclose(tiled.centroids, whole.centroids, atol=1e-6)


def test_empty_cluster_keeps_centroid(data):
    far = np.full((1, 8), 1e3, np.float32)
    c0 = np.concatenate([data[:3], far])
    res = km.kmeans(data, 4, n_iters=3, init=c0)
    np.testing.assert_array_equal(res.centroids[3], far[0])
    assert not (res.assignment == 3).any()


def test_cosine_mode(data):
    res = km.kmeans(data, 5, n_iters=3, mode="cosine", key=1)
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, atol=1e-5)
    xn = data / np.linalg.norm(data, axis=1, keepdims=True)
    cos = xn @ res.centroids.T
    np.testing.assert_array_equal(res.assignment, cos.argmax(1))
    np.testing.assert_allclose(res.distance, 1 - cos.max(1), atol=1e-5)


def test_assign_matches_bruteforce(data):
    c = data[50:57]
    a, d = km.assign(data, c, block_size=16)
    full = ((data[:, None] - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(a, full.argmin(1))
    np.testing.assert_allclose(d, full.min(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sharded_equals_unsharded(data, dtype):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    c0 = data[:11].copy()
    single = km.kmeans(data, 11, n_iters=3, init=c0, block_size=10, compute_dtype=dtype)
    sharded = km.kmeans(data, 11, n_iters=3, init=c0, block_size=10, mesh=mesh, compute_dtype=dtype)
    np.testing.assert_array_equal(sharded.assignment, single.assignment)
    np.testing.assert_allclose(sharded.centroids, single.centroids, atol=1e-6)
    assert sharded.inertia == pytest.approx(single.inertia, rel=1e-6)


def test_seeding_variants_are_deterministic_and_valid(data):
    a = km.kmeans_plusplus(data, 6, key=3)
    np.testing.assert_array_equal(a, km.kmeans_plusplus(data, 6, key=3))
    assert all((np.abs(data - row).sum(1) == 0).any() for row in a)  # rows of x
    assert len(np.unique(a, axis=0)) == 6
    for init in ("kmeans||", "random"):
        r1 = km.kmeans(data, 6, n_iters=1, init=init, key=2)
        r2 = km.kmeans(data, 6, n_iters=1, init=init, key=2)
        np.testing.assert_array_equal(r1.centroids, r2.centroids)


def test_bad_inputs(data):
    bad = data.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="first bad row is 5"):
        km.kmeans(bad, 3)
    with pytest.raises(ValueError, match="k must be in"):
        km.kmeans(data, 500)
    with pytest.raises(ValueError, match="dimension mismatch"):
        km.assign(data, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="init centroids must have shape"):
        km.kmeans(data, 3, init=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="mode"):
        km.kmeans(data, 3, mode="manhattan")


@pytest.mark.parametrize("max_tile", [4096, 7])  # one centroid tile, and 60 centroids in 9 tiles (merged top-2)
def test_bfloat16_screening_rescores_exactly(max_tile, monkeypatch):
    monkeypatch.setattr(km.search, "_MAX_TILE_K", max_tile)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 32)).astype(np.float32)
    c = x[rng.choice(1000, 60, replace=False)] + 0.1
    full = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
    a, d = km.assign(x, c, compute_dtype=jnp.bfloat16)
    exact = full.argmin(1)
    # Wrong only where the true nearest is not among bfloat16's best two: a near-tie of about bf16 rounding.
    wrong = a != exact
    assert wrong.mean() < 0.01
    gap = full[wrong, a[wrong]] - full[wrong, exact[wrong]]
    assert (gap < 2e-2 * full[wrong, exact[wrong]]).all()
    # The returned distance is the float32 one of the chosen centroid, not the bfloat16 score.
    np.testing.assert_allclose(d, full[np.arange(1000), a], rtol=1e-4, atol=1e-4)
    fit32 = km.kmeans(x, 60, n_iters=5, init=c)
    fit16 = km.kmeans(x, 60, n_iters=5, init=c, compute_dtype=jnp.bfloat16)
    assert fit16.inertia == pytest.approx(fit32.inertia, rel=1e-3)


def test_far_from_origin_data_is_centred():
    # ||c||^2 - 2 x.c cancels catastrophically at |x| ~ 1e4 unless the data are centred first.
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((300, 8)) + 1e4).astype(np.float32)
    c0 = x[:5].copy()
    res = km.kmeans(x, 5, n_iters=3, init=c0)
    ref_c, ref_a, ref_d = _numpy_lloyd(x - 1e4, c0 - 1e4, 3)
    np.testing.assert_array_equal(res.assignment, ref_a)
    np.testing.assert_allclose(res.centroids - 1e4, ref_c, atol=2e-3)
    a, _ = km.assign(x, res.centroids)
    np.testing.assert_array_equal(a, ref_a)


@pytest.mark.parametrize("init", ["kmeans++", "kmeans||"])
def test_seeding_finds_separated_blobs(init):
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((12, 16)).astype(np.float32) * 20
    owner = rng.integers(0, 12, 3000)
    x = centers[owner] + rng.standard_normal((3000, 16)).astype(np.float32)
    res = km.kmeans(x, 12, n_iters=3, init=init, key=1)
    # One centroid per blob: every blob's points share one cluster, and the inertia is the noise's.
    for b in range(12):
        assert len(np.unique(res.assignment[owner == b])) == 1
    noise = ((x - centers[owner]) ** 2).sum()
    assert res.inertia == pytest.approx(noise, rel=0.02)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("max_tile", [4096, 48])  # one centroid tile, and 100 centroids in 3 merged tiles
def test_second_best_bound_holds(dtype, max_tile, monkeypatch):
    monkeypatch.setattr(km.search, "_MAX_TILE_K", max_tile)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((700, 24)).astype(np.float32)
    c = rng.standard_normal((100, 24)).astype(np.float32) * 0.5
    n_blocks, tile_k = 7, km._tiling(100, None)[1]
    xb = jnp.asarray(x.reshape(n_blocks, 100, 24))
    a, score, bound = (np.asarray(v) for v in km._full_pass(
        xb, km._rounding(xb, dtype), jnp.asarray(c), tile_k=tile_k, compute_dtype=dtype))
    exact = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1) - (x.astype(np.float64) ** 2).sum(1)[:, None]
    np.testing.assert_allclose(score, exact[np.arange(700), a], rtol=1e-5, atol=1e-4)
    others = exact.copy()
    others[np.arange(700), a] = np.inf
    assert (bound <= others.min(1) + 1e-4).all()  # a lower bound on every other centroid's score
    assert (a == exact.argmin(1)).all() and (bound > score).mean() > 0.9  # and useful: most points separated


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("n_moved,max_tile", [(70, 4096), (230, 96)])  # widths of 2/5 of K in one tile, 4/5 in 3
def test_moved_pass_agrees_with_full_pass(dtype, n_moved, max_tile, monkeypatch):
    monkeypatch.setattr(km.search, "_MAX_TILE_K", max_tile)
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((8, 256, 16)).astype(np.float32))
    c = rng.standard_normal((300, 16)).astype(np.float32)
    tile_k = km._tiling(300, None)[1]
    err = km._rounding(x, dtype)
    state = km._full_pass(x, err, jnp.asarray(c), tile_k=tile_k, compute_dtype=dtype)
    moved = np.zeros(300, bool)
    moved[rng.choice(300, n_moved, replace=False)] = True
    c_new = c + moved[:, None] * rng.standard_normal((300, 16)).astype(np.float32) * 0.3
    a, s, lb, settled = km._moved_pass(x, err, jnp.asarray(c_new), jnp.asarray(moved), *state, tile_k=tile_k,
                                      compute_dtype=dtype)
    assert 0.5 < float(np.mean(settled)) < 1.0  # both paths taken
    redo = ~settled
    a, s, lb = km._rescore(x, err, jnp.asarray(c_new), redo, (a, s, lb), tile_k=tile_k, compute_dtype=dtype)
    a_full, s_full, _ = km._full_pass(x, err, jnp.asarray(c_new), tile_k=tile_k, compute_dtype=dtype)
    np.testing.assert_array_equal(a, a_full)
    np.testing.assert_allclose(s, s_full, rtol=1e-5, atol=1e-4)
    xf = np.asarray(x).reshape(-1, 16).astype(np.float64)
    exact = ((xf[:, None] - c_new[None]) ** 2).sum(-1) - (xf ** 2).sum(1)[:, None]
    exact[np.arange(len(xf)), np.asarray(a)] = np.inf
    assert (np.asarray(lb) <= exact.min(1) + 1e-4).all()


def _skip_fixture():
    rng = np.random.default_rng(8)
    centers = rng.standard_normal((600, 16)).astype(np.float32) * 3
    x = centers[rng.integers(0, 600, 2400)] + rng.standard_normal((2400, 16)).astype(np.float32)
    return x, x[rng.choice(2400, 300, replace=False)].copy()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lloyd_with_skipped_work_matches_numpy(dtype, monkeypatch):
    # 300 clusters of 2400 points: after the first iterations only some centroids move, so the fit takes the
    # moved-centroid pass and the incremental member sums; the result must still be plain Lloyd's.
    monkeypatch.setattr(km.lloyd, "_SKIP_MIN_WORK", 0)
    x, c0 = _skip_fixture()
    res = km.kmeans(x, 300, n_iters=8, init=c0, compute_dtype=dtype)
    c, a, d = _numpy_lloyd(x, c0, 8)
    moved_late = (np.abs(_numpy_lloyd(x, c0, 7)[0] - _numpy_lloyd(x, c0, 6)[0]).sum(1) > 0).sum()
    assert moved_late <= 256  # at most 4 of the 5 widths of 64 centroids: the moved-centroid pass is taken
    if dtype == jnp.float32:
        np.testing.assert_array_equal(res.assignment, a)
        np.testing.assert_allclose(res.centroids, c, atol=1e-4)
    else:  # screening may flip a near-tie, which then moves its two centroids slightly
        assert (res.assignment == a).mean() > 0.99
    assert res.inertia == pytest.approx(d.sum(), rel=1e-4)


def test_lloyd_with_skipped_work_sharded_equals_unsharded(monkeypatch):
    monkeypatch.setattr(km.lloyd, "_SKIP_MIN_WORK", 0)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x, c0 = _skip_fixture()
    single = km.kmeans(x, 300, n_iters=8, init=c0, compute_dtype=jnp.bfloat16)
    sharded = km.kmeans(x, 300, n_iters=8, init=c0, compute_dtype=jnp.bfloat16, mesh=mesh)
    np.testing.assert_array_equal(sharded.assignment, single.assignment)
    np.testing.assert_allclose(sharded.centroids, single.centroids, atol=1e-5)
    skipping = km.kmeans(x, 300, n_iters=8, init=c0)
    monkeypatch.setattr(km.lloyd, "_SKIP_MIN_WORK", 1 << 62)  # plain Lloyd: the same fit
    plain = km.kmeans(x, 300, n_iters=8, init=c0)
    np.testing.assert_array_equal(skipping.assignment, plain.assignment)
    np.testing.assert_allclose(skipping.centroids, plain.centroids, atol=1e-5)
