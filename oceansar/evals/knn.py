"""Cosine k-NN classification on frozen features, with the test-set bootstrap of Barseghyan et al.
(TerraBytes @ ICML 2025).

Here live the weighted k-NN vote of DINO's `eval_knn.py` (votes weighted by exp(sim / T) over the top-k
neighbours; k = 1 is plain 1-NN), the bootstrap of a test-set metric (only the test predictions
are resampled, nothing is retrained), and the input checks every evaluator shares. Every kernel is jitted
and blockwise over test rows with static shapes, so memory is O(block x n_train), never O(n_test x n_train).
Feature extraction lives in `features.py` and the probes in `probes.py`; nothing here touches a model.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Resamples are drawn in chunks of at most this many gathered elements, so a 1000 x 100k bootstrap
# never materialises its whole index matrix.
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22


def check_features(name: str, x) -> jax.Array | np.ndarray:
    """Validates a feature matrix and returns it as float32, keeping a jax.Array (and its sharding) as one.

    Args:
      name: the argument's name, used in error messages.
      x: [N, D] features, numpy or jax (sharded or not), any float dtype.

    Returns:
      x as float32: a numpy array for host input, a jax.Array with the same sharding for device input.

    Raises:
      ValueError: if x is not 2-D, is empty, or holds NaN/Inf.
    """
    if isinstance(x, jax.Array):
        x = x.astype(jnp.float32)
        bad = int(jnp.sum(~jnp.isfinite(x))) if x.ndim == 2 else 0
    else:
        x = np.asarray(x, dtype=np.float32)
        bad = int(np.sum(~np.isfinite(x))) if x.ndim == 2 else 0
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] feature matrix, got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite values (NaN/Inf): the backbone diverged or "
                         f"the features were read before they were written")
    return x


def check_labels(name: str, y, n: int, num_classes: int) -> np.ndarray:
    """Validates integer class labels and returns them as an int32 numpy array.

    Args:
      name: the argument's name, used in error messages.
      y: [n] labels in [0, num_classes).
      n: the number of rows of the matching feature matrix.
      num_classes: the number of classes.

    Raises:
      ValueError: on a length mismatch, a non-integer value, or a label outside [0, num_classes).
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} has shape {y.shape} but its features have {n} rows")
    if y.dtype.kind not in "iub":
        if y.dtype.kind != "f" or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, num_classes={num_classes}), got range "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y.astype(np.int32)


def l2_normalize(x: jax.Array) -> jax.Array:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (torch F.normalize's floor)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pad_rows(x: jax.Array, block: int) -> tuple[jax.Array, int]:
    """Zero-pads the rows of x to a multiple of block; returns it and the number of blocks."""
    n_blocks = -(-x.shape[0] // block)
    return jnp.pad(x, ((0, n_blocks * block - x.shape[0]), (0, 0))), n_blocks


@functools.partial(jax.jit, static_argnames=("ks", "num_classes", "block", "matmul_dtype"))
def _knn_predict(train, train_labels, test, temperature, *, ks, num_classes, block, matmul_dtype):
    """Predictions [len(ks), n_test] of the exp(sim / T)-weighted vote over the top-k, for every k."""
    train_n = l2_normalize(train).astype(matmul_dtype)
    n_test = test.shape[0]
    test, n_blocks = pad_rows(test, block)
    k_max = max(ks)
    position = jnp.arange(k_max)

    def one_block(queries):
        queries = l2_normalize(queries).astype(matmul_dtype)
        sim = jnp.matmul(queries, train_n.T, preferred_element_type=jnp.float32)
        # lax.top_k puts the lower train index first among equal similarities: ties are deterministic.
        top_sim, top_idx = jax.lax.top_k(sim, k_max)
        top_labels = train_labels[top_idx]
        # Shifting by the row maximum leaves every vote ratio unchanged and keeps exp() finite for tiny T.
        # It is written as max(), not top_sim[:, :1]: XLA rewrites a slice of top_k's values into a full
        # stable sort of the [block, n_train] similarities, ~15x slower than its TopK kernel.
        weight = jnp.exp((top_sim - top_sim.max(axis=-1, keepdims=True)) / temperature)
        rows = jnp.arange(block)[:, None]
        predictions = []
        for k in ks:
            votes = jnp.zeros((block, num_classes), jnp.float32).at[rows, top_labels].add(
                jnp.where(position < k, weight, 0.0))
            # argmax returns the lowest class among equal votes.
            predictions.append(jnp.argmax(votes, axis=-1))
        return jnp.stack(predictions)

    predictions = jax.lax.map(one_block, test.reshape(n_blocks, block, -1))
    return predictions.transpose(1, 0, 2).reshape(len(ks), n_blocks * block)[:, :n_test]


def _knn_predictions(train_feats, train_labels, test_feats, *, ks: Sequence[int], temperature: float,
                     num_classes: int, block_size: int, matmul_dtype) -> np.ndarray:
    train_feats = check_features("train_feats", train_feats)
    test_feats = check_features("test_feats", test_feats)
    train_labels = check_labels("train_labels", train_labels, train_feats.shape[0], num_classes)
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train_feats has dimension {train_feats.shape[1]} but test_feats has "
                         f"{test_feats.shape[1]}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1 or max(ks) > train_feats.shape[0]:
        raise ValueError(f"every k must lie in [1, n_train={train_feats.shape[0]}], got ks={ks}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    block = min(int(block_size), test_feats.shape[0])
    predictions = _knn_predict(train_feats, jnp.asarray(train_labels), test_feats, jnp.float32(temperature),
                               ks=ks, num_classes=int(num_classes), block=block,
                               matmul_dtype=jnp.dtype(matmul_dtype))
    return np.asarray(predictions)


def knn_classify(train_feats, train_labels, test_feats, *, k: int = 20, temperature: float = 0.07,
                 num_classes: int, block_size: int = 1024, matmul_dtype=jnp.float32) -> np.ndarray:
    """Weighted cosine k-NN classification (DINO `eval_knn`).

    Features are L2-normalised; each test row's top-k train rows by cosine similarity vote for their
    label with weight exp(sim / T); the class with the most weight wins. k = 1 is plain 1-NN.
    Ties: among equal similarities the lower train index ranks first; among equal votes the lower
    class wins.

    Args:
      train_feats: [n_train, D] features (numpy or jax, sharded or not).
      train_labels: [n_train] integer labels in [0, num_classes).
      test_feats: [n_test, D] features.
      k: number of neighbours.
      temperature: T of the vote weights.
      num_classes: number of classes.
      block_size: test rows per block; memory is O(block_size x n_train).
      matmul_dtype: dtype of the similarity matmul (accumulation is always float32); bfloat16 on GPU.

    Returns:
      int32 predictions [n_test].
    """
    return _knn_predictions(train_feats, train_labels, test_feats, ks=(k,), temperature=temperature,
                            num_classes=num_classes, block_size=block_size, matmul_dtype=matmul_dtype)[0]


def resample_statistics(stat_fn, n: int, *, n_bootstrap: int, seed) -> tuple[jax.Array, jax.Array]:
    """Mean and std over test-set resamples of stat_fn(indices); call it inside a jitted function.

    Resample b draws n indices with replacement from fold_in(key(seed), b) (see `bootstrap_indices`).
    Resamples are evaluated in vmapped chunks so that at most ~4M indices exist at once.

    Args:
      stat_fn: maps int32 resample indices [n] to a statistic (any shape).
      n: test-set size.
      n_bootstrap: number of resamples B (static).
      seed: integer seed, may be traced.

    Returns:
      (mean, std) over the B resamples, std with ddof 0 as np.std.
    """
    key = jax.random.key(seed)

    def one(b):
        return stat_fn(jax.random.randint(jax.random.fold_in(key, b), (n,), 0, n))

    chunk = max(1, min(n_bootstrap, _BOOTSTRAP_CHUNK_ELEMENTS // max(n, 1)))
    stats = jax.lax.map(one, jnp.arange(n_bootstrap), batch_size=chunk)
    return stats.mean(axis=0), stats.std(axis=0)


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """The [n_bootstrap, n] resample indices that `resample_statistics` draws, for reproducing it.

    The bootstrap kernels never build this matrix.
    """
    key = jax.random.key(seed)
    return np.asarray(jax.vmap(lambda b: jax.random.randint(jax.random.fold_in(key, b), (n,), 0, n))(
        jnp.arange(n_bootstrap)))


def _check_bootstrap(n_bootstrap: int, n: int) -> None:
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if n == 0:
        raise ValueError("cannot bootstrap an empty test set")


@functools.partial(jax.jit, static_argnames=("n_bootstrap",))
def _bootstrap_accuracy(correct, seed, *, n_bootstrap):
    return resample_statistics(lambda idx: correct[idx].mean(), correct.shape[0], n_bootstrap=n_bootstrap,
                               seed=seed)


def bootstrap_accuracy(correct: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Mean and std of accuracy over test-set resamples; never retrains.

    Args:
      correct: [n_test] booleans (prediction == label).
      n_bootstrap: number of resamples B.
      seed: resample seed (see `bootstrap_indices`).

    Returns:
      (mean, std) of the B resampled accuracies.
    """
    correct = np.asarray(correct, dtype=np.float32).reshape(-1)
    _check_bootstrap(n_bootstrap, correct.shape[0])
    mean, std = _bootstrap_accuracy(correct, seed, n_bootstrap=int(n_bootstrap))
    return float(mean), float(std)


@functools.partial(jax.jit, static_argnames=("n_bootstrap", "num_classes"))
def _bootstrap_classification(correct, labels, seed, *, n_bootstrap, num_classes):
    def accuracies(idx):
        hits = correct[:, idx]
        # Balanced accuracy: mean per-class recall over the classes present in this resample.
        per_class_hits = jax.ops.segment_sum(hits.T, labels[idx], num_classes)
        counts = jax.ops.segment_sum(jnp.ones(idx.shape, jnp.float32), labels[idx], num_classes)[:, None]
        present = counts > 0
        balanced = jnp.sum(jnp.where(present, per_class_hits / jnp.maximum(counts, 1.0), 0.0), axis=0)
        return jnp.stack([hits.mean(axis=1), balanced / jnp.sum(present)], axis=1)

    return resample_statistics(accuracies, correct.shape[1], n_bootstrap=n_bootstrap, seed=seed)


def bootstrap_classification(correct: np.ndarray, labels: np.ndarray, *, num_classes: int,
                             n_bootstrap: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Accuracy and balanced accuracy of several classifiers over the same test-set resamples.

    Args:
      correct: [m, n_test] booleans, one row per classifier (e.g. one per k).
      labels: [n_test] test labels.
      num_classes: number of classes.
      n_bootstrap: number of resamples B; every row sees the same resamples.
      seed: resample seed (see `bootstrap_indices`).

    Returns:
      {"acc", "acc_std", "balanced_acc", "balanced_acc_std"}, each [m]: bootstrap means and stds.
      Balanced accuracy is the mean per-class recall; a class absent from a resample is left out of it.
    """
    correct = np.asarray(correct, dtype=np.float32)
    if correct.ndim != 2:
        raise ValueError(f"correct must be [m, n_test], got shape {correct.shape}")
    labels = check_labels("labels", labels, correct.shape[1], num_classes)
    _check_bootstrap(n_bootstrap, correct.shape[1])
    mean, std = _bootstrap_classification(correct, labels, seed, n_bootstrap=int(n_bootstrap),
                                          num_classes=int(num_classes))
    mean, std = np.asarray(mean), np.asarray(std)
    return {"acc": mean[:, 0], "acc_std": std[:, 0], "balanced_acc": mean[:, 1], "balanced_acc_std": std[:, 1]}


def knn_eval(train_feats, train_labels, test_feats, test_labels, *, ks: Sequence[int] = (1, 20),
             temperature: float = 0.07, num_classes: int, n_bootstrap: int = 1000, seed: int = 0,
             block_size: int = 1024, matmul_dtype=jnp.float32) -> dict[str, float]:
    """k-NN accuracy and balanced accuracy for every k, as bootstrap mean and std over the test set.

    One similarity pass serves every k (the top-max(k) neighbours are shared).

    Returns:
      {"knn/top1_k{k}", "knn/top1_k{k}_std", "knn/balanced_acc_k{k}", "knn/balanced_acc_k{k}_std"}
      for each k: accuracy is the bootstrap mean, balanced accuracy is the mean per-class
      recall (the simulator's test split is balanced, other sources may not be).
    """
    ks = tuple(int(k) for k in ks)
    predictions = _knn_predictions(train_feats, train_labels, test_feats, ks=ks, temperature=temperature,
                                   num_classes=num_classes, block_size=block_size, matmul_dtype=matmul_dtype)
    test_labels = check_labels("test_labels", test_labels, predictions.shape[1], num_classes)
    stats = bootstrap_classification(predictions == test_labels[None], test_labels, num_classes=num_classes,
                                     n_bootstrap=n_bootstrap, seed=seed)
    results = {}
    for i, k in enumerate(ks):
        results[f"knn/top1_k{k}"] = float(stats["acc"][i])
        results[f"knn/top1_k{k}_std"] = float(stats["acc_std"][i])
        results[f"knn/balanced_acc_k{k}"] = float(stats["balanced_acc"][i])
        results[f"knn/balanced_acc_k{k}_std"] = float(stats["balanced_acc_std"][i])
    return results
