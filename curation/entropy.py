"""Local information entropy of images and the entropy filter: stage 1 of RS-Prune (arXiv 2512.23239).

For every image, the 2-D joint histogram of (pixel level g, level m of the mean of its 3x3 neighbourhood), both
quantised to `n_levels`, gives p(g, m) = count / (H W) and H2 = -sum p log2 p (bits; at most 2 log2 n_levels).
Flat or purely noisy images score low or high along the m axis in a way a plain 1-D histogram entropy cannot tell.

Quantisation: uint8 images use level = value * n_levels // 256 (identity for 256 levels). Float images (SAR sigma0
in dB, reflectances) are clipped per image to their [p1, p99] percentiles and spread linearly over the levels, so
one bright target or a few NaN-free outliers do not squash the sea surface into a few levels; a constant image has
entropy 0. The neighbourhood mean is floor(sum of the 3x3 levels / 9), with edge replication at the borders.

Images are processed in fixed-size batches (static shapes; the last batch is padded) by one jitted, vmapped kernel,
optionally sharded over a mesh along the batch. Nothing here imports oceansar.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _levels(image: jax.Array, n_levels: int) -> jax.Array:
    """Quantised levels int32 [H, W] of one single-channel image."""
    if jnp.issubdtype(image.dtype, jnp.integer):
        return image.astype(jnp.int32) * n_levels // 256
    image = image.astype(jnp.float32)
    lo, hi = jnp.percentile(image, jnp.array([1.0, 99.0]))
    scaled = (jnp.clip(image, lo, hi) - lo) / jnp.where(hi > lo, hi - lo, 1.0)
    return jnp.clip(jnp.floor(scaled * n_levels), 0, n_levels - 1).astype(jnp.int32)


def _image_entropy(image: jax.Array, n_levels: int) -> jax.Array:
    g = _levels(image, n_levels)
    h, w = g.shape
    padded = jnp.pad(g, 1, mode="edge")
    window_sum = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    m = window_sum // 9
    counts = jnp.bincount((g * n_levels + m).reshape(-1), length=n_levels * n_levels)
    p = counts.astype(jnp.float32) / (h * w)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0))


@functools.lru_cache(maxsize=None)
def _batched_entropy(n_levels: int, mesh: jax.sharding.Mesh | None):
    fn = jax.vmap(functools.partial(_image_entropy, n_levels=n_levels))
    if mesh is None:
        return jax.jit(fn)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
    return jax.jit(fn, in_shardings=batch, out_shardings=batch)


def local_entropy(
    images: np.ndarray,
    *,
    n_levels: int = 256,
    batch_size: int = 64,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """2-D local information entropy H2 (bits) of each image.

    Args:
        images: [n, H, W] or [n, H, W, C] uint8 or float array (a memmap works: batches are read one at a time).
            Channels are averaged first (float images) or must be a single channel (uint8 images).
        n_levels: quantisation levels of g and m (256 is the reference; 64 is ~16x less histogram memory).
        batch_size: images per kernel call (a static shape); with a mesh, a multiple of its device count.
        mesh: optional mesh; the batch is sharded over all of its axes.

    Returns:
        [n] float32 entropies.
    """
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if images.ndim == 4:
        if images.shape[-1] == 1:
            images = images[..., 0]
        elif np.issubdtype(images.dtype, np.integer):
            raise ValueError(f"uint8 images must have one channel, got shape {images.shape}; "
                             "pass float images to average their channels")
        else:
            images = images.mean(axis=-1, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"images must be [n, H, W] or [n, H, W, C], got shape {images.shape}")
    if np.issubdtype(images.dtype, np.integer) and images.dtype != np.uint8:
        raise ValueError(f"integer images must be uint8, got {images.dtype}; convert to float to requantise")
    if not 2 <= n_levels <= 256:
        raise ValueError(f"n_levels must be in [2, 256], got {n_levels}")
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the mesh's {mesh.size} devices")
    n = images.shape[0]
    kernel = _batched_entropy(n_levels, mesh)
    out = np.empty(n, np.float32)
    for start in range(0, n, batch_size):
        batch = np.asarray(images[start:start + batch_size])
        size = batch.shape[0]
        if np.issubdtype(batch.dtype, np.floating) and not np.isfinite(batch).all():
            bad = start + int(np.flatnonzero(~np.isfinite(batch).reshape(size, -1).all(axis=1))[0])
            raise ValueError(f"image {bad} has NaN/Inf pixels")
        if size < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - size, axis=0)])
        out[start:start + size] = np.asarray(kernel(batch))[:size]
    return out


def entropy_filter(scores: np.ndarray, percentile: float) -> np.ndarray:
    """Keep mask dropping images whose entropy is below the `percentile`-th percentile of `scores`.

    Args:
        scores: [n] entropies.
        percentile: q in [0, 100]; about 20-40 removes the 20-40 % lowest (ties at the cut are kept).

    Returns:
        [n] bool, True for the images kept.
    """
    scores = np.asarray(scores)
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}")
    return scores >= np.percentile(scores, percentile)
