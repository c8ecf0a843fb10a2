"""Copy-detection descriptors: invariances, near-copies found, blocks equal to one pass."""
import numpy as np
import pytest

from curation import copies


def _scenes(n, rng, side=48):
    coarse = rng.random((n, 6, 6, 1))
    return np.uint8(255 * np.kron(coarse, np.ones((1, side // 6, side // 6, 1))))


def test_descriptors_are_unit_zero_mean_and_brightness_invariant():
    rng = np.random.default_rng(0)
    images = _scenes(5, rng)
    d = copies.copy_descriptors(images)
    assert d.shape == (5, 64) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(d.mean(axis=1), 0.0, atol=1e-6)
    brighter = copies.copy_descriptors(np.clip(images.astype(float) * 0.8 + 10, 0, 255))
    np.testing.assert_allclose(brighter, d, atol=1e-4)
    assert np.all(copies.copy_descriptors(np.full((1, 16, 16, 1), 7, np.uint8)) == 0)


def test_near_copies_stay_close_and_distinct_scenes_do_not():
    rng = np.random.default_rng(1)
    images = _scenes(40, rng)
    noisy = np.clip(images[:, 3:45, 2:44].astype(float) + rng.normal(0, 20, (40, 42, 42, 1)), 0, 255)
    d, dn = copies.copy_descriptors(images), copies.copy_descriptors(np.uint8(noisy))
    same = np.sum(d * dn, axis=1)
    other = d @ d.T
    np.fill_diagonal(other, -1)
    assert np.median(same) > 0.8 and np.median(other.max(axis=1)) < np.median(same)


def test_blocks_equal_one_pass_and_bad_input():
    images = _scenes(10, np.random.default_rng(2))
    np.testing.assert_allclose(copies.copy_descriptors(images, block=3), copies.copy_descriptors(images),
                               atol=1e-6)
    with pytest.raises(ValueError, match="size=64"):
        copies.copy_descriptors(images, size=64)
    with pytest.raises(ValueError, match=r"\[n, H, W, C\]"):
        copies.copy_descriptors(images[0])
