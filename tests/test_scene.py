"""Scene prototypes, scene assignment and stratified scene-aware sampling against numpy, and RS-Prune end to end."""
import numpy as np
import pytest

from curation import scene


def scenes_data(sizes=(300, 60, 20), d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = 3 * np.eye(d, dtype=np.float32)[:len(sizes)] + 0.2 * rng.standard_normal((len(sizes), d))
    label = np.repeat(np.arange(len(sizes)), sizes)
    x = (centres[label] + 0.6 * rng.standard_normal((label.size, d))).astype(np.float32)
    ref_label = np.repeat(np.array(["beach", "forest", "port"][:len(sizes)]), 15)
    ref = (centres[np.repeat(np.arange(len(sizes)), 15)] + 0.6 * rng.standard_normal((ref_label.size, d)))
    return x, label, ref.astype(np.float32), ref_label


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_prototypes_and_assignment_match_numpy():
    x, _, ref, ref_label = scenes_data()
    protos = scene.scene_prototypes(ref, ref_label)
    want = unit(np.stack([unit(ref)[ref_label == c].mean(axis=0) for c in np.unique(ref_label)]))
    np.testing.assert_allclose(protos, want, rtol=1e-5, atol=1e-6)
    assigned, dist = scene.assign_scenes(x, protos)
    cos = unit(x) @ protos.T
    np.testing.assert_array_equal(assigned, cos.argmax(axis=1))
    np.testing.assert_allclose(dist, 1 - cos.max(axis=1), atol=1e-5)


def test_quotas_are_stratified_and_exact():
    x, label, ref, ref_label = scenes_data()
    indices, info = scene.scene_aware_sample(x, ref, ref_label, 120, eta=0.5, key=1)
    assert indices.size == 120 and np.unique(indices).size == 120
    assert (info["scene"] == label).mean() > 0.95  # blobs are well separated
    sizes = np.bincount(info["scene"], minlength=3)
    small = sizes.argmin()
    assert info["scene_quota"][small] == sizes[small]  # the small scene is taken whole
    big = np.delete(info["scene_quota"], small)
    assert big.sum() == 120 - sizes[small] and abs(big[0] - big[1]) <= 1  # the rest split evenly
    np.testing.assert_array_equal(info["k_per_scene"], np.round(np.sqrt(sizes)).astype(int))
    # Within each scene the clusters' quotas are water-filled too: no cluster gets two more than another unless full.
    for s in range(3):
        clusters = np.flatnonzero(info["scene_of_cluster"] == s)
        got = np.bincount(info["cluster"][indices], minlength=info["scene_of_cluster"].size)[clusters]
        full = np.bincount(info["cluster"], minlength=info["scene_of_cluster"].size)[clusters]
        assert got.sum() == info["scene_quota"][s]
        assert (got[got < full] >= got.max() - 1).all()


def test_eta_zero_takes_representatives_closest_to_the_centroid():
    x, _, ref, ref_label = scenes_data(seed=3)
    indices, info = scene.scene_aware_sample(x, ref, ref_label, 60, eta=0.0, key=2)
    picked = np.zeros(x.shape[0], bool)
    picked[indices] = True
    for c in np.unique(info["cluster"]):
        members = info["cluster"] == c
        if picked[members].any() and not picked[members].all():
            assert info["cluster_distance"][members & picked].max() <= info["cluster_distance"][members & ~picked].min()


def test_rs_prune_drops_low_entropy_first():
    x, _, ref, ref_label = scenes_data(seed=4)
    ent = np.random.default_rng(0).random(x.shape[0]).astype(np.float32)
    indices, info = scene.rs_prune(x, ent, ref, ref_label, 100, entropy_percentile=30, key=0)
    assert indices.size == 100 and np.unique(indices).size == 100
    assert info["entropy_kept"][indices].all() and info["entropy_kept"].mean() == pytest.approx(0.7, abs=0.01)
    assert (info["scene"][~info["entropy_kept"]] == -1).all()
    with pytest.raises(ValueError, match="exceeds"):
        scene.rs_prune(x, ent, ref, ref_label, 300, entropy_percentile=30)


def test_bad_input_is_a_clear_error():
    x, _, ref, ref_label = scenes_data()
    with pytest.raises(ValueError, match="target"):
        scene.scene_aware_sample(x, ref, ref_label, x.shape[0] + 1)
    with pytest.raises(ValueError, match="dimension"):
        scene.scene_aware_sample(x[:, :4], ref, ref_label, 10)
    with pytest.raises(ValueError, match="ref_labels"):
        scene.scene_prototypes(ref, ref_label[:-1])
