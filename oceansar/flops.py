"""FLOP accounting for DINO pretraining: analytic matmul FLOPs of the ViT (or ResNet), the DINO head and the
multi-crop, and an exact count of the matmul FLOPs of any traced JAX program.

Conventions: 2 FLOPs per multiply-accumulate, and only matrix multiplies and convolutions count (LayerNorm, softmax,
GELU, the optimizer and other elementwise work do not): the usual "model FLOPs" of MFU. The analytic formulas follow
the modules in `oceansar.models` (pre-norm ViT with fused qkv and a CLS token, DINO head MLP + prototype layer) and
`oceansar.augment` (separable resampling with the blur folded in); `jaxpr_matmul_flops` checks them by walking a
jaxpr's `dot_general` and `conv_general_dilated` equations. `PEAK_TFLOPS` holds the accelerators' datasheet peaks
that MFU divides by. Nothing here times or touches a device: `benchmarks/train_step.py` measures.
"""
from __future__ import annotations

import math
from typing import Any

from jax.extend import core as jex_core

from oceansar.models import resnet
from oceansar.models.backbone import describe
from oceansar.models.vit import parse_variant


# Dense (no sparsity) bf16 peaks per device in TFLOP/s, from the vendors' datasheets. The first key contained in the
# lower-cased `jax.Device.device_kind` wins, so specific names precede their prefixes.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.0),      # SXM: "NVIDIA H100 80GB HBM3"
    ("gh200", 989.0),
    ("h200", 989.0),
    ("a100", 312.0),
    ("tpu v4", 275.0),
    ("tpu v5 lite", 197.0),
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v5", 459.0),    # v5p reports "TPU v5"
    ("tpu v6 lite", 918.0),
)


def peak_tflops(device_kind: str) -> float | None:
    """The dense bf16 peak of one device named by its `device_kind`, or None when unknown (CPUs)."""
    kind = device_kind.lower()
    for key, peak in PEAK_TFLOPS:
        if key in kind:
            return peak
    return None


def vit_forward_flops(variant: str, img_size: int, *, in_channels: int) -> int:
    """Matmul FLOPs of one ViT backbone forward on one img_size x img_size image.

    With N = (img_size / patch)^2 patches, T = N + 1 tokens, width D, MLP width M and L blocks:
    2 * [N p^2 C D + L (T (4 D^2 + 2 D M) + 2 T^2 D)], where 4 D^2 is qkv (3 D^2) plus the output projection, 2 D M
    the MLP, and 2 T^2 D the attention scores QK^T and the weighted sum AV over all heads.
    """
    v = parse_variant(variant)
    p, d, m, depth = v["patch"], v["width"], v["mlp_dim"], v["depth"]
    if img_size % p:
        raise ValueError(f"img_size {img_size} is not a multiple of the patch size {p} of {variant!r}")
    n = (img_size // p) ** 2
    t = n + 1
    patch_embed = n * p * p * in_channels * d
    per_block = t * (4 * d * d + 2 * d * m) + 2 * t * t * d
    return 2 * (patch_embed + depth * per_block)


def resnet_forward_flops(variant: str, img_size: int, *, in_channels: int) -> int:
    """Matmul FLOPs of one ResNet backbone forward on one img_size x img_size image: 2 k^2 C_in C_out H_out W_out
    summed over its convolutions (the stem, each bottleneck's three and its projection shortcut), at the spatial
    sizes torch's padding gives."""
    v = resnet.parse_variant(variant)
    out = lambda h, k, s: (h + 2 * ((k - 1) // 2) - k) // s + 1  # noqa: E731

    def conv(h, k, s, c_in, c_out):
        return 2 * k * k * c_in * c_out * out(h, k, s) ** 2, out(h, k, s)

    total, h = conv(img_size, 7, 2, in_channels, v["stem"])
    h, c = out(h, 3, 2), v["stem"]  # the max pool
    for i, (blocks, planes) in enumerate(zip(v["layers"], v["channels"])):
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            f1, _ = conv(h, 1, 1, c, planes)
            f2, h2 = conv(h, 3, stride, planes, planes)
            f3, _ = conv(h2, 1, 1, planes, planes * resnet.EXPANSION)
            projected = stride != 1 or c != planes * resnet.EXPANSION
            shortcut = conv(h, 1, stride, c, planes * resnet.EXPANSION)[0] if projected else 0
            total += f1 + f2 + f3 + shortcut
            h, c = h2, planes * resnet.EXPANSION
    return total


def backbone_forward_flops(variant: str, img_size: int, *, in_channels: int) -> int:
    """Matmul FLOPs of one backbone forward (ViT or ResNet, by its variant) on one image."""
    fn = resnet_forward_flops if describe(variant)["kind"] == "resnet" else vit_forward_flops
    return fn(variant, img_size, in_channels=in_channels)


def head_forward_flops(in_dim: int, *, hidden_dim: int, bottleneck_dim: int, out_dim: int, nlayers: int) -> int:
    """Matmul FLOPs of one DINO head forward on one feature vector: the MLP to the bottleneck, then the prototypes."""
    dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
    mlp = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return 2 * (mlp + bottleneck_dim * out_dim)


def dino_model_forward_flops(model_config: Any, img_size: int, *, nlayers: int) -> int:
    """Matmul FLOPs of one `DINOModel` forward (backbone + head on the CLS token) on one crop."""
    width = describe(model_config.variant)["width"]
    return (backbone_forward_flops(model_config.variant, img_size, in_channels=model_config.in_channels)
            + head_forward_flops(width, hidden_dim=model_config.hidden_dim,
                                 bottleneck_dim=model_config.bottleneck_dim, out_dim=model_config.out_dim,
                                 nlayers=nlayers))


DINO_STEP_FORMULA = (
    "per sample: 3 * (n_global * F(global_size) + n_local * F(local_size)) [student forward + backward, backward ~ "
    "2x forward] + n_global * F(global_size) [teacher forward]; F(s) = 2 * [N p^2 C D + L (T (4 D^2 + 2 D M) + "
    "2 T^2 D) + sum_i(d_i d_(i+1)) + Bn K] with N = (s/p)^2 patches, T = N + 1 tokens, width D, MLP width M, depth "
    "L, C input channels, head MLP dims d = [D, H, ..., H, Bn] and K prototypes; 2 FLOPs per multiply-accumulate, "
    "matmuls only (attention QK^T and AV included). With iBOT, every global crop's forward (student and teacher) also "
    "runs the patch head on k gathered patch tokens: F(global_size) + k * 2 * [sum_i(d_i d_(i+1)) + Bn K_p], K_p the "
    "patch prototypes. A ResNet's backbone term is the sum over its convolutions of 2 k^2 C_in C_out H_out W_out "
    "(`resnet_forward_flops`) in place of the ViT's")


def dino_step_flops(model_config: Any, crops_config: Any, *, nlayers: int, patch_tokens: int = 0,
                    patch_out_dim: int = 0) -> dict[str, int]:
    """Analytic model FLOPs per training sample of one DINO (or DINOv2) step (see `DINO_STEP_FORMULA`).

    Args:
        model_config: `config.model` (variant, in_channels, hidden_dim, bottleneck_dim, out_dim).
        crops_config: `config.crops` (global_size, local_size, n_global, n_local).
        nlayers: DINO head MLP depth.
        patch_tokens: iBOT: patch tokens per global crop that go through the patch head (0: no iBOT term).
        patch_out_dim: iBOT: prototypes of the patch head (the DINO head's when shared).

    Returns:
        forward FLOPs of one global and one local crop, the student's forward + backward, the teacher's forward and
        their sum, all per sample.
    """
    c = crops_config
    width = describe(model_config.variant)["width"]
    patch_head = patch_tokens * head_forward_flops(
        width, hidden_dim=model_config.hidden_dim, bottleneck_dim=model_config.bottleneck_dim,
        out_dim=patch_out_dim or model_config.out_dim, nlayers=nlayers) if patch_tokens else 0
    f_global = dino_model_forward_flops(model_config, c.global_size, nlayers=nlayers) + patch_head
    f_local = dino_model_forward_flops(model_config, c.local_size, nlayers=nlayers) if c.n_local else 0
    student_forward = c.n_global * f_global + c.n_local * f_local
    teacher = c.n_global * f_global
    return {
        "forward_global_crop": f_global,
        "forward_local_crop": f_local,
        "student_forward": student_forward,
        "student_forward_backward": 3 * student_forward,
        "teacher_forward": teacher,
        "total": 3 * student_forward + teacher,
    }


def text_forward_flops(size: str, length: int, *, embed_dim: int) -> int:
    """Matmul FLOPs of one text-tower forward on one caption of `length` tokens (padding included: the tower runs
    static shapes): 2 * [L (T (4 D^2 + 2 D M) + 2 T^2 D) + D E], T = length, the projection to the joint space E."""
    v = parse_variant(f"{size}/1")
    d, m, depth = v["width"], v["mlp_dim"], v["depth"]
    return 2 * (depth * (length * (4 * d * d + 2 * d * m) + 2 * length * length * d) + d * embed_dim)


IMAGE_TEXT_STEP_FORMULA = (
    "per sample: 3 * (F_img(global_size) + c * F_txt(L) + 2 B E) [forward + backward, backward ~ 2x forward]; F_img "
    "the ViT forward plus its projection D E, F_txt(L) = 2 [L_t (L (4 D_t^2 + 2 D_t M_t) + 2 L^2 D_t) + D_t E] on a "
    "caption of L tokens (padding included), c the captions the text tower encodes per image (B for single, "
    "text.capacity otherwise), 2 B E the [B, B] similarity row")


def image_text_step_flops(spec: Any) -> dict[str, int]:
    """Analytic model FLOPs per training sample of one image-text step (see `IMAGE_TEXT_STEP_FORMULA`)."""
    t, m = spec.text, spec.model
    width = parse_variant(m.variant)["width"]
    captions = 1 if t.aggregation == "single" else min(round(t.capacity * spec.batch_size),
                                                        spec.batch_size * t.max_captions) / spec.batch_size
    f_image = vit_forward_flops(m.variant, spec.crops.global_size, in_channels=m.in_channels) + 2 * width * t.embed_dim
    f_text = text_forward_flops(t.size, t.context_length, embed_dim=t.embed_dim)
    similarity = 2 * spec.batch_size * t.embed_dim
    forward = int(f_image + captions * f_text + similarity)
    return {"forward_image": f_image, "forward_caption": f_text, "captions_per_image": captions,
            "forward": forward, "total": 3 * forward}


def run_step_flops(spec: Any, *, nlayers: int) -> dict[str, int]:
    """The analytic FLOPs per sample of a `RunSpec`'s step: `image_text_step_flops` for an image-text run, else
    `dino_step_flops` of its model, crops and objective (the iBOT patch head when its term is on)."""
    if spec.text.enabled:
        return image_text_step_flops(spec)
    return dino_step_flops(spec.model, spec.crops, nlayers=nlayers, patch_tokens=spec.patch_tokens,
                           patch_out_dim=spec.patch_prototypes)


def multicrop_flops(crops_config: Any, *, image_size: int, in_channels: int) -> int:
    """Matmul FLOPs per sample of `oceansar.augment.multicrop` on a square image_size image.

    A size-S crop of an H x W image costs S H W C + S^2 W C multiply-accumulates (rows, then columns), plus
    S^2 (H + W) to fold the blur into the two resampling matrices when the blur radius is positive.
    """
    c = crops_config
    h = w = image_size
    total = 0
    for size, count in ((c.global_size, c.n_global), (c.local_size, c.n_local)):
        macs = size * h * w * in_channels + size * size * w * in_channels
        if min(math.ceil(3 * c.blur_sigma[1]), size - 1) > 0:
            macs += size * size * (h + w)
        total += count * macs
    return 2 * total


def _eqn_matmul_flops(eqn) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs_shape = eqn.invars[0].aval.shape
        return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[i] for i in lhs_contract)
    if name == "conv_general_dilated":
        rhs_shape = eqn.invars[1].aval.shape
        out_features = rhs_shape[eqn.params["dimension_numbers"].rhs_spec[0]]
        # Every output element sums over one kernel window of one feature group: prod(rhs) / O terms.
        return 2 * math.prod(eqn.outvars[0].aval.shape) * (math.prod(rhs_shape) // out_features)
    return 0


def _sub_jaxprs(value) -> list:
    if isinstance(value, jex_core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jex_core.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def jaxpr_matmul_flops(jaxpr) -> int:
    """Exact matmul FLOPs (2 per multiply-accumulate) of the `dot_general` and `conv_general_dilated` equations of a
    jaxpr, recursing into nested jaxprs (jit, custom_jvp/vjp, remat; `scan` bodies times their length).

    A `cond` counts its most expensive branch. `while` bodies are counted once (their trip count is not static).
    Fused kernels that are custom calls (e.g. cuDNN attention) are invisible here.

    Args:
        jaxpr: a `ClosedJaxpr` or `Jaxpr`, e.g. `jax.make_jaxpr(f)(*args)` or `jax.jit(f).trace(*args).jaxpr`.
    """
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_matmul_flops(eqn)
        if eqn.primitive.name == "cond":
            total += max(jaxpr_matmul_flops(b) for b in eqn.params["branches"])
            continue
        inner = sum(jaxpr_matmul_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
        if eqn.primitive.name == "scan":
            inner *= eqn.params["length"]
        total += inner
    return total
