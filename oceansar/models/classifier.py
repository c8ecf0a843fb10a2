"""A backbone with a linear head on its CLS token: the network `--mode=finetune` trains.

The head is timm's (a ViT's `head.weight`, `head.bias` on the final-norm CLS token, `global_pool="token"`; a
ResNet's `fc` on the average-pooled features), so a fine-tuned network exports in the same layout as the backbone
alone. For a regression the head's outputs are the standardised
targets during training; `release` folds the target scale into the exported head, which then predicts in physical
units.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from oceansar.models.backbone import make_backbone


class Classifier(nnx.Module):
    """Backbone (`models.backbone`) + `nnx.Linear(D, outputs)` on its CLS token (a ResNet's pooled features),
    zero-initialised as in MAE's and DeiT's fine-tuning."""

    def __init__(self, variant: str, *, img_size: int, in_channels: int, outputs: int, layer_scale: float = 0.0,
                 drop_path_rate: float = 0.0, rngs: nnx.Rngs):
        self.backbone = make_backbone(variant, img_size=img_size, in_channels=in_channels, layer_scale=layer_scale,
                                      drop_path_rate=drop_path_rate, dtype=jnp.float32, param_dtype=jnp.float32,
                                      rngs=rngs)
        self.head = nnx.Linear(self.backbone.embed_dim, outputs, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
                 frozen: bool = False) -> jax.Array:
        """[B, H, W, C] standardised images -> [B, outputs] float32 logits (or standardised targets).

        `frozen`: no gradient reaches the backbone (linear probing: its backward pass is never built).
        """
        cls = self.backbone(x, train=train, rngs=rngs)["cls"]
        if frozen:
            cls = jax.lax.stop_gradient(cls)
        return self.head(cls).astype(jnp.float32)
