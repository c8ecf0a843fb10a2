"""iBOT masked image modelling: the student predicts, at each masked patch of a global crop, the teacher's
distribution at the same patch of the unmasked crop (arXiv 2111.07832; DINOv2, arXiv 2304.07193).

Pure functions over arrays, float32 math. The patch logits come gathered at `k` positions per image
(`oceansar.masking.masked_positions`: the masked patches first, padding after), with `valid` marking the masked ones:

    student patch logits   [n_global, B, k, K]   from the masked crops
    teacher patch logits   [n_global, B, k, K]   same positions of the unmasked crops
    valid                  [n_global, B, k]

The loss of image b is iBOT's: per global crop, the cross-entropy summed over the crop's masked patches and divided by
their number (at least 1, so an unmasked crop contributes 0), then averaged over the global crops. Its batch mean is
iBOT's `loss2`. The teacher's targets come from `oceansar.losses.centering` (iBOT's `center2` is the same EMA over
the teacher's patch logits, taken here at the gathered positions: each a real patch of the unmasked crop).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def patch_loss(student_logits: jax.Array, teacher_p: jax.Array, valid: jax.Array, *,
               student_temp: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-sample iBOT patch loss.

    Args:
        student_logits: [n_global, B, k, K] student patch logits at the gathered positions of the masked crops.
        teacher_p: [n_global, B, k, K] teacher target distributions at the same positions of the unmasked crops
            (`centering.teacher_probs` or `centering.sinkhorn_knopp`).
        valid: [n_global, B, k] bool, True at masked patches.
        student_temp: tau_s (0.1).

    Returns:
        per_sample: [B] float32.
        aux: {"ce_patch": mean CE per masked patch over the batch, "masked_fraction_of_gathered": the share of
            gathered positions that are masked}.
    """
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
    ce = -jnp.sum(jax.lax.stop_gradient(teacher_p) * log_q, axis=-1)       # [n_global, B, k]
    valid = valid.astype(jnp.float32)
    n_masked = jnp.sum(valid, axis=-1)                                    # [n_global, B]
    per_crop = jnp.sum(ce * valid, axis=-1) / jnp.maximum(n_masked, 1.0)  # [n_global, B]
    aux = {"ce_patch": jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1.0),
           "masked_fraction_of_gathered": jnp.mean(valid)}
    return jnp.mean(per_crop, axis=0), aux

