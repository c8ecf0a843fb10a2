"""Image-text contrastive objectives: symmetric InfoNCE (CLIP, arXiv 2103.00020) and the pairwise sigmoid loss
(SigLIP, arXiv 2303.15343), each returned per sample ([B]) for the loss-statistics table and dynamic pruning.

Pure functions over arrays, float32 math. The image i and the text i of a batch are a positive pair, every other
pair a negative. Both losses see the **global batch**: under `jax.jit` with the batch axis sharded by a
`NamedSharding`, the [B, B] similarity is one matmul over all devices' samples (XLA gathers the [B, D] features), so
a run's loss does not depend on how many devices split its batch; no `shard_map`, no `pmean`. The [B, B] logits cost
4 MB at B = 1024 and 64 MB at B = 4096; SigLIP's chunked ring only pays off far beyond that.

The temperatures are learnable parameters that live in the model (as log-scales, so they stay positive); the losses
take their values. Features are L2-normalised here, so callers may pass raw projections. A per-sample weight
multiplies each sample's loss before the batch mean (`mean(w * per_sample)`), the convention of the train step and of
InfoBatch-style rescaling: weights of mean 1 leave the loss's scale unchanged; they are not renormalised.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# CLIP initialises its logit scale at 1 / 0.07 and keeps it at most 100 (OpenCLIP clamps log-scale to [0, ln 100]).
CLIP_INIT_LOG_SCALE = math.log(1 / 0.07)
CLIP_MAX_SCALE = 100.0
# SigLIP initialises t' = log 10 and b = -10: every pair starts near "negative" (sigmoid(-10) ~ 5e-5), the prior of a
# batch where 1 pair in B is positive, so early steps are not spent correcting that imbalance (arXiv 2303.15343, 3.2).
SIGLIP_INIT_LOG_SCALE = math.log(10.0)
SIGLIP_INIT_BIAS = -10.0


def _l2_normalize(x: jax.Array) -> jax.Array:
    """x / max(||x||, 1e-12) over the last axis, float32, with a finite gradient at 0."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def _cosine(rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Cosine similarities [N, M] of [N, D] and [M, D] features in full float32 precision.

    HIGHEST keeps GPUs from rounding through TF32: the logits are scaled by up to 100 afterwards, and the matmul
    (N M D) is small next to the towers.
    """
    return jnp.matmul(_l2_normalize(rows), _l2_normalize(cols).T, precision=jax.lax.Precision.HIGHEST)


def _similarity(image_feats: jax.Array, text_feats: jax.Array) -> jax.Array:
    """Cosine similarities [B, B] of paired features (rows: images, columns: texts)."""
    if image_feats.ndim != 2 or image_feats.shape != text_feats.shape:
        raise ValueError(f"contrastive loss: image and text features must both be [B, D], got {image_feats.shape} "
                         f"and {text_feats.shape}")
    return _cosine(image_feats, text_feats)


def _clip_scale(log_scale: jax.Array, max_scale: float) -> jax.Array:
    """InfoNCE's logit scale exp(log_scale), log_scale clipped to [0, log max_scale] as CLIP does."""
    return jnp.exp(jnp.clip(jnp.asarray(log_scale, jnp.float32), 0.0, math.log(max_scale)))


def _weighted_mean(per_sample: jax.Array, weights: jax.Array | None) -> jax.Array:
    if weights is None:
        return jnp.mean(per_sample)
    if weights.shape != per_sample.shape:
        raise ValueError(f"contrastive loss: weights must be [B] = {per_sample.shape}, got {weights.shape}")
    return jnp.mean(per_sample * weights.astype(jnp.float32))


def clip_loss(image_feats: jax.Array, text_feats: jax.Array, log_scale: jax.Array, *,
              weights: jax.Array | None = None,
              max_scale: float = CLIP_MAX_SCALE) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE: L = 1/2 [CE(softmax(s v t^T), diag) + CE(softmax(s t v^T), diag)], s = exp(log_scale).

    Args:
        image_feats: [B, D] image embeddings (normalised here).
        text_feats: [B, D] text embeddings, text i paired with image i (normalised here).
        log_scale: scalar learnable log of the logit scale 1 / T (init `CLIP_INIT_LOG_SCALE`); its value is
            clipped to [0, log max_scale] as CLIP does, which stops its gradient beyond the bounds.
        weights: optional [B] per-sample loss weights.
        max_scale: the most the logits are scaled by (CLIP: 100).

    Returns:
        loss: scalar, mean(weights * per_sample) (the plain mean without weights).
        per_sample: [B] float32, sample i's share: the mean of its image->text and text->image CE terms.
        aux: {"logit_scale": s, "ce_image_to_text", "ce_text_to_image": unweighted means,
            "accuracy_image_to_text": share of images whose own text is the most similar}.
    """
    scale = _clip_scale(log_scale, max_scale)
    logits = scale * _similarity(image_feats, text_feats)
    positive = jnp.diagonal(logits)
    image_to_text = jax.nn.logsumexp(logits, axis=1) - positive  # [B]: image i against every text
    text_to_image = jax.nn.logsumexp(logits, axis=0) - positive  # [B]: text i against every image
    per_sample = 0.5 * (image_to_text + text_to_image)
    aux = {"logit_scale": scale, "ce_image_to_text": jnp.mean(image_to_text),
           "ce_text_to_image": jnp.mean(text_to_image),
           "accuracy_image_to_text": jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(logits.shape[0]))}
    return _weighted_mean(per_sample, weights), per_sample, aux


def caption_to_image_loss(image_feats: jax.Array, caption_feats: jax.Array, caption_weights: jax.Array,
                          log_scale: jax.Array, bias: jax.Array | None = None, *,
                          max_scale: float = CLIP_MAX_SCALE) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Every caption as a text-to-image query over the global batch, weighted per image: [B] per-sample losses.

    The retrieval benchmarks query one caption at a time, while an aggregated text feature (WFA) trains one target
    per image; this term also asks each encoded caption j of image b to find its image among the batch's:
    l_b = sum_j w_bj CE(softmax(s h_bj V^T), b) with InfoNCE's scale (clipped as in `clip_loss`), or, given a
    `bias`, SigLIP's terms l_b = sum_j w_bj sum_b' -log sigmoid(z (s h_bj . v_b' + bias)) (unclipped scale, as in
    `siglip_loss`), with the image's caption weights w (the aggregation's, summing to 1; 0 on captions not
    encoded). The caption features are already computed for the aggregate: the term costs a [B m, B] matmul, no
    text-tower pass.

    Args:
        image_feats: [B, D] image embeddings (normalised here).
        caption_feats: [B, m, D] the features of each image's caption rows (normalised here; zero rows allowed).
        caption_weights: [B, m] weights of the rows, 0 where a row was not encoded.
        log_scale: the contrastive loss's learnable log-scale.
        bias: SigLIP's learnable bias; None for InfoNCE.
        max_scale: the most InfoNCE's logits are scaled by.

    Returns:
        per_sample: [B] float32 weighted caption-to-image losses.
        aux: {"loss_caption_to_image": their weighted mean over captions, "accuracy_caption_to_image": the
            weighted share of captions whose own image is the most similar}.
    """
    b, m, d = caption_feats.shape
    if image_feats.shape != (b, d) or caption_weights.shape != (b, m):
        raise ValueError(f"caption_to_image_loss: want image [B, D], captions [B, m, D] and weights [B, m], got "
                         f"{image_feats.shape}, {caption_feats.shape} and {caption_weights.shape}")
    scale = (_clip_scale(log_scale, max_scale) if bias is None
             else jnp.exp(jnp.asarray(log_scale, jnp.float32)))
    logits = scale * _cosine(caption_feats.reshape(b * m, d), image_feats)  # [B m, B]
    own = jnp.repeat(jnp.arange(b), m)
    if bias is None:
        positive = jnp.take_along_axis(logits, own[:, None], axis=1)[:, 0]
        per_caption = jax.nn.logsumexp(logits, axis=1) - positive
    else:
        z = jnp.where(own[:, None] == jnp.arange(b)[None, :], 1.0, -1.0)
        per_caption = jnp.sum(-jax.nn.log_sigmoid(z * (logits + jnp.asarray(bias, jnp.float32))), axis=1)
    per_caption = per_caption.reshape(b, m)
    w = caption_weights.astype(jnp.float32)
    hit = (jnp.argmax(logits, axis=1) == own).reshape(b, m)
    total = jnp.maximum(jnp.sum(w), 1e-12)
    aux = {"loss_caption_to_image": jnp.sum(w * per_caption) / total,
           "accuracy_caption_to_image": jnp.sum(w * hit) / total}
    return jnp.sum(w * per_caption, axis=1), aux


def siglip_loss(image_feats: jax.Array, text_feats: jax.Array, log_scale: jax.Array, bias: jax.Array, *,
                weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Pairwise sigmoid loss: L = -1/B sum_i sum_j log sigmoid(z_ij (t v_i . t_j + b)), z_ij = 1 if i = j else -1.

    Sample i's share is half of its image's row (image i against every text) plus half of its text's column (text i
    against every image): the per-sample losses then average to the paper's loss exactly, and, as in `clip_loss`,
    both halves of the pair i carry its score.

    Args:
        image_feats: [B, D] image embeddings (normalised here).
        text_feats: [B, D] text embeddings, text i paired with image i (normalised here).
        log_scale: scalar learnable t' with t = exp(t') (init `SIGLIP_INIT_LOG_SCALE`; not clipped, as in SigLIP).
        bias: scalar learnable b (init `SIGLIP_INIT_BIAS`).
        weights: optional [B] per-sample loss weights.

    Returns:
        loss: scalar, mean(weights * per_sample) (the paper's normalisation by B without weights).
        per_sample: [B] float32.
        aux: {"logit_scale": t, "logit_bias": b, "positive_logit_mean", "negative_logit_mean"}.
    """
    scale = jnp.exp(jnp.asarray(log_scale, jnp.float32))
    bias = jnp.asarray(bias, jnp.float32)
    logits = scale * _similarity(image_feats, text_feats) + bias
    eye = jnp.eye(logits.shape[0], dtype=bool)
    nll = -jax.nn.log_sigmoid(jnp.where(eye, logits, -logits))  # [B, B]
    per_sample = 0.5 * (jnp.sum(nll, axis=1) + jnp.sum(nll, axis=0))
    n = logits.shape[0]
    aux = {"logit_scale": scale, "logit_bias": bias, "positive_logit_mean": jnp.mean(jnp.diagonal(logits)),
           "negative_logit_mean": jnp.sum(jnp.where(eye, 0.0, logits)) / max(n * (n - 1), 1)}
    return _weighted_mean(per_sample, weights), per_sample, aux
