"""The DINOv2 objective's parts against numpy references: iBOT block masks and patch loss, Sinkhorn-Knopp, KoLeo on
copies, WSD schedules, and the train step that combines them."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from oceansar import masking
from oceansar.experiment import Experiment, run_spec
from oceansar.losses import centering, ibot, koleo
from oceansar.train import step as step_lib


def _ibot_reference_mask(rng, h, w, probability, ratio):
    """iBOT's loader (`ImageFolderMask.__getitem__`, block mode) for one image, in numpy."""
    mask = np.zeros((h, w), bool)
    if rng.random() >= probability:
        return mask
    high = int(rng.uniform(*ratio) * h * w)
    count = 0
    while count < high:
        remaining = high - count
        delta = 0
        for _ in range(masking.TRIES):
            low = (min(h, w) // 3) ** 2
            area = low + (remaining - low) * rng.random()  # Python's random.uniform: either bound order
            aspect = math.exp(rng.uniform(math.log(masking.ASPECT[0]), math.log(masking.ASPECT[1])))
            bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if bw < w and bh < h:
                top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
                new = bh * bw - mask[top:top + bh, left:left + bw].sum()
                if 0 < new <= remaining:
                    mask[top:top + bh, left:left + bw] = True
                    delta += new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def _mask_stats(masks, h, w):
    """Share of masked images, mean masked fraction of those, masked 4-neighbours per masked patch."""
    masks = masks.reshape(-1, h, w)
    frac = masks.mean((1, 2))
    on = masks[frac > 0]
    pad = np.pad(on, ((0, 0), (1, 1), (1, 1)))
    neighbours = (pad[:, :-2, 1:-1] & on).sum() + (pad[:, 2:, 1:-1] & on).sum() + \
        (pad[:, 1:-1, :-2] & on).sum() + (pad[:, 1:-1, 2:] & on).sum()
    return (frac > 0).mean(), frac[frac > 0].mean(), neighbours / on.sum()


def test_block_masks_match_ibots_statistics():
    h = w = 14
    jax_masks = np.asarray(masking.block_masks(jax.random.PRNGKey(0), (2, 1000), (h, w), probability=0.5,
                                               ratio=(0.1, 0.5)))
    assert jax_masks.shape == (2, 1000, h * w) and jax_masks.dtype == bool
    # No mask exceeds the most a ratio below 0.5 allows.
    assert jax_masks.sum(-1).max() <= masking.max_masked(h * w, (0.1, 0.5))
    rng = np.random.default_rng(0)
    ref = np.stack([_ibot_reference_mask(rng, h, w, 0.5, (0.1, 0.5)) for _ in range(2000)])
    (p_jax, r_jax, n_jax), (p_ref, r_ref, n_ref) = _mask_stats(jax_masks, h, w), _mask_stats(ref, h, w)
    assert abs(p_jax - 0.5) < 0.04 and abs(p_ref - 0.5) < 0.04
    assert abs(r_jax - r_ref) < 0.02, (r_jax, r_ref)
    # Blocks, not scattered patches: a masked patch has about 3 masked neighbours in both (about 0.3 if random).
    assert abs(n_jax - n_ref) < 0.15 and n_jax > 2.5, (n_jax, n_ref)


def test_block_masks_are_reproducible_and_respect_the_probability():
    key = jax.random.PRNGKey(3)
    a = masking.block_masks(key, (64,), (6, 6), probability=1.0, ratio=(0.2, 0.3))
    np.testing.assert_array_equal(a, masking.block_masks(key, (64,), (6, 6), probability=1.0, ratio=(0.2, 0.3)))
    assert np.asarray(a).any(-1).all()
    assert not np.asarray(masking.block_masks(key, (64,), (6, 6), probability=0.0, ratio=(0.2, 0.3))).any()


def test_masked_positions_put_masked_patches_first():
    masks = np.zeros((2, 3, 10), bool)
    masks[0, 0, [7, 2, 9]] = True
    masks[1, 2, :5] = True
    idx, valid = masking.masked_positions(jnp.asarray(masks), 5)
    np.testing.assert_array_equal(idx[0, 0], [2, 7, 9, 0, 1])
    np.testing.assert_array_equal(valid[0, 0], [True, True, True, False, False])
    np.testing.assert_array_equal(idx[1, 2], [0, 1, 2, 3, 4])
    assert np.asarray(valid[1, 2]).all() and not np.asarray(valid[0, 1]).any()
    np.testing.assert_array_equal(np.take_along_axis(masks, np.asarray(idx), -1), valid)


def _log_softmax(x):
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_patch_loss_matches_ibot_and_ignores_unmasked_positions():
    rng = np.random.default_rng(1)
    n_global, b, k, kk = 2, 4, 6, 9
    student = rng.normal(scale=2, size=(n_global, b, k, kk)).astype(np.float32)
    teacher_p = np.exp(_log_softmax(rng.normal(scale=2, size=(n_global, b, k, kk)))).astype(np.float32)
    valid = rng.random((n_global, b, k)) < 0.5
    valid[0, 0] = False  # an unmasked crop contributes 0
    per_sample, aux = ibot.patch_loss(student, teacher_p, valid, student_temp=0.1)
    # iBOT's loss2 per (crop, image): sum over masked tokens / max(count, 1); then the mean over crops.
    ce = -(teacher_p * _log_softmax(student / 0.1)).sum(-1)
    ref = ((ce * valid).sum(-1) / np.maximum(valid.sum(-1), 1)).mean(0)
    np.testing.assert_allclose(per_sample, ref, rtol=1e-5)
    np.testing.assert_allclose(aux["ce_patch"], (ce * valid).sum() / valid.sum(), rtol=1e-5)
    changed = np.where(valid[..., None], student, rng.normal(size=student.shape).astype(np.float32))
    np.testing.assert_allclose(ibot.patch_loss(changed, teacher_p, valid, student_temp=0.1)[0], per_sample,
                               rtol=1e-6)


def _sinkhorn_reference(logits, temp, iterations):
    """DINOv2's `SinkhornKnopp.sinkhorn_knopp_teacher` on one process, in float64."""
    q = np.exp(logits.astype(np.float64) / temp).T  # [K, B]
    n_b, n_k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= n_k
        q /= q.sum(axis=0, keepdims=True)
        q /= n_b
    return (q * n_b).T


def test_sinkhorn_knopp_matches_dinov2_and_normalises():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 16, 12)).astype(np.float32)
    q = np.asarray(centering.sinkhorn_knopp(logits, 0.5, iterations=3))
    np.testing.assert_allclose(q.reshape(32, 12), _sinkhorn_reference(logits.reshape(32, 12), 0.5, 3), rtol=1e-4)
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-5)  # every sample a distribution
    many = np.asarray(centering.sinkhorn_knopp(logits, 0.5, iterations=200)).reshape(32, 12)
    np.testing.assert_allclose(many.sum(0), 32 / 12, rtol=1e-3)  # every prototype the same mass
    # Padding carries no mass: the valid rows equal Sinkhorn-Knopp on the valid samples alone.
    valid = rng.random((2, 16)) < 0.6
    padded = np.asarray(centering.sinkhorn_knopp(logits, 0.5, valid=jnp.asarray(valid), iterations=3))
    np.testing.assert_allclose(padded[valid], _sinkhorn_reference(logits[valid], 0.5, 3), rtol=1e-4)
    assert not padded[~valid].any()
    # Large logits (a learned prototype gain) do not overflow.
    assert np.isfinite(np.asarray(centering.sinkhorn_knopp(logits * 100, 0.04))).all()


def test_koleo_is_finite_with_gradients_on_a_batch_of_copies():
    x = np.tile(np.random.default_rng(4).normal(size=(1, 8)).astype(np.float32), (6, 1))
    value, grad = jax.value_and_grad(koleo.koleo_loss)(x)
    assert np.isfinite(value) and value == pytest.approx(-math.log(1e-8), rel=1e-6)
    assert np.isfinite(np.asarray(grad)).all()
    # Some copies among distinct vectors: finite, with gradients for the distinct ones.
    y = np.random.default_rng(5).normal(size=(6, 8)).astype(np.float32)
    y[3] = y[0]
    value, grad = jax.value_and_grad(koleo.koleo_loss)(np.stack([y, y]))
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_wsd_shapes(shape, mid):
    f = lambda s: float(step_lib.schedules.wsd(s, start=0.2, peak=1.0, end=0.0, warmup_steps=10,  # noqa: E731
                                               decay_steps=20, total_steps=100, shape=shape))
    assert f(0) == pytest.approx(0.2) and f(5) == pytest.approx(0.6) and f(10) == pytest.approx(1.0)
    assert f(79) == 1.0 and f(90) == pytest.approx(mid, abs=1e-6) and f(100) == pytest.approx(0.0, abs=1e-7)


def test_scheduled_follows_the_config_per_quantity():
    config = default.get_config("smoke")
    config.total_examples = 16 * 100
    config.optim.warmup_examples = 16 * 10
    config.schedules.lr = "wsd"
    config.schedules.weight_decay = "wsd"
    config.schedules.decay_fraction = 0.2
    config.schedules.decay_shape = "linear"
    spec = run_spec(config)
    budget = step_lib.Budget.from_spec(spec)
    assert budget.decay_steps == 20
    at = lambda s: {k: float(v) for k, v in step_lib.scheduled(s, spec, budget).items()}  # noqa: E731
    peak = spec.optim.base_lr * 16 / 256
    assert at(5)["lr"] == pytest.approx(peak / 2) and at(50)["lr"] == pytest.approx(peak)
    assert at(100)["lr"] == pytest.approx(spec.optim.min_lr)
    # WSD weight decay: flat at its start through the stable phase, then up to its end value.
    assert at(0)["weight_decay"] == at(79)["weight_decay"] == pytest.approx(spec.optim.weight_decay)
    assert at(90)["weight_decay"] == pytest.approx((spec.optim.weight_decay + spec.optim.weight_decay_end) / 2)
    # Teacher momentum stayed cosine: it moves from the first step.
    assert spec.dino.teacher_momentum < at(50)["teacher_momentum"] < 1.0


def test_oceansar2_smoke_recipe_end_to_end(tmp_path):
    import json

    from configs import oceansar2
    from oceansar.apps.pretrain import pretrain

    config = oceansar2.get_config("smoke")
    summary = pretrain(config, tmp_path)
    assert summary["steps"] == config.total_examples // config.batch_size
    assert all(np.isfinite(v) for v in summary["final"].values())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert train and all(np.isfinite(r["train/ibot_loss"]) and np.isfinite(r["train/koleo"]) for r in train)
    for r in train:
        # The loss table sees DINO + iBOT per image; KoLeo, a batch term, is added to the scalar only.
        assert r["train/loss_unweighted"] == pytest.approx(r["train/dino_loss"] + r["train/ibot_loss"], rel=1e-5)
        assert 0 < r["train/ibot/masked_fraction"] < 0.5 and np.isfinite(r["train/ibot/teacher_entropy"])
        assert np.isfinite(r["train/ibot/teacher_kl_to_uniform"])
    warm = [r for r in train if r["train/weight_mean"] == 1.0]  # full data: unit weights
    assert warm and all(r["train/loss"] == pytest.approx(r["train/loss_unweighted"] + 0.1 * r["train/koleo"],
                                                         rel=1e-5) for r in warm)
    # Dynamic cluster-balanced pruning re-clustered the teacher's embeddings while the DINOv2 objective trained.
    assert max(r.get("pruning/resamplings", 0) for r in records) >= 1
    assert (tmp_path / "release").is_dir()


def test_mean_over_datasets_combines_bootstrap_stds_in_quadrature():
    from oceansar.evals import across

    results = {"wv/knn/top1_k1": 0.6, "wv/knn/top1_k1_std": 0.03, "ucm/knn/top1_k1": 0.8,
               "ucm/knn/top1_k1_std": 0.04, "ucm/knn/top1_k20": 0.7, "ucm/knn/top1_k20_std": 0.01,
               "wv/linear/top1": 0.5, "wv/linear/top1_std": 0.02}
    out = across.mean_over_datasets(results)
    assert out["mean/knn/top1_k1"] == pytest.approx(0.7) and out["mean/knn/top1_k1_datasets"] == 2
    assert out["mean/knn/top1_k1_std"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)
    assert "mean/knn/top1_k20" not in out and not any("linear" in k for k in out)  # one dataset; not k-NN
    assert across.mean_over_datasets({k: v for k, v in results.items() if k.startswith("wv/")}) == {}


def test_less_is_more_evaluates_real_datasets_and_their_mean(shared_data):
    from configs import less_is_more

    config = less_is_more.get_config(f"smoke,data_root={shared_data}")
    config.num_devices = 1
    exp = Experiment.build(run_spec(config), num_samples=config.data.num_samples)
    results = exp.evaluate(exp.init_state().teacher)
    names = ("wv", "ucm", "mstar", "opensarship")
    assert all(0 <= results[f"{n}/knn/top1_k1"] <= 1 and results[f"{n}/knn/top1_k1_std"] > 0 for n in names)
    mean = np.mean([results[f"{n}/knn/top1_k1"] for n in names])
    assert results["mean/knn/top1_k1"] == pytest.approx(mean) and results["mean/knn/top1_k1_datasets"] == 4
    assert ("mean/knn/top1_k1", "mean k-NN top-1 (k=1) over 4 datasets", True) in exp.headline()
