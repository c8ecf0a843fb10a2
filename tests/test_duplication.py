"""Controlled duplication (Less-is-More's data variants): multiplicity statistics, copies and hidden truth."""
import dataclasses

import numpy as np
import pytest

from configs import default
from oceansar.data import sources
from oceansar.data.duplication import DuplicatedPool, multiplicities, top_share
from oceansar.errors import ConfigError
from oceansar.spec import DuplicationSpec, PoolSpec, RunSpec, build


class _Labelled:
    """120 images of 4 classes (30 each), blocky texture so that a crop stays close to its original."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = np.uint8(255 * np.kron(rng.random((120, 8, 8, 1)), np.ones((1, 4, 4, 1))))
        self._labels = np.repeat(np.arange(4), 30)

    def __len__(self):
        return 120

    def __getitem__(self, i):
        return {"image": self.images[i], "label": np.int32(self._labels[i]), "sample_id": np.int64(i)}

    def labels(self, indices=None):
        return self._labels if indices is None else self._labels[indices]


def _specs(**fields) -> tuple[DuplicationSpec, PoolSpec]:
    data = default.get_config().data
    dup = build(DuplicationSpec, dict(data.duplication.to_dict(), scheme="uniform"), "data.duplication")
    return dataclasses.replace(dup, **fields), build(PoolSpec, data.pool_transform.to_dict(), "data.pool_transform")


def test_multiplicities_have_the_intended_statistics():
    rng = np.random.default_rng(0)
    n = 2000
    assert np.all(multiplicities("subset", n, copies=5, skew=5, rng=rng) == 1)
    assert np.all(multiplicities("uniform", n, copies=5, skew=5, rng=rng) == 5)
    previous_top, previous_max = 0.0, 0
    for skew in (0.0, 5.0, 20.0):
        m = multiplicities("exponential", n, copies=5, skew=skew, rng=rng)
        assert m.sum() == 5 * n and m.min() >= 1                       # same pool size as uniform
        # The top tenth of the originals holds (1 - e^(-skew/10)) / (1 - e^(-skew)) of the extra copies.
        want = 0.1 if skew == 0 else (1 - np.exp(-skew / 10)) / (1 - np.exp(-skew))
        assert top_share(m) == pytest.approx(want, abs=0.01)
        assert top_share(m) > previous_top and m.max() >= previous_max
        previous_top, previous_max = top_share(m), m.max()
    assert np.all(multiplicities("exponential", n, copies=5, skew=0.0, rng=rng) == 5)   # skew 0 is uniform
    heavy = multiplicities("exponential", n, copies=5, skew=20.0, rng=rng)
    assert heavy.max() > 70 and np.mean(heavy == 1) > 0.5                # a few originals take most copies


def test_duplicated_pool_copies_and_hidden_truth():
    base = _Labelled()
    dup, near = _specs(base_fraction=0.25, copies=3.0)
    pool = DuplicatedPool(base, dup, near)
    assert len(pool) == 90 and pool.originals.size == 30
    groups, labels = pool.groups(), pool.labels()
    # Every original appears 3 times: itself once, two degraded copies; the copies keep its class.
    members = np.bincount(groups, minlength=120)[pool.originals]
    assert np.all(members == 3) and np.all(labels == base.labels()[groups])
    exact = [i for i in range(len(pool)) if np.array_equal(pool[i]["image"], base[int(groups[i])]["image"])]
    assert len(exact) == 30 and len(set(groups[exact])) == 30
    copy = next(i for i in range(len(pool)) if i not in exact)
    a, b = pool[copy]["image"].astype(float).ravel(), base[int(groups[copy])]["image"].astype(float).ravel()
    assert not np.array_equal(a, b) and np.corrcoef(a, b)[0, 1] > 0.5     # cropped, re-encoded, still alike
    assert set(pool[copy]) == {"image", "sample_id"}                    # the hidden truth stays hidden
    # subset, uniform and exponential draw the same originals; the pool is a function of the seed.
    for scheme in ("subset", "exponential"):
        other = DuplicatedPool(base, dataclasses.replace(dup, scheme=scheme), near)
        np.testing.assert_array_equal(other.originals, pool.originals)
    assert len(DuplicatedPool(base, dataclasses.replace(dup, scheme="subset"), near)) == 30
    again = DuplicatedPool(base, dup, near)
    np.testing.assert_array_equal(again.groups(), groups)
    np.testing.assert_array_equal(again[copy]["image"], pool[copy]["image"])


def test_duplication_composes_with_the_simulator_and_names_bad_fields():
    c = default.get_config("smoke")
    c.data.duplication.update(scheme="exponential", base_fraction=0.5, copies=2.0)
    pool = sources.make_pretrain_source(RunSpec.from_config(c).data, seed=0, progress=False)
    assert len(pool) == c.data.num_samples
    assert np.all(pool.labels() >= 0) and pool.groups().shape == (len(pool),)   # the simulator's bursts
    c.data.duplication.scheme = "zipf"
    with pytest.raises(ConfigError, match="config.data.duplication.scheme: 'zipf' is not one of"):
        RunSpec.from_config(c)
    c.data.duplication.update(scheme="uniform", copies=0.5)
    with pytest.raises(ConfigError, match="config.data.duplication.copies: must be >= 1"):
        RunSpec.from_config(c)
