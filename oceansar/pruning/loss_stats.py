"""Online per-sample loss statistics: one row per source sample, updated on device every step.

The DINO loss drifts during training (teacher-temperature warm-up, centering, EMA teacher), so a
raw loss measured at step 100 is not comparable with one measured at step 10,000. Each observation
is therefore stored relative to the batch: `score = loss - mean(loss over the step's batch)`, a
drift-free form of InfoBatch's per-sample score (arXiv 2303.04947). The table keeps an EMA of that
score, an EMA of its square (for a variance), the number of times the sample was seen and the step
it was last seen.

The update is a scatter inside the jitted train step; no host round-trip per step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def init(num_samples: int) -> dict[str, jax.Array]:
    """An empty table for a source of `num_samples` samples."""
    return {
        "score": jnp.zeros((num_samples,), jnp.float32),
        "score_sq": jnp.zeros((num_samples,), jnp.float32),
        "count": jnp.zeros((num_samples,), jnp.int32),
        "last_step": jnp.full((num_samples,), -1, jnp.int32),
    }


def update(table: dict[str, jax.Array], sample_id: jax.Array, per_sample_loss: jax.Array,
           weight: jax.Array, step: jax.Array, *, momentum: float) -> dict[str, jax.Array]:
    """Folds one batch of per-sample losses into the table.

    Args:
      table: the table from `init` (or a previous update).
      sample_id: [B] int source indices of the batch.
      per_sample_loss: [B] float losses (not reduced, not weighted).
      weight: [B] the batch's loss weights; rows of weight 0 (padding) are not recorded.
      step: the global step of this batch.
      momentum: EMA momentum; a sample's first observation is stored as is.

    Returns:
      The updated table.
    """
    loss = jax.lax.stop_gradient(per_sample_loss).astype(jnp.float32)
    valid = weight > 0
    batch_mean = jnp.sum(jnp.where(valid, loss, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    score = loss - batch_mean
    idx = sample_id.astype(jnp.int32)
    seen = table["count"][idx] > 0
    old = table["score"][idx]
    old_sq = table["score_sq"][idx]
    new = jnp.where(seen, momentum * old + (1 - momentum) * score, score)
    new_sq = jnp.where(seen, momentum * old_sq + (1 - momentum) * score**2, score**2)
    # Rows with weight 0 write back their old values, so padding never changes the table.
    return {
        "score": table["score"].at[idx].set(jnp.where(valid, new, old)),
        "score_sq": table["score_sq"].at[idx].set(jnp.where(valid, new_sq, old_sq)),
        "count": table["count"].at[idx].add(valid.astype(jnp.int32)),
        "last_step": table["last_step"].at[idx].set(
            jnp.where(valid, step.astype(jnp.int32), table["last_step"][idx])),
    }

