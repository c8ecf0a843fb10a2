"""End-to-end: the smoke recipe through launch.py, resume after kill -9, NaN guard, 1 vs 8 devices,
release round trip."""
import json

import jax
import numpy as np
import pytest
from absl import flags

import launch
from configs import common
from conftest import launch_and_kill
from oceansar import release, sharding
from oceansar.apps.pretrain import pretrain
from oceansar.checkpoint import Checkpointer
from oceansar.data import pipeline, sources
from oceansar.data.selection import Selection
from oceansar.experiment import Experiment, restore_latest, run_spec
from oceansar.train import loop

def _launch(*argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["launch.py", *argv])
    launch.main([])


def test_launch_smoke_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "run"
    _launch("--config=configs/default.py:smoke", f"--workdir={workdir}")
    out = capsys.readouterr().out
    assert "teacher after 192 examples" in out and "same architecture at random init" in out
    assert "wv/knn/top1_k20" in out

    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["variant"] == "mu/8"
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(2, 13, 2))
    assert all(r["examples_seen"] == 16 * r["step"] and np.isfinite(r["train/loss"]) for r in train)
    evals = [r for r in records if "eval/wv/knn/top1_k20" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert any(p.name.startswith("events") for p in (workdir / "tensorboard").iterdir())
    assert (workdir / "metrics.png").exists()
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 12 and set(summary["final"]) == set(summary["at_init"])
    assert [c[0] for c in summary["evaluated"]] == ["wv/knn/top1_k20", "wv/knn/balanced_acc_k20", "wv/linear/top1",
                                                    "wv/wind_speed/rmse", "wv/hs/rmse"]
    assert Checkpointer(workdir / "checkpoints").latest_step() == 12

    # Release round trip: the released backbone gives the checkpoint teacher's features.
    exp, state, _ = restore_latest(run_spec(launch._CONFIG.value), workdir)
    images = np.stack([exp.evaluators["wv"].splits[1][i]["image"] for i in range(4)])
    fn, params, _ = release.embedder(workdir / "release")
    np.testing.assert_array_equal(fn(params, images), exp.embed_fn("cls")(state.teacher, images))

    _launch("--config=configs/default.py:smoke", f"--workdir={workdir}", "--mode=evaluate")
    assert "wv/knn/top1_k20" in capsys.readouterr().out


RESUME = {"data.num_samples": 64,  # 3 steps per epoch with rho=0.75: resumes cross epochs
          "pruning.policy": "random", "pruning.rho": 0.75, "checkpoint_every_steps": 4,
          "evals.wv.every_examples": 0, "eval_at_init": False}
# The kill -9 test trains the DINOv2 objective with a separate patch head: the largest train state (iBOT centre and
# head) must come back bit for bit too. test_faults resumes the DINO objective after SIGTERM.
DINOV2 = {"ibot.weight": 1.0, "ibot.separate_head": True, "ibot.out_dim": 64, "dino.koleo_weight": 0.1}


def _resume_config(smoke_config, dinov2=False):
    c = smoke_config
    for field, value in (RESUME | DINOV2 if dinov2 else RESUME).items():
        block, _, name = field.rpartition(".")
        (c[block] if block else c)[name] = value
    return c


def _final_state(workdir, config):
    _, state, step = restore_latest(run_spec(config), workdir)
    return step, jax.device_get(state)


def test_resume_after_kill_is_bit_identical(tmp_path, smoke_config):
    config = _resume_config(smoke_config, dinov2=True)
    pretrain(config, tmp_path / "straight")

    # The same command in a subprocess, killed with SIGKILL once a mid-run checkpoint exists.
    killed = tmp_path / "killed"
    launch_and_kill(["--config=configs/default.py:smoke", f"--workdir={killed}",
                     *[f"--config.{k}={v}" for k, v in (RESUME | DINOV2).items()]], killed, at_step=4)
    interrupted_at = Checkpointer(killed / "checkpoints").latest_step()
    assert interrupted_at is not None and interrupted_at < 12

    pretrain(config, killed)  # rerun: resumes from the last committed step
    a_step, a = _final_state(tmp_path / "straight", config)
    b_step, b = _final_state(killed, config)
    assert a_step == b_step == 12
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert "ibot_head" in a.params and np.abs(a.center_patch).max() > 0  # iBOT's centre2 followed its teacher
    losses = lambda d: [r["train/loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                        if "train/loss" in r]
    assert losses(tmp_path / "straight") == losses(killed)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, smoke_config, monkeypatch):
    config = _resume_config(smoke_config)
    calls = {"n": 0}
    real = sharding.shard_batch

    def poisoned(mesh, batch):
        calls["n"] += 1
        if calls["n"] >= 6:  # from step 6 on the weights are NaN, so is the loss
            batch = dict(batch, weight=np.full_like(batch["weight"], np.nan))
        return real(mesh, batch)

    monkeypatch.setattr(loop.sharding, "shard_batch", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint"):
        pretrain(config, tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [4]
    step, state = _final_state(tmp_path, config)
    assert step == 4 and all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def _per_sample_losses(exp, state, train_step, batches) -> np.ndarray:
    """[steps, batch] per-sample losses of `train_step` from `state` over `batches`, each sharded on the mesh."""
    out = []
    for batch in batches:
        state, _, per_sample = train_step(
            state, sharding.shard_batch(exp.mesh, {k: batch[k] for k in ("image", "sample_id", "weight")}))
        out.append(np.asarray(per_sample))
    return np.stack(out)


def test_one_device_equals_eight(smoke_config):
    # The DINOv2 objective, a superset of DINO's step: iBOT masks, Sinkhorn-Knopp and KoLeo all reduce over the
    # global batch, so 8 devices must train what 1 does.
    config = smoke_config
    common.dinov2_objective(config)
    config.dino.centering = "sinkhorn_knopp"
    spec = run_spec(config)
    source = sources.make_pretrain_source(spec.data, seed=config.seed)
    batches = list(iter(pipeline.epoch_dataset(source, Selection.full(len(source)), seed=0, epoch=0,
                                               batch_size=config.batch_size)))[:3]
    losses = {}
    for n in (1, 8):
        config.num_devices = n
        exp = Experiment.build(run_spec(config), num_samples=len(source))
        losses[n] = _per_sample_losses(exp, exp.init_state(), exp.compile_train_step(np.uint8), batches)
    np.testing.assert_allclose(losses[1], losses[8], rtol=2e-4, atol=2e-4)


def test_fsdp_trains_what_data_parallel_trains_with_less_memory_per_device(smoke_config):
    # Parameters and optimizer state split over 8 devices (every tensor of at least 64 elements) must give the
    # losses of replicated data parallelism, and the compiled step must hold less of them on each device.
    config = smoke_config
    config.mesh.fsdp_min_size = 64
    spec = run_spec(config)
    source = sources.make_pretrain_source(spec.data, seed=config.seed)
    batches = list(iter(pipeline.epoch_dataset(source, Selection.full(len(source)), seed=0, epoch=0,
                                               batch_size=config.batch_size)))[:2]
    losses, memory = {}, {}
    for fsdp in (1, 8):
        config.mesh.fsdp = fsdp
        exp = Experiment.build(run_spec(config), num_samples=len(source))
        state = exp.init_state()
        kernel = state.params["backbone"]["blocks"][0]["fc1"]["kernel"][...]
        assert len(kernel.sharding.device_set) == 8
        assert kernel.addressable_shards[0].data.shape == ((32, 128) if fsdp == 1 else (32, 16))
        train_step = exp.compile_train_step(np.uint8)
        memory[fsdp] = train_step.memory_analysis().argument_size_in_bytes
        losses[fsdp] = _per_sample_losses(exp, state, train_step, batches)
    np.testing.assert_allclose(losses[1], losses[8], rtol=2e-4, atol=2e-4)
    assert memory[8] < 0.5 * memory[1], memory


def test_remat_recomputes_every_block_keeps_less_and_changes_no_loss(smoke_config):
    # What each block keeps for the backward pass shrinks, the losses do not change. XLA:CPU's temporaries do not
    # show the saving (benchmarks/step_memory.py), so the residuals of the backward, read off the jaxpr, are the
    # measure.
    from flax import nnx

    from benchmarks.step_memory import residual_bytes
    from oceansar.models.vit import ViT

    config = smoke_config
    spec = run_spec(config)
    source = sources.make_pretrain_source(spec.data, seed=config.seed)
    batch = next(iter(pipeline.epoch_dataset(source, Selection.full(len(source)), seed=0, epoch=0,
                                             batch_size=config.batch_size)))
    losses, kept = {}, {}
    for remat in ("none", "dots_saveable", "full"):
        config.model.remat = remat
        if remat != "dots_saveable":  # the policy only changes what is saved: the jaxpr check below suffices
            exp = Experiment.build(run_spec(config), num_samples=len(source))
            _, _, per_sample = exp.compile_train_step(np.uint8)(exp.init_state(), sharding.shard_batch(
                exp.mesh, {k: batch[k] for k in ("image", "sample_id", "weight")}))
            losses[remat] = np.asarray(per_sample)
        vit = ViT(config.model.variant, img_size=16, remat=remat, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(vit, nnx.Param)
        grad = jax.make_jaxpr(jax.grad(lambda p: nnx.merge(graphdef, p)(np.ones((2, 16, 16, 1)))["cls"].sum()))
        assert str(grad(params)).count("remat") == (0 if remat == "none" else len(vit.blocks))
        kept[remat] = residual_bytes(lambda p, x: nnx.merge(graphdef, p)(x)["patch"].sum(), params,
                                     jax.ShapeDtypeStruct((8, 16, 16, 1), np.float32))
    np.testing.assert_allclose(losses["full"], losses["none"], rtol=1e-5, atol=1e-5)
    assert kept["none"] > 2 * kept["dots_saveable"] > 2 * kept["full"] > 0, kept
