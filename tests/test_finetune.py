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


def _exported(path, outputs):
    """The exported network of the fine-tuning run in `path`, rebuilt as an oceansar Classifier."""
    from oceansar.models.classifier import Classifier

    graphdef, params = nnx.split(Classifier("mu/8", img_size=24, in_channels=1, outputs=outputs, rngs=nnx.Rngs(0)),
                                 nnx.Param)
    weights = _weights(path)
    pure = nnx.to_pure_dict(params)
    pure["backbone"], _ = timm_layout.from_timm(weights, jax.tree.map(np.asarray, pure["backbone"]))
    pure["head"] = {"kernel": weights["head.weight"].T, "bias": weights["head.bias"]}
    nnx.replace_by_pure_dict(params, pure)
    return graphdef, params, pure, weights


def test_classification_end_to_end_and_resume_is_exact(released, tmp_path):
    c = _config(released)
    summary = finetune(c, tmp_path / "straight")
    assert summary["steps"] == 3 * 2 and summary["task"] == "classification"       # 40 records, batch 16
    test = {"test/top1", "test/top1_std", "test/balanced_acc", "test/balanced_acc_std"}
    # and pretraining's frozen-feature evaluator (config.evals.wv, k-NN in the smoke) on the fine-tuned backbone
    assert {k for k in summary["final"] if not k.startswith("wv/")} == test
    assert {"wv/knn/top1_k20", "wv/knn/top1_k20_std"} <= set(summary["final"])
    assert summary["loaded"]["created"] == ["mask_token"] and not summary["loaded"]["adapted"]
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/test/top1" in r] == [4, 6]           # every 2 epochs and the end
    # Stopped inside an epoch, then the same call again: the same network, bit for bit.
    assert finetune(c, tmp_path / "resumed", stop_at_step=3) == {"steps": 3}                # mid-epoch 2
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
    # The exported head predicts in m/s and m: the training network's standardised outputs, un-standardised.
    from oceansar.apps import finetune as app
    from oceansar.train.finetune_step import make_predict

    spec = app.finetune_spec(c)
    data = app._load_data(c, spec, release.read_config(released))
    graphdef, params, pure, weights = _exported(tmp_path, 2)
    physical = make_predict(graphdef, mean=0.5, std=0.25, img_size=24)(params, data.test["image"][:6])
    trained = jax.tree.map(lambda x: x, params)
    pure["head"] = {"kernel": (weights["head.weight"].T - 0) / data.target_std,
                    "bias": (weights["head.bias"] - data.target_mean) / data.target_std}
    nnx.replace_by_pure_dict(trained, pure)
    standardised = make_predict(graphdef, mean=0.5, std=0.25, img_size=24)(trained, data.test["image"][:6])
    np.testing.assert_allclose(physical, standardised * data.target_std + data.target_mean, rtol=1e-4, atol=1e-4)
    assert 2 < float(np.mean(physical[:, 0])) < 25 and 0.2 < float(np.mean(physical[:, 1])) < 10


def test_timm_loads_the_fine_tuned_network(released, tmp_path):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")

    c = _config(released)
    finetune(c, tmp_path)
    model = timm.create_model(f"local-dir:{tmp_path / 'release'}", pretrained=True).eval()
    assert model.num_classes == 10
    graphdef, params, _, _ = _exported(tmp_path, 10)
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
    # Weight decay reaches every kernel and nothing else.
    from oceansar.train.finetune_step import _decayed

    decayed = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(_decayed(params)))[0]
    kernels = [jax.tree_util.keystr(k) for k, v in decayed if v]
    assert len(kernels) == 2 * 4 + 2 and all("kernel" in k for k in kernels)   # 4 per block, patch embed, head


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


def test_a_foreign_file_needs_its_variant_and_a_regression_its_targets(released, tmp_path):
    c = finetune_config.get_config("smoke")
    c.init_from = str(tmp_path / "dinov2.safetensors")
    with pytest.raises(FileNotFoundError, match="config.init_from: .*dinov2.safetensors does not exist"):
        finetune(c, tmp_path / "a")
    timm_layout.write_safetensors(c.init_from, timm_layout.read_safetensors(released / "model.safetensors"))
    with pytest.raises(ConfigError, match="config.finetune.model.variant: empty"):
        finetune(c, tmp_path / "a")
    c.finetune.model.update(variant="mu/8", img_size=20)
    with pytest.raises(ConfigError, match="config.finetune.model.img_size: must be a positive multiple of the patch"):
        finetune(c, tmp_path / "a")
    c = finetune_config.get_config("smoke,task=wv_regression")
    c.finetune.targets = ()
    with pytest.raises(ConfigError, match="config.finetune.targets"):
        finetune(c, tmp_path / "b")


def test_the_command_line_offers_every_mode():
    import launch
    from oceansar.apps import MODES

    assert sorted(launch._MODES) == sorted([*MODES, "show_config"])
