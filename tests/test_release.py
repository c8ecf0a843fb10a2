"""Releases: the Hugging Face-style folder, timm loading it as it is, and `config.init_from` of foreign weights."""
import json
import logging

import jax
import numpy as np
import pytest
from flax import nnx

from oceansar import release
from oceansar.models import timm_layout
from test_experiment import _experiment


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    exp = _experiment(seed=3)
    summary = {"examples_seen": 1024, "final": {"wv/knn/top1_k20": 0.5, "wv/knn/top1_k20_std": 0.02},
               "at_init": {"wv/knn/top1_k20": 0.3}}
    path = release.export(tmp_path_factory.mktemp("release") / "release", teacher_params=exp.init_state().teacher,
                          spec=exp.spec, summary=summary)
    return exp, path


def _images(n=3, size=32):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 1), np.uint8)


def test_folder_holds_safetensors_config_and_card(released):
    exp, path = released
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == "vit_small_patch8_224"      # mu/8 has no timm name: sizes spelled out
    want = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "in_chans": 1,
            "img_size": exp.spec.crops.global_size, "mlp_ratio": 4.0, "num_classes": 0}
    assert {k: config["model_args"][k] for k in want} == want
    assert config["pretrained_cfg"]["input_size"] == [1, exp.spec.crops.global_size, exp.spec.crops.global_size]
    assert config["pretrained_cfg"]["mean"] == [exp.spec.data.mean]
    assert config["oceansar"]["sigma0_db_range"] == [-35.0, 5.0]
    weights = timm_layout.read_safetensors(path / "model.safetensors")
    assert "blocks.1.attn.qkv.weight" in weights and "mask_token" not in weights
    card = (path / "README.md").read_text()
    assert "| wv/knn/top1_k20 | 0.5000 ± 0.0200 | 0.3000 |" in card and "examples seen: 1024" in card
    assert "-35.0 to 5.0 dB" in card and "local-dir:" in card


def test_load_gives_the_teachers_features(released):
    exp, path = released
    backbone = nnx.merge(exp.backbone_graphdef, exp.init_state().teacher["backbone"])
    vit, spec = release.load(path)
    x = (_images() / 255.0 - spec["input_mean"]) / spec["input_std"]
    np.testing.assert_array_equal(np.asarray(backbone(x)["cls"]), np.asarray(vit(x)["cls"]))
    fn, params, _ = release.embedder(path)
    assert fn(params, _images()).shape == (3, 32)


def test_timm_loads_the_folder_and_computes_the_same_features(released):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    _, path = released
    vit, spec = release.load(path)
    model = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    assert model.num_classes == 0 and model.pretrained_cfg["mean"] == [spec["input_mean"]]
    x = (_images(size=spec["img_size"]) / 255.0 - spec["input_mean"]) / spec["input_std"]
    with torch.no_grad():
        got = model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    np.testing.assert_allclose(got, np.asarray(vit(x)["cls"]), rtol=1e-4, atol=1e-5)


def test_init_from_a_foreign_rgb_file_at_another_grid_is_adapted_and_reported(tmp_path, caplog):
    exp = _experiment()
    like = nnx.to_pure_dict(exp.init_state().params["backbone"])
    foreign = timm_layout.to_timm(jax.tree.map(np.asarray, like))
    rng = np.random.default_rng(1)
    foreign["patch_embed.proj.weight"] = rng.normal(size=(32, 3, 8, 8)).astype(np.float32)  # an RGB model
    foreign["pos_embed"] = rng.normal(size=(1, 1 + 8 * 8, 32)).astype(np.float32)           # trained at 64 px
    foreign["head.weight"] = np.zeros((1000, 32), np.float32)                                # a classifier
    file = tmp_path / "foreign.safetensors"
    timm_layout.write_safetensors(file, foreign)
    with caplog.at_level(logging.WARNING):
        state = _experiment(init_from=str(file)).init_state()
    got = nnx.to_pure_dict(state.teacher["backbone"])
    np.testing.assert_allclose(np.asarray(got["patch_embed"]["kernel"]),
                               foreign["patch_embed.proj.weight"].sum(1).transpose(1, 2, 0)[:, :, None, :],
                               rtol=1e-6)
    assert got["pos_embed"].shape == like["pos_embed"].shape
    text = caplog.text
    assert "config.init_from" in text and "patch_embed.kernel" in text and "pos_embed" in text
    assert "head.weight" in text and "mask_token" in text
