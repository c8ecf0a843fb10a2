"""FLOP accounting: the analytic formulas of `oceansar.flops` against exact matmul counts of traced programs.

Everything here traces (make_jaxpr / jit.trace) and never compiles, so the file runs in seconds.
"""
import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

from oceansar import augment, flops
from oceansar.models.dino_head import DINOModel


def _model_config(variant, out_dim=128, hidden_dim=64, bottleneck_dim=32):
    return ml_collections.ConfigDict(dict(variant=variant, in_channels=1, out_dim=out_dim, hidden_dim=hidden_dim,
                                          bottleneck_dim=bottleneck_dim))


def _traced_forward_flops(mc, img_size, crop_size, batch, n_crops=3):
    model = nnx.eval_shape(lambda: DINOModel(mc.variant, img_size=img_size, in_channels=mc.in_channels,
                                             out_dim=mc.out_dim, hidden_dim=mc.hidden_dim,
                                             bottleneck_dim=mc.bottleneck_dim, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    crops = jax.ShapeDtypeStruct((n_crops, batch, crop_size, crop_size, mc.in_channels), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p, rest)(x)["logits"])(params, crops)
    return flops.jaxpr_matmul_flops(jaxpr)


@pytest.mark.parametrize("variant,img_size,crop_size,head", [
    ("mu/8", 32, 32, (128, 64, 32)),
    ("mu/8", 32, 16, (128, 64, 32)),
    ("mu/4", 16, 8, (128, 64, 32)),
    ("S/16", 224, 224, (65536, 2048, 256)),
    ("S/16", 224, 96, (65536, 2048, 256)),
])
def test_model_forward_matches_traced_matmuls(variant, img_size, crop_size, head):
    # Two batch sizes cancel the per-call matmuls (prototype weight normalisation, position-embedding resize), which
    # are not per-sample model FLOPs.
    mc = _model_config(variant, *head)
    n_crops = 3
    per_crop = (_traced_forward_flops(mc, img_size, crop_size, 3, n_crops)
                - _traced_forward_flops(mc, img_size, crop_size, 1, n_crops)) / (2 * n_crops)
    assert flops.dino_model_forward_flops(mc, crop_size, nlayers=3) == per_crop


def test_vit_s16_forward_is_the_published_4_6_gmacs():
    # DeiT-S / ViT-S/16 at 224 px, 3 channels: 4.6 G multiply-accumulates (DeiT table 1).
    assert flops.vit_forward_flops("S/16", 224, in_channels=3) / 2 == pytest.approx(4.6e9, rel=0.01)


def test_multicrop_matches_traced_matmuls():
    from configs import default
    from oceansar.spec import build

    fields = dict(default.get_config().crops.to_dict(), global_size=16, local_size=8, n_local=3, blur_sigma=(0.1, 1.0))
    spec = build(augment.MultiCropSpec, fields, "crops")
    crops = ml_collections.ConfigDict(dict(global_size=16, local_size=8, n_global=2, n_local=3,
                                           blur_sigma=(0.1, 1.0)))
    images = jax.ShapeDtypeStruct((4, 24, 24, 1), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda k, x: augment.multicrop(k, x, spec))(jax.random.PRNGKey(0), images)
    assert flops.jaxpr_matmul_flops(jaxpr) / 4 == flops.multicrop_flops(crops, image_size=24, in_channels=1)


def test_dino_step_composition():
    mc = _model_config("mu/8")
    crops = ml_collections.ConfigDict(dict(global_size=32, local_size=16, n_global=2, n_local=4))
    f = flops.dino_step_flops(mc, crops, nlayers=3)
    assert f["forward_global_crop"] == flops.dino_model_forward_flops(mc, 32, nlayers=3)
    assert f["student_forward"] == 2 * f["forward_global_crop"] + 4 * f["forward_local_crop"]
    assert f["total"] == 3 * f["student_forward"] + 2 * f["forward_global_crop"]
    no_local = flops.dino_step_flops(mc, ml_collections.ConfigDict(dict(crops, n_local=0)), nlayers=3)
    assert no_local["total"] == 8 * f["forward_global_crop"]


@pytest.mark.parametrize("objective", ["dino", "dinov2"])
def test_train_step_traced_matmuls_close_to_analytic(smoke_config, objective):
    # The real step's traced dot/conv count against 3x student + teacher + multi-crop: the backward is not exactly
    # 2x forward (no input gradient for the patch embedding, the position-embedding resize), so a few percent apart.
    # DINOv2 adds the patch head on the gathered tokens and KoLeo's [B, B] similarity (not model FLOPs).
    from configs import common
    from oceansar.experiment import Experiment, run_spec
    from oceansar.train import step as step_lib

    config = smoke_config
    if objective == "dinov2":
        common.dinov2_objective(config)
    # The Experiment's abstract state: tracing needs shapes only, a concrete init costs seconds of eager compiles.
    exp = Experiment.build(run_spec(config), num_samples=config.data.num_samples)
    state = exp.abstract_state
    train_step = step_lib.make_train_step(exp.graphdef, exp.rest, exp.tx, exp.spec, exp.budget)
    b, s = config.batch_size, config.data.image_size
    traced = flops.jaxpr_matmul_flops(jax.make_jaxpr(train_step)(state, exp.batch_spec(jnp.uint8))) / b
    analytic = flops.run_step_flops(exp.spec, nlayers=len(state.params["head"]["mlp"]))["total"]
    augment_flops = flops.multicrop_flops(config.crops, image_size=s, in_channels=1)
    assert traced == pytest.approx(analytic + augment_flops, rel=0.05)


def test_text_tower_and_image_text_step_match_traced_matmuls():
    from configs import wfa
    from oceansar.experiment import Experiment, run_spec
    from oceansar.models.text import TextTransformer
    from oceansar.train import contrastive_step

    tower = nnx.eval_shape(lambda: TextTransformer("mu", vocab_size=50, context_length=16, embed_dim=8,
                                                   rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(tower, nnx.Param)
    ids = jax.ShapeDtypeStruct((3, 16), jnp.int32)
    traced = flops.jaxpr_matmul_flops(jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p)(x))(params, ids))
    assert traced == 3 * flops.text_forward_flops("mu", 16, embed_dim=8)
    # The whole image-text step: image tower, text tower on the packed captions, [B, B] logits, backward.
    config = wfa.get_config("smoke")
    exp = Experiment.build(run_spec(config), num_samples=config.data.num_samples, tokenizer=object())
    step = contrastive_step.make_train_step(exp.graphdef, exp.rest, exp.tx, exp.spec, exp.budget)
    traced = flops.jaxpr_matmul_flops(jax.make_jaxpr(step)(exp.abstract_state, exp.batch_spec(jnp.uint8)))
    augment_flops = flops.multicrop_flops(ml_collections.ConfigDict(dict(config.crops, n_global=1, n_local=0)),
                                          image_size=config.data.image_size, in_channels=1)
    analytic = flops.run_step_flops(exp.spec, nlayers=0)["total"]
    assert traced / config.batch_size == pytest.approx(analytic + augment_flops, rel=0.05)


def test_jaxpr_matmul_flops_nested_scan_cond_conv():
    w = jnp.ones((8, 16))

    def body(c, _):
        return c @ jnp.ones((16, 16)), None

    def f(x, k, pred):
        y = jax.lax.scan(body, x @ w, None, length=5)[0]                              # 4x8x16, then 5 x 4x16x16
        y = jax.lax.cond(pred, lambda a: a @ jnp.ones((16, 32)), lambda a: jnp.zeros((4, 32)), y)  # 4x16x32
        z = jax.lax.conv_general_dilated(k, jnp.ones((3, 3, 2, 6)), (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # out 1x4x4x6, 18 MACs each
        return y, jax.jit(lambda t: t @ t.T)(y), z                                     # 4x32x4 inside a jit

    jaxpr = jax.make_jaxpr(f)(jnp.ones((4, 8)), jnp.ones((1, 6, 6, 2)), True)
    expected = 2 * (4 * 8 * 16 + 5 * 4 * 16 * 16 + 4 * 16 * 32 + 1 * 4 * 4 * 6 * 18 + 4 * 32 * 4)
    assert flops.jaxpr_matmul_flops(jaxpr) == expected


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5", 459.0),
    ("cpu", None),
])
def test_peak_tflops_lookup(kind, peak):
    assert flops.peak_tflops(kind) == peak
