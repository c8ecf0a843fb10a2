"""`--mode=finetune`: a release plus a head trained end to end, resumed exactly, exported in timm's layout."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from configs import default
from configs import finetune as finetune_config
from oceansar import release
from oceansar.apps.finetune import finetune
from oceansar.errors import ConfigError
from oceansar.experiment import Experiment, run_spec
from oceansar.models import timm_layout
from oceansar.train.finetune_step import layer_scales


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    exp = Experiment.build(run_spec(default.get_config("smoke")), num_samples=64)
    return release.export(tmp_path_factory.mktemp("pretrained") / "release", teacher_params=exp.init_state().teacher,
                          spec=exp.spec)


def _config(released, arg="smoke"):
    c = finetune_config.get_config(arg)
    c.init_from = str(released)
    return c


def _weights(path):
    return timm_layout.read_safetensors(path / "release" / "model.safetensors")


def test_classification_end_to_end_and_resume_is_exact(released, tmp_path):
    c = _config(released)
    summary = finetune(c, tmp_path / "straight")
    assert summary["steps"] == 3 * 2 and summary["task"] == "classification"       # 40 records, batch 16
    assert set(summary["final"]) == {"test/top1", "test/top1_std", "test/balanced_acc", "test/balanced_acc_std"}
    assert summary["loaded"]["created"] == ["mask_token"] and not summary["loaded"]["adapted"]
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/test/top1" in r] == [4, 6]           # every 2 epochs and the end
    # Stopped after epoch 1, then the same call again: the same network, bit for bit.
    assert finetune(c, tmp_path / "resumed", stop_at_step=2) == {"steps": 2}
    again = finetune(c, tmp_path / "resumed")
    assert again["final"] == summary["final"]
    for name, value in _weights(tmp_path / "straight").items():
        np.testing.assert_array_equal(value, _weights(tmp_path / "resumed")[name], err_msg=name)
    config = json.loads((tmp_path / "straight" / "release" / "config.json").read_text())
    assert config["num_classes"] == 10 and len(config["label_names"]) == 10
    assert _weights(tmp_path / "straight")["head.weight"].shape == (10, 32)
    assert "| test/top1 |" in (tmp_path / "straight" / "release" / "README.md").read_text()
    # A finished run is not trained again.
    assert finetune(c, tmp_path / "straight") == json.loads((tmp_path / "straight" / "summary.json").read_text())


def test_linear_probe_leaves_the_backbone_untouched(released, tmp_path):
    c = _config(released, "smoke,mode=linear")
    finetune(c, tmp_path)
    before, after = timm_layout.read_safetensors(released / "model.safetensors"), _weights(tmp_path)
    for name, value in before.items():
        np.testing.assert_array_equal(value, after[name], err_msg=name)
    assert np.abs(after["head.weight"]).sum() > 0                                   # zero-initialised, trained


def test_regression_head_is_exported_in_physical_units(released, tmp_path):
    c = _config(released, "smoke,task=wv_regression")
    summary = finetune(c, tmp_path)
    assert {"test/wind_speed/rmse", "test/hs/rmse"} <= set(summary["final"])
    config = json.loads((tmp_path / "release" / "config.json").read_text())
    assert config["label_names"] == ["wind_speed", "hs"] and config["oceansar"]["task"] == "regression"
    # The exported head predicts in m/s and m: its bias sits near the training targets' mean, not near 0.
    bias = _weights(tmp_path)["head.bias"]
    assert 2 < bias[0] < 25 and 0.2 < bias[1] < 10


def test_timm_loads_the_fine_tuned_network(released, tmp_path):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    from oceansar.models.classifier import Classifier

    c = _config(released)
    finetune(c, tmp_path)
    model = timm.create_model(f"local-dir:{tmp_path / 'release'}", pretrained=True).eval()
    assert model.num_classes == 10
    ours = Classifier("mu/8", img_size=24, in_channels=1, outputs=10, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(ours, nnx.Param)
    weights = _weights(tmp_path)
    pure = nnx.to_pure_dict(params)
    pure["backbone"], _ = timm_layout.from_timm(weights, jax.tree.map(np.asarray, pure["backbone"]))
    pure["head"] = {"kernel": weights["head.weight"].T, "bias": weights["head.bias"]}
    nnx.replace_by_pure_dict(params, pure)
    x = np.random.default_rng(0).normal(size=(2, 24, 24, 1)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(got, np.asarray(nnx.merge(graphdef, params)(x)), rtol=1e-4, atol=1e-5)


def test_layer_wise_decay_scales():
    from oceansar.models.classifier import Classifier

    params = nnx.split(Classifier("mu/8", img_size=16, in_channels=1, outputs=3, rngs=nnx.Rngs(0)), nnx.Param)[1]
    scales = nnx.to_pure_dict(layer_scales(params, depth=2, decay=0.5))
    assert scales["backbone"]["patch_embed"]["kernel"] == scales["backbone"]["pos_embed"] == 0.125
    assert scales["backbone"]["blocks"][0]["fc1"]["kernel"] == 0.25
    assert scales["backbone"]["blocks"][1]["attn"]["qkv"]["bias"] == 0.5
    assert scales["backbone"]["norm"]["scale"] == scales["head"]["kernel"] == 1.0


@pytest.mark.parametrize("field, value, match", [
    ("task", "segmentation", "config.finetune.task: 'segmentation' is not one of"),
    ("mode", "partial", "config.finetune.mode"),
    ("layer_decay", 1.5, r"config.finetune.layer_decay: must lie in \(0, 1\]"),
])
def test_config_errors_name_the_field(released, tmp_path, field, value, match):
    c = _config(released)
    c.finetune[field] = value
    with pytest.raises(ConfigError, match=match):
        finetune(c, tmp_path)


def test_a_foreign_file_needs_its_variant_and_a_regression_its_targets(tmp_path):
    c = finetune_config.get_config("smoke")
    c.init_from = str(tmp_path / "dinov2.safetensors")
    with pytest.raises(ConfigError, match="config.finetune.model.variant: empty"):
        finetune(c, tmp_path / "a")
    c = finetune_config.get_config("smoke,task=wv_regression")
    c.finetune.targets = ()
    with pytest.raises(ConfigError, match="config.finetune.targets"):
        finetune(c, tmp_path / "b")
