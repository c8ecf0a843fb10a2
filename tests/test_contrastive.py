"""Image-text contrastive losses (CLIP InfoNCE, SigLIP sigmoid) against float64 numpy references, their learnable
temperatures, per-sample shares and weights, finite gradients, and equality of 1-device and 8-device batches."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from oceansar.losses import contrastive


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    # Tiny programs: XLA's optimisation passes cost more compile time than they save.
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


# Jitted once per argument structure: eager calls would compile every small op on its own.
clip_loss = jax.jit(contrastive.clip_loss)
siglip_loss = jax.jit(contrastive.siglip_loss)
caption_to_image_loss = jax.jit(contrastive.caption_to_image_loss)


def _features(seed, b=8, d=12):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(b, d)).astype(np.float32)
    t = (0.6 * v + rng.normal(size=(b, d))).astype(np.float32)  # positives somewhat aligned
    return v, t


def _cosine(v, t):
    v = v.astype(np.float64) / np.linalg.norm(v, axis=1, keepdims=True)
    t = t.astype(np.float64) / np.linalg.norm(t, axis=1, keepdims=True)
    return v @ t.T


def _logsumexp(x, axis):
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _clip_reference(v, t, scale):
    logits = min(scale, 100.0) * _cosine(v, t)
    pos = np.diag(logits)
    return 0.5 * ((_logsumexp(logits, 1) - pos) + (_logsumexp(logits, 0) - pos))


def _siglip_reference(v, t, scale, bias):
    logits = scale * _cosine(v, t) + bias
    z = 2 * np.eye(len(v)) - 1
    nll = np.logaddexp(0.0, -z * logits)  # -log sigmoid(z * logits)
    return nll, 0.5 * (nll.sum(1) + nll.sum(0))


def test_clip_loss_matches_numpy_and_clips_the_scale():
    v, t = _features(0)
    log_scale = contrastive.CLIP_INIT_LOG_SCALE
    loss, per_sample, aux = clip_loss(v, t, log_scale)
    ref = _clip_reference(v, t, 1 / 0.07)
    # atol: a well-matched pair's loss (~1e-3) is the difference of two logsumexps of ~14 in float32.
    np.testing.assert_allclose(per_sample, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["logit_scale"], 1 / 0.07, rtol=1e-6)
    # CLIP's textbook form: the mean of the two cross-entropies.
    np.testing.assert_allclose(0.5 * (aux["ce_image_to_text"] + aux["ce_text_to_image"]), ref.mean(), rtol=1e-5)
    w = np.random.default_rng(1).random(8).astype(np.float32) * 2
    np.testing.assert_allclose(clip_loss(v, t, log_scale, weights=w)[0], (w * ref).mean(), rtol=1e-5)
    # The scale is clipped at 100: beyond it, the loss and the log-scale's gradient stop moving.
    big, _, aux_big = clip_loss(v, t, 7.0)
    np.testing.assert_allclose(aux_big["logit_scale"], 100.0, rtol=1e-6)
    np.testing.assert_allclose(big, _clip_reference(v, t, 100.0).mean(), rtol=1e-5)
    assert float(jax.jit(jax.grad(lambda s: clip_loss(v, t, s)[0]))(7.0)) == 0.0


def test_clip_loss_gradients_are_finite_and_point_the_right_way():
    v, t = _features(2)
    grads = jax.jit(jax.grad(lambda v, t, s: clip_loss(v, t, s)[0], argnums=(0, 1, 2)))(
        jnp.asarray(v), jnp.asarray(t), jnp.float32(math.log(1 / 0.07)))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # A perfectly aligned batch beats a shuffled one.
    assert clip_loss(v, v, 3.0)[0] < clip_loss(v, v[::-1], 3.0)[0]
    # Identical features (a batch of copies) stay finite: the loss is log B.
    copies = np.tile(v[:1], (8, 1))
    np.testing.assert_allclose(clip_loss(copies, copies, 3.0)[0], math.log(8), rtol=1e-5)


def test_siglip_loss_matches_numpy():
    v, t = _features(3)
    log_scale, bias = contrastive.SIGLIP_INIT_LOG_SCALE, contrastive.SIGLIP_INIT_BIAS
    loss, per_sample, aux = siglip_loss(v, t, log_scale, bias)
    nll, ref = _siglip_reference(v, t, 10.0, -10.0)
    np.testing.assert_allclose(per_sample, ref, rtol=1e-5)
    # The paper's normalisation: the sum over all B^2 pairs divided by B.
    np.testing.assert_allclose(loss, nll.sum() / len(v), rtol=1e-5)
    np.testing.assert_allclose(aux["logit_bias"], -10.0)
    w = np.random.default_rng(4).random(8).astype(np.float32)
    np.testing.assert_allclose(siglip_loss(v, t, log_scale, bias, weights=w)[0], (w * ref).mean(),
                               rtol=1e-5)
    # Large logits do not overflow the log-sigmoid.
    _, ref_big = _siglip_reference(v, t, math.exp(6.0), 3.0)
    np.testing.assert_allclose(siglip_loss(v, t, 6.0, 3.0)[1], ref_big, rtol=1e-5)
    grads = jax.jit(jax.grad(lambda v, t, s, b: siglip_loss(v, t, s, b)[0], argnums=(0, 1, 2, 3)))(
        jnp.asarray(v), jnp.asarray(t), jnp.float32(log_scale), jnp.float32(bias))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads) and float(grads[3]) != 0.0
    with pytest.raises(ValueError, match="weights must be"):
        siglip_loss(v, t, log_scale, bias, weights=w[:4])


def test_caption_to_image_loss_matches_numpy_and_ignores_zero_weight_rows():
    rng = np.random.default_rng(7)
    b, m, d = 6, 3, 12
    v = rng.normal(size=(b, d)).astype(np.float32)
    h = (0.5 * v[:, None] + rng.normal(size=(b, m, d))).astype(np.float32)
    h[2, 2] = 0.0                                         # a pad row (not encoded): weight 0, features 0
    w = rng.random((b, m)).astype(np.float32)
    w[2, 2] = 0.0
    w /= w.sum(1, keepdims=True)
    per_sample, aux = caption_to_image_loss(v, h, w, math.log(20.0))
    logits = 20.0 * _cosine(h.reshape(b * m, d).astype(np.float64) + 1e-30, v)  # [B m, B]: captions x images
    own = np.repeat(np.arange(b), m)
    ce = (_logsumexp(logits, 1) - logits[np.arange(b * m), own]).reshape(b, m)
    np.testing.assert_allclose(per_sample, (w * ce).sum(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["loss_caption_to_image"], (w * ce).sum() / w.sum(), rtol=1e-5)
    hits = (logits.argmax(1) == own).reshape(b, m)
    np.testing.assert_allclose(aux["accuracy_caption_to_image"], (w * hits).sum() / w.sum(), rtol=1e-5)
    # One caption per image at weight 1 is the text-to-image half of InfoNCE.
    one = np.zeros((b, m), np.float32)
    one[:, 0] = 1.0
    ref = _cosine(v, h[:, 0]) * 20.0
    np.testing.assert_allclose(caption_to_image_loss(v, h, one, math.log(20.0))[0],
                               _logsumexp(ref, 0) - np.diag(ref), rtol=1e-5, atol=1e-6)
    # SigLIP's terms: each caption against every image, the pairs' sigmoid losses summed.
    z = 2.0 * (own[:, None] == np.arange(b)[None, :]) - 1.0
    sig = np.logaddexp(0.0, -z * (logits - 3.0))                  # -log sigmoid(z (s cos + bias)), [B m, B]
    np.testing.assert_allclose(caption_to_image_loss(v, h, w, math.log(20.0), -3.0)[0],
                               (w * sig.sum(1).reshape(b, m)).sum(1), rtol=1e-5, atol=1e-6)
    grads = jax.jit(jax.grad(lambda v, h: caption_to_image_loss(v, h, w, 3.0)[0].sum(), argnums=(0, 1)))(v, h)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert not np.asarray(grads[1])[2, 2].any()          # the pad row gets no gradient
    with pytest.raises(ValueError, match="want image"):
        caption_to_image_loss(v, h, w[:, :2], 3.0)


def test_global_batch_on_eight_devices_equals_one_device():
    assert len(jax.devices()) == 8
    v, t = _features(5, b=16)
    w = np.random.default_rng(6).random(16).astype(np.float32)

    @jax.jit
    def both(v, t, w):
        clip = clip_loss(v, t, 2.5, weights=w)
        sig = siglip_loss(v, t, 2.0, -5.0, weights=w)
        captions = jnp.stack([t, v + t], axis=1)           # [B, 2, D]: two captions per image
        per_caption = caption_to_image_loss(v, captions, jnp.stack([w, 1 - w], axis=1), 2.5)[0]
        grad = jax.grad(lambda v: clip_loss(v, t, 2.5)[0] + siglip_loss(v, t, 2.0, -5.0)[0])(v)
        return clip[0], clip[1], sig[0], sig[1], per_caption, grad

    expected = both(v, t, w)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    got = both(*(jax.device_put(x, rows) for x in (v, t, w)))
    assert len(got[1].sharding.device_set) == 8
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
