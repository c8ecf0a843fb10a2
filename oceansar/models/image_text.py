"""The image-text model: the project's ViT and a text tower meeting in one joint space (CLIP, arXiv 2103.00020).

`ImageTextModel` holds the image tower (`backbone`, the same ViT a DINO run trains, so releases, embedding and the
curation features read it unchanged; `image_proj` maps its CLS to the joint space), the text tower
(`oceansar.models.text.TextTransformer`), the caption aggregator of WFA (arXiv 2505.11121;
`oceansar.models.aggregation`) and the learnable temperature (log-scale) and, for SigLIP, bias of the contrastive
loss. The step (`oceansar.train.contrastive_step`) chooses what runs; this module only builds and encodes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from oceansar.losses import contrastive
from oceansar.models.aggregation import CaptionAggregator
from oceansar.models.text import TextTransformer
from oceansar.models.vit import ViT


class ImageTextModel(nnx.Module):
    """Image tower + projection, text tower, caption aggregator and the loss's temperature (and bias)."""

    def __init__(self, variant: str, *, img_size: int, in_channels: int, text_size: str, vocab_size: int,
                 context_length: int, embed_dim: int, aggregation: str, loss: str, drop_path_rate: float = 0.0,
                 layer_scale: float = 0.0, remat: str = "none", attention: str = "xla", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        """Builds both towers.

        Args:
            variant: the image tower's ViT variant ("S/16").
            img_size, in_channels, drop_path_rate, layer_scale, remat, attention: of the ViT (the text tower's
                masked attention is XLA's).
            text_size: the text tower's size ("S"), vocab_size and context_length: its vocabulary and longest input.
            embed_dim: width of the joint space.
            aggregation: the WFA mode (`oceansar.models.aggregation.MODES`).
            loss: "infonce" (CLIP: temperature) or "siglip" (temperature and bias), which sets their initial values.
            dtype, param_dtype: compute and parameter dtypes of both towers.
            rngs: initialisation randomness.
        """
        self.backbone = ViT(variant, img_size=img_size, in_channels=in_channels, drop_path_rate=drop_path_rate,
                            layer_scale=layer_scale, remat=remat, attention=attention, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
        width = self.backbone.embed_dim
        self.image_proj = nnx.Linear(width, embed_dim, use_bias=False, dtype=jnp.float32, param_dtype=param_dtype,
                                     kernel_init=nnx.initializers.normal(width**-0.5), rngs=rngs)
        self.text = TextTransformer(text_size, vocab_size=vocab_size, context_length=context_length,
                                    embed_dim=embed_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.aggregator = CaptionAggregator(aggregation, embed_dim, param_dtype=param_dtype, rngs=rngs)
        siglip = loss == "siglip"
        self.log_scale = nnx.Param(jnp.asarray(
            contrastive.SIGLIP_INIT_LOG_SCALE if siglip else contrastive.CLIP_INIT_LOG_SCALE, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(contrastive.SIGLIP_INIT_BIAS if siglip else 0.0, jnp.float32))

    def encode_image(self, images: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """[B, H, W, C] standardised images -> [B, embed_dim] float32 joint-space features (not normalised)."""
        return self.image_proj(self.backbone(images, train=train, rngs=rngs)["cls"].astype(jnp.float32))

    def encode_text(self, ids: jax.Array) -> jax.Array:
        """[N, L] token ids -> [N, embed_dim] float32 joint-space features (not normalised)."""
        return self.text(ids)
