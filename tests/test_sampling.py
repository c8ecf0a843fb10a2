"""Cap allocation against brute force; balanced sampling flattens unequal-density blobs; strategies; determinism."""
import itertools

import numpy as np
import pytest

from curation import hierarchical as hk
from curation import sampling as sp


def _brute_cap(a, target):
    """Largest water level by exhaustive scan; returns (level, total below it)."""
    best = 0
    for t in range(int(a.max()) + 2):
        if np.minimum(t, a).sum() <= target:
            best = t
    return best


@pytest.mark.parametrize("seed,multiplier", list(itertools.product(range(6), [1, 2])))
def test_cap_allocation_vs_brute_force(seed, multiplier):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 30, size=rng.integers(1, 12))
    a = sizes * multiplier
    for target in (0, 1, 7, int(a.sum()) // 2, int(a.sum()), int(a.sum()) + 5):
        alloc = sp.cap_allocation(sizes, target, rng=rng, multiplier=multiplier)
        assert alloc.dtype == np.int64
        assert alloc.sum() == min(target, a.sum())
        assert (alloc <= a).all() and (alloc >= 0).all()
        if target < a.sum():
            t = _brute_cap(a, target)
            assert (alloc >= np.minimum(t, a)).all() and (alloc <= np.minimum(t + 1, a)).all()


@pytest.fixture(scope="module")
def unequal():
    rng = np.random.default_rng(0)
    sizes = np.array([3000, 1200, 400, 150, 60, 25])
    centers = rng.standard_normal((6, 8)) * 12
    x = np.concatenate([c + rng.standard_normal((s, 8)) for c, s in zip(centers, sizes)]).astype(np.float32)
    h = hk.hierarchical_kmeans(x, [24, 6], n_resamples=2, n_iters=8, key=0)
    return x, np.repeat(np.arange(6), sizes), h


def test_balanced_sampling_flattens_cluster_sizes(unequal):
    x, blob, h = unequal
    idx = sp.balanced_sample(h, 300, key=0)
    assert idx.size == 300 and np.unique(idx).size == 300
    kept = np.bincount(blob[idx], minlength=6)
    uniform = np.bincount(blob[np.random.default_rng(0).choice(len(x), 300, replace=False)], minlength=6)
    assert kept.max() / max(kept.min(), 1) < 3 < uniform.max() / max(uniform.min(), 1)
    assert kept.max() / max(kept.min(), 1) < (uniform.max() / max(uniform.min(), 1)) / 10


def test_eta_extremes(unequal):
    _, _, h = unequal
    closest = sp.balanced_sample(h, 400, key=1, strategy="closest")
    np.testing.assert_array_equal(np.sort(sp.balanced_sample(h, 400, key=1, strategy="eta", eta=0.0)),
                                  np.sort(closest))
    np.testing.assert_array_equal(sp.balanced_sample(h, 400, key=1, strategy="eta", eta=1.0),
                                  sp.balanced_sample(h, 400, key=1, strategy="eta", eta=1.0))
    far = sp.balanced_sample(h, 400, key=1, strategy="farthest")
    d = h.levels[0].distance
    mixed = sp.balanced_sample(h, 400, key=1, strategy="eta", eta=1.0)
    assert d[closest].mean() < d[mixed].mean() < d[far].mean()


def test_leaf_picks_take_the_closest_members(unequal):
    _, _, h = unequal
    idx = sp.balanced_sample(h, 400, key=2, strategy="closest")
    leaf = h.levels[0].assignment
    for j in np.unique(leaf[idx]):
        members = np.flatnonzero(leaf == j)
        taken = np.isin(members, idx)
        if not taken.all():
            assert h.levels[0].distance[members[taken]].max() <= h.levels[0].distance[members[~taken]].min()


def test_determinism_and_multiplier(unequal):
    x, _, h = unequal
    a = sp.balanced_sample(h, 500, key=7, strategy="eta", eta=0.3)
    np.testing.assert_array_equal(a, sp.balanced_sample(h, 500, key=7, strategy="eta", eta=0.3))
    assert not np.array_equal(a, sp.balanced_sample(h, 500, key=8, strategy="eta", eta=0.3))
    rep = sp.balanced_sample(h, len(x) + 100, key=0, multiplier=2)
    assert rep.size == len(x) + 100 and np.bincount(rep).max() == 2


def test_bad_inputs(unequal):
    x, _, h = unequal
    with pytest.raises(ValueError, match="target=.* must be in"):
        sp.balanced_sample(h, len(x) + 1, key=0)
    with pytest.raises(ValueError, match="strategy"):
        sp.balanced_sample(h, 10, key=0, strategy="best")
    with pytest.raises(ValueError, match="eta"):
        sp.balanced_sample(h, 10, key=0, strategy="eta", eta=1.5)
