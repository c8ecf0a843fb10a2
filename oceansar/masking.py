"""iBOT block-wise patch masks, drawn on device for a stack of crops (arXiv 2111.07832, as DINOv2 2304.07193 uses it).

Per image: with probability `probability` the image is masked, with a ratio r uniform in [lo, hi] (iBOT's
`pred_ratio=[0, 0.3]`, `pred_ratio_var=[0, 0.2]`: half of the images unmasked, the rest in U(0.1, 0.5)); its target
is int(r * N) of the N patches. Blocks are added BEiT-style (arXiv 2106.08254) until the target is reached: a block's
area is uniform in [(min(H, W) // 3)^2, remaining], its aspect ratio log-uniform in (0.3, 1 / 0.3), its position
uniform; it is kept when it adds between 1 and `remaining` new patches. Ten failed tries in a row end an image early,
as in iBOT's loader, so a mask can fall short of its target.

The host loop of the reference runs per image in the data loader. Here every image of the batch runs the same loop at
once inside `jax.lax.while_loop` on [M, H, W] boolean grids (a few hundred patches each), so masks cost nothing next to
the train step and the host still only decodes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ASPECT = (0.3, 1.0 / 0.3)  # iBOT / BEiT block aspect ratio range
TRIES = 10                 # consecutive failed block draws that end an image (iBOT's loader)


def block_masks(key: jax.Array, shape: tuple[int, ...], grid: tuple[int, int], *, probability: float,
                ratio: tuple[float, float]) -> jax.Array:
    """Block-wise masks for `shape` images (e.g. (n_global, B)) on an (H, W) patch grid.

    Args:
        key: randomness.
        shape: leading shape of the masked images.
        grid: patches per side (H, W) of each image.
        probability: chance that an image is masked at all (iBOT / DINOv2: 0.5).
        ratio: (lo, hi) range of the masked fraction of a masked image (0.1, 0.5).

    Returns:
        [*shape, H * W] bool, True where the patch is replaced by the mask token.
    """
    h, w = grid
    m = math.prod(shape)
    k_on, k_ratio, k_loop = jax.random.split(key, 3)
    masked = jax.random.uniform(k_on, (m,)) < probability
    r = jax.random.uniform(k_ratio, (m,), minval=ratio[0], maxval=ratio[1])
    target = jnp.where(masked, jnp.floor(r * h * w), 0.0).astype(jnp.int32)
    low = float((min(h, w) // 3) ** 2)
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    log_aspect = (math.log(ASPECT[0]), math.log(ASPECT[1]))

    def active(carry):
        _, count, fails, _ = carry
        return (count < target) & (fails < TRIES)

    def cond(carry):
        return jnp.any(active(carry))

    def body(carry):
        grid_mask, count, fails, it = carry
        k_area, k_aspect, k_top, k_left = jax.random.split(jax.random.fold_in(k_loop, it), 4)
        remaining = (target - count).astype(jnp.float32)
        # random.uniform(low, remaining) of the reference: either order of the bounds.
        u = jax.random.uniform(k_area, (m,))
        area = low + (remaining - low) * u
        aspect = jnp.exp(jax.random.uniform(k_aspect, (m,), minval=log_aspect[0], maxval=log_aspect[1]))
        bh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
        bw = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
        fits = (bh < h) & (bw < w)
        top = jnp.floor(jax.random.uniform(k_top, (m,)) * (h - bh + 1)).astype(jnp.int32)
        left = jnp.floor(jax.random.uniform(k_left, (m,)) * (w - bw + 1)).astype(jnp.int32)
        block = ((rows >= top[:, None, None]) & (rows < (top + bh)[:, None, None])
                 & (cols >= left[:, None, None]) & (cols < (left + bw)[:, None, None]))
        new = jnp.sum(block & ~grid_mask, axis=(1, 2))
        accept = active(carry) & fits & (new > 0) & (new <= target - count)
        grid_mask = grid_mask | (block & accept[:, None, None])
        count = count + jnp.where(accept, new, 0)
        fails = jnp.where(accept, 0, fails + 1)
        return grid_mask, count, fails, it + 1

    init = (jnp.zeros((m, h, w), bool), jnp.zeros((m,), jnp.int32), jnp.zeros((m,), jnp.int32), jnp.int32(0))
    grid_mask = jax.lax.while_loop(cond, body, init)[0]
    return grid_mask.reshape(*shape, h * w)


def masked_positions(masks: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The first `k` patch indices of each mask, masked patches first, and which of them are masked.

    Static shapes for the patch head: the head runs on `k` gathered tokens per image (k = the most a mask can hold)
    instead of all N, and `valid` zeroes the padding positions of images with fewer masked patches.

    Args:
        masks: [..., N] bool.
        k: positions per image, at most N.

    Returns:
        (indices [..., k] int32, valid [..., k] bool).
    """
    n = masks.shape[-1]
    # Masked patches score 2N - index, the rest N - index: top_k takes masked ones first, each in index order.
    score = jnp.where(masks, 2 * n, n) - jnp.arange(n)
    _, indices = jax.lax.top_k(score, k)
    return indices.astype(jnp.int32), jnp.take_along_axis(masks, indices, axis=-1)


def max_masked(num_patches: int, ratio: tuple[float, float]) -> int:
    """The most patches a mask of `num_patches` can hold (int(hi * N), at least 1)."""
    return max(1, min(num_patches, int(math.floor(ratio[1] * num_patches))))
