"""KoLeo regulariser (arXiv 1806.03198) as DINOv2 uses it (arXiv 2304.07193): spreads features by penalising
small nearest-neighbour distances.

Pure function over arrays, float32 math. Computed over the **global batch**, not per device: under `jax.jit` with
the batch axis sharded, the neighbour search spans every device's samples. DINOv2 computes it per GPU because an
all-gather costs code in PyTorch; here the gather of [B, D] features is one collective XLA inserts, the loss of a
run no longer depends on how many devices split its batch (1-device and 8-device runs train the same model), and
the neighbours come from a larger pool. The [B, B] similarity per global crop is the cost: 4 MB at B = 1024.

Identical features (a batch holding copies of an image, which pruning and redundant archives make likely) give a
zero neighbour distance: the loss is then -log(eps), finite, and its gradient is zero rather than the NaN of the
norm's derivative at 0 that DINOv2 users meet.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """||x|| with a zero (not NaN) gradient at x = 0."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _koleo_one(x: jax.Array, eps: float) -> jax.Array:
    x = x.astype(jnp.float32)
    # F.normalize(eps=1e-8), as in DINOv2's KoLeoLoss.
    x = x / jnp.maximum(_safe_norm(x, keepdims=True), 1e-8)
    dots = jax.lax.stop_gradient(x @ x.T)
    dots = jnp.where(jnp.eye(x.shape[0], dtype=bool), -1.0, dots)
    nn = jnp.argmax(dots, axis=1)
    return -jnp.mean(jnp.log(_safe_norm(x - x[nn]) + eps))


def koleo_loss(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """-mean_i log(||x_i - x_nn(i)|| + eps) on L2-normalised vectors, nn(i) = argmax_{j != i} <x_i, x_j>.

    Args:
        x: [B, D] student backbone CLS of one global crop, or [n_global, B, D]: then each crop's chunk is treated
            on its own (never across crops of one image) and the terms are summed, as DINOv2 does.
        eps: added to the distance inside the log.

    Returns:
        Scalar float32 loss (before DINOv2's weight 0.1).
    """
    if x.ndim == 2:
        return _koleo_one(x, eps)
    if x.ndim == 3:
        return jnp.sum(jax.vmap(lambda c: _koleo_one(c, eps))(x))
    raise ValueError(f"koleo_loss: expected [B, D] or [n_global, B, D], got shape {x.shape}")
