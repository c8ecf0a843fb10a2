"""timm / DINO / DINOv2 / transformers weight layouts: round trips, adaptations, refusals, safetensors files, and
(when torch and timm are installed) timm itself computing our features from our weights."""
import re

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from configs import default
from oceansar.errors import ConfigError
from oceansar.models import timm_layout
from oceansar.models.timm_layout import from_timm, read_safetensors, to_timm, write_safetensors
from oceansar.models.vit import ViT
from oceansar.spec import RunSpec
from oceansar.train.state import build_model


def _params(vit: ViT) -> dict:
    return nnx.to_pure_dict(nnx.state(vit, nnx.Param))


def _randomised(variant="mu/8", *, img_size=32, seed=0, **kw) -> ViT:
    """A ViT whose every parameter (norms, LayerScale and mask token included) is random, so layouts show."""
    vit = ViT(variant, img_size=img_size, rngs=nnx.Rngs(seed), **kw)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: (0.3 * rng.normal(size=x.shape)).astype(np.float32), _params(vit))
    _load(vit, params)
    return vit


def _load(vit: ViT, params: dict) -> None:
    state = nnx.state(vit, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(vit, state)


def _tokens(vit: ViT, x: np.ndarray) -> np.ndarray:
    out = vit(x)
    return np.concatenate([np.asarray(out["cls"])[:, None], np.asarray(out["patch"])], axis=1)


def _assert_trees_equal(a: dict, b: dict) -> None:
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def _images(n, size, channels=1, seed=1):
    return np.random.default_rng(seed).normal(size=(n, size, size, channels)).astype(np.float32)


@pytest.mark.parametrize("layer_scale", [0.0, 0.1])
def test_round_trip_is_exact_and_reports_everything(layer_scale):
    vit = _randomised(layer_scale=layer_scale)
    params = _params(vit)
    state = to_timm(params)
    assert list(state)[:5] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                               "blocks.0.norm1.weight"]
    assert "mask_token" not in state
    assert state["patch_embed.proj.weight"].shape == (32, 1, 8, 8)
    assert state["blocks.1.attn.qkv.weight"].shape == (96, 32) and state["blocks.0.mlp.fc1.weight"].shape == (128, 32)
    np.testing.assert_array_equal(state["blocks.0.attn.qkv.weight"], np.asarray(params["blocks"][0]["attn"]["qkv"]
                                                                                ["kernel"]).T)
    assert ("blocks.0.ls1.gamma" in state) == (layer_scale > 0)
    fresh = _params(ViT("mu/8", img_size=32, layer_scale=layer_scale, rngs=nnx.Rngs(7)))
    loaded, report = from_timm(state, fresh, source="round.safetensors")
    expected = dict(params, mask_token=fresh["mask_token"])  # the one tensor timm has no name for
    _assert_trees_equal(loaded, expected)
    ours = {".".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert set(report.loaded) == ours - {"mask_token"} and len(report.loaded) == len(state)
    assert report.created == ("mask_token",) and not report.adapted and not report.skipped
    assert report.layout == "timm" and "round.safetensors" in report.summary()


def test_layer_scale_param_trees_and_function():
    plain = ViT("mu/8", img_size=16, rngs=nnx.Rngs(0))
    assert set(_params(plain)["blocks"][0]) == {"norm1", "attn", "norm2", "fc1", "fc2"}
    scaled = ViT("mu/8", img_size=16, layer_scale=1e-5, rngs=nnx.Rngs(0))
    block = _params(scaled)["blocks"][1]
    assert set(block) == {"norm1", "attn", "norm2", "fc1", "fc2", "ls1", "ls2"}
    np.testing.assert_array_equal(block["ls2"], np.full((32,), 1e-5, np.float32))
    # LayerScale at 1 is the identity: the same weights compute the same tokens.
    unit = ViT("mu/8", img_size=16, layer_scale=1.0, rngs=nnx.Rngs(0))
    x = _images(2, 16)
    np.testing.assert_allclose(_tokens(unit, x), _tokens(plain, x), atol=1e-6)
    # ... and it scales each branch before the residual sum: a zero scale makes every block the identity.
    zeroed = _params(unit)
    for block in zeroed["blocks"].values():
        block["ls1"], block["ls2"] = np.zeros(32, np.float32), np.zeros(32, np.float32)
    _load(unit, zeroed)
    bare = ViT("mu/8", img_size=16, rngs=nnx.Rngs(0))
    bare.blocks = nnx.List([])
    np.testing.assert_allclose(_tokens(unit, x), _tokens(bare, x), atol=1e-6)
    with pytest.raises(ValueError, match="model.layer_scale"):
        ViT("mu/8", img_size=16, layer_scale=-1.0, rngs=nnx.Rngs(0))


def test_layer_scale_config_field_reaches_the_model():
    config = default.get_config("smoke")
    assert config.model.layer_scale == 0.0
    config.model.layer_scale = 1e-5
    model = build_model(RunSpec.from_config(config))
    assert set(_params(model.backbone)["blocks"][0]) >= {"ls1", "ls2"}
    config.model.layer_scale = -0.1
    with pytest.raises(ConfigError, match="config.model.layer_scale: must be >= 0"):
        RunSpec.from_config(config)


def test_three_input_channels_load_into_one_by_summing():
    rgb = _randomised(img_size=16, in_channels=3)
    state = to_timm(_params(rgb))
    assert state["patch_embed.proj.weight"].shape == (32, 3, 8, 8)
    gray_vit = ViT("mu/8", img_size=16, in_channels=1, rngs=nnx.Rngs(3))
    params, report = from_timm(state, _params(gray_vit))
    np.testing.assert_allclose(params["patch_embed"]["kernel"][:, :, 0],
                               np.asarray(_params(rgb)["patch_embed"]["kernel"]).sum(axis=2), rtol=1e-6)
    assert "summed the 3 input-channel filters into 1" in report.adapted["patch_embed.kernel"]
    _load(gray_vit, params)
    # Linearity: conv(gray replicated to 3 channels, W) = conv(gray, sum_c W_c), so the whole network agrees.
    gray = _images(2, 16)
    np.testing.assert_allclose(_tokens(gray_vit, gray), _tokens(rgb, np.repeat(gray, 3, axis=-1)), atol=1e-5)
    # Other counts: timm's rule, channels repeated cyclically and scaled by in / out.
    four, report = from_timm(state, _params(ViT("mu/8", img_size=16, in_channels=4, rngs=nnx.Rngs(0))))
    src = np.asarray(_params(rgb)["patch_embed"]["kernel"])
    np.testing.assert_allclose(four["patch_embed"]["kernel"], src[:, :, [0, 1, 2, 0]] * 0.75, rtol=1e-6)
    assert "scaled them by 3/4" in report.adapted["patch_embed.kernel"]


def test_position_embeddings_resampled_to_our_grid():
    source = _randomised(img_size=32)  # a 4x4 grid
    state = to_timm(_params(source))
    for size in (16, 48):  # 2x2 and 6x6
        target = ViT("mu/8", img_size=size, rngs=nnx.Rngs(1))
        params, report = from_timm(state, _params(target), source="grid.safetensors")
        g = size // 8
        assert re.search(rf"4x4 position grid to {g}x{g} bicubically", report.adapted["pos_embed"])
        np.testing.assert_array_equal(params["pos_embed"][:, 0], state["pos_embed"][:, 0])
        _load(target, params)
        # The source model resizes its grid on the fly with jax.image.resize: the loaded one computes the same.
        x = _images(2, size)
        np.testing.assert_allclose(_tokens(target, x), _tokens(source, x), atol=1e-5)
    # timm's no_embed_class layout (no CLS position): a zero CLS entry, reported.
    no_cls = dict(state, pos_embed=state["pos_embed"][:, 1:])
    params, report = from_timm(no_cls, _params(source))
    np.testing.assert_array_equal(params["pos_embed"][:, 0], 0.0)
    np.testing.assert_array_equal(params["pos_embed"][:, 1:], state["pos_embed"][:, 1:])
    assert "no_embed_class" in report.adapted["pos_embed"]


def test_layer_scale_mismatch_raises_naming_the_fix():
    with_ls = to_timm(_params(_randomised(layer_scale=1e-5)))
    plain_like = _params(ViT("mu/8", img_size=32, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"dino\.pth: blocks\.\d\.ls\d\.gamma \(32,\).*config\.model\.layer_scale > 0"):
        from_timm(with_ls, plain_like, source="dino.pth")
    scaled_like = _params(ViT("mu/8", img_size=32, layer_scale=1e-5, rngs=nnx.Rngs(0)))
    plain = to_timm(plain_like)
    with pytest.raises(ValueError, match=r"no tensor blocks\.0\.ls1\.gamma.*layer_scale = 0"):
        from_timm(plain, scaled_like)


def test_missing_extra_and_misshapen_tensors_raise():
    params = _params(_randomised())
    state = to_timm(params)
    missing = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"f\.st: no tensor blocks\.1\.mlp\.fc2\.bias \(our blocks\.1\.fc2\.bias"):
        from_timm(missing, params, source="f.st")
    deeper = state | {k.replace("blocks.1.", "blocks.2."): v for k, v in state.items() if k.startswith("blocks.1.")}
    with pytest.raises(ValueError, match="the file has 3 blocks, this model 2"):
        from_timm(deeper, params)
    with pytest.raises(ValueError, match="reg_token .* register tokens"):
        from_timm(state | {"reg_token": np.zeros((1, 4, 32), np.float32)}, params)
    with pytest.raises(ValueError, match="blocks.0.attn.q_norm.weight .* no place in our ViT"):
        from_timm(state | {"blocks.0.attn.q_norm.weight": np.ones(16, np.float32)}, params)
    other_patch = to_timm(_params(ViT("mu/4", img_size=32, rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match=re.escape("patch_embed.proj.weight has shape (32, 1, 4, 4) ((4, 4, 1, 32) "
                                                   "in our layout) and our patch_embed.kernel needs (8, 8, 1, 32)")):
        from_timm(other_patch, params)


def test_classifier_heads_are_skipped_and_reported():
    params = _params(_randomised())
    heads = {"head.weight": np.ones((10, 32), np.float32), "head.bias": np.zeros(10, np.float32),
             "fc_norm.weight": np.ones(32, np.float32), "fc_norm.bias": np.zeros(32, np.float32)}
    loaded, report = from_timm(to_timm(params) | heads, params, source="cls.pth")
    _assert_trees_equal(loaded, params)
    assert report.skipped == ("fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight")
    assert "Skipped 4 tensors" in report.summary() and "head.weight" in report.summary()


def test_dinov2_checkpoint_layout():
    """DINOv2's own files: timm's names, a mask token, LayerScale, wrapper prefixes, FSDP block chunks."""
    params = _params(_randomised(layer_scale=1e-5))
    state = to_timm(params) | {"mask_token": np.asarray(params["mask_token"])}
    chunked = {("module.backbone." + re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k)): v for k, v in state.items()}
    chunked["module.backbone.head.mlp.0.weight"] = np.zeros((8, 32), np.float32)  # a DINO head: skipped
    loaded, report = from_timm(chunked, _params(ViT("mu/8", img_size=32, layer_scale=1e-5, rngs=nnx.Rngs(5))))
    _assert_trees_equal(loaded, params)
    assert "mask_token" in report.loaded and not report.created
    assert report.skipped == ("module.backbone.head.mlp.0.weight",)
    assert "DINO/DINOv2" in report.layout and "'module.backbone.' stripped" in report.layout


def _hf(state: dict, *, dinov2: bool) -> dict:
    """A transformers Dinov2Model (dinov2=True) or ViTModel state dict built from a timm one."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    names = ({"norm1": "norm1", "attn.proj": "attention.output.dense", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
              "mlp.fc2": "mlp.fc2", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}
             if dinov2 else
             {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"})
    for key, value in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+?)(?:\.(weight|bias))?", key)
        if m is None:
            continue
        i, module, kind = m.groups()
        where = f"encoder.layer.{i}."
        if module == "attn.qkv":
            for part, which in zip(np.split(value, 3, axis=0), ("query", "key", "value")):
                out[f"{where}attention.attention.{which}.{kind}"] = part
        else:
            out[where + names[module] + (f".{kind}" if kind else "")] = value
    return out


@pytest.mark.parametrize("dinov2", [True, False])
def test_transformers_layout_equals_timm_layout(dinov2):
    layer_scale = 1e-5 if dinov2 else 0.0
    params = _params(_randomised(layer_scale=layer_scale))
    state = to_timm(params)
    hf = _hf(state, dinov2=dinov2)
    mask = np.asarray(params["mask_token"])
    hf["embeddings.mask_token"] = mask if dinov2 else mask[None]  # ViTModel's is [1, 1, D]
    if dinov2:
        hf = {"dinov2." + k: v for k, v in hf.items()} | {"classifier.weight": np.zeros((3, 64), np.float32)}
    else:
        hf |= {"pooler.dense.weight": np.zeros((32, 32), np.float32), "pooler.dense.bias": np.zeros(32, np.float32)}
    like = _params(ViT("mu/8", img_size=32, layer_scale=layer_scale, rngs=nnx.Rngs(9)))
    from_hf, report = from_timm(hf, like, source="hf")
    from_timm_names, _ = from_timm(state | {"mask_token": mask}, like)
    _assert_trees_equal(from_hf, from_timm_names)
    _assert_trees_equal(from_hf, params)
    assert report.layout.startswith("transformers") and len(report.loaded) == len(state) + 1
    assert report.skipped == (("classifier.weight",) if dinov2 else ("pooler.dense.bias", "pooler.dense.weight"))
    assert ("mask_token" in report.adapted) != dinov2  # ViTModel's [1, 1, D] reshaped, reported
    incomplete = {k: v for k, v in hf.items() if "layer.1.attention.attention.key.bias" not in k}
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.attention\.key\.bias is missing"):
        from_timm(incomplete, like)


def test_safetensors_round_trip_widens_bf16(tmp_path):
    rng = np.random.default_rng(0)
    state = {"a": rng.normal(size=(3, 4)).astype(np.float32),
             "b16": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16),
             "h": rng.normal(size=(2, 2)).astype(np.float16), "i": np.arange(4, dtype=np.int64)}
    path = tmp_path / "w.safetensors"
    write_safetensors(path, state, {"variant": "mu/8"})
    back = read_safetensors(path)
    assert set(back) == set(state)
    for name in ("a", "b16", "h"):
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], state[name].astype(np.float32))
    np.testing.assert_array_equal(back["i"], state["i"])
    raw = timm_layout._read_raw(path)  # the reader for safetensors releases without bf16 in their numpy API
    assert raw["b16"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(raw["b16"].astype(np.float32), back["b16"])
    from safetensors import safe_open
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "pt", "variant": "mu/8"}


@pytest.mark.parametrize("layer_scale", [0.0, 0.5])
def test_timm_loads_our_features(tmp_path, layer_scale):
    """timm computes our features from our weights, and we compute timm's from its own."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    ours = _randomised(layer_scale=layer_scale)
    model = VisionTransformer(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
                              num_classes=0, init_values=layer_scale or None).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in to_timm(_params(ours)).items()}, strict=True)
    x = _images(2, 32)
    with torch.no_grad():
        theirs = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(theirs, _tokens(ours, x), atol=1e-5)
    # The other way: timm's own (randomly initialised) weights, through our loader, give timm's features.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        theirs = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    fresh = ViT("mu/8", img_size=32, layer_scale=layer_scale, rngs=nnx.Rngs(0))
    params, report = from_timm({k: v.numpy() for k, v in model.state_dict().items()}, _params(fresh))
    assert report.created == ("mask_token",) and not report.adapted
    _load(fresh, params)
    np.testing.assert_allclose(_tokens(fresh, x), theirs, atol=1e-5)
    if layer_scale:
        return
    # A released S/16 file through timm's own pretrained-weights path (pretrained_cfg file overlay).
    s16 = _randomised("S/16", img_size=32)
    path = tmp_path / "s16.safetensors"
    write_safetensors(path, to_timm(_params(s16)))
    model = timm.create_model("vit_small_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              in_chans=1, num_classes=0, img_size=32).eval()
    with torch.no_grad():
        theirs = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(theirs, _tokens(s16, x), atol=1e-5)
