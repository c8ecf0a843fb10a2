"""How the teacher's logits become targets: DINO's EMA centring, or DINOv2's Sinkhorn-Knopp.

EMA centring (DINO, arXiv 2104.14294): P = softmax((t - c) / tau_t), with c an EMA of the mean teacher logit;
subtracting c keeps one prototype from winning, the low tau_t keeps P from going uniform. Sinkhorn-Knopp (SwAV,
arXiv 2006.09882; DINOv2, arXiv 2304.07193): three alternating normalisations of exp(t / tau_t) over the batch make
every prototype carry the same total mass, an equipartition constraint instead of a running centre.

Pure functions, float32. Distributed reduction: under `jax.jit` with the batch axis sharded by a `NamedSharding`,
sums over the batch axis are sums over the global batch, so Sinkhorn-Knopp normalises over every device's samples as
DINOv2's all-reduces do, and the centre's mean is the global mean.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def teacher_probs(teacher_logits: jax.Array, center: jax.Array, teacher_temp: float | jax.Array) -> jax.Array:
    """softmax((t - center) / tau_t) over the last axis, float32, without gradient."""
    center = jnp.reshape(center, (-1,)).astype(jnp.float32)
    p = jax.nn.softmax((teacher_logits.astype(jnp.float32) - center) / teacher_temp, axis=-1)
    return jax.lax.stop_gradient(p)


def update_center(center: jax.Array, teacher_logits: jax.Array, momentum: float | jax.Array = 0.9) -> jax.Array:
    """Centre EMA: momentum * center + (1 - momentum) * mean of the raw teacher logits over every leading axis.

    Call it after the loss with the same teacher logits. Under jit with a sharded batch the mean is global (see the
    module docstring), matching DINO's all-reduce. Returns the new centre in `center`'s shape and dtype.
    """
    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    # Reduce over (crop, batch, ...) without reshaping them into one axis: merging a replicated crop axis with a
    # sharded batch axis would make XLA all-gather the whole tensor instead of all-reducing [K].
    batch_center = jnp.mean(t, axis=tuple(range(t.ndim - 1)))
    new = momentum * jnp.reshape(center, (-1,)).astype(jnp.float32) + (1.0 - momentum) * batch_center
    return new.reshape(center.shape).astype(center.dtype)


def sinkhorn_knopp(teacher_logits: jax.Array, teacher_temp: float | jax.Array, *, valid: jax.Array | None = None,
                   iterations: int = 3) -> jax.Array:
    """DINOv2's `sinkhorn_knopp_teacher`: targets whose prototype marginals are uniform over the batch.

    Q = exp(t / tau_t) over all M = prod(leading axes) samples, normalised to total mass 1; then `iterations` times:
    every prototype's mass to 1/K, every sample's mass to 1/M; finally each sample's row sums to 1.

    Args:
        teacher_logits: [..., K] raw teacher logits (CLS: [n_global, B, K], both crops in one problem as in DINOv2;
            patches: [n_global, B, k, K]).
        teacher_temp: tau_t.
        valid: optional bool over the leading axes; samples marked False (padding) carry no mass and get all-zero
            rows, and M counts only the valid ones.
        iterations: normalisation rounds (3 in DINOv2).

    Returns:
        [..., K] float32 target distributions, without gradient.
    """
    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / teacher_temp
    lead = tuple(range(t.ndim - 1))
    # exp of logits minus their global max: the normalisations cancel the constant and nothing overflows when a
    # learned prototype gain lifts the logits far above 1 / tau_t.
    q = jnp.exp(t - jnp.max(t))
    if valid is not None:
        q = q * valid[..., None].astype(jnp.float32)
    k = t.shape[-1]
    m = jnp.sum(valid.astype(jnp.float32)) if valid is not None else float(q[..., 0].size)
    q = q / jnp.sum(q)
    for _ in range(iterations):
        q = q / jnp.maximum(jnp.sum(q, axis=lead, keepdims=True), 1e-30) / k
        q = q / jnp.maximum(jnp.sum(q, axis=-1, keepdims=True), 1e-30) / m
    return jax.lax.stop_gradient(q * m)
