"""Schedules, per-tensor clipping, the loss-statistics table and config validation."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from oceansar import sharding
from oceansar.pruning import loss_stats
from oceansar.spec import OptimSpec, RunSpec, build
from oceansar.train import optimizer, schedules


def test_warmup_cosine_endpoints():
    f = lambda s: float(schedules.warmup_cosine(s, peak=1.0, end=0.1, warmup_steps=10, total_steps=110))
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_cosine_and_teacher_temp():
    assert float(schedules.cosine(0, start=0.996, end=1.0, total_steps=100)) == pytest.approx(0.996)
    assert float(schedules.cosine(100, start=0.996, end=1.0, total_steps=100)) == pytest.approx(1.0)
    t = [float(schedules.linear_warmup(s, start=0.04, end=0.07, warmup_steps=30)) for s in (0, 15, 30, 99)]
    np.testing.assert_allclose(t, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)


def test_wsd_phases():
    f = lambda s: float(schedules.wsd(s, start=0.0, peak=1.0, end=0.0, warmup_steps=10, decay_steps=20,
                                      total_steps=100, shape="linear"))
    assert f(5) == pytest.approx(0.5) and f(50) == 1.0 and f(90) == pytest.approx(0.5) and f(100) == 0.0


def test_clip_per_tensor_scales_each_tensor_alone():
    grads = {"a": jnp.array([30.0, 40.0]), "b": jnp.array([0.3, 0.4])}
    clipped, _ = optimizer.clip_per_tensor(3.0).update(grads, None)
    np.testing.assert_allclose(np.linalg.norm(clipped["a"]), 3.0, rtol=1e-5)
    np.testing.assert_allclose(clipped["b"], grads["b"])  # below the threshold: untouched


def test_weight_decay_only_on_matrices(smoke_config):
    tx = optimizer.make_optimizer(build(OptimSpec, smoke_config.optim, "optim"))
    params = {"w": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    state = optimizer.set_hyperparams(tx.init(params), learning_rate=1.0, weight_decay=0.5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)
    np.testing.assert_allclose(updates["w"], -0.5 * np.ones((2, 2)))
    np.testing.assert_allclose(updates["bias"], np.zeros(2))


def _numpy_table(n, batches, momentum):
    score, sq, count, last = np.zeros(n), np.zeros(n), np.zeros(n, int), -np.ones(n, int)
    for step, (ids, loss) in enumerate(batches):
        rel = loss - loss.mean()
        for i, r in zip(ids, rel):
            if count[i]:
                score[i] = momentum * score[i] + (1 - momentum) * r
                sq[i] = momentum * sq[i] + (1 - momentum) * r * r
            else:
                score[i], sq[i] = r, r * r
            count[i] += 1
            last[i] = step
    return score, sq, count, last


def test_loss_table_matches_numpy_under_sharding():
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    n, b = 50, 8
    batches = [(rng.choice(n, b, replace=False), rng.normal(3, 1, b).astype(np.float32)) for _ in range(6)]
    update = jax.jit(lambda t, i, l, w, s: loss_stats.update(t, i, l, w, s, momentum=0.7))
    table = sharding.replicate(mesh, loss_stats.init(n))
    for step, (ids, loss) in enumerate(batches):
        dev = sharding.shard_batch(mesh, {"i": ids, "l": loss, "w": np.ones(b, np.float32)})
        table = update(table, dev["i"], dev["l"], dev["w"], jnp.int32(step))
    score, sq, count, last = _numpy_table(n, batches, 0.7)
    np.testing.assert_allclose(table["score"], score, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table["score_sq"], sq, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table["count"], count)
    np.testing.assert_array_equal(table["last_step"], last)


@pytest.mark.parametrize("field,value,message", [
    ("model.variant", "Q/16", "config.model.variant"),
    ("batch_size", 12, "config.batch_size: 12 is not divisible by the 8 devices"),
    ("total_examples", -5, "config.total_examples"),
    ("optim.warmup_examples", -1, "config.optim.warmup_examples"),
    ("crops.global_size", 20, "config.crops.global_size"),
    ("pruning.policy", "magic", "config.pruning.policy"),
    ("pruning.embed_batch_size", 12, "config.pruning.embed_batch_size: 12 is not divisible by the 8 devices"),
    ("data.source", "s3", "config.data.source"),
    ("data.source", "folder", "config.data.root: the folder source needs a directory"),
    ("evals.wv.probes", ("knn", "svm"), "config.evals.wv.probes: unknown ['svm']"),
    ("evals.wv.source", "folder", "config.evals.wv.root"),
])
def test_validation_names_the_field(field, value, message):
    config = default.get_config("smoke")
    parent, _, leaf = field.rpartition(".")
    setattr(config[parent] if parent else config, leaf, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        RunSpec.from_config(config, num_devices=8)


def test_unknown_and_missing_fields_are_named():
    config = default.get_config("smoke")
    config.pruning.rhoo = 0.3
    with pytest.raises(ValueError, match=re.escape("config.pruning.rhoo: unknown field; did you mean rho?")):
        RunSpec.from_config(config)
    config = default.get_config("smoke")
    del config.optim["b2"]
    with pytest.raises(ValueError, match=re.escape("config.optim.b2: missing")):
        RunSpec.from_config(config)


def test_default_configs_are_valid():
    from configs import compare, less_is_more, oceansar1, oceansar2

    for config in (default.get_config(""), default.get_config("smoke"), default.get_config("variant=Ti/8"),
                   oceansar1.get_config("smoke"), compare.get_config("smoke"), oceansar2.get_config(""),
                   oceansar2.get_config("smoke"), less_is_more.get_config(""), less_is_more.get_config("smoke"),
                   less_is_more.get_config("smoke,data_root=/data")):
        spec = RunSpec.from_config(config, num_devices=8)
        assert spec.crops.global_size == config.crops.global_size and set(spec.evals) == set(config.evals)
    assert set(spec.evals) == {"wv", "ucm", "mstar", "opensarship"} and spec.evals["opensarship"].probes == ("knn",)
