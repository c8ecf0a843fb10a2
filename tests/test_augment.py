"""Multi-crop augmentation: shapes, ranges, determinism, exact geometry on planted images, resize equivalence."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from oceansar.augment import MultiCropSpec, center_view, multicrop
from oceansar.spec import build


def crop_spec(**fields) -> MultiCropSpec:
    """The default recipe's crops with some fields replaced."""
    return build(MultiCropSpec, dict(default.get_config().crops.to_dict(), **fields), "crops")


B, H = 4, 32
SPEC = crop_spec(global_size=16, local_size=8, n_local=3, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
                 db_offset=0.4, contrast=(0.6, 1.4), blur_sigma=(0.1, 2.0))
# Geometry only: every photometric step off.
PLAIN = dataclasses.replace(SPEC, jitter_p=0.0, blur_p_global=(0.0, 0.0), blur_p_local=0.0)


def _images(seed=0, shape=(B, H, H, 1)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_shapes_and_bounded_values():
    spec = dataclasses.replace(SPEC, interpolation="bilinear")
    images = _images()
    g, l = multicrop(jax.random.key(1), images, spec)
    images, g, l = np.asarray(images), np.asarray(g), np.asarray(l)
    assert g.shape == (2, B, 16, 16, 1) and l.shape == (3, B, 8, 8, 1)
    assert g.dtype == l.dtype == np.float32
    # Bilinear and blur are convex; contrast <= 1.4 widens by 0.4 of the range; plus the offset.
    lo, hi = float(images.min()), float(images.max())
    slack = 0.4 * (hi - lo) + spec.db_offset + 1e-4
    for crops in (g, l):
        assert np.isfinite(crops).all()
        assert crops.min() >= lo - slack and crops.max() <= hi + slack
    # The default bicubic kernel overshoots only mildly.
    g3, l3 = map(np.asarray, multicrop(jax.random.key(1), images, SPEC))
    assert np.isfinite(g3).all() and np.abs(l3).max() < 2 * (hi - lo) + 1


def test_constant_images_stay_constant_per_crop():
    images = np.full((B, H, H, 1), 0.7, np.float32)
    g, l = map(np.asarray, multicrop(jax.random.key(2), images, SPEC))
    for crops in (g, l):
        assert np.std(crops, axis=(2, 3)).max() < 1e-5
        assert np.abs(crops - 0.7).max() <= SPEC.db_offset + 1e-5
    # Some crops were jittered (offset moved them), so the photometric path ran.
    assert np.abs(g - 0.7).max() > 1e-3


def test_deterministic_by_key_and_keys_differ():
    images = _images()
    a = multicrop(jax.random.key(3), images, SPEC)
    b = multicrop(jax.random.key(3), images, SPEC)
    c = multicrop(jax.random.key(4), images, SPEC)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0]) and not np.allclose(a[1], c[1])
    # Crops of one image differ from each other (per-crop randomness), and so do samples.
    assert not np.allclose(a[1][0], a[1][1])


def _identity_spec(**kw):
    """Full-image crops at the input size: resampling is the identity, so only flips/rot90 act."""
    return dataclasses.replace(PLAIN, global_size=H, local_size=H, n_local=16, global_scale=(1.0, 1.0),
                               local_scale=(1.0, 1.0), ratio=(1.0, 1.0), **kw)


def _which(crops, candidates):
    """Index of the candidate each [n, B, H, W, C] crop equals (fails unless exactly one matches)."""
    out = []
    for crop in np.asarray(crops):
        for bi in range(crop.shape[0]):
            hits = [i for i, cand in enumerate(candidates) if np.allclose(crop[bi], cand[bi], atol=1e-6)]
            assert len(hits) == 1
            out.append(hits[0])
    return out


def test_flips_and_rot90_on_planted_image():
    img = np.arange(B * H * H, dtype=np.float32).reshape(B, H, H, 1) / (B * H * H)
    images = jnp.asarray(img)
    g, _ = multicrop(jax.random.key(5), images, _identity_spec(flip_p=1.0, vflip_p=0.0, rot90=False))
    np.testing.assert_allclose(g, np.broadcast_to(img[:, :, ::-1], g.shape), atol=1e-6)  # horizontal: W axis
    rotations = [np.rot90(img, k, axes=(1, 2)) for k in range(4)]
    _, l = multicrop(jax.random.key(6), images, _identity_spec(flip_p=0.0, vflip_p=0.0, rot90=True))
    assert set(_which(l, rotations)) == {0, 1, 2, 3}
    # Everything on: the dihedral group, every element reached, none favoured by much (64 crops, 8 elements).
    dihedral = rotations + [np.rot90(img[:, ::-1], k, axes=(1, 2)) for k in range(4)]
    _, l = multicrop(jax.random.key(7), images, _identity_spec(flip_p=0.5, vflip_p=0.5, rot90=True))
    counts = np.bincount(_which(l, dihedral), minlength=8)
    assert counts.min() >= 1 and counts.max() <= 20


def test_full_crop_equals_resize():
    images = _images(1)
    spec = dataclasses.replace(PLAIN, global_size=24, local_size=40, n_local=1, global_scale=(1.0, 1.0),
                               local_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, vflip_p=0.0, rot90=False)
    g, l = multicrop(jax.random.key(8), images, spec)
    for crops, size in ((g, 24), (l, 40)):
        ref = jax.image.resize(images, (B, size, size, 1), "bicubic", antialias=True)
        np.testing.assert_allclose(crops[0], ref, atol=1e-5)
    for interpolation in ("bicubic", "bilinear"):
        np.testing.assert_allclose(center_view(images, 24, interpolation=interpolation),
                                   jax.image.resize(images, (B, 24, 24, 1), interpolation, antialias=True),
                                   atol=1e-5)


def test_center_view_crop_fraction_takes_the_centre():
    images = _images(2, (2, H, H, 3))
    out = center_view(images, 16, crop_fraction=0.5)
    np.testing.assert_allclose(out, images[:, 8:24, 8:24], atol=1e-6)


def test_blur_smooths_noise():
    images = _images(3)
    spec = dataclasses.replace(PLAIN, blur_p_global=(1.0, 0.0), blur_sigma=(1.5, 2.0), global_scale=(1.0, 1.0),
                               global_size=H, flip_p=0.0, vflip_p=0.0, rot90=False, ratio=(1.0, 1.0))
    g, _ = map(np.asarray, multicrop(jax.random.key(9), images, spec))
    images = np.asarray(images)
    np.testing.assert_allclose(g[1], images, atol=1e-6)  # blur probability 0: untouched
    assert g[0].std() < 0.5 * images.std()
    np.testing.assert_allclose(g[0].mean(), images.mean(), atol=0.05)


def test_no_local_crops_and_validation():
    g, l = multicrop(jax.random.key(0), _images(), dataclasses.replace(SPEC, n_local=0))
    assert g.shape == (2, B, 16, 16, 1) and l.shape == (0, B, 8, 8, 1)
    with pytest.raises(ValueError, match="config.crops.blur_p_global"):
        crop_spec(n_global=3)
    with pytest.raises(ValueError, match="config.crops.local_scale"):
        crop_spec(local_scale=(0.4, 0.05))
    with pytest.raises(ValueError, match="config.crops.n_locals: unknown field; did you mean n_local"):
        crop_spec(n_locals=3)


def test_blur_matrix_matches_reflect_padded_convolution():
    from oceansar.augment import _blur_matrix

    size, radius, sigma = 9, 6, 1.7
    m = np.asarray(_blur_matrix(jnp.asarray([sigma, sigma]), jnp.asarray([True, False]), size, radius))
    x = np.random.default_rng(0).normal(size=size)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    ref = np.convolve(np.pad(x, radius, mode="reflect"), taps / taps.sum(), mode="valid")
    np.testing.assert_allclose(m[0] @ x, ref, atol=1e-5)
    np.testing.assert_array_equal(m[1], np.eye(size))


def test_rgb_crops_get_saturation_and_grayscale_and_sar_crops_do_not():
    rgb = _images(2, (B, H, H, 3))
    key = jax.random.key(3)
    plain = dataclasses.replace(PLAIN, grayscale_p=0.0)
    geometry = np.asarray(multicrop(key, rgb, plain)[0])
    luma = np.repeat((geometry @ np.float32([0.299, 0.587, 0.114]))[..., None], 3, -1)
    # Saturation 0 under a jitter that changes nothing else gives every crop's luma.
    still = dataclasses.replace(plain, jitter_p=1.0, db_offset=0.0, contrast=(1.0, 1.0))
    np.testing.assert_allclose(np.asarray(multicrop(key, rgb, dataclasses.replace(still, saturation=(0.0, 0.0)))[0]),
                               luma, atol=1e-5)
    # Saturation 1 changes nothing; grayscale at p = 0.5 turns some crops (drawn per crop and sample) to luma.
    mixed = np.asarray(multicrop(key, rgb, dataclasses.replace(still, saturation=(1.0, 1.0), grayscale_p=0.5))[0])
    gray = np.all(np.isclose(mixed, luma, atol=1e-5), axis=(2, 3, 4))
    kept = np.all(np.isclose(mixed, geometry, atol=1e-5), axis=(2, 3, 4))
    assert np.all(gray | kept) and 0 < gray.sum() < gray.size
    # A 1-channel (SAR) batch is cropped as before, whatever the colour fields say.
    sar = _images(4)
    a = multicrop(key, sar, SPEC)
    b = multicrop(key, sar, dataclasses.replace(SPEC, saturation=(0.0, 0.0), grayscale_p=1.0))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match="saturation"):
        crop_spec(saturation=(1.2, 0.8))
