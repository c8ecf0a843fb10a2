"""ViT backbone, DINO head and DINOModel: shapes, parameter count, stochastic depth, weight norm, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from oceansar.models.dino_head import DINOHead, DINOModel
from oceansar.models.vit import VARIANTS, Attention, ViT, parse_variant


def _tiny(**kw):
    return DINOModel("mu/8", img_size=16, in_channels=1, out_dim=64, hidden_dim=32, bottleneck_dim=16,
                     rngs=nnx.Rngs(0), **kw)


def test_parse_variant():
    assert parse_variant("S/16") == dict(width=384, depth=12, heads=6, mlp_dim=1536, patch=16)
    assert parse_variant("B/8")["width"] == 768 and parse_variant("S/14")["patch"] == 14
    assert {"Ti/16", "S/16", "S/8", "B/16", "B/8", "mu/8", "Ti/8"} <= set(VARIANTS)
    with pytest.raises(ValueError, match="model.variant: unknown variant 'X/16'; known: "):
        parse_variant("X/16")
    with pytest.raises(ValueError, match="model.variant"):
        parse_variant("S16")


def test_vit_s16_parameter_count():
    """DINO's ViT-S/16 with 3 input channels has 21,665,664 parameters; ours adds the 384-wide iBOT mask token."""
    model = nnx.eval_shape(lambda: ViT("S/16", img_size=224, in_channels=3, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    total = sum(x.size for x in jax.tree.leaves(params))
    assert total == 21_665_664 + 384
    assert params["mask_token"].shape == (1, 384)
    assert model.embed_dim == 384


def test_vit_shapes_two_resolutions_and_masks():
    vit = ViT("mu/8", img_size=16, in_channels=2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(vit)

    @jax.jit
    def fwd(state, x, masks):
        return nnx.merge(graphdef, state)(x, masks=masks)

    x = np.random.default_rng(0).normal(size=(3, 24, 24, 2)).astype(np.float32)
    out = fwd(state, x, None)
    assert out["cls"].shape == (3, 32) and out["patch"].shape == (3, 9, 32)
    assert out["cls"].dtype == jnp.float32
    out8 = fwd(state, x[:, :8, :8], None)  # a 1x1 patch grid: position embeddings resized from 2x2
    assert out8["cls"].shape == (3, 32) and out8["patch"].shape == (3, 1, 32)
    # Final LayerNorm with unit scale and zero bias at init: per-token zero mean.
    np.testing.assert_allclose(np.asarray(out["patch"]).mean(-1), 0.0, atol=1e-5)
    no_mask = fwd(state, x, np.zeros((3, 9), bool))
    np.testing.assert_allclose(no_mask["cls"], out["cls"], atol=1e-6)
    masked = fwd(state, x, np.eye(3, 9, dtype=bool))
    assert not np.allclose(masked["cls"], out["cls"], atol=1e-4)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        vit(x[:, :20, :20])


def test_attention_asks_jax_for_the_configured_implementation(monkeypatch):
    # cuDNN's kernel needs a CUDA GPU: the spy records what each call asks for and computes with XLA's.
    asked, xla = [], jax.nn.dot_product_attention

    def spy(*args, implementation=None, **kwargs):
        asked.append(implementation)
        return xla(*args, implementation="xla", **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
    outs = {}
    for implementation in ("xla", "cudnn"):
        asked.clear()
        vit = ViT("mu/8", img_size=16, attention=implementation, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
        outs[implementation] = vit(x)["cls"]
        assert asked == [implementation] * len(vit.blocks)
    np.testing.assert_array_equal(outs["xla"], outs["cudnn"])  # the same parameters, nothing else changes
    asked.clear()
    attn = Attention(32, 2, implementation="cudnn", dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    attn(jnp.ones((2, 5, 32)), mask=jnp.tril(jnp.ones((5, 5), bool)))
    assert asked == ["xla"]  # a boolean mask (the text tower's) stays on XLA's kernel
    with pytest.raises(ValueError, match="model.attention: 'flash' is not one of"):
        ViT("mu/8", img_size=16, attention="flash", rngs=nnx.Rngs(0))


def test_drop_path_only_in_train_mode():
    vit = ViT("mu/8", img_size=16, drop_path_rate=0.5, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(vit)

    @jax.jit
    def fwd(state, x, key):
        model = nnx.merge(graphdef, state)
        return model(x)["cls"], model(x, train=True, rngs=nnx.Rngs(dropout=key))["cls"]

    x = np.random.default_rng(1).normal(size=(8, 16, 16, 1)).astype(np.float32)
    eval_a, train_a = fwd(state, x, jax.random.key(0))
    eval_b, train_b = fwd(state, x, jax.random.key(1))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train_a, eval_a, atol=1e-4)
    assert not np.allclose(train_a, train_b, atol=1e-4)
    with pytest.raises(ValueError, match="needs `rngs`"):
        vit(x, train=True)
    assert [blk.drop_path_rate for blk in vit.blocks] == [0.0, 0.5]


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_weight_normalised_prototypes(norm_last_layer):
    head = DINOHead(32, 48, hidden_dim=24, bottleneck_dim=8, norm_last_layer=norm_last_layer, rngs=nnx.Rngs(0))
    w = np.asarray(head.last_layer.normalized_kernel())
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, atol=1e-5)
    names = {path[-1] for path, _ in nnx.to_flat_state(nnx.state(head.last_layer, nnx.Param))}
    assert names == ({"kernel"} if norm_last_layer else {"kernel", "scale"})
    x = np.random.default_rng(2).normal(size=(5, 32)).astype(np.float32)
    logits = np.asarray(head(x))
    assert logits.shape == (5, 48)
    # Unit bottleneck times unit prototypes: cosine similarities.
    assert np.abs(logits).max() <= 1.0 + 1e-5
    # The column normalisation holds for any kernel, e.g. after an optimizer step.
    head.last_layer.kernel[...] = head.last_layer.kernel[...] * jnp.arange(1, 49)
    np.testing.assert_allclose(np.linalg.norm(head.last_layer.normalized_kernel(), axis=0), 1.0, atol=1e-5)


def test_dino_model_crop_stacks_and_last_layer_path():
    model = _tiny(norm_last_layer=False)
    paths = {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert ("head", "last_layer", "kernel") in paths and ("head", "last_layer", "scale") in paths
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, globals_, locals_):
        m = nnx.merge(graphdef, state)
        return m(globals_), m(locals_)

    rng = np.random.default_rng(3)
    globals_ = rng.normal(size=(2, 4, 16, 16, 1)).astype(np.float32)
    locals_ = rng.normal(size=(3, 4, 8, 8, 1)).astype(np.float32)
    g, l = fwd(state, globals_, locals_)
    assert g["logits"].shape == (2, 4, 64) and g["cls"].shape == (2, 4, 32)
    assert l["logits"].shape == (3, 4, 64) and l["cls"].shape == (3, 4, 32)
    # Outputs follow their crops: permuting crops and samples permutes the outputs the same way.
    g_perm, _ = fwd(state, globals_[::-1, ::-1], locals_)
    np.testing.assert_allclose(g_perm["logits"], g["logits"][::-1, ::-1], atol=1e-5)
    empty = model(np.zeros((0, 4, 8, 8, 1), np.float32))
    assert empty["logits"].shape == (0, 4, 64) and empty["cls"].shape == (0, 4, 32)


def test_sharded_forward_matches_unsharded():
    model = _tiny()
    graphdef, state = nnx.split(model)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    crops = np.random.default_rng(4).normal(size=(2, 8, 16, 16, 1)).astype(np.float32)

    @jax.jit
    def fwd(state, crops):
        return nnx.merge(graphdef, state)(crops)["logits"]

    expected = fwd(state, crops)
    replicated = jax.device_put(state, NamedSharding(mesh, P()))
    sharded = jax.device_put(crops, NamedSharding(mesh, P(None, "data")))
    got = fwd(replicated, sharded)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(got, expected, atol=1e-5)
