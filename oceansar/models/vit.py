"""Vision Transformer backbone (Flax NNX) named by big_vision-style variant strings ("S/16", "B/8").

The ViT here is the DINO one: patch embedding, a learned CLS token, learned position embeddings resized on the fly
to the input's patch grid (so one model sees 224 px global and 96 px local crops), pre-norm blocks with stochastic
depth, optional LayerScale (DINOv2; arXiv 2103.17239), and a final LayerNorm. An optional boolean patch mask swaps
patch embeddings for a learned mask token (iBOT).
Heads, losses and augmentation live elsewhere; this module knows nothing about crops or objectives.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Width, depth, heads and MLP width of each model size (ViT paper and DeiT; "mu" is a test-only toy size).
_SIZES: dict[str, dict[str, int]] = {
    "mu": dict(width=32, depth=2, heads=2, mlp_dim=128),
    "Ti": dict(width=192, depth=12, heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, heads=16, mlp_dim=4096),
}

VARIANTS: dict[str, dict[str, int]] = {
    f"{size}/{patch}": dict(_SIZES[size], patch=patch)
    for size, patch in [("mu", 8), ("mu", 4), ("Ti", 8), ("Ti", 16), ("S", 8), ("S", 16), ("B", 8), ("B", 16),
                        ("L", 16)]
}

_INIT = nnx.initializers.truncated_normal(stddev=0.02)

# What a block keeps for its backward pass (`model.remat`): everything, its matmul outputs, or its input alone.
REMAT_POLICIES = {"none": None, "dots_saveable": jax.checkpoint_policies.dots_saveable, "full": None}
# `jax.nn.dot_product_attention` implementations (`model.attention`): XLA's, which materialises the [T, T]
# probabilities, or cuDNN's flash kernel (arXiv 2307.08691; CUDA GPUs, bfloat16/float16, head dim a multiple of 8).
ATTENTION = ("xla", "cudnn")


def parse_variant(variant: str) -> dict[str, int]:
    """Returns width, depth, heads, mlp_dim and patch of a variant string "<size>/<patch>".

    Any positive patch size is accepted for a known size (e.g. "S/14"); `VARIANTS` lists the usual ones.

    Raises:
        ValueError: naming `model.variant` when the string is not "<size>/<patch>" with a known size.
    """
    match = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant) if isinstance(variant, str) else None
    if match is None or match.group(1) not in _SIZES or int(match.group(2)) < 1:
        raise ValueError(
            f"model.variant: unknown variant {variant!r}; known: {', '.join(VARIANTS)} "
            f"(any '<size>/<patch>' with size in {', '.join(_SIZES)})")
    return dict(_SIZES[match.group(1)], patch=int(match.group(2)))


def drop_path(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Stochastic depth: zeroes a residual branch per sample with probability `rate`, rescaling survivors."""
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(key, keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (bias on, as in DINO's `qkv_bias=True`)."""

    def __init__(self, dim: int, heads: int, *, implementation: str = "xla", dtype, param_dtype, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"model.variant: width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.implementation = implementation
        self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, param_dtype=param_dtype, kernel_init=_INIT, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, dtype=dtype, param_dtype=param_dtype, kernel_init=_INIT, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Attends over the T tokens of x [B, T, D].

        Args:
            x: [B, T, D] tokens.
            mask: optional bool, broadcastable to [B, heads, T, T], True where query t may attend to key s (the
                text tower's causal + key-padding mask). Every query row needs one True entry. None: all pairs.

        Returns:
            [B, T, D] in the compute dtype.
        """
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.heads, d // self.heads), 3, axis=2)
        # JAX (0.10) never picks cuDNN's flash kernel by itself: `implementation` asks for it. A boolean mask
        # (the text tower's) stays on XLA's, which takes any mask.
        out = jax.nn.dot_product_attention(q, k, v, mask=mask,
                                           implementation="xla" if mask is not None else self.implementation)
        return self.proj(out.reshape(b, t, d))


class Block(nnx.Module):
    """Pre-norm transformer block: x + DropPath(ls1 * Attn(LN(x))), then x + DropPath(ls2 * MLP(LN(x))).

    The LayerScale vectors `ls1`, `ls2` ([D], DINOv2's and timm's `LayerScale`) exist only when `layer_scale > 0`;
    without them the block's parameters are exactly those of a DINO block.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, drop_path_rate: float, *, layer_scale: float = 0.0,
                 attention: str = "xla", dtype, param_dtype, rngs: nnx.Rngs):
        self.drop_path_rate = float(drop_path_rate)
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn = Attention(dim, heads, implementation=attention, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(dim, mlp_dim, dtype=dtype, param_dtype=param_dtype, kernel_init=_INIT, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_dim, dim, dtype=dtype, param_dtype=param_dtype, kernel_init=_INIT, rngs=rngs)
        # None rather than a unit vector when off, so param trees (and checkpoints) of LayerScale-free models
        # keep their structure.
        self.ls1 = nnx.Param(jnp.full((dim,), layer_scale, param_dtype)) if layer_scale > 0 else None
        self.ls2 = nnx.Param(jnp.full((dim,), layer_scale, param_dtype)) if layer_scale > 0 else None

    def __call__(self, x: jax.Array, drop_keys: tuple[jax.Array, jax.Array] | None,
                 mask: jax.Array | None = None) -> jax.Array:
        """One block on x [B, T, D]; `drop_keys` (two keys) enables stochastic depth, `mask` goes to `Attention`."""
        y = self.attn(self.norm1(x), mask)
        if self.ls1 is not None:
            y = y * self.ls1[...].astype(y.dtype)
        if drop_keys is not None:
            y = drop_path(y, self.drop_path_rate, drop_keys[0])
        x = x + y
        # Exact (erf) GELU, as torch.nn.GELU in the reference implementation.
        y = self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
        if self.ls2 is not None:
            y = y * self.ls2[...].astype(y.dtype)
        if drop_keys is not None:
            y = drop_path(y, self.drop_path_rate, drop_keys[1])
        return x + y


class ViT(nnx.Module):
    """DINO Vision Transformer backbone.

    Attributes:
        patch_embed: `nnx.Conv` with kernel = stride = patch size.
        cls_token: [1, 1, D]; pos_embed: [1, 1 + (img_size // patch)**2, D]; mask_token: [1, D] (iBOT, zeros).
        blocks: `nnx.List` of `Block` (with `ls1`, `ls2` [D] when `layer_scale > 0`); norm: final LayerNorm.
    """

    def __init__(self, variant: str, *, img_size: int, in_channels: int = 1, drop_path_rate: float = 0.0,
                 layer_scale: float = 0.0, remat: str = "none", attention: str = "xla", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        """Builds the backbone.

        Args:
            variant: "<size>/<patch>", e.g. "S/16" (see `VARIANTS`).
            img_size: the training resolution that sets the position-embedding grid (img_size // patch per side).
            in_channels: input bands (1 for VV SAR).
            drop_path_rate: stochastic-depth rate of the last block; block i uses rate * i / (depth - 1).
            layer_scale: 0 for none (DINO); > 0 adds LayerScale (arXiv 2103.17239) initialised to this value to
                both branches of every block, as DINOv2 (1e-5).
            remat: rematerialisation of each block in the backward pass: "none", "dots_saveable" (keep the
                matmul outputs, recompute the rest) or "full" (keep only each block's input).
            attention: `jax.nn.dot_product_attention`'s implementation, "xla" or "cudnn" (see `ATTENTION`).
            dtype: compute dtype (bfloat16 on GPU/TPU); outputs are returned in float32.
            param_dtype: parameter dtype.
            rngs: initialisation randomness.
        """
        cfg = parse_variant(variant)
        if img_size % cfg["patch"]:
            raise ValueError(f"model.img_size: {img_size} is not a multiple of the patch size {cfg['patch']} "
                             f"of variant {variant!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate: must lie in [0, 1), got {drop_path_rate}")
        if not layer_scale >= 0.0:
            raise ValueError(f"model.layer_scale: must be >= 0 (0 = no LayerScale), got {layer_scale}")
        if remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat: {remat!r} is not one of {tuple(REMAT_POLICIES)}")
        if attention not in ATTENTION:
            raise ValueError(f"model.attention: {attention!r} is not one of {ATTENTION}")
        self.remat = remat
        self.variant = variant
        self.patch = cfg["patch"]
        self.grid = img_size // cfg["patch"]
        self.width = cfg["width"]
        self.dtype = dtype
        self.patch_embed = nnx.Conv(in_channels, cfg["width"], (self.patch, self.patch), (self.patch, self.patch),
                                    padding="VALID", dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cls_token = nnx.Param(_INIT(rngs.params(), (1, 1, cfg["width"]), param_dtype))
        self.pos_embed = nnx.Param(_INIT(rngs.params(), (1, 1 + self.grid**2, cfg["width"]), param_dtype))
        self.mask_token = nnx.Param(jnp.zeros((1, cfg["width"]), param_dtype))
        rates = np.linspace(0.0, drop_path_rate, cfg["depth"]).tolist()
        self.blocks = nnx.List([
            Block(cfg["width"], cfg["heads"], cfg["mlp_dim"], rate, layer_scale=layer_scale, attention=attention,
                  dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for rate in rates
        ])
        self.norm = nnx.LayerNorm(cfg["width"], epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    @property
    def embed_dim(self) -> int:
        """Width D of the CLS and patch features."""
        return self.width

    def _pos_embed(self, h: int, w: int) -> jax.Array:
        """Position embeddings for an h x w patch grid: the learned grid resized bicubically, CLS entry kept."""
        pos = self.pos_embed[...]
        if (h, w) == (self.grid, self.grid):
            return pos
        cls_pos, grid_pos = pos[:, :1], pos[0, 1:].reshape(self.grid, self.grid, -1)
        # antialias off: DINO's F.interpolate(mode="bicubic") does not low-pass when shrinking.
        grid_pos = jax.image.resize(grid_pos.astype(jnp.float32), (h, w, grid_pos.shape[-1]), "bicubic",
                                    antialias=False).astype(pos.dtype)
        return jnp.concatenate([cls_pos, grid_pos.reshape(1, h * w, -1)], axis=1)

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
                 masks: jax.Array | None = None, use_running_average: bool | None = None) -> dict[str, jax.Array]:
        """Runs the backbone.

        Args:
            x: [B, H, W, C] images; H and W multiples of the patch size (any such size: positions are resized).
            train: enables stochastic depth (needs `rngs` when drop_path_rate > 0).
            rngs: randomness for stochastic depth (its `dropout` stream, else `default`).
            masks: optional [B, N] bool, True where a patch embedding is replaced by the mask token.
            use_running_average: ignored (the ViT has no batch norm); the ResNet's signature.

        Returns:
            {"cls": [B, D], "patch": [B, N, D]}, both after the final LayerNorm, float32.
        """
        del use_running_average
        if x.ndim != 4:
            raise ValueError(f"ViT input must be [B, H, W, C], got shape {x.shape}")
        b, hh, ww, _ = x.shape
        if hh % self.patch or ww % self.patch:
            raise ValueError(f"ViT input {hh}x{ww} is not a multiple of the patch size {self.patch}")
        h, w = hh // self.patch, ww // self.patch
        tokens = self.patch_embed(x.astype(self.dtype)).reshape(b, h * w, self.width)
        if masks is not None:
            if masks.shape != (b, h * w):
                raise ValueError(f"ViT masks must be [B, N] = {(b, h * w)}, got {masks.shape}")
            tokens = jnp.where(masks[..., None], self.mask_token[...].astype(tokens.dtype), tokens)
        cls = jnp.broadcast_to(self.cls_token[...].astype(tokens.dtype), (b, 1, self.width))
        tokens = jnp.concatenate([cls, tokens], axis=1) + self._pos_embed(h, w).astype(tokens.dtype)
        stochastic = train and any(blk.drop_path_rate > 0.0 for blk in self.blocks)
        if stochastic and rngs is None:
            raise ValueError("ViT: train=True with drop_path_rate > 0 needs `rngs` for stochastic depth")
        call = (lambda blk, x, keys: blk(x, keys)) if self.remat == "none" else nnx.remat(
            lambda blk, x, keys: blk(x, keys), policy=REMAT_POLICIES[self.remat])
        for blk in self.blocks:
            keys = None
            if stochastic and blk.drop_path_rate > 0.0:
                keys = tuple(jax.random.split(rngs.dropout(), 2))
            tokens = call(blk, tokens, keys)
        tokens = self.norm(tokens).astype(jnp.float32)
        return {"cls": tokens[:, 0], "patch": tokens[:, 1:]}
