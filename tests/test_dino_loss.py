"""DINO loss, EMA centering, collapse monitors and KoLeo against small numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from oceansar.losses.centering import teacher_probs, update_center
from oceansar.losses.dino import collapse_monitors, dino_loss
from oceansar.losses.koleo import koleo_loss

B, K = 5, 7


def _log_softmax(x):
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _softmax(x):
    return np.exp(_log_softmax(x))


def _reference(student, teacher, center, student_temp, teacher_temp):
    """DINOLoss.forward of the reference code, per sample: loop over (q, v != q) pairs, average the pair terms."""
    p = _softmax((teacher - center) / teacher_temp)
    log_q = _log_softmax(student / student_temp)
    terms = [-(p[q] * log_q[v]).sum(-1) for q in range(len(teacher)) for v in range(len(student)) if v != q]
    return np.mean(terms, axis=0)


def _logits(rng, n):
    return rng.normal(scale=3.0, size=(n, B, K)).astype(np.float32)


@pytest.mark.parametrize("n_global,n_local", [(2, 3), (2, 0), (3, 2)])
def test_dino_loss_matches_reference(n_global, n_local):
    rng = np.random.default_rng(n_global * 10 + n_local)
    teacher, s_global, s_local = _logits(rng, n_global), _logits(rng, n_global), _logits(rng, n_local)
    center = rng.normal(size=(1, K)).astype(np.float32)
    ref = _reference(np.concatenate([s_global, s_local]), teacher, center, 0.1, 0.04)
    per_sample, aux = dino_loss([s_global, s_local], teacher_probs(teacher, center, 0.04), student_temp=0.1)
    assert per_sample.shape == (B,)
    np.testing.assert_allclose(per_sample, ref, rtol=1e-5)
    # The batch mean is the reference's scalar loss (mean over pairs of batch means).
    np.testing.assert_allclose(np.mean(per_sample), np.mean(ref), rtol=1e-5)
    stacked, _ = dino_loss(np.concatenate([s_global, s_local]), teacher_probs(teacher, center[0], jnp.float32(0.04)),
                           student_temp=0.1)
    np.testing.assert_allclose(stacked, ref, rtol=1e-5)
    assert ("ce_local" in aux) == (n_local > 0)
    n_pairs = n_global * (n_global + n_local - 1)
    weighted = aux["ce_global"] * n_global * (n_global - 1) + aux.get("ce_local", 0.0) * n_global * n_local
    np.testing.assert_allclose(weighted / n_pairs, np.mean(ref), rtol=1e-5)


def test_dino_loss_gradient_flows_only_to_the_student():
    rng = np.random.default_rng(0)
    teacher, student = _logits(rng, 2), _logits(rng, 4)
    center = np.zeros((K,), np.float32)

    def loss(s, t):
        return jnp.mean(dino_loss(s, teacher_probs(t, center, 0.07), student_temp=0.1)[0])

    g_s, g_t = jax.grad(loss, argnums=(0, 1))(student, teacher)
    assert np.abs(g_s).max() > 0 and np.abs(g_t).max() == 0


def test_dino_loss_rejects_bad_layouts():
    t = np.zeros((2, B, K), np.float32)
    with pytest.raises(ValueError, match="global crops"):
        dino_loss([np.zeros((3, B, K), np.float32)], t, student_temp=0.1)
    with pytest.raises(ValueError, match="no \\(teacher, student\\) pair"):
        dino_loss(t[:1], t[:1], student_temp=0.1)


def test_update_center_matches_reference():
    rng = np.random.default_rng(1)
    teacher, center = _logits(rng, 2), rng.normal(size=(1, K)).astype(np.float32)
    ref = 0.9 * center + 0.1 * teacher.reshape(-1, K).mean(0, keepdims=True)
    new = update_center(center, teacher, 0.9)
    assert new.shape == (1, K) and new.dtype == np.float32
    np.testing.assert_allclose(new, ref, rtol=1e-6)
    np.testing.assert_allclose(update_center(center[0], teacher, 0.9), ref[0], rtol=1e-6)


def test_update_center_all_reduces_under_batch_sharding():
    """The global batch mean compiles to an all-reduce of [K], never an all-gather of the teacher logits."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    teacher = jax.device_put(np.ones((2, 16, K), np.float32), NamedSharding(mesh, P(None, "data")))
    hlo = jax.jit(update_center).lower(np.zeros((1, K), np.float32), teacher).compile().as_text()
    assert "all-reduce" in hlo and "all-gather" not in hlo


def test_collapse_monitors_uniform_versus_peaked():
    center = np.zeros((K,), np.float32)
    monitors = lambda t, **kw: collapse_monitors(teacher_probs(t, center, 0.04), **kw)  # noqa: E731
    uniform = monitors(np.zeros((2, B, K), np.float32))
    np.testing.assert_allclose(uniform["teacher_entropy"], np.log(K), rtol=1e-5)
    np.testing.assert_allclose(uniform["teacher_kl_to_uniform"], 0.0, atol=1e-6)
    # Every sample sure of prototype 0: entropy 0, mean distribution one-hot, KL = log K.
    peaked = monitors(np.broadcast_to(100.0 * np.eye(K)[0], (2, B, K)))
    np.testing.assert_allclose(peaked["teacher_entropy"], 0.0, atol=1e-5)
    np.testing.assert_allclose(peaked["teacher_kl_to_uniform"], np.log(K), rtol=1e-5)
    # Samples sure of different prototypes, used evenly: entropy 0 and KL 0.
    spread = monitors(100.0 * np.eye(K)[None].repeat(2, 0))
    np.testing.assert_allclose(spread["teacher_entropy"], 0.0, atol=1e-5)
    np.testing.assert_allclose(spread["teacher_kl_to_uniform"], 0.0, atol=1e-5)
    feats = np.random.default_rng(2).normal(size=(2, B, 16)).astype(np.float32)
    healthy = monitors(np.zeros((2, B, K)), student_embeddings=feats)
    collapsed = monitors(np.zeros((2, B, K)), student_embeddings=np.broadcast_to(feats[0, 0], feats.shape))
    assert healthy["student_feature_std"] > 0.1 and collapsed["student_feature_std"] < 1e-6


def _koleo_reference(x):
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    dots = x @ x.T
    np.fill_diagonal(dots, -1)
    nn = dots.argmax(1)
    return -np.mean(np.log(np.linalg.norm(x - x[nn], axis=-1) + 1e-8))


def test_koleo_matches_reference():
    x = np.random.default_rng(3).normal(size=(2, 9, 6)).astype(np.float32)
    np.testing.assert_allclose(koleo_loss(x[0]), _koleo_reference(x[0]), rtol=1e-5)
    # Crops are handled on their own and summed (DINOv2).
    np.testing.assert_allclose(koleo_loss(x), _koleo_reference(x[0]) + _koleo_reference(x[1]), rtol=1e-5)
    # Spreading points lowers it: a near-duplicate pair raises the loss.
    dup = x[0].copy()
    dup[1] = dup[0] + 1e-3
    assert koleo_loss(dup) > koleo_loss(x[0])
    with pytest.raises(ValueError, match="koleo_loss"):
        koleo_loss(x[0, 0])
