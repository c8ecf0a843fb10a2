"""DINO projection head and the backbone+head model that student and teacher each instantiate.

`DINOHead` is DINO's head: a GELU MLP to a bottleneck, L2 normalisation, then a weight-normalised linear layer with
no bias whose columns are the prototypes. `DINOModel` runs the backbone (ViT or ResNet) and the head on a stack of
crops of one resolution ([n_crops, B, H, W, C]), so the global and local stacks are two calls with two static shapes.
For iBOT (ViT only) it also runs a head on gathered patch tokens: the same head (iBOT's `shared_head`, DINOv2's
default) or a separate `ibot_head`.
Losses, centering and the teacher EMA live elsewhere.

The prototype layers' parameters live at `("head", "last_layer", ...)` and `("ibot_head", "last_layer", ...)` in a
`DINOModel`: DINO and iBOT freeze exactly these for the first epoch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from oceansar.models.backbone import make_backbone

_INIT = nnx.initializers.truncated_normal(stddev=0.02)


class WeightNormLinear(nnx.Module):
    """Linear layer without bias whose kernel columns are normalised on each call: W = g * V / ||V||_col.

    With `learn_scale=False` the gain g is fixed at 1 (DINO's `norm_last_layer=True`): no `scale` parameter exists,
    so the prototypes stay unit vectors. Otherwise g is a learnable [out] vector initialised to 1, as DINO fills
    `weight_g` with 1 after `weight_norm`.
    """

    def __init__(self, in_features: int, out_features: int, *, learn_scale: bool, dtype, param_dtype,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.kernel = nnx.Param(_INIT(rngs.params(), (in_features, out_features), param_dtype))
        self.scale = nnx.Param(jnp.ones((out_features,), param_dtype)) if learn_scale else None

    def column_scale(self) -> jax.Array:
        """g / ||V||_col, [out] float32."""
        v = self.kernel[...].astype(jnp.float32)
        # Column sums of squares as ones @ (v * v): XLA:CPU reduces over a non-minor axis ~4x slower than it runs
        # this matmul (K = 65536); HIGHEST keeps GPUs from rounding it through TF32.
        sq = jnp.matmul(jnp.ones((1, v.shape[0]), jnp.float32), v * v, precision=jax.lax.Precision.HIGHEST)
        scale = jax.lax.rsqrt(sq[0])
        if self.scale is not None:
            scale = scale * self.scale[...].astype(jnp.float32)
        return scale

    def normalized_kernel(self) -> jax.Array:
        """The effective [in, out] weight W, float32."""
        return self.kernel[...].astype(jnp.float32) * self.column_scale()

    def __call__(self, x: jax.Array) -> jax.Array:
        """x @ W as (x @ V) * (g / ||V||_col), float32.

        Scaling the logits rather than the kernel avoids materialising W (in_features x K, K up to 65536) and keeps
        XLA:CPU from fusing the normalisation into the matmul operand, which made it ~60x slower.
        """
        logits = jnp.matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                            preferred_element_type=jnp.float32)
        return logits * self.column_scale()


class DINOHead(nnx.Module):
    """MLP (GELU) -> L2-normalised bottleneck -> weight-normalised prototypes (no bias)."""

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        """Builds the head.

        Args:
            in_dim: backbone width.
            out_dim: number of prototypes K.
            hidden_dim: MLP width.
            bottleneck_dim: width of the L2-normalised bottleneck.
            nlayers: MLP depth (1 maps straight to the bottleneck).
            norm_last_layer: fix the prototype gain at 1 (True) or learn it (False, the iBOT/DINO ViT-S recipes).
            dtype: compute dtype; logits come back in float32.
            param_dtype: parameter dtype.
            rngs: initialisation randomness.
        """
        if nlayers < 1:
            raise ValueError(f"model.head.nlayers: must be >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        self.mlp = nnx.List([
            nnx.Linear(a, b, dtype=dtype, param_dtype=param_dtype, kernel_init=_INIT, rngs=rngs)
            for a, b in zip(dims[:-1], dims[1:])
        ])
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_scale=not norm_last_layer, dtype=dtype,
                                           param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [..., in_dim] features to [..., out_dim] float32 logits."""
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i < len(self.mlp) - 1:
                x = jax.nn.gelu(x, approximate=False)
        x = x.astype(jnp.float32)
        # F.normalize(dim=-1, eps=1e-12): divide by max(||x||, eps).
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        return self.last_layer(x).astype(jnp.float32)


class DINOModel(nnx.Module):
    """Backbone (ViT or ResNet, `models.backbone`) + DINO head (+ an optional separate iBOT patch head); the student
    and the teacher are two instances of it."""

    def __init__(self, variant: str, *, img_size: int, in_channels: int = 1, out_dim: int = 65536,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3, norm_last_layer: bool = True,
                 drop_path_rate: float = 0.0, layer_scale: float = 0.0, remat: str = "none", attention: str = "xla",
                 patch_out_dim: int = 0,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        """Builds backbone and heads (see `ViT`, `ResNet` and `DINOHead` for the arguments).

        Args:
            patch_out_dim: 0 runs patch tokens through the DINO head (shared); > 0 builds a separate `ibot_head`
                with that many prototypes and the DINO head's other dimensions.
        """
        self.backbone = make_backbone(variant, img_size=img_size, in_channels=in_channels,
                                      drop_path_rate=drop_path_rate, layer_scale=layer_scale, remat=remat,
                                      attention=attention, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
        head = dict(hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, nlayers=nlayers,
                    norm_last_layer=norm_last_layer, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.head = DINOHead(self.backbone.embed_dim, out_dim, **head)
        self.ibot_head = DINOHead(self.backbone.embed_dim, patch_out_dim, **head) if patch_out_dim else None
        self.out_dim = out_dim

    def __call__(self, crops: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
                 masks: jax.Array | None = None, patch_positions: jax.Array | None = None,
                 use_running_average: bool | None = None) -> dict[str, jax.Array]:
        """Runs backbone and head on a stack of same-size crops.

        Args:
            crops: [n_crops, B, H, W, C], the layout `oceansar.augment.multicrop` returns. n_crops may be 0.
            train: enables stochastic depth (student) and batch statistics in a ResNet's batch norm; the teacher
                runs with train=False.
            rngs: stochastic-depth randomness.
            masks: optional [n_crops, B, N] bool patch masks (iBOT): masked patch embeddings become the mask token.
            patch_positions: optional [n_crops, B, k] int patch indices whose tokens also go through the patch head
                (`oceansar.masking.masked_positions`); the head never runs on all N patches.
            use_running_average: a ResNet's batch norm by its running statistics (default: `not train`); DINO's
                teacher passes False (its batch statistics, as the reference's teacher in train mode).

        Returns:
            {"logits": [n_crops, B, K] float32, "cls": [n_crops, B, D] backbone CLS after the final norm}, and
            "patch_logits" [n_crops, B, k, K_patch] float32 when `patch_positions` is given.
        """
        if crops.ndim != 5:
            raise ValueError(f"DINOModel input must be [n_crops, B, H, W, C], got shape {crops.shape}")
        n, b = crops.shape[:2]
        if n == 0:
            return {"logits": jnp.zeros((0, b, self.out_dim), jnp.float32),
                    "cls": jnp.zeros((0, b, self.backbone.embed_dim), jnp.float32)}
        # Batch-major flattening keeps a batch sharded over devices contiguous per device after the reshape.
        flat = lambda a: jnp.swapaxes(a, 0, 1).reshape(b * n, *a.shape[2:])  # noqa: E731
        unflat = lambda a: jnp.swapaxes(a.reshape(b, n, *a.shape[1:]), 0, 1)  # noqa: E731
        out = self.backbone(flat(crops), train=train, rngs=rngs, masks=None if masks is None else flat(masks),
                            use_running_average=use_running_average)
        result = {"logits": unflat(self.head(out["cls"])), "cls": unflat(out["cls"])}
        if patch_positions is not None:
            tokens = jnp.take_along_axis(out["patch"], flat(patch_positions)[..., None], axis=1)  # [b n, k, D]
            head = self.ibot_head if self.ibot_head is not None else self.head
            result["patch_logits"] = unflat(head(tokens))
        return result
