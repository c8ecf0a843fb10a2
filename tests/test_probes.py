"""Linear and ridge probes and `evaluate_features` on planted structure."""
import numpy as np
import pytest

from oceansar.evals import probes


def _blobs(rng, n, centers, spread=1.0):
    labels = np.arange(n) % centers.shape[0]
    return (centers[labels] + spread * rng.normal(size=(n, centers.shape[1]))).astype(np.float32), labels


def test_linear_probe_separable_blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 24)) * 4.0
    train, train_labels = _blobs(rng, 200, centers)
    test, test_labels = _blobs(rng, 100, centers)
    result = probes.linear_probe(train, train_labels, test, test_labels, num_classes=5, n_bootstrap=50)
    assert set(result) == {"linear/top1", "linear/top1_std", "linear/balanced_acc", "linear/balanced_acc_std",
                           "linear/l2"}
    assert result["linear/top1"] == 1.0 and result["linear/balanced_acc"] == 1.0
    assert np.isclose(result["linear/l2"], [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]).any()
    again = probes.linear_probe(train, train_labels, test, test_labels, num_classes=5, n_bootstrap=50)
    assert again == result


def test_linear_probe_on_overlapping_blobs_picks_l2_on_validation():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(5, 24)) * 0.5
    train, train_labels = _blobs(rng, 200, centers)
    test, test_labels = _blobs(rng, 100, centers)
    result = probes.linear_probe(train, train_labels, test, test_labels, num_classes=5, n_bootstrap=50)
    # Overlapping classes: well above the 20% chance, well below perfect, with a visible bootstrap std.
    assert 0.4 < result["linear/top1"] < 0.95
    assert 0.01 < result["linear/top1_std"] < 0.08
    # 40 validation samples over 24 noisy dimensions: the least regularised fits lose on validation.
    assert result["linear/l2"] > 1e-6


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
    fit, val = probes.stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(labels.size))
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 1, 1, 0]
    assert not np.array_equal(val, probes.stratified_split(labels, 0.2, seed=1)[1])


def test_ridge_recovers_planted_target_in_physical_units():
    rng = np.random.default_rng(2)
    w = rng.normal(size=32)
    # Columns on scales from 0.1 to 10: standardisation must undo them.
    scale = rng.uniform(0.1, 10.0, 32).astype(np.float32)
    train = rng.normal(size=(400, 32)).astype(np.float32) * scale
    test = rng.normal(size=(300, 32)).astype(np.float32) * scale
    noise = 0.5  # m/s

    def target(x):
        return 8.0 + x @ w / 4.0 + noise * rng.normal(size=x.shape[0])

    result = probes.ridge_probe(train, target(train), test, target(test), name="wind_speed", n_bootstrap=100)
    assert set(result) == {"wind_speed/rmse", "wind_speed/rmse_std", "wind_speed/r2", "wind_speed/alpha"}
    # Estimation error adds ~sqrt(1 + d / n) = 1.04x to the noise floor.
    assert noise * 0.9 < result["wind_speed/rmse"] < noise * 1.15
    assert result["wind_speed/r2"] > 0.9
    assert 0.0 < result["wind_speed/rmse_std"] < 0.1
    # Pure noise features: the probe falls back to predicting the train mean (RMSE ~ target std).
    noise_result = probes.ridge_probe(rng.normal(size=(400, 32)), target(train), rng.normal(size=(300, 32)),
                                      target(test), name="hs", n_bootstrap=10)
    assert noise_result["hs/r2"] < 0.05 and noise_result["hs/alpha"] >= 10.0


def _brute_force_loo_mse(x, y, alpha):
    """Leave-one-out MSE of ridge with an unpenalised intercept, refitting both on every fold."""
    n = x.shape[0]
    errors = []
    for i in range(n):
        keep = np.arange(n) != i
        x_mean, y_mean = x[keep].mean(0), y[keep].mean()
        xc = x[keep] - x_mean
        w = np.linalg.solve(xc.T @ xc + n * alpha * np.eye(x.shape[1]), xc.T @ (y[keep] - y_mean))
        errors.append(y[i] - y_mean - (x[i] - x_mean) @ w)
    return np.mean(np.square(errors))


@pytest.mark.parametrize("n,d", [(30, 8), (12, 20)])
def test_ridge_leave_one_out_matches_brute_force(n, d):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    alphas = np.array([1e-2, 1e-1, 1.0, 10.0])
    _, loo = probes._ridge_path(x.astype(np.float32), y.astype(np.float32), alphas.astype(np.float32))
    np.testing.assert_allclose(np.asarray(loo), [_brute_force_loo_mse(x, y, a) for a in alphas], rtol=2e-3)


def test_evaluate_features_keys_and_nan_targets_left_out():
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(5, 24)) * 4.0

    def split(n):
        features, labels = _blobs(rng, n, centers)
        hs = 2.0 + features[:, 0] * 0.3 + 0.1 * rng.normal(size=n)
        hs[::7] = np.nan  # no collocated measurement
        return {"features": features, "label": labels, "hs": hs, "sample_id": np.arange(n)}

    result = probes.evaluate_features(split(200), split(100), num_classes=5, targets=("wind_speed", "hs"),
                                      n_bootstrap=50)
    expected = ({f"knn/{m}_k{k}{s}" for m in ("top1", "balanced_acc") for k in (1, 20) for s in ("", "_std")}
                | {"linear/top1", "linear/top1_std", "linear/balanced_acc", "linear/balanced_acc_std", "linear/l2"}
                | {"hs/rmse", "hs/rmse_std", "hs/r2", "hs/alpha"})
    assert set(result) == expected
    assert all(np.isfinite(v) for v in result.values())
    assert result["knn/top1_k20"] == 1.0 and result["linear/top1"] == 1.0 and result["hs/r2"] > 0.8
    # An evaluator runs only the probes it names.
    only = probes.evaluate_features(split(200), split(100), num_classes=5, probes=("knn", "regression"),
                                    targets=("hs",), knn_ks=(5,), n_bootstrap=10)
    assert set(only) == {"knn/top1_k5", "knn/top1_k5_std", "knn/balanced_acc_k5", "knn/balanced_acc_k5_std",
                         "hs/rmse", "hs/rmse_std", "hs/r2", "hs/alpha"}


def test_probe_errors_name_the_array():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = np.arange(20) % 2
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="train_feats contains 1 non-finite"):
        probes.linear_probe(bad, y, x, y, num_classes=2)
    with pytest.raises(ValueError, match="test_labels has shape"):
        probes.linear_probe(x, y, x, y[:5], num_classes=2)
    with pytest.raises(ValueError, match="wind_speed train_targets contains 1 non-finite"):
        probes.ridge_probe(x, np.r_[np.nan, np.ones(19)], x, y * 1.0, name="wind_speed")
    with pytest.raises(ValueError, match="hs train_targets are constant"):
        probes.ridge_probe(x, np.ones(20), x, y * 1.0, name="hs")
    with pytest.raises(ValueError, match="test dict has no 'features'"):
        probes.evaluate_features({"features": x}, {"label": y}, num_classes=2)
