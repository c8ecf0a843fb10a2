"""ResNet backbone (Flax NNX) in timm's `resnet50` layout: OceanSAR-1's convolutional baseline.

The bottleneck ResNet of arXiv 1512.03385 as torchvision and timm build it ("v1.5": the stride sits on the 3x3
convolution): a 7x7/2 stem convolution, batch norm, ReLU and a 3x3/2 max pool, four stages of bottleneck blocks
(1x1 -> 3x3 -> 1x1 with 4x expansion, a 1x1 projection shortcut where the shape changes), global average pooling.
Module and parameter names follow timm's (`conv1`, `bn1`, `layer1.0.conv2`, `layer2.0.downsample.0`, ...), so
`oceansar.models.resnet_layout` maps them to a torch state dict one to one.

Batch norm keeps running statistics (`nnx.BatchStat`): with `use_running_average=False` a call normalises by
the batch's statistics and updates the running ones in place (under `jax.jit` over a batch sharded on `data` the
batch statistics are the global batch's, i.e. synchronised batch norm); with True it normalises by the running
ones (evaluation, embedding, a released network).

Variants: "R50" and "R26" (timm's `resnet50` and `resnet26`), and "Rmu", a test-only toy of the same
structure (one block per stage, bottleneck widths 8-64). The backbone returns the pooled feature as "cls" and the last
stage's feature map as "patch" tokens, so the features consumers read work for both backbones.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

# Blocks per stage, the stages' bottleneck widths and the stem width of each variant (timm's resnet26/50; timm's
# plain stem is always 64 wide, so the toy's is too).
_SIZES: dict[str, dict] = {
    "mu": dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem=64),
    "26": dict(layers=(2, 2, 2, 2), channels=(64, 128, 256, 512), stem=64),
    "50": dict(layers=(3, 4, 6, 3), channels=(64, 128, 256, 512), stem=64),
}
VARIANTS = tuple(f"R{size}" for size in _SIZES)
EXPANSION = 4
# The stem and three stride-2 stages: a crop of size s gives an (s / 32) x (s / 32) final feature map.
STRIDE = 32
# torch's BatchNorm2d momentum 0.1 on the new statistics, i.e. 0.9 on the running ones; its epsilon.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# timm's ResNet init: He-normal (fan_out) convolutions, BN gains 1 (the last of each block 0: `zero_init_last`).
_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def is_resnet(variant: str) -> bool:
    """True for a ResNet variant string ("R50"), False for anything else (the ViT's "<size>/<patch>")."""
    return isinstance(variant, str) and variant.startswith("R") and "/" not in variant


def parse_variant(variant: str) -> dict:
    """Blocks per stage, channels, stem width, feature width and block count of a ResNet variant string.

    Raises:
        ValueError: naming `model.variant` when the string is not a known ResNet.
    """
    match = re.fullmatch(r"R(\w+)", variant) if isinstance(variant, str) else None
    if match is None or match.group(1) not in _SIZES:
        raise ValueError(f"model.variant: unknown ResNet {variant!r}; known: {', '.join(VARIANTS)}")
    cfg = dict(_SIZES[match.group(1)])
    return cfg | dict(width=cfg["channels"][-1] * EXPANSION, depth=sum(cfg["layers"]))


class _Norm(nnx.BatchNorm):
    """timm's BatchNorm2d: epsilon 1e-5, momentum 0.1 (torch's convention), statistics in float32."""

    def __init__(self, features: int, *, zero: bool = False, dtype, param_dtype, rngs: nnx.Rngs):
        super().__init__(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, param_dtype=param_dtype,
                         scale_init=nnx.initializers.zeros if zero else nnx.initializers.ones, rngs=rngs)


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, *, dtype, param_dtype, rngs) -> nnx.Conv:
    pad = (k - 1) // 2  # torch's symmetric padding (flax's "SAME" pads stride-2 convolutions asymmetrically)
    return nnx.Conv(c_in, c_out, (k, k), (stride, stride), padding=((pad, pad), (pad, pad)), use_bias=False,
                    kernel_init=_CONV_INIT, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4) with batch norm, added to the (projected) input, then ReLU."""

    def __init__(self, c_in: int, planes: int, stride: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        c_out = planes * EXPANSION
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1, self.bn1 = _conv(c_in, planes, 1, **kw), _Norm(planes, **kw)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride, **kw), _Norm(planes, **kw)
        self.conv3, self.bn3 = _conv(planes, c_out, 1, **kw), _Norm(c_out, zero=True, **kw)
        # timm's `downsample` is an nn.Sequential(conv, bn): indices 0 and 1 in its state dict.
        self.downsample = (nnx.List([_conv(c_in, c_out, 1, stride, **kw), _Norm(c_out, **kw)])
                           if stride != 1 or c_in != c_out else None)

    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average))
        y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average))
        y = self.bn3(self.conv3(y), use_running_average)
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x), use_running_average)
        return jax.nn.relu(y + shortcut)


class ResNet(nnx.Module):
    """Bottleneck ResNet backbone (no classifier), timm's module names."""

    def __init__(self, variant: str, *, in_channels: int = 1, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        """Builds the backbone.

        Args:
            variant: "R50", "R26" or "Rmu" (see `VARIANTS`).
            in_channels: input bands (1 for VV SAR).
            dtype: compute dtype (bfloat16 on GPU/TPU); batch statistics and outputs are float32.
            param_dtype: parameter dtype.
            rngs: initialisation randomness.
        """
        cfg = parse_variant(variant)
        self.variant = variant
        self.width = cfg["width"]
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1, self.bn1 = _conv(in_channels, cfg["stem"], 7, 2, **kw), _Norm(cfg["stem"], **kw)
        c_in = cfg["stem"]
        for i, (blocks, planes) in enumerate(zip(cfg["layers"], cfg["channels"])):
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(c_in, planes, 2 if i > 0 and j == 0 else 1, **kw))
                c_in = planes * EXPANSION
            setattr(self, f"layer{i + 1}", nnx.List(stage))
        self.depth = cfg["depth"]

    @property
    def embed_dim(self) -> int:
        """Width D of the pooled ("cls") and feature-map ("patch") features."""
        return self.width

    def stages(self) -> list[nnx.List]:
        """The four stages' blocks, in order."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
                 masks: jax.Array | None = None, use_running_average: bool | None = None) -> dict[str, jax.Array]:
        """Runs the backbone.

        Args:
            x: [B, H, W, C] images.
            train: the student's call; batch norm then normalises by batch statistics and updates its running ones.
            rngs: unused (the ResNet has no stochastic layer); accepted for the ViT's signature.
            masks: must be None: a ResNet has no patch tokens to mask (iBOT needs a ViT).
            use_running_average: overrides `not train` (DINO's teacher normalises by its batch statistics and
                keeps running ones of its own while it builds targets).

        Returns:
            {"cls": [B, D] globally average-pooled features, "patch": [B, h*w, D] the last stage's feature map},
            float32.
        """
        del rngs
        if masks is not None:
            raise ValueError("ResNet: patch masks (iBOT) need a ViT backbone")
        if x.ndim != 4:
            raise ValueError(f"ResNet input must be [B, H, W, C], got shape {x.shape}")
        running = (not train) if use_running_average is None else use_running_average
        y = jax.nn.relu(self.bn1(self.conv1(x.astype(self.dtype)), running))
        y = nnx.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage in self.stages():
            for block in stage:
                y = block(y, running)
        y = y.astype(jnp.float32)
        b, h, w, d = y.shape
        return {"cls": jnp.mean(y, axis=(1, 2)), "patch": y.reshape(b, h * w, d)}
