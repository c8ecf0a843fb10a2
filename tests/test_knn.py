"""k-NN, bootstrap and retrieval kernels against tiny numpy references, planted structure, and real MSTAR chips."""
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from oceansar.evals import knn, retrieval


def _normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def knn_reference(train, train_labels, test, k, temperature, num_classes):
    """DINO eval_knn in float64 numpy; stable sort so that lower train indices win similarity ties."""
    sim = _normalize(np.float64(test)) @ _normalize(np.float64(train)).T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weight = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)
    votes = np.zeros((test.shape[0], num_classes))
    np.add.at(votes, (np.arange(test.shape[0])[:, None], train_labels[top]), weight)
    return votes.argmax(axis=1)


def _blobs(rng, n, centers, spread=0.3):
    labels = np.arange(n) % centers.shape[0]
    return (centers[labels] + spread * rng.normal(size=(n, centers.shape[1]))).astype(np.float32), labels


@pytest.mark.parametrize("k", [1, 20])
def test_knn_matches_numpy_reference(k):
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(200, 16)).astype(np.float32), rng.normal(size=(70, 16)).astype(np.float32)
    train_labels = rng.integers(0, 5, 200)
    expected = knn_reference(train, train_labels, test, k, 0.07, 5)
    # block_size 32 leaves a padded last block (70 = 2 x 32 + 6).
    got = knn.knn_classify(train, train_labels, test, k=k, temperature=0.07, num_classes=5, block_size=32)
    np.testing.assert_array_equal(got, expected)


def test_knn_ties_are_deterministic():
    a, b = np.eye(4, dtype=np.float32)[:2]
    train = np.stack([a, a, b])
    train_labels = np.array([3, 1, 0])
    # Equal similarity: the lower train index is the nearest neighbour (label 3) ...
    assert knn.knn_classify(train, train_labels, a[None], k=1, num_classes=4)[0] == 3
    # ... and equal votes go to the lower class (1 beats 3).
    assert knn.knn_classify(train, train_labels, a[None], k=2, num_classes=4)[0] == 1
    assert knn_reference(train, train_labels, a[None], 2, 0.07, 4)[0] == 1


def test_knn_with_sharded_features_matches_unsharded():
    rng = np.random.default_rng(1)
    train, train_labels = _blobs(rng, 64, rng.normal(size=(4, 16)) * 3.0)
    test = rng.normal(size=(24, 16)).astype(np.float32)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    expected = knn.knn_classify(train, train_labels, test, k=5, num_classes=4)
    got = knn.knn_classify(jax.device_put(train, sharding), train_labels, jax.device_put(test, sharding), k=5,
                           num_classes=4)
    np.testing.assert_array_equal(got, expected)


def test_bootstrap_matches_numpy_reference_and_binomial_std():
    rng = np.random.default_rng(2)
    correct = rng.random(500) < 0.7
    labels = rng.integers(0, 3, 500)
    mean, std = knn.bootstrap_accuracy(correct, n_bootstrap=400, seed=5)
    resamples = knn.bootstrap_indices(500, 400, 5)
    accuracies = correct[resamples].mean(axis=1)
    np.testing.assert_allclose([mean, std], [accuracies.mean(), accuracies.std()], rtol=1e-5)
    # A resample of a 0/1 vector is a binomial draw: std ~ sqrt(p (1 - p) / n).
    p = correct.mean()
    assert abs(std / np.sqrt(p * (1 - p) / 500) - 1) < 0.15

    stats = knn.bootstrap_classification(correct[None], labels, num_classes=3, n_bootstrap=400, seed=5)
    per_class = np.stack([
        np.array([correct[r][labels[r] == c].mean() for c in range(3)]).mean() for r in resamples])
    np.testing.assert_allclose(stats["acc"][0], mean, rtol=1e-6)
    np.testing.assert_allclose([stats["balanced_acc"][0], stats["balanced_acc_std"][0]],
                               [per_class.mean(), per_class.std()], rtol=1e-4)
    assert knn.bootstrap_accuracy(correct, n_bootstrap=400, seed=5) == (mean, std)
    assert knn.bootstrap_accuracy(correct, n_bootstrap=400, seed=6) != (mean, std)


def test_knn_eval_separable_blobs_and_keys():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 16)) * 3.0
    train, train_labels = _blobs(rng, 120, centers)
    test, test_labels = _blobs(rng, 120, centers)
    result = knn.knn_eval(train, train_labels, test, test_labels, num_classes=4, n_bootstrap=50)
    assert set(result) == {f"knn/{m}_k{k}{s}" for m in ("top1", "balanced_acc") for k in (1, 20)
                           for s in ("", "_std")}
    assert result["knn/top1_k1"] == 1.0 and result["knn/top1_k20"] == 1.0
    assert result["knn/balanced_acc_k20"] == 1.0 and result["knn/top1_k20_std"] < 1e-6


def test_validation_errors_name_the_array():
    train = np.ones((10, 4), np.float32)
    labels = np.zeros(10, int)
    bad = train.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="test_feats contains 1 non-finite"):
        knn.knn_classify(train, labels, bad, num_classes=2, k=1)
    with pytest.raises(ValueError, match="train_labels has shape"):
        knn.knn_classify(train, labels[:9], train, num_classes=2, k=1)
    with pytest.raises(ValueError, match=r"train_labels must lie in \[0, num_classes=2\)"):
        knn.knn_classify(train, labels + 2, train, num_classes=2, k=1)
    with pytest.raises(ValueError, match="n_train=10"):
        knn.knn_classify(train, labels, train, num_classes=2, k=20)
    with pytest.raises(ValueError, match="gallery_feats contains"):
        retrieval.recall_at_k(train, bad, np.arange(10))
    with pytest.raises(ValueError, match="query_to_gallery must index"):
        retrieval.recall_at_k(train, train, np.arange(10) + 1)


def test_recall_at_k_matches_numpy_reference_with_ties():
    rng = np.random.default_rng(4)
    # +-1 entries in 16 dimensions: normalised dot products are exact multiples of 1/16, so ties
    # (including the planted duplicate 5 == 40) are exact in float32 and float64 alike.
    gallery = rng.choice([-1.0, 1.0], size=(64, 16)).astype(np.float32)
    gallery[40] = gallery[5]
    targets = rng.permutation(64)[:48]
    targets[0] = 40
    queries = gallery[targets] + np.where(np.arange(48) % 2, 0.0, 0.4)[:, None] * rng.choice([-1.0, 1.0], (48, 16))
    queries[0] = gallery[40]
    sim = _normalize(np.float64(queries)) @ _normalize(np.float64(gallery)).T
    ranks = np.argsort(np.argsort(-sim, axis=1, kind="stable"), axis=1)[np.arange(48), targets]
    got = retrieval.recall_at_k(queries, gallery, targets, ks=(1, 5, 10), block_size=16)
    assert got == {f"recall@{k}": np.mean(ranks < k) for k in (1, 5, 10)}
    assert ranks[0] == 1  # the duplicate at index 5 ranks ahead of the match at 40


def test_knn_on_mstar_raw_pixels(shared_data):
    """16x16 raw-pixel features of a fifth of MSTAR: far above the 10% chance of 10 balanced classes."""
    from oceansar.data.folder import ImageFolderSource
    from oceansar.evals.features import extract_features

    root = shared_data / "mstar10"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    embed = jax.jit(lambda images: images.reshape(images.shape[0], -1).astype(np.float32))
    splits = {}
    for split in ("train", "test"):
        source = ImageFolderSource(root / split, image_size=16, channels=1)
        splits[split] = extract_features(embed, source, batch_size=128, indices=np.arange(0, len(source), 5))
    start = time.perf_counter()
    result = knn.knn_eval(splits["train"]["features"], splits["train"]["label"], splits["test"]["features"],
                          splits["test"]["label"], num_classes=10, n_bootstrap=200)
    print(f"MSTAR raw 16x16 pixels, {len(splits['train']['label'])} train / {len(splits['test']['label'])} test:",
          {k: round(v, 4) for k, v in result.items()}, f"({time.perf_counter() - start:.2f} s)")
    assert result["knn/top1_k1"] > 0.5
    assert result["knn/balanced_acc_k1"] > 0.5
