"""Hierarchical k-means with resampling: level shapes, leaf ordering, splitting, bad inputs."""
import numpy as np
import pytest

from curation import hierarchical as hk


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    sizes = [300, 60, 20, 8]
    centers = rng.standard_normal((4, 6)) * 10
    return np.concatenate([c + rng.standard_normal((s, 6)) for c, s in zip(centers, sizes)]).astype(np.float32)


def test_level_shapes_and_leaf_order(blobs):
    h = hk.hierarchical_kmeans(blobs, [12, 4], n_resamples=2, n_iters=5, key=0)
    assert [lv.centroids.shape for lv in h.levels] == [(12, 6), (4, 6)]
    assert [lv.assignment.shape for lv in h.levels] == [(388,), (12,)]
    sizes = h.flat_sizes()
    assert sizes[0].sum() == sizes[1].sum() == 388
    order, offsets = h.leaf_clusters()
    assert sorted(order.tolist()) == list(range(388))
    for j in range(12):
        members = order[offsets[j]:offsets[j + 1]]
        assert (h.levels[0].assignment[members] == j).all()
        assert (np.diff(h.levels[0].distance[members]) >= 0).all()
    np.testing.assert_array_equal(h.leaf_of_level(1), h.levels[1].assignment[h.levels[0].assignment])


def test_resampling_spreads_centroids_over_small_blobs(blobs):
    plain = hk.hierarchical_kmeans(blobs, [8], n_resamples=0, n_iters=10, key=1)
    resampled = hk.hierarchical_kmeans(blobs, [8], n_resamples=3, sample_sizes=[5], n_iters=10, key=1)

    def in_big_blob(h):  # centroids placed in the 300-point blob (the first 300 rows)
        return int((np.bincount(h.levels[0].assignment[:300], minlength=8) > 0).sum())

    assert in_big_blob(resampled) <= in_big_blob(plain)


def test_two_step_first_level(blobs):
    h = hk.hierarchical_kmeans(blobs, [4, 2], n_splits=3, n_iters=5, key=0)
    k1 = h.levels[0].centroids.shape[0]
    assert 4 < k1 <= 12
    a = h.levels[0].assignment
    assert a.shape == (388,) and a.max() == k1 - 1 and np.bincount(a).min() > 0
    d2 = ((blobs - h.levels[0].centroids[a]) ** 2).sum(1)
    np.testing.assert_allclose(h.levels[0].distance, d2, rtol=1e-3, atol=1e-3)
    assert h.levels[1].assignment.shape == (k1,)


def test_bad_inputs(blobs):
    with pytest.raises(ValueError, match=r"n_clusters\[0\]=1000"):
        hk.hierarchical_kmeans(blobs, [1000])
    with pytest.raises(ValueError, match=r"n_clusters\[1\]=20 must be in \[1, 10\]"):
        hk.hierarchical_kmeans(blobs, [10, 20], n_resamples=0, n_iters=1)
    with pytest.raises(ValueError, match="n_resamples has 1 entries"):
        hk.hierarchical_kmeans(blobs, [10, 2], n_resamples=[1])
