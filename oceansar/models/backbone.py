"""The backbone a variant string names: the ViT ("S/16") or the ResNet ("R50"), built and described alike.

Everything outside `oceansar.models` that needs a backbone's shape (the spec's checks, FLOP counts, the release's
config, fine-tuning's layer-wise decay) reads `describe(variant)`, and every model builds its backbone with
`make_backbone`, so a new backbone family is added here and in its own module.
"""
from __future__ import annotations

from flax import nnx

from oceansar.models import resnet, vit


def describe(variant: str) -> dict:
    """The architecture of a variant: `kind` ("vit" or "resnet"), feature `width`, `depth` (blocks) and `patch`
    (the ViT's patch size; the ResNet's output stride, 32), plus the family's own fields (`vit.parse_variant`,
    `resnet.parse_variant`).

    Raises:
        ValueError: naming `model.variant` when the string names no known backbone.
    """
    if resnet.is_resnet(variant):
        return resnet.parse_variant(variant) | {"kind": "resnet", "patch": resnet.STRIDE}
    try:
        return vit.parse_variant(variant) | {"kind": "vit"}
    except ValueError:
        raise ValueError(f"model.variant: unknown variant {variant!r}; known: ViTs {', '.join(vit.VARIANTS)} (any "
                         f"'<size>/<patch>'), ResNets {', '.join(resnet.VARIANTS)}") from None


def make_backbone(variant: str, *, img_size: int, in_channels: int, drop_path_rate: float = 0.0,
                  layer_scale: float = 0.0, remat: str = "none", attention: str = "xla", dtype, param_dtype,
                  rngs: nnx.Rngs) -> vit.ViT | resnet.ResNet:
    """The backbone of `variant`; the ViT-only arguments must keep their defaults for a ResNet.

    Raises:
        ValueError: naming the `model.*` field a ResNet cannot honour (stochastic depth, LayerScale, remat,
            attention).
    """
    if describe(variant)["kind"] == "vit":
        return vit.ViT(variant, img_size=img_size, in_channels=in_channels, drop_path_rate=drop_path_rate,
                       layer_scale=layer_scale, remat=remat, attention=attention, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
    for field, value, default in (("drop_path_rate", drop_path_rate, 0.0), ("layer_scale", layer_scale, 0.0),
                                  ("remat", remat, "none"), ("attention", attention, "xla")):
        if value != default:
            raise ValueError(f"model.{field}: {value!r} is a ViT option; the ResNet {variant!r} takes {default!r}")
    return resnet.ResNet(variant, in_channels=in_channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
