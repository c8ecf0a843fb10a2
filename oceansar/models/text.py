"""Text tower of the vision-language models (CLIP, arXiv 2103.00020): captions to vectors of the joint space.

`TextTransformer` embeds token ids, adds learned position embeddings, runs the ViT's pre-norm `Block`s under a causal
+ key-padding attention mask, applies a final LayerNorm at the EOS token (the last non-pad token of a row) and
projects it linearly, without bias, to the joint embedding space. It is named by the ViT's size strings ("mu", "Ti",
"S", "B", "L"), so the two towers of a model share one vocabulary of sizes. `check_caption_ids` checks on the host
that a batch of ids follows the layout the tower relies on. Tokenisation, captioned data, the image projection,
caption aggregation (`oceansar.models.aggregation`) and the losses (`oceansar.losses.contrastive`) live elsewhere.

Why causal + key-padding attention (CLIP's choice) rather than bidirectional attention with pads masked: both make a
caption's feature independent of its padding, but under the causal mask the EOS token is the only one that has seen
the whole caption, so pooling there is CLIP's and the tower computes exactly what CLIP-family text towers compute
(RemoteCLIP, GeoRSCLIP and the WFA paper's CLIP baselines), which keeps their checkpoints loadable given a matching
size; and every query attends at least to itself, so no softmax row is ever empty, even on an all-pad row, whatever
attention implementation runs it. The key-padding part also keeps a pad that sits before a real token (a layout the
data contract forbids) from reaching that token.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oceansar.models.vit import _SIZES, Block

_INIT = nnx.initializers.truncated_normal(stddev=0.02)


def parse_size(size: str) -> dict[str, int]:
    """Width, depth, heads and mlp_dim of a model size ("mu", "Ti", "S", "B", "L"; the ViT's table).

    Raises:
        ValueError: naming `model.text.size` when the size is unknown.
    """
    if not isinstance(size, str) or size not in _SIZES:
        raise ValueError(f"model.text.size: unknown size {size!r}; known: {', '.join(_SIZES)}")
    return dict(_SIZES[size])


def eos_positions(ids: jax.Array, pad_id: int = 0) -> jax.Array:
    """Index [N] of the last non-pad token of each row of ids [N, L] (0 for an all-pad row)."""
    positions = jnp.arange(ids.shape[-1], dtype=jnp.int32)
    return jnp.max(jnp.where(ids != pad_id, positions, 0), axis=-1)


def attention_mask(ids: jax.Array, pad_id: int = 0) -> jax.Array:
    """[N, 1, L, L] bool: query t may attend key s when s <= t and s is not a pad, and always itself.

    The diagonal keeps every softmax row non-empty: an all-pad row (a padding caption slot) stays finite.
    """
    length = ids.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    mask = (causal[None] & (ids != pad_id)[:, None, :]) | jnp.eye(length, dtype=bool)[None]
    return mask[:, None]


class TextTransformer(nnx.Module):
    """CLIP-style text encoder: token + position embeddings, causal pre-norm blocks, EOS pooling, projection.

    Attributes:
        token_embed: `nnx.Embed` [vocab_size, width]; pos_embed: [context_length, width].
        blocks: `nnx.List` of the ViT's `Block`; norm: final LayerNorm; proj: `nnx.Linear` width -> embed_dim,
            no bias.
    """

    def __init__(self, size: str, *, vocab_size: int, context_length: int, embed_dim: int, pad_id: int = 0,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        """Builds the tower.

        Args:
            size: model size, e.g. "S" (see `oceansar.models.vit._SIZES`; "mu" is a test-only toy size).
            vocab_size: number of token ids (the tokenizer's, pad and special tokens included).
            context_length: the longest sequence L accepted (the position table's length).
            embed_dim: width of the joint image-text space.
            pad_id: the padding token id (0 in the data contract).
            dtype: compute dtype of the blocks (bfloat16 on GPU/TPU); outputs are float32.
            param_dtype: parameter dtype.
            rngs: initialisation randomness.
        """
        cfg = parse_size(size)
        for name, value in (("vocab_size", vocab_size), ("context_length", context_length), ("embed_dim", embed_dim)):
            if int(value) < 1:
                raise ValueError(f"model.text.{name}: must be positive, got {value}")
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"model.text.pad_id: {pad_id} is not a token id of a {vocab_size}-token vocabulary")
        self.size = size
        self.width = cfg["width"]
        self.context_length = int(context_length)
        self.embed_dim = int(embed_dim)
        self.pad_id = int(pad_id)
        self.dtype = dtype
        self.token_embed = nnx.Embed(vocab_size, self.width, dtype=dtype, param_dtype=param_dtype,
                                     embedding_init=_INIT, rngs=rngs)
        # CLIP initialises position embeddings with std 0.01 and the projection with std width**-0.5.
        self.pos_embed = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(), (context_length, self.width),
                                                                 param_dtype))
        self.blocks = nnx.List([
            Block(self.width, cfg["heads"], cfg["mlp_dim"], 0.0, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for _ in range(cfg["depth"])
        ])
        self.norm = nnx.LayerNorm(self.width, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # The projection runs in float32: one small [N, width] x [width, embed_dim] matmul, and it writes the joint
        # space where the contrastive logits are scaled by up to 100, where bf16 rounding would show.
        self.proj = nnx.Linear(self.width, embed_dim, use_bias=False, dtype=jnp.float32, param_dtype=param_dtype,
                               kernel_init=nnx.initializers.normal(self.width**-0.5), rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Encodes token ids.

        Args:
            ids: [N, L] int token ids, L <= context_length, each row BOS ... EOS then pads (all-pad rows allowed:
                their output is finite and meaningless).

        Returns:
            [N, embed_dim] float32, not normalised (aggregation and the losses normalise). A row's output does not
            depend on its padding length nor on the other rows.
        """
        if ids.ndim != 2:
            raise ValueError(f"TextTransformer input must be [N, L] token ids, got shape {ids.shape}")
        n, length = ids.shape
        if length > self.context_length:
            raise ValueError(f"TextTransformer: sequences of length {length} exceed context_length "
                             f"{self.context_length}")
        ids = ids.astype(jnp.int32)
        mask = attention_mask(ids, self.pad_id)
        tokens = self.token_embed(ids).astype(self.dtype) + self.pos_embed[:length].astype(self.dtype)
        for blk in self.blocks:
            tokens = blk(tokens, None, mask)
        pooled = tokens[jnp.arange(n), eos_positions(ids, self.pad_id)]  # [N, width]
        # LayerNorm is per token, so normalising only the pooled token equals CLIP's ln_final on all tokens.
        return self.proj(self.norm(pooled).astype(jnp.float32)).astype(jnp.float32)


def check_caption_ids(ids: np.ndarray, *, eos_id: int, pad_id: int = 0) -> None:
    """Checks on the host that ids [..., L] follow the layout the tower pools by: tokens, then only pads.

    Each row that is not all pads must end (last non-pad token) with `eos_id` and hold no pad before it; the tower
    pools at the last non-pad position, so a row breaking this would be pooled at a word, silently.

    Raises:
        ValueError: naming the first offending row.
    """
    ids = np.asarray(ids)
    flat = ids.reshape(-1, ids.shape[-1])
    real = flat != pad_id
    nonempty = real.any(-1)
    last = np.where(nonempty, flat.shape[-1] - 1 - np.argmax(real[:, ::-1], axis=-1), 0)
    holes = nonempty & (real.sum(-1) != last + 1)
    no_eos = nonempty & (flat[np.arange(len(flat)), last] != eos_id)
    for name, bad in (("a pad before its last token", holes), (f"a last token that is not EOS ({eos_id})", no_eos)):
        if bad.any():
            row = np.unravel_index(int(np.argmax(bad)), ids.shape[:-1])
            raise ValueError(f"caption ids row {tuple(int(i) for i in row)} has {name}: {flat[np.argmax(bad)]}")
