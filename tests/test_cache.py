"""The in-memory source: identical records, attribute pass-through, pickling, worker processes, limits."""
import pickle

import numpy as np
import pytest

from oceansar.data.cache import InMemorySource
from oceansar.data.synthetic import SyntheticWV


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype


def test_records_match_the_source_and_attributes_pass_through():
    raw = SyntheticWV(num_samples=300, image_size=16, seed=3)
    cached = InMemorySource(raw)
    assert len(cached) == 300 and cached.images.dtype == np.uint8
    for i in (0, 17, 299):
        _same(cached[i], raw[i])
    np.testing.assert_array_equal(cached.labels([1, 2]), raw.labels([1, 2]))
    assert cached.class_names == raw.class_names
    again = pickle.loads(pickle.dumps(cached))     # Grain workers receive the source pickled
    _same(again[5], raw[5])


def test_worker_processes_fill_every_chunk_in_place():
    raw = SyntheticWV(num_samples=2100, image_size=16, seed=1)   # above the in-process threshold
    cached = InMemorySource(raw, num_workers=2)
    for i in (0, 511, 512, 1500, 2099):
        _same(cached[i], raw[i])


def test_a_pool_over_the_memory_limit_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match="config.data.cache.*GiB"):
        InMemorySource(SyntheticWV(num_samples=100, image_size=16), max_bytes=1000)


def test_read_batch_stacks_the_records():
    raw = SyntheticWV(num_samples=40, image_size=16, seed=3)
    cached = InMemorySource(raw)
    indices = [7, 0, 39, 7]
    batch = cached.read_batch(indices)
    for key in raw[0]:
        if np.asarray(raw[0][key]).ndim == 0 and np.asarray(raw[0][key]).dtype.kind not in "biuf":
            continue
        expected = np.stack([np.asarray(raw[i][key]) for i in indices])
        np.testing.assert_array_equal(batch[key], expected)
        assert batch[key].dtype == expected.dtype
