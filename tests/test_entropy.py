"""Local 2-D entropy against a numpy histogram reference, and the percentile filter."""
import jax
import numpy as np
import pytest

from curation import entropy


def reference_entropy(image: np.ndarray, n_levels: int) -> float:
    if image.dtype == np.uint8:
        g = image.astype(np.int64) * n_levels // 256
    else:
        lo, hi = np.percentile(image, [1, 99])
        scaled = (np.clip(image, lo, hi) - lo) / (hi - lo if hi > lo else 1.0)
        g = np.clip(np.floor(scaled * n_levels), 0, n_levels - 1).astype(np.int64)
    h, w = g.shape
    padded = np.pad(g, 1, mode="edge")
    m = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) // 9
    hist, _, _ = np.histogram2d(g.ravel(), m.ravel(), bins=n_levels, range=[[0, n_levels], [0, n_levels]])
    p = hist[hist > 0] / (h * w)
    return float(-(p * np.log2(p)).sum())


def test_uint8_matches_reference_and_pads_the_last_batch():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(0, 3, (3, 20, 24)), axis=2).clip(0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, (3, 20, 24), dtype=np.uint8)
    images = np.concatenate([smooth, noise, np.full((1, 20, 24), 77, np.uint8)])
    for n_levels in (256, 64):
        got = entropy.local_entropy(images, n_levels=n_levels, batch_size=4)
        want = [reference_entropy(im, n_levels) for im in images]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got[-1] == 0.0  # constant image
    assert got[3:6].min() > got[:3].max()  # noise carries more information than a smooth ramp


def test_float_db_images_match_reference():
    rng = np.random.default_rng(1)
    images = (-20 + 3 * rng.standard_normal((5, 16, 16))).astype(np.float32)
    images[0, 0, 0] = 40.0  # a bright target: clipped to p99, the sea keeps its levels
    got = entropy.local_entropy(images, n_levels=64, batch_size=8)
    want = [reference_entropy(im, 64) for im in images]
    np.testing.assert_allclose(got, want, rtol=1e-3)
    assert entropy.local_entropy(images[..., None], n_levels=64, batch_size=8) == pytest.approx(got)


def test_sharded_equals_unsharded():
    images = np.random.default_rng(2).integers(0, 256, (10, 12, 12), dtype=np.uint8)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    np.testing.assert_array_equal(entropy.local_entropy(images, n_levels=64, batch_size=8, mesh=mesh),
                                  entropy.local_entropy(images, n_levels=64, batch_size=8))


def test_entropy_filter_drops_the_low_percentile():
    scores = np.arange(100, dtype=np.float32)
    keep = entropy.entropy_filter(scores, 30)
    assert keep.sum() == 70 and not keep[:30].any()
    with pytest.raises(ValueError, match="percentile"):
        entropy.entropy_filter(scores, 130)


def test_bad_images_are_clear_errors():
    with pytest.raises(ValueError, match="image 1 has NaN"):
        entropy.local_entropy(np.stack([np.zeros((4, 4)), np.full((4, 4), np.nan)]).astype(np.float32))
    with pytest.raises(ValueError, match="one channel"):
        entropy.local_entropy(np.zeros((2, 4, 4, 3), np.uint8))
