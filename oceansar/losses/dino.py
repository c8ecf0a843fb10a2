"""DINO objective: cross-entropy between centred, sharpened teacher and student crop distributions (arXiv 2104.14294).

Pure functions over arrays, float32 math, jit-friendly. The loss comes back per sample ([B]) because dynamic pruning
(InfoBatch-style rescaling, loss statistics) needs it; its batch mean is DINO's scalar loss. Also here: the centre
EMA and collapse monitors. Temperature schedules and the EMA of the teacher weights live in the train step.

Crop layout (what `oceansar.augment.multicrop` and `DINOModel` produce):
    teacher targets           [n_global, B, K]   global crops only (probabilities)
    student logits, globals   [n_global, B, K]   same crop order as the teacher
    student logits, locals    [n_local,  B, K]   n_local may be 0

Distributed reduction: under `jax.jit` with the batch axis sharded by a `NamedSharding`, a `jnp.mean` over the batch
axis is the mean over the global batch (all devices); no `pmean` is needed.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _split_student(student_logits: Sequence[jax.Array] | jax.Array, n_global: int) -> tuple[jax.Array, jax.Array]:
    """Returns (globals [n_global, B, K], locals [n_local, B, K]) from either accepted student layout."""
    if isinstance(student_logits, (list, tuple)):
        if len(student_logits) not in (1, 2):
            raise ValueError("dino_loss: student_logits as a sequence must be [globals] or [globals, locals], "
                             f"got {len(student_logits)} entries")
        s_global = student_logits[0]
        s_local = student_logits[1] if len(student_logits) == 2 else s_global[:0]
    else:
        s_global, s_local = student_logits[:n_global], student_logits[n_global:]
    if s_global.shape[0] != n_global:
        raise ValueError(f"dino_loss: student has {s_global.shape[0]} global crops, teacher has {n_global}")
    return s_global, s_local


def dino_loss(student_logits: Sequence[jax.Array] | jax.Array, teacher_p: jax.Array, *,
              student_temp: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-sample DINO loss.

    log Q_v = log_softmax(s_v / student_temp); the loss of sample b is the mean over pairs (q global, v any crop,
    v != q) of -sum_k P_q[b, k] log Q_v[b, k].

    Args:
        student_logits: [globals [n_global, B, K], locals [n_local, B, K]] (locals optional), or one array
            [n_global + n_local, B, K] with the global crops first in the teacher's order.
        teacher_p: [n_global, B, K] teacher target distributions P_q (`centering.teacher_probs`, DINO's
            softmax((t - center) / tau_t), or `centering.sinkhorn_knopp`); no gradient flows into them.
        student_temp: tau_s (0.1).

    Returns:
        per_sample: [B] float32, whose batch mean is DINO's scalar loss.
        aux: {"ce_global": mean CE over global-global pairs, "ce_local": over global-local pairs (when n_local > 0)},
            unweighted batch means for logging.
    """
    n_global = teacher_p.shape[0]
    s_global, s_local = _split_student(student_logits, n_global)
    n_local = s_local.shape[0]
    n_pairs = n_global * (n_global + n_local - 1)
    if n_pairs == 0:
        raise ValueError("dino_loss: one global crop and no local crops leave no (teacher, student) pair")
    p = jax.lax.stop_gradient(teacher_p.astype(jnp.float32))
    p_sum = jnp.sum(p, axis=0)  # [B, K]
    log_q_global = jax.nn.log_softmax(s_global.astype(jnp.float32) / student_temp, axis=-1)
    # Pairs (q, v) with v global, v != q: the sum over q != v of P_q is p_sum - P_v.
    ce_global = -jnp.sum((p_sum[None] - p) * log_q_global, axis=(0, -1))  # [B]
    aux = {}
    if n_global > 1:
        aux["ce_global"] = jnp.mean(ce_global) / (n_global * (n_global - 1))
    total = ce_global
    if n_local:
        log_q_local = jax.nn.log_softmax(s_local.astype(jnp.float32) / student_temp, axis=-1)
        ce_local = -jnp.sum(p_sum * jnp.sum(log_q_local, axis=0), axis=-1)  # [B]
        aux["ce_local"] = jnp.mean(ce_local) / (n_global * n_local)
        total = total + ce_local
    return total / n_pairs, aux


def collapse_monitors(teacher_p: jax.Array, *, valid: jax.Array | None = None,
                      student_embeddings: jax.Array | None = None) -> dict[str, jax.Array]:
    """Scalars that reveal the two DINO collapse modes, from the teacher's targets.

    Args:
        teacher_p: [..., K] teacher target distributions (CLS [n_global, B, K], or patches [..., k, K]).
        valid: optional bool over the leading axes: only these targets count (iBOT's masked patches).
        student_embeddings: optional [..., D] student features.

    Returns:
        teacher_entropy: mean per-sample entropy of P (nats). Near 0: every sample is one-hot (sharpening wins);
            near log K: P is uniform per sample (centering wins).
        teacher_kl_to_uniform: KL(mean P || uniform) = log K - H(mean P). Near log K: all samples pick the same
            prototype; near 0: prototypes are used evenly.
        student_feature_std: when `student_embeddings` is given, the mean over dimensions of the per-dimension
            std of the L2-normalised vectors (about 1/sqrt(D) when healthy, 0 under dimensional collapse).
    """
    p = jax.lax.stop_gradient(teacher_p).astype(jnp.float32)
    k = p.shape[-1]
    w = jnp.ones(p.shape[:-1], jnp.float32) if valid is None else valid.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    entropy = -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1)
    p_mean = jnp.sum(p * w[..., None], axis=tuple(range(p.ndim - 1))) / n
    kl = jnp.sum(p_mean * (jnp.log(jnp.maximum(p_mean, 1e-30)) + jnp.log(k)))
    out = {"teacher_entropy": jnp.sum(entropy * w) / n, "teacher_kl_to_uniform": kl}
    if student_embeddings is not None:
        e = jax.lax.stop_gradient(student_embeddings).astype(jnp.float32)
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        out["student_feature_std"] = jnp.mean(jnp.std(e, axis=tuple(range(e.ndim - 1))))
    return out
