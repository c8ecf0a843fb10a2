"""KoLeo regulariser (arXiv 1806.03198) as DINOv2 uses it (arXiv 2304.07193): spreads features by penalising
small nearest-neighbour distances.

Pure function over arrays, float32 math. DINOv2 computes it per device on the local batch; under `jax.jit` with a
sharded batch the neighbour search here would span the global batch, so callers that want DINOv2's per-device
semantics wrap it in `shard_map` over the data axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _koleo_one(x: jax.Array, eps: float) -> jax.Array:
    x = x.astype(jnp.float32)
    # F.normalize(eps=1e-8), as in DINOv2's KoLeoLoss.
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    dots = jax.lax.stop_gradient(x @ x.T)
    dots = jnp.where(jnp.eye(x.shape[0], dtype=bool), -1.0, dots)
    nn = jnp.argmax(dots, axis=1)
    dist = jnp.linalg.norm(x - x[nn], axis=-1)
    return -jnp.mean(jnp.log(dist + eps))


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
