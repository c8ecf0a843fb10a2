"""The bf16 fast path: bf16 compute with float32 parameters, optimizer state, logits, softmax and loss, checked against
float32 compute with DINO's 65,536-prototype head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from oceansar.errors import ConfigError
from oceansar.experiment import Experiment, run_spec
from oceansar.spec import RunSpec
from oceansar.train.state import build_model
from oceansar.losses import centering, dino
from oceansar.models.dino_head import DINOModel
from oceansar.train import step as step_lib

K = 65536
MODEL = dict(img_size=32, in_channels=1, out_dim=K, hidden_dim=256, bottleneck_dim=256)


def _sharp_prototypes(xg) -> dict:
    """Initial parameters whose first prototypes are the global crops' own bottleneck features, so the teacher
    at tau_t = 0.04 puts a peak on each crop's prototype (logit 1 against about 0.3 elsewhere)."""
    model = DINOModel("mu/8", dtype=jnp.float32, rngs=nnx.Rngs(0), **MODEL)
    z = model.backbone(xg.reshape(-1, *xg.shape[2:]))["cls"]
    for i, layer in enumerate(model.head.mlp):
        z = layer(z)
        z = jax.nn.gelu(z, approximate=False) if i < len(model.head.mlp) - 1 else z
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    pure["head"]["last_layer"]["kernel"] = pure["head"]["last_layer"]["kernel"].at[:, :z.shape[0]].set(z.T)
    return pure


def _loss_and_grads(dtype, pure, xg, xl):
    graphdef, params = nnx.split(DINOModel("mu/8", dtype=dtype, rngs=nnx.Rngs(0), **MODEL), nnx.Param)
    nnx.replace_by_pure_dict(params, pure)

    def loss(params):
        model = nnx.merge(graphdef, params)
        teacher_p = centering.teacher_probs(jax.lax.stop_gradient(model(xg)["logits"]), jnp.zeros((K,)), 0.04)
        student = [model(xg)["logits"], model(xl)["logits"]]
        per_sample, _ = dino.dino_loss(student, teacher_p, student_temp=0.1)
        return per_sample.mean(), (per_sample, student[0], teacher_p)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def test_bf16_compute_tracks_float32_through_the_65536_prototype_head():
    rng = np.random.default_rng(0)
    xg = jnp.asarray(rng.normal(size=(2, 8, 32, 32, 1)), jnp.float32)
    xl = jnp.asarray(rng.normal(size=(2, 8, 16, 16, 1)), jnp.float32)
    pure = _sharp_prototypes(xg)
    (l32, (per32, logits32, p32)), g32 = _loss_and_grads(jnp.float32, pure, xg, xl)
    (l16, (per16, logits16, p16)), g16 = _loss_and_grads(jnp.bfloat16, pure, xg, xl)
    # Logits, the teacher's softmax, the loss and every gradient come back in float32.
    assert {logits16.dtype, p16.dtype, l16.dtype} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(g16)} == {jnp.dtype(jnp.float32)}
    assert float(p32.max()) > 100 / K                       # the teacher is far from uniform
    assert abs(float(l16 - l32)) / float(l32) < 1e-3         # measured 5e-5
    np.testing.assert_allclose(np.asarray(per16), np.asarray(per32), rtol=2e-3)   # measured 1.2e-4
    assert float(jnp.max(jnp.abs(p16 - p32))) < 5e-3         # measured 8e-4
    for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
        a, b = np.ravel(np.asarray(a)), np.ravel(np.asarray(b))
        if np.linalg.norm(a) > 0:                           # the iBOT mask token takes no gradient here
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.98   # measured >= 0.996


def test_the_bf16_train_step_keeps_its_state_in_float32():
    c = default.get_config("smoke")
    c.model.update(dtype="bfloat16", out_dim=K)
    exp = Experiment.build(run_spec(c), num_samples=64)
    fn = step_lib.make_train_step(exp.graphdef, exp.rest, exp.tx, exp.spec, exp.budget)
    state, metrics, per_sample = jax.eval_shape(fn, exp.abstract_state, exp.batch_spec(np.uint8))
    assert jax.tree.map(lambda x: x.dtype, state) == jax.tree.map(lambda x: x.dtype, exp.abstract_state)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)}
    assert state.center.shape == (K,) and state.center.dtype == jnp.float32
    assert metrics["train/loss"].dtype == per_sample.dtype == jnp.float32


def test_cudnn_attention_is_checked_before_anything_compiles():
    c = default.get_config("smoke")
    c.model.update(attention="cudnn", dtype="bfloat16")
    spec = RunSpec.from_config(c, num_devices=8, platform="gpu")
    model = build_model(spec)
    assert {blk.attn.implementation for blk in model.backbone.blocks} == {"cudnn"}
    with pytest.raises(ConfigError, match=r"config.model.attention: 'cudnn' needs a CUDA GPU; JAX's backend is 'cpu'"):
        run_spec(c)
    c.model.dtype = "float32"
    with pytest.raises(ConfigError, match="config.model.attention: cuDNN's flash attention computes in bfloat16"):
        RunSpec.from_config(c, num_devices=8, platform="gpu")
    c.model.update(dtype="bfloat16", variant="R50")
    with pytest.raises(ConfigError, match="config.model.attention: 'cudnn' is a ViT option"):
        RunSpec.from_config(c)
