"""Weighted feature aggregation (WFA, arXiv 2505.11121): one text feature per image from its redundant captions.

An image comes with m caption rows already folded on the host: the distinct captions first, each with `count`, the
number of the image's original captions it stands for, then all-pad rows (`valid` False, count 0). Their features
h_j [B, m, D] become t = normalize(sum_j w_j h_j) with weights w [B, m] from one of four modes (`MODES`):

    single     one original caption drawn uniformly per image and step: row j with probability count_j / sum count
    mean       the uniform average over the original captions: w_j = count_j / sum count
    bleu       the BLEU-uniqueness weights computed offline (`curation.captions`), folded onto distinct rows
    attention  WFA's learned weights: a_j = v^T tanh(W h_j + b), w = softmax(a / tau + log count)

Adding log(count_j) inside the softmax gives a caption repeated k times the weight of k separately encoded copies
(k exp(a) = exp(a + log k)), so folding never changes `mean`, `attention` or (the weights being folded sums) `bleu`;
invalid rows always weigh 0 and the weights of an image with a valid caption sum to 1. `pack_captions` and
`unpack_features` let the text tower run on the distinct captions of a batch only: a flat buffer of static capacity
C, filled with the highest-priority captions when the batch holds more than C. Tokenisation, folding and BLEU weights
are the data side's; the text tower is `oceansar.models.text`, the loss `oceansar.losses.contrastive`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

MODES = ("single", "mean", "bleu", "attention")


def caption_mask(valid: jax.Array, count: jax.Array) -> jax.Array:
    """[B, m] bool: the rows that stand for at least one original caption."""
    return jnp.asarray(valid, bool) & (jnp.asarray(count) > 0)


def _normalize_rows(x: jax.Array) -> jax.Array:
    """x / sum(x, -1), 0 for rows that sum to 0 (images without a valid caption)."""
    total = jnp.sum(x, axis=-1, keepdims=True)
    return x / jnp.where(total > 0, total, 1.0)


def mean_weights(valid: jax.Array, count: jax.Array) -> jax.Array:
    """count_j / sum count over valid rows: the plain average over the image's original captions, [B, m] float32."""
    return _normalize_rows(jnp.where(caption_mask(valid, count), jnp.asarray(count, jnp.float32), 0.0))


def bleu_weights(valid: jax.Array, caption_weights: jax.Array) -> jax.Array:
    """The given uniqueness weights on valid rows, renormalised to sum 1 (a no-op unless rows were dropped)."""
    return _normalize_rows(jnp.where(jnp.asarray(valid, bool), jnp.asarray(caption_weights, jnp.float32), 0.0))


def sample_single(key: jax.Array, valid: jax.Array, count: jax.Array) -> jax.Array:
    """Draws one row per image with probability count_j / sum count, i.e. one original caption uniformly.

    Returns:
        [B] int32 row indices (0 for an image without a valid caption). In `single` mode only these rows need
        encoding: pack with `valid = one_hot(rows) & valid`.
    """
    mask = caption_mask(valid, count)
    logits = jnp.where(mask, jnp.log(jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)), -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def single_weights(key: jax.Array, valid: jax.Array, count: jax.Array) -> jax.Array:
    """One-hot [B, m] float32 weights on the row `sample_single(key, ...)` draws (all 0 without a valid caption)."""
    mask = caption_mask(valid, count)
    rows = sample_single(key, valid, count)
    return jax.nn.one_hot(rows, mask.shape[-1], dtype=jnp.float32) * jnp.any(mask, -1, keepdims=True)


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax over the last axis restricted to `mask`: 0 off the mask, all 0 on a row with no True entry.

    Masked entries become -inf before the exponential (never exp of a large number then a `where`), so their
    gradient is 0, not the NaN of 0 * inf.
    """
    z = jnp.where(mask, logits, -jnp.inf)
    top = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    e = jnp.exp(z - jnp.where(jnp.isfinite(top), top, 0.0))
    return _normalize_rows(e)


class AttentionWeights(nnx.Module):
    """WFA's learned caption weights: additive attention a_j = v^T tanh(W h_j + b), w = softmax(a / tau + log count).

    v starts at zero, so the untrained module gives exactly `mean`'s weights and learns from there.
    """

    def __init__(self, dim: int, *, hidden_dim: int | None = None, temperature: float = 1.0,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        """Builds the scorer.

        Args:
            dim: caption feature width D (the text tower's embed_dim).
            hidden_dim: width of W (default D).
            temperature: tau of the softmax (fixed).
            param_dtype: parameter dtype; the scores are computed in float32 (m per image: negligible cost).
            rngs: initialisation randomness.
        """
        if temperature <= 0:
            raise ValueError(f"model.aggregation.temperature: must be positive, got {temperature}")
        hidden_dim = dim if hidden_dim is None else hidden_dim
        self.temperature = float(temperature)
        self.hidden = nnx.Linear(dim, hidden_dim, dtype=jnp.float32, param_dtype=param_dtype,
                                 kernel_init=nnx.initializers.lecun_normal(), rngs=rngs)
        self.score = nnx.Linear(hidden_dim, 1, use_bias=False, dtype=jnp.float32, param_dtype=param_dtype,
                                kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def scores(self, feats: jax.Array) -> jax.Array:
        """The raw scores a [B, m] of caption features [B, m, D]."""
        return self.score(jnp.tanh(self.hidden(feats.astype(jnp.float32))))[..., 0]

    def __call__(self, feats: jax.Array, valid: jax.Array, count: jax.Array) -> jax.Array:
        """[B, m] float32 weights of caption features [B, m, D]; folded rows count `count` times."""
        mask = caption_mask(valid, count)
        log_count = jnp.log(jnp.maximum(jnp.asarray(count, jnp.float32), 1.0))
        return masked_softmax(self.scores(feats) / self.temperature + log_count, mask)


def aggregate(feats: jax.Array, weights: jax.Array) -> jax.Array:
    """t = normalize(sum_j w_j h_j): [B, m, D] features and [B, m] weights to [B, D] float32 unit vectors.

    Rows of weight 0 are zeroed first, so whatever an unencoded or padding row holds never reaches t; an image with
    no weight gets the zero vector (with a zero, not NaN, gradient).
    """
    feats = jnp.where(weights[..., None] != 0, feats.astype(jnp.float32), 0.0)
    t = jnp.einsum("bm,bmd->bd", weights.astype(jnp.float32), feats)
    # F.normalize(eps=1e-12) without a square root at 0, whose gradient would be NaN.
    return t * jax.lax.rsqrt(jnp.maximum(jnp.sum(t * t, axis=-1, keepdims=True), 1e-24))


class CaptionAggregator(nnx.Module):
    """One text feature per image from its caption features, by one of `MODES` (parameters only for attention)."""

    def __init__(self, mode: str, dim: int, *, hidden_dim: int | None = None, temperature: float = 1.0,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        """Builds the aggregator.

        Args:
            mode: one of `MODES`.
            dim: caption feature width D.
            hidden_dim, temperature, param_dtype: of `AttentionWeights` (mode "attention" only).
            rngs: initialisation randomness.
        """
        if mode not in MODES:
            raise ValueError(f"model.aggregation.mode: unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.mode = mode
        self.attention = (AttentionWeights(dim, hidden_dim=hidden_dim, temperature=temperature,
                                           param_dtype=param_dtype, rngs=rngs) if mode == "attention" else None)

    def weights(self, feats: jax.Array, valid: jax.Array, count: jax.Array, caption_weights: jax.Array | None = None,
                *, key: jax.Array | None = None) -> jax.Array:
        """[B, m] float32 weights of this mode (see `__call__` for the arguments)."""
        if self.mode == "single":
            if key is None:
                raise ValueError("CaptionAggregator: mode 'single' draws a caption per image and needs `key`")
            return single_weights(key, valid, count)
        if self.mode == "mean":
            return mean_weights(valid, count)
        if self.mode == "bleu":
            if caption_weights is None:
                raise ValueError("CaptionAggregator: mode 'bleu' needs the batch's `caption_weights`")
            return bleu_weights(caption_mask(valid, count), caption_weights)
        return self.attention(feats, valid, count)

    def __call__(self, feats: jax.Array, valid: jax.Array, count: jax.Array, caption_weights: jax.Array | None = None,
                 *, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Aggregates caption features.

        Args:
            feats: [B, m, D] caption features (`unpack_features` of the text tower's output).
            valid: [B, m] bool; after `pack_captions`, pass `valid & (slot_index >= 0)` so dropped rows count 0.
            count: [B, m] int, original captions per row (0 on padding).
            caption_weights: [B, m] float BLEU-uniqueness weights (mode "bleu").
            key: PRNG key (mode "single"; e.g. fold_in(rng, step)).

        Returns:
            (text [B, D] float32 unit vectors, weights [B, m] float32 for logging).
        """
        w = self.weights(feats, valid, count, caption_weights, key=key)
        return aggregate(feats, w), w


def pack_captions(ids: jax.Array, valid: jax.Array, capacity: int, *,
                  priority: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Packs the valid caption rows of a batch into a flat [capacity, L] buffer for the text tower.

    When more than `capacity` rows are valid, the lowest-priority ones are dropped (ties: later rows first). Kept
    rows keep their batch (row-major) order in the buffer, so with the batch and the buffer both sharded over
    `data`, a device's captions mostly come from its own images. Jit with `capacity` static.

    Args:
        ids: [B, m, L] token ids.
        valid: [B, m] bool.
        capacity: C, the static number of rows the text tower encodes per step.
        priority: optional [B, m] float, higher kept first: the mode's weights (`mean_weights`, the BLEU weights)
            drop the captions that weigh least, and an image's only caption (weight 1) goes last. None: the rank of
            the row within its image, so every image keeps its first caption before any keeps a second.

    Returns:
        flat_ids: [C, L] the kept rows, then pad (0) rows.
        slot_index: [B, m] int32 row of `flat_ids` holding caption (b, j), -1 where invalid or dropped.
        n_overflow: int32 scalar, the number of valid rows dropped.
    """
    b, m, length = ids.shape
    if capacity < 1:
        raise ValueError(f"pack_captions: capacity must be positive, got {capacity}")
    v = jnp.asarray(valid, bool).reshape(b * m)
    if priority is None:
        priority = -jnp.broadcast_to(jnp.arange(m, dtype=jnp.float32), (b, m))
    order_key = jnp.where(v, -jnp.asarray(priority, jnp.float32).reshape(b * m), jnp.inf)
    order = jnp.argsort(order_key, stable=True)
    rank = jnp.zeros(b * m, jnp.int32).at[order].set(jnp.arange(b * m, dtype=jnp.int32))
    kept = v & (rank < capacity)
    position = jnp.cumsum(kept, dtype=jnp.int32) - 1
    slot = jnp.where(kept, position, -1)
    flat_ids = jnp.zeros((capacity, length), ids.dtype).at[jnp.where(kept, position, capacity)].set(
        ids.reshape(b * m, length), mode="drop")
    n_overflow = (jnp.sum(v, dtype=jnp.int32) - jnp.sum(kept, dtype=jnp.int32)).astype(jnp.int32)
    return flat_ids, slot.reshape(b, m), n_overflow


def unpack_features(flat_feats: jax.Array, slot_index: jax.Array, B: int, m: int) -> jax.Array:  # noqa: N803
    """Scatters the features [C, D] of packed captions back to [B, m, D]; zeros where `slot_index` is -1.

    Args:
        flat_feats: [C, D] text-tower output on `flat_ids`.
        slot_index: [B, m] (or [B * m]) from `pack_captions`.
        B: batch size.
        m: caption rows per image.

    Returns:
        [B, m, D] features in flat_feats' dtype.
    """
    slot = jnp.asarray(slot_index).reshape(B, m)
    gathered = jnp.take(flat_feats, jnp.maximum(slot, 0), axis=0)
    return jnp.where((slot >= 0)[..., None], gathered, jnp.zeros((), flat_feats.dtype))
