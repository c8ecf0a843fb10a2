"""The redundant pool (Zipf class shares, near-duplicate bursts, hidden truth) and the engagement metrics."""
import dataclasses

import numpy as np
import pytest

from configs import default
from oceansar.data.pool import RedundantPool, class_shares
from oceansar.data.selection import Selection
from oceansar.pruning.report import engagement, selection_summary
from oceansar.spec import PoolSpec, build


class _Labelled:
    """A tiny labelled source: 6 classes x 60 images of smooth random texture."""

    class_names = [f"c{i}" for i in range(6)]

    def __init__(self, channels=1):
        rng = np.random.default_rng(0)
        base = rng.random((360, 8, 8, channels))
        self.images = np.uint8(255 * np.kron(base, np.ones((1, 4, 4, 1))))  # 32 px, blocky: crops stay close
        self._labels = np.repeat(np.arange(6), 60)

    def __len__(self):
        return 360

    def __getitem__(self, i):
        return {"image": self.images[i], "label": np.int32(self._labels[i]), "sample_id": np.int64(i)}

    def labels(self, indices=None):
        return self._labels if indices is None else self._labels[indices]


def _spec(**fields) -> PoolSpec:
    block = dict(default.get_config().data.pool_transform.to_dict(), enabled=True)
    return dataclasses.replace(build(PoolSpec, block, "data.pool_transform"), **fields)


def test_class_shares_follow_zipf_and_duplicates_follow_their_config():
    pool = RedundantPool(_Labelled(), _spec(zipf=1.0, burst_fraction=0.5, copies=(2, 4), seed=3))
    groups, labels = pool.groups(), pool.labels()
    originals = np.unique(groups)
    # Originals per class follow 1/rank shares, capped by the rarest share's 60 images.
    want = class_shares(6, zipf=1.0, shares=(), rng=np.random.default_rng([3, 0x9001]))
    got = np.bincount(labels[originals], minlength=6) / originals.size
    np.testing.assert_allclose(got, want, atol=1.5 / originals.size)
    assert np.bincount(labels[originals]).max() == 60
    # Burst sizes: 1 (no copies) or 2..4; about half of the originals have copies.
    sizes = np.bincount(groups)[originals]
    assert set(np.unique(sizes)) <= {1, 2, 3, 4} and 0.35 < np.mean(sizes > 1) < 0.65
    assert np.all(labels == labels[groups])                       # a copy keeps its original's class
    # An original is the base image itself; a copy is a degraded version of it.
    original = originals[sizes.argmax()]
    copy = np.flatnonzero((groups == original) & (np.arange(len(pool)) != original))[0]
    base = pool.base[int(pool._base_index[original])]["image"]
    np.testing.assert_array_equal(pool[original]["image"], base)
    a, b = pool[copy]["image"].astype(float).ravel(), base.astype(float).ravel()
    assert not np.array_equal(a, b) and np.corrcoef(a, b)[0, 1] > 0.7
    assert set(pool[copy]) == {"image", "sample_id"}               # the hidden truth stays hidden
    again = RedundantPool(_Labelled(), _spec(zipf=1.0, burst_fraction=0.5, copies=(2, 4), seed=3))
    np.testing.assert_array_equal(again.groups(), groups)
    np.testing.assert_array_equal(again[copy]["image"], pool[copy]["image"])


def test_explicit_shares_rgb_jpeg_and_speckle():
    pool = RedundantPool(_Labelled(channels=3), _spec(class_shares=(0.5, 0.1, 0.1, 0.1, 0.1, 0.1),
                                                      burst_fraction=1.0, copies=(3, 3)))
    assert np.bincount(pool.labels()[np.unique(pool.groups())]).tolist() == [60, 12, 12, 12, 12, 12]
    assert len(pool) == 3 * 120 and pool[0]["image"].shape == (32, 32, 3)
    speckled = RedundantPool(_Labelled(), _spec(degradation="speckle", looks=1.0, burst_fraction=1.0))
    copies = np.flatnonzero(speckled.groups() != np.arange(len(speckled)))
    assert speckled[int(copies[0])]["image"].dtype == np.uint8
    with pytest.raises(ValueError, match="class_shares has 2 entries for 6 classes"):
        RedundantPool(_Labelled(), _spec(class_shares=(0.5, 0.5)))


def test_engagement_against_hand_counts():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    groups = np.array([0, 0, 0, 3, 4, 4, 6, 7])
    pool = engagement(labels, groups, np.arange(8))
    assert pool["head_share"] == 0.5 and pool["duplicate_groups"] == 2
    assert pool["near_duplicate_share"] == pytest.approx(3 / 8)
    assert pool["effective_classes"] == pytest.approx(np.exp(-(0.5 * np.log(0.5) + 0.25 * np.log(0.25)
                                                               + 2 * 0.125 * np.log(0.125))))
    picked = engagement(labels, groups, np.array([0, 3, 4, 6, 7]))  # one copy per group, classes flatter
    assert picked["head_share"] == pytest.approx(0.4) and picked["near_duplicate_share"] == 0.0
    assert picked["duplicate_groups"] == 0
    assert engagement(labels, None, np.array([0, 1]))["head_share"] == 1.0


def test_selection_summary_reports_pool_and_selection_engagement():
    pool = RedundantPool(_Labelled(), _spec(burst_fraction=0.5))
    info = selection_summary(pool, Selection.subset(np.unique(pool.groups())))
    assert info["pruning/near_duplicate_share"] == 0.0 and info["pool/near_duplicate_share"] > 0.1
    originals = np.unique(pool.groups())
    assert info["pruning/head_share"] == engagement(pool.labels(), pool.groups(), originals)["head_share"]
    assert info["pool/duplicate_groups"] == int((np.bincount(pool.groups()) > 1).sum())
    assert sum(v for k, v in info.items() if k.startswith("pruning/class_share/")) == pytest.approx(1.0)
