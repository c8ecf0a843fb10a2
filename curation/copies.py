"""Copy-detection descriptors: a cheap image signature for finding near-duplicates without any model.

A near-copy of an image (a slightly different crop of the same scene, a brightness change, JPEG
re-encoding, fresh speckle) keeps its coarse layout. `copy_descriptors` reduces each image to a tiny
antialiased thumbnail (`size` x `size` per channel), removes its mean and divides by its norm, so the
cosine between two descriptors is the correlation of their thumbnails: invariant to brightness and
contrast, and insensitive to noise and small shifts. The DINOv2 data pipeline (arXiv 2304.07193)
removes copies with a copy-detection embedding before it balances concepts; this is the model-free
version of that first stage, usable before any teacher is informative. Near-copy removal itself is
`curation.dedup.semdedup` run on these descriptors. Pure JAX, jitted, in static-shape blocks.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("size",))
def describe_batch(images: jax.Array, size: int = 8) -> jax.Array:
    """Copy descriptors of one batch [B, H, W, C] -> [B, size*size*C] (jitted; see `copy_descriptors`)."""
    x = images.astype(jnp.float32)
    n, _, _, c = x.shape
    thumb = jax.image.resize(x, (n, size, size, c), method="linear", antialias=True).reshape(n, -1)
    thumb = thumb - thumb.mean(axis=1, keepdims=True)
    norm = jnp.linalg.norm(thumb, axis=1, keepdims=True)
    # Below 1e-3 (in pixel units) the thumbnail is flat up to resampling round-off: no layout to compare.
    return jnp.where(norm > 1e-3, thumb / jnp.maximum(norm, 1e-3), 0.0)


def copy_descriptors(images, *, size: int = 8, block: int = 4096) -> np.ndarray:
    """Unit-norm, zero-mean thumbnails of `images` [n, H, W, C] (any numeric dtype): [n, size*size*C] float32.

    Images are processed `block` at a time (the last block padded), so memory is O(block * H * W).
    A constant image maps to the zero vector (it has no layout to compare).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [n, H, W, C], got shape {images.shape}")
    if size < 1 or size > min(images.shape[1:3]):
        raise ValueError(f"size={size} must lie in [1, {min(images.shape[1:3])}] (the image side)")
    out = []
    for start in range(0, images.shape[0], block):
        chunk = images[start:start + block]
        pad = block - chunk.shape[0] if images.shape[0] > block else 0
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(np.asarray(describe_batch(chunk, size))[:chunk.shape[0] - pad])
    return np.concatenate(out)
