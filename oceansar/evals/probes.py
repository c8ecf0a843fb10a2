"""Linear and ridge-regression probes on frozen features, and `evaluate_features`, the evaluator the loop calls.

Here live the classification probe (multinomial logistic regression on standardised features, fitted by
full-batch L-BFGS in JAX along a warm-started L2 path, the penalty picked on a stratified
validation split of the train features, then refitted on all of them: the protocol of DINOv2's
`log_regression.py`), the regression probe (closed-form ridge on standardised features and target, alpha
picked by exact leave-one-out error, RMSE reported in the target's physical units), and
`evaluate_features`, which runs k-NN and every probe on feature dicts from `features.extract_features`.
Test-set uncertainty is a bootstrap over test samples; nothing here retrains per resample.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from oceansar.evals.knn import (bootstrap_classification, check_features, check_labels, knn_eval,
                                resample_statistics)

# Features whose train std falls below this are constant: they are centred to zero, not divided by ~0.
_MIN_STD = 1e-6
# An alpha whose fit leaves some train sample with 1 - leverage below this interpolates the train set; its
# leave-one-out error would be 0/0 in float32, so it is not eligible.
_MIN_LOO_DENOMINATOR = 1e-4


def _as_target(name: str, y, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} has shape {y.shape} but its features have {n} rows")
    bad = int(np.sum(~np.isfinite(y)))
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite values (NaN/Inf)")
    return y


def _check_pair(train_feats, test_feats):
    train_feats = check_features("train_feats", train_feats)
    test_feats = check_features("test_feats", test_feats)
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train_feats has dimension {train_feats.shape[1]} but test_feats has "
                         f"{test_feats.shape[1]}")
    return train_feats, test_feats


@jax.jit
def _standardize(train, test):
    """Both feature sets centred and scaled by the train mean and std."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = jnp.where(std < _MIN_STD, 1.0, std)
    return (train - mean) / std, (test - mean) / std


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with about val_fraction of every class in validation.

    Every class with at least two samples keeps at least one on each side.

    Args:
      labels: [n] integer labels.
      val_fraction: fraction of each class held out, in (0, 1).
      seed: numpy Generator seed of the within-class shuffle.

    Returns:
      (fit_indices, val_indices), both sorted.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    permutation = np.random.default_rng(seed).permutation(labels.shape[0])
    order = permutation[np.argsort(labels[permutation], kind="stable")]
    _, first, counts = np.unique(labels[order], return_index=True, return_counts=True)
    rank_in_class = np.arange(order.shape[0]) - np.repeat(first, counts)
    n_val = np.where(counts >= 2, np.clip(np.round(counts * val_fraction), 1, counts - 1), 0)
    is_val = np.zeros(labels.shape[0], bool)
    is_val[order] = rank_in_class < np.repeat(n_val, counts)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _fit_logistic(x, y, fit_mask, l2, init, max_iter, tol, *, num_classes):
    """Parameters {"w": [D, C], "b": [C]} minimising the masked mean cross-entropy + l2/2 |w|^2.

    The mask (not a row subset) selects the fitted rows so that the validation fits and the final refit
    share one compiled program.
    """
    one_hot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    n_fit = jnp.sum(fit_mask)

    def loss(params):
        cross_entropy = optax.softmax_cross_entropy(x @ params["w"] + params["b"], one_hot)
        # The bias is not penalised, as in scikit-learn's LogisticRegression.
        return jnp.sum(cross_entropy * fit_mask) / n_fit + 0.5 * l2 * jnp.sum(params["w"] ** 2)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def not_converged(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

    params, _ = jax.lax.while_loop(not_converged, step, (init, solver.init(init)))
    return params


@jax.jit
def _predict_logistic(params, x):
    return jnp.argmax(x @ params["w"] + params["b"], axis=-1)


def linear_probe(train_feats, train_labels, test_feats, test_labels, *, num_classes: int,
                 l2_grid: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), max_iter: int = 1000,
                 tol: float = 1e-5, seed: int = 0, val_fraction: float = 0.2,
                 n_bootstrap: int = 1000) -> dict[str, float]:
    """Multinomial logistic-regression probe on standardised frozen features.

    Each l2 of the grid, strongest first and warm-started from the previous solution (a regularisation
    path), is fitted by full-batch L-BFGS on a stratified (1 - val_fraction) part of the train features;
    the l2 with the best validation accuracy (the larger one on ties) is refitted on all train features
    and scored on the test set.

    Args:
      train_feats, test_feats: [n, D] features (numpy or jax, sharded or not).
      train_labels, test_labels: [n] integer labels in [0, num_classes).
      num_classes: number of classes.
      l2_grid: penalties on the mean cross-entropy scale (l2 = 1 / (C n) for scikit-learn's C).
      max_iter: L-BFGS iteration cap per fit.
      tol: a fit stops once its gradient norm falls below it.
      seed: seed of the validation split and of the test bootstrap.
      val_fraction: fraction of each class held out for picking l2.
      n_bootstrap: test-set resamples for the stds.

    Returns:
      {"linear/top1", "linear/top1_std", "linear/balanced_acc", "linear/balanced_acc_std", "linear/l2"}:
      test accuracy and balanced accuracy with their bootstrap stds, and the chosen penalty.
    """
    train_feats, test_feats = _check_pair(train_feats, test_feats)
    train_labels = check_labels("train_labels", train_labels, train_feats.shape[0], num_classes)
    test_labels = check_labels("test_labels", test_labels, test_feats.shape[0], num_classes)
    l2_grid = np.sort(np.asarray(l2_grid, dtype=np.float32).reshape(-1))[::-1]
    if l2_grid.size == 0 or np.any(l2_grid < 0) or not np.all(np.isfinite(l2_grid)):
        raise ValueError(f"l2_grid must be non-empty, finite and non-negative, got {l2_grid.tolist()}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be positive, got {max_iter}")

    train_x, test_x = _standardize(train_feats, test_feats)
    _, val_idx = stratified_split(train_labels, val_fraction, seed)
    if val_idx.size == 0:
        raise ValueError("linear_probe needs at least two train samples of some class to hold out for "
                         "validation")
    fit_mask = np.ones(train_labels.shape[0], np.float32)
    fit_mask[val_idx] = 0.0

    def fit(mask, l2, init):
        return _fit_logistic(train_x, train_labels, mask, jnp.float32(l2), init, jnp.int32(max_iter),
                             jnp.float32(tol), num_classes=num_classes)

    params = {"w": jnp.zeros((train_x.shape[1], num_classes), jnp.float32),
              "b": jnp.zeros((num_classes,), jnp.float32)}
    best_accuracy, best_l2, best_params = -1.0, None, None
    for l2 in l2_grid:
        params = fit(fit_mask, l2, params)
        accuracy = float(np.mean(np.asarray(_predict_logistic(params, train_x[val_idx])) == train_labels[val_idx]))
        # Strict improvement only: among equally good penalties the strongest (seen first) is kept.
        if accuracy > best_accuracy:
            best_accuracy, best_l2, best_params = accuracy, float(l2), params
    params = fit(np.ones_like(fit_mask), best_l2, best_params)
    correct = np.asarray(_predict_logistic(params, test_x)) == test_labels
    stats = bootstrap_classification(correct[None], test_labels, num_classes=num_classes, n_bootstrap=n_bootstrap,
                                     seed=seed)
    counts = np.bincount(test_labels, minlength=num_classes)
    hits = np.bincount(test_labels, weights=correct, minlength=num_classes)
    return {"linear/top1": float(correct.mean()), "linear/top1_std": float(stats["acc_std"][0]),
            "linear/balanced_acc": float(np.mean(hits[counts > 0] / counts[counts > 0])),
            "linear/balanced_acc_std": float(stats["balanced_acc_std"][0]), "linear/l2": best_l2}


@jax.jit
def _ridge_path(x, y, alphas):
    """Ridge weights [A, D] and exact leave-one-out MSE [A] for every alpha, from one eigendecomposition.

    Minimises mean((y - b - x w)^2) + alpha |w|^2 over w and an unpenalised intercept b, with x and y
    centred (so b = 0), alpha on the scale of the eigenvalues of x^T x / n (they sum to D for
    standardised features). The leave-one-out error refits the intercept too.
    """
    n = x.shape[0]
    eigenvalues, eigenvectors = jnp.linalg.eigh(x.T @ x / n)
    eigenvalues = jnp.maximum(eigenvalues, 0.0)
    z = x @ eigenvectors
    inverse = 1.0 / (eigenvalues[None] + alphas[:, None])
    coef = (z.T @ y / n)[None] * inverse
    residual = y[None] - coef @ z.T
    # Leave-one-out residual of a linear smoother: r_i / (1 - H_ii), with the hat matrix of ridge plus an
    # unpenalised intercept, H = 1 1^T / n + z diag(1 / (n (lam + alpha))) z^T. Leaving out the 1/n term
    # would let the held-out sample leak through the centring (with n <= D, every alpha would look perfect).
    one_minus_leverage = 1.0 - 1.0 / n - (inverse / n) @ (z ** 2).T
    loo_mse = jnp.mean((residual / jnp.maximum(one_minus_leverage, _MIN_LOO_DENOMINATOR)) ** 2, axis=1)
    interpolates = jnp.min(one_minus_leverage, axis=1) < _MIN_LOO_DENOMINATOR
    return coef @ eigenvectors.T, jnp.where(interpolates, jnp.inf, loo_mse)


@functools.partial(jax.jit, static_argnames=("n_bootstrap",))
def regression_scores(prediction, target, seed, *, n_bootstrap: int):
    """(RMSE, its bootstrap std over the test set, R^2) of a prediction [n] of `target` [n], in its units."""
    squared_error = (prediction - target) ** 2
    rmse = jnp.sqrt(squared_error.mean())
    r2 = 1.0 - squared_error.sum() / jnp.sum((target - target.mean()) ** 2)
    _, rmse_std = resample_statistics(lambda idx: jnp.sqrt(squared_error[idx].mean()), target.shape[0],
                                      n_bootstrap=n_bootstrap, seed=seed)
    return rmse, rmse_std, r2


def _ridge_scores(w, test_x, test_y, y_mean, y_std, seed, *, n_bootstrap):
    return regression_scores((test_x @ w) * y_std + y_mean, test_y, seed, n_bootstrap=n_bootstrap)


def ridge_probe(train_feats, train_targets, test_feats, test_targets, *, name: str,
                alphas: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0), seed: int = 0,
                n_bootstrap: int = 1000) -> dict[str, float]:
    """Closed-form ridge-regression probe of a scalar target, reported in the target's physical units.

    Features and target are standardised with train statistics; alpha is picked by exact leave-one-out
    MSE on the train set (one eigendecomposition of the D x D Gram matrix serves every alpha); the
    prediction is un-standardised before scoring.

    Args:
      train_feats, test_feats: [n, D] features (numpy or jax, sharded or not).
      train_targets, test_targets: [n] physical targets (e.g. wind speed in m/s, Hs in m).
      name: key prefix, usually the target's name.
      alphas: penalties on the scale of the standardised features' covariance eigenvalues.
      seed: seed of the test bootstrap.
      n_bootstrap: test-set resamples for the RMSE std.

    Returns:
      {f"{name}/rmse", f"{name}/rmse_std", f"{name}/r2", f"{name}/alpha"}: test RMSE in physical units
      with its bootstrap std, the coefficient of determination, and the chosen alpha.
    """
    train_feats, test_feats = _check_pair(train_feats, test_feats)
    train_y = _as_target(f"{name} train_targets", train_targets, train_feats.shape[0])
    test_y = _as_target(f"{name} test_targets", test_targets, test_feats.shape[0])
    alphas = np.asarray(alphas, dtype=np.float32).reshape(-1)
    if alphas.size == 0 or np.any(alphas <= 0) or not np.all(np.isfinite(alphas)):
        raise ValueError(f"alphas must be non-empty, finite and positive, got {alphas.tolist()}")
    y_mean, y_std = float(train_y.mean()), float(train_y.std())
    if y_std < _MIN_STD * max(1.0, abs(y_mean)):
        raise ValueError(f"{name} train_targets are constant ({y_mean}): nothing to regress")
    if np.all(test_y == test_y[0]):
        raise ValueError(f"{name} test_targets are constant ({float(test_y[0])}): R^2 is undefined")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")

    train_x, test_x = _standardize(train_feats, test_feats)
    weights, loo_mse = _ridge_path(train_x, jnp.asarray((train_y - y_mean) / y_std), jnp.asarray(alphas))
    loo_mse = np.asarray(loo_mse)
    if not np.any(np.isfinite(loo_mse)):
        raise ValueError(f"{name}: every alpha in {alphas.tolist()} interpolates the {train_y.shape[0]} train "
                         f"samples; use larger alphas")
    best = int(np.argmin(loo_mse))
    rmse, rmse_std, r2 = _ridge_scores(weights[best], test_x, jnp.asarray(test_y), y_mean, y_std, seed,
                                       n_bootstrap=int(n_bootstrap))
    return {f"{name}/rmse": float(rmse), f"{name}/rmse_std": float(rmse_std), f"{name}/r2": float(r2),
            f"{name}/alpha": float(alphas[best])}


def evaluate_features(train: dict, test: dict, *, num_classes: int,
                      probes: Sequence[str] = ("knn", "linear", "regression"),
                      targets: Sequence[str] = (), knn_ks: Sequence[int] = (1, 20), n_bootstrap: int = 1000,
                      seed: int = 0) -> dict[str, float]:
    """The frozen-feature evaluations `probes` names, on a train/test pair of feature dicts.

    Runs k-NN (`knn/...`, probe "knn") and the linear probe (`linear/...`, "linear") when both dicts carry
    "label", and a ridge probe (`{target}/...`, "regression") for each target present in both. Rows whose
    target is NaN (no collocated measurement) are left out of that target's probe only.

    Args:
      train, test: dicts from `extract_features`: "features" [n, D] plus per-sample fields.
      num_classes: number of classes of "label".
      probes: which of "knn", "linear" and "regression" to run.
      targets: regression targets to probe when present.
      knn_ks: the k values of the k-NN evaluation.
      n_bootstrap: test-set resamples for every std.
      seed: seed of splits and bootstraps.

    Returns:
      One flat dict of float metrics.
    """
    for split, data in (("train", train), ("test", test)):
        if "features" not in data:
            raise ValueError(f"the {split} dict has no 'features' (keys: {sorted(data)})")
    results = {}
    labelled = "label" in train and "label" in test
    if labelled and "knn" in probes:
        results.update(knn_eval(train["features"], train["label"], test["features"], test["label"], ks=knn_ks,
                                num_classes=num_classes, n_bootstrap=n_bootstrap, seed=seed))
    if labelled and "linear" in probes:
        results.update(linear_probe(train["features"], train["label"], test["features"], test["label"],
                                    num_classes=num_classes, seed=seed, n_bootstrap=n_bootstrap))
    for target in targets if "regression" in probes else ():
        if target not in train or target not in test:
            continue
        train_rows = np.flatnonzero(np.isfinite(np.asarray(train[target], np.float32)))
        test_rows = np.flatnonzero(np.isfinite(np.asarray(test[target], np.float32)))
        if train_rows.size == 0 or test_rows.size == 0:
            continue
        results.update(ridge_probe(train["features"][train_rows], np.asarray(train[target])[train_rows],
                                   test["features"][test_rows], np.asarray(test[target])[test_rows],
                                   name=target, seed=seed, n_bootstrap=n_bootstrap))
    return results
