"""The ResNet backbone: timm's resnet50 shapes, DINO training with synchronised batch statistics, releases in timm's
layout both ways, and fine-tuning."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import finetune as finetune_config
from configs import oceansar1
from oceansar import flops, release
from oceansar.apps.finetune import finetune
from oceansar.errors import ConfigError, DataError
from oceansar.experiment import Experiment, run_spec
from oceansar.models import resnet_layout, timm_layout
from oceansar.models.resnet import ResNet
from oceansar.train.state import STATE_VARIABLES


def _size(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_r50_has_timm_resnet50_shapes_and_cost():
    model = nnx.eval_shape(lambda: ResNet("R50", in_channels=1, rngs=nnx.Rngs(0)))
    # timm.create_model("resnet50", num_classes=0, in_chans=1): 23,501,760 parameters; 2 x 26,560 BN statistics.
    assert _size(nnx.state(model, nnx.Param)) == 23_501_760
    assert _size(nnx.state(model, nnx.BatchStat)) == 2 * 26_560
    graphdef, variables = nnx.split(model)
    out = jax.eval_shape(lambda v, x: nnx.merge(graphdef, v)(x), variables,
                         jax.ShapeDtypeStruct((2, 224, 224, 1), jnp.float32))
    assert out["cls"].shape == (2, 2048) and out["patch"].shape == (2, 49, 2048)
    # About 4.09 GMACs at 224 px with 3 channels, as torchvision and timm report for resnet50.
    assert flops.resnet_forward_flops("R50", 224, in_channels=3) / 2 == pytest.approx(4.09e9, rel=0.01)


@pytest.mark.parametrize("size", [64, 96])
def test_flop_formula_counts_the_traced_convolutions(size):
    model = ResNet("Rmu", in_channels=2, rngs=nnx.Rngs(0))
    jaxpr = jax.make_jaxpr(lambda x: model(x))(jnp.zeros((1, size, size, 2)))
    assert flops.jaxpr_matmul_flops(jaxpr) == flops.resnet_forward_flops("Rmu", size, in_channels=2)


def _spec(**overrides):
    c = oceansar1.get_config("smoke,variant=R50")
    for key, value in overrides.items():
        parent, _, leaf = key.rpartition(".")
        setattr(c[parent] if parent else c, leaf, value)
    return run_spec(c)


def _train(exp: Experiment, steps: int):
    state, step = exp.init_state(), exp.compile_train_step(np.uint8, log=False)
    rng, shardings = np.random.default_rng(0), jax.tree.map(lambda s: s.sharding, exp.batch_spec(np.uint8))
    states, losses = [state], []
    for i in range(steps):
        b = exp.spec.batch_size
        batch = {"image": rng.integers(0, 256, (b, 64, 64, 1), np.uint8), "sample_id": np.arange(b) + b * i,
                 "weight": np.ones(b, np.float32)}
        state, metrics, _ = step(jax.tree.map(jnp.copy, state), jax.device_put(batch, shardings))
        states.append(state)
        losses.append(float(metrics["train/loss"]))
    return states, losses, metrics


@pytest.fixture(scope="module")
def trained():
    exp = Experiment.build(_spec(), num_samples=64)
    return (exp, *_train(exp, 2))


def test_dino_trains_with_batch_statistics_of_each_network(trained):
    exp, states, losses, metrics = trained
    assert exp.spec.model.variant == "Rmu" and exp.mesh.size == 8 and all(np.isfinite(losses))
    pure = [(nnx.to_pure_dict(s.params)["backbone"], nnx.to_pure_dict(s.teacher)["backbone"]) for s in states]
    (student0, teacher0), (student1, teacher1) = pure[0], pure[1]
    # The student's and the teacher's running statistics both moved, each from its own forward passes.
    for tree in (student1, teacher1):
        assert np.abs(np.asarray(tree["bn1"]["mean"])).max() > 0
    assert not np.allclose(np.asarray(student1["bn1"]["mean"]), np.asarray(teacher1["bn1"]["mean"]))
    # The teacher's parameters are the EMA of the student's; its statistics are not.
    m = float(metrics["train/teacher_momentum"])
    ema = lambda t, s: m * np.asarray(t) + (1 - m) * np.asarray(s)  # noqa: E731
    np.testing.assert_allclose(np.asarray(teacher1["layer1"][0]["conv2"]["kernel"]),
                               ema(teacher0["layer1"][0]["conv2"]["kernel"], student1["layer1"][0]["conv2"]["kernel"]),
                               rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.asarray(teacher1["bn1"]["mean"]), ema(teacher0["bn1"]["mean"], student1["bn1"]["mean"]))


def test_batch_statistics_are_the_global_batchs():
    """Synchronised batch norm: a batch sharded over 8 devices is normalised and tracked as it is on one."""
    model = ResNet("Rmu", in_channels=1, rngs=nnx.Rngs(0))
    graphdef, variables = nnx.split(model)
    x = np.random.default_rng(0).normal(size=(16, 64, 64, 1)).astype(np.float32) * np.arange(1, 17)[:, None, None, None]

    @jax.jit
    def forward(variables, x):
        net = nnx.merge(graphdef, variables)
        return net(x, train=True)["cls"], nnx.state(net, nnx.BatchStat)

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    assert len(sharded.sharding.device_set) == 8
    (one, one_stats), (eight, eight_stats) = forward(variables, x), forward(variables, sharded)
    np.testing.assert_allclose(np.asarray(eight), np.asarray(one), rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(one_stats), jax.tree.leaves(eight_stats)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("field, value, match", [
    ("ibot.weight", 1.0, "config.ibot.weight: iBOT masks patch tokens"),
    ("model.drop_path_rate", 0.1, "config.model.drop_path_rate: 0.1 is a ViT option"),
    ("crops.local_size", 48, "config.crops.local_size: 48 must be a positive multiple of the output stride 32 of Rmu"),
    ("model.variant", "R51", "config.model.variant: unknown ResNet 'R51'; known: Rmu, R26, R50"),
])
def test_config_errors_name_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        _spec(**{field: value})


@pytest.fixture(scope="module")
def released(trained, tmp_path_factory):
    exp, states, _, _ = trained
    return exp, states[-1], release.export(tmp_path_factory.mktemp("resnet") / "release",
                                           teacher_params=states[-1].teacher, spec=exp.spec)


def test_release_loads_in_timm_with_the_teachers_features(released):
    exp, state, path = released
    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == "resnet26" and config["model_args"]["layers"] == [1, 1, 1, 1]
    assert config["pretrained_cfg"]["classifier"] == "fc" and "ResNet-mu" in (path / "README.md").read_text()
    weights = timm_layout.read_safetensors(path / "model.safetensors")
    assert weights["layer2.0.downsample.0.weight"].shape == (64, 32, 1, 1) and "bn1.running_var" in weights
    backbone, spec = release.load(path)
    x = np.random.default_rng(1).normal(size=(3, 64, 64, 1)).astype(np.float32)
    teacher = nnx.merge(exp.backbone_graphdef, state.teacher["backbone"])
    np.testing.assert_array_equal(np.asarray(backbone(x)["cls"]), np.asarray(teacher(x)["cls"]))
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    model = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(got, np.asarray(backbone(x)["cls"]), rtol=1e-4, atol=1e-5)


def _random(like: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (rng.normal(size=x.shape) * 0.1 + (1.0 if x.ndim == 1 else 0.0)).astype(x.dtype),
                        like)


def test_import_of_a_timm_rgb_file_sums_the_stem_and_reports_everything():
    rgb = ResNet("Rmu", in_channels=3, rngs=nnx.Rngs(0))
    _, rgb_state = nnx.split(rgb, STATE_VARIABLES)
    nnx.replace_by_pure_dict(rgb_state, _random(nnx.to_pure_dict(rgb_state), 0))
    nnx.update(rgb, rgb_state)
    file = {f"module.{k}": v for k, v in resnet_layout.to_timm(nnx.to_pure_dict(rgb_state)).items()}
    file |= {"module.fc.weight": np.zeros((10, 256), np.float32), "module.fc.bias": np.zeros(10, np.float32)}
    gray = ResNet("Rmu", in_channels=1, rngs=nnx.Rngs(1))
    _, gray_state = nnx.split(gray, STATE_VARIABLES)
    loaded, report = resnet_layout.from_timm(file, jax.tree.map(np.asarray, nnx.to_pure_dict(gray_state)),
                                             source="rgb.safetensors")
    assert list(report.adapted) == ["conv1.kernel"] and "summed the 3" in report.adapted["conv1.kernel"]
    assert len(report.loaded) == len(jax.tree.leaves(gray_state)) and not report.created
    counters = [name for name in report.skipped if name.endswith(".num_batches_tracked")]   # one per batch norm
    assert len(counters) == 17 and set(report.skipped) - set(counters) == {"module.fc.bias", "module.fc.weight"}
    assert "prefix 'module.' stripped" in report.layout
    nnx.replace_by_pure_dict(gray_state, loaded)
    nnx.update(gray, gray_state)
    x = np.random.default_rng(2).normal(size=(2, 64, 64, 1)).astype(np.float32)
    # A gray image is the RGB network's input with three equal channels.
    np.testing.assert_allclose(np.asarray(gray(x)["cls"]), np.asarray(rgb(np.repeat(x, 3, -1))["cls"]),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="rgb.safetensors: no tensor layer1.0.conv1.weight"):
        resnet_layout.from_timm({k: v for k, v in file.items() if "layer1.0.conv1" not in k},
                                jax.tree.map(np.asarray, nnx.to_pure_dict(gray_state)), source="rgb.safetensors")
    file["module.layer4.1.conv1.weight"] = np.zeros((64, 256, 1, 1), np.float32)
    with pytest.raises(ValueError, match="has no place in our ResNet; the file has 5 blocks, this model 4"):
        resnet_layout.from_timm(file, jax.tree.map(np.asarray, nnx.to_pure_dict(gray_state)), source="x")


def test_init_from_a_resnet_release_and_from_a_vit_release_into_a_resnet(released, tmp_path):
    exp, state, path = released
    c = oceansar1.get_config("smoke,variant=R50")
    c.init_from = str(path)
    fresh = Experiment.build(run_spec(c), num_samples=64).init_state()
    for got, want in zip(jax.tree.leaves(fresh.teacher["backbone"]), jax.tree.leaves(state.teacher["backbone"])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    vit = Experiment.build(run_spec(oceansar1.get_config("smoke")), num_samples=64)
    vit_release = release.export(tmp_path / "vit", teacher_params=vit.init_state().teacher, spec=vit.spec)
    c.init_from = str(vit_release)
    with pytest.raises(DataError, match="config.init_from: .*no tensor bn1.bias .*the file holds a ViT"):
        Experiment.build(run_spec(c), num_samples=64).init_state()


def test_full_fine_tuning_updates_the_statistics_and_exports_fc(released, tmp_path):
    _, state, path = released
    c = finetune_config.get_config("smoke")
    c.init_from = str(path)
    with pytest.raises(ConfigError, match="config.finetune.drop_path_rate: 0.1 is stochastic depth"):
        finetune(c, tmp_path / "refused")
    c.finetune.drop_path_rate = 0.0
    summary = finetune(c, tmp_path)
    assert summary["loaded"]["created"] == [] and np.isfinite(summary["final"]["test/top1"])
    weights = timm_layout.read_safetensors(tmp_path / "release" / "model.safetensors")
    assert weights["fc.weight"].shape == (10, 256) and "head.weight" not in weights
    pretrained = nnx.to_pure_dict(state.teacher)["backbone"]["bn1"]["mean"]
    assert not np.allclose(weights["bn1.running_mean"], np.asarray(pretrained))  # trained with batch statistics
    timm = pytest.importorskip("timm")
    pytest.importorskip("torch")
    model = timm.create_model(f"local-dir:{tmp_path / 'release'}", pretrained=True)
    assert model.num_classes == 10 and model.fc.weight.shape == (10, 256)
