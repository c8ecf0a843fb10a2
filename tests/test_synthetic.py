"""Tests of the embedded WV simulator: determinism, planted structure and its ground truth."""
import pickle

import numpy as np
import pytest

from oceansar.apps import simulator_figure
from oceansar.data import synthetic as sw


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def _one_class(c: int) -> list[float]:
    freqs = [0.0] * len(sw.TENGEOP_CLASSES)
    freqs[c] = 1.0
    return freqs


def test_record_format():
    src = sw.SyntheticWV(num_samples=50, image_size=32, seed=3)
    assert len(src) == 50
    rec = src[7]
    assert rec["image"].shape == (32, 32, 1) and rec["image"].dtype == np.uint8
    assert rec["sample_id"] == 7 and rec["sample_id"].dtype == np.int64
    assert rec["label"].dtype == np.int32 and 0 <= rec["label"] < len(sw.TENGEOP_CLASSES)
    assert rec["wind_speed"].dtype == np.float32 and 0 < rec["wind_speed"] < 30
    assert rec["hs"].dtype == np.float32 and 0 < rec["hs"] < 12
    # sigma0 of open ocean sits inside DB_RANGE: no mass piled at the quantisation bounds.
    ocean = sw.SyntheticWV(num_samples=20, image_size=32, seed=3, class_frequencies=_one_class(0))
    images = np.stack([ocean[i]["image"] for i in range(20)])
    assert np.mean(images == 0) < 0.01 and np.mean(images == 255) < 0.01
    db = sw.from_uint8(images)
    assert -25.0 < db.mean() < -5.0
    assert len(sw.DEFAULT_CLASS_FREQUENCIES) == len(sw.TENGEOP_CLASSES) == 10
    assert abs(sum(sw.DEFAULT_CLASS_FREQUENCIES) - 1.0) < 1e-9


def test_out_of_range_and_bad_arguments():
    src = sw.SyntheticWV(num_samples=10, image_size=16)
    for bad in (10, -1, 10**9):
        with pytest.raises(IndexError):
            src[bad]
    with pytest.raises(IndexError):
        src.targets([0, 10])
    with pytest.raises(ValueError, match="class_frequencies"):
        sw.SyntheticWV(num_samples=10, class_frequencies=[0.5, 0.5])
    with pytest.raises(ValueError, match="class_frequencies"):
        sw.SyntheticWV(num_samples=10, class_frequencies=[0.2] * 10)
    with pytest.raises(ValueError, match="image_size"):
        sw.SyntheticWV(num_samples=10, image_size=4)
    with pytest.raises(ValueError, match="burst_length"):
        sw.SyntheticWV(num_samples=10, burst_length=0)


def test_deterministic_by_seed_and_index_across_objects_and_pickling():
    kwargs = dict(num_samples=10**7, image_size=32, seed=11)
    a = sw.SyntheticWV(**kwargs)
    b = pickle.loads(pickle.dumps(sw.SyntheticWV(**kwargs)))
    for i in (0, 1, 8, 9_999_999):
        ra, rb = a[i], b[i]
        np.testing.assert_array_equal(ra["image"], rb["image"])
        for key in ("sample_id", "label", "wind_speed", "hs"):
            assert ra[key] == rb[key]
    # Access order does not matter: image i is a function of (seed, i) only.
    np.testing.assert_array_equal(sw.SyntheticWV(**kwargs)[8]["image"], a[8]["image"])
    other = sw.SyntheticWV(**{**kwargs, "seed": 12})
    assert not np.array_equal(a[0]["image"], other[0]["image"])
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    assert not np.array_equal(a.targets(np.arange(100))["wind_speed"],
                              other.targets(np.arange(100))["wind_speed"])


def test_targets_match_rendered_records():
    src = sw.SyntheticWV(num_samples=1000, image_size=16, seed=5)
    idx = np.array([0, 3, 17, 999])
    t = src.targets(idx)
    for k, i in enumerate(idx):
        rec = src[int(i)]
        assert rec["label"] == t["label"][k]
        assert rec["wind_speed"] == t["wind_speed"][k] and rec["hs"] == t["hs"][k]
    np.testing.assert_array_equal(src.labels(idx), t["label"])
    everything = src.targets()
    assert everything["label"].shape == (1000,)
    # Sorted (bursts hashed once) and shuffled index orders give the same truth.
    perm = np.random.default_rng(0).permutation(1000)
    shuffled = src.targets(perm)
    for key in ("label", "wind_speed", "hs"):
        np.testing.assert_array_equal(everything[key][perm], shuffled[key])


@pytest.mark.parametrize("burst_length", [1, 8])
def test_class_frequencies_reproduced(burst_length):
    n = 200_000
    freqs = np.asarray(sw.DEFAULT_CLASS_FREQUENCIES)
    labels = sw.SyntheticWV(num_samples=n, seed=2, burst_length=burst_length).labels()
    observed = np.bincount(labels, minlength=10) / n
    # Bursts share a label: the effective number of draws is the number of bursts.
    draws = n // burst_length
    std = np.sqrt(freqs * (1 - freqs) / draws)
    assert np.all(np.abs(observed - freqs) < 5 * std + 1e-12), (observed, freqs)
    chi2 = float(np.sum((observed - freqs) ** 2 / freqs) * draws)
    assert chi2 < 35.0  # 9 degrees of freedom: p < 1e-4 above 33.7
    custom = [0.1] * 10
    labels = sw.SyntheticWV(num_samples=50_000, seed=2, class_frequencies=custom,
                            burst_length=1).labels()
    assert np.all(np.abs(np.bincount(labels, minlength=10) / 50_000 - 0.1) < 0.01)


def test_bursts_are_near_duplicates():
    src = sw.SyntheticWV(num_samples=10_000, image_size=32, seed=4, burst_length=4,
                         burst_jitter=0.05)
    images = np.stack([src.render_db(i).ravel() for i in range(48)])  # 12 bursts of 4
    images = images - images.mean(1, keepdims=True)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    corr = images @ images.T
    burst = np.arange(48) // 4
    same = (burst[:, None] == burst[None, :]) & ~np.eye(48, dtype=bool)
    within, across = corr[same].mean(), corr[burst[:, None] != burst[None, :]].mean()
    assert within > across + 0.2, (within, across)
    t = src.targets(np.arange(48))
    assert np.all(t["label"].reshape(12, 4) == t["label"][::4, None])
    ratio = t["wind_speed"].reshape(12, 4) / t["wind_speed"][::4, None]
    assert np.all(np.abs(np.log(ratio)) < 0.3) and np.any(ratio != 1.0)
    # burst_length=1: neighbours are independent scenes.
    plain = sw.SyntheticWV(num_samples=10_000, image_size=32, seed=4, burst_length=1)
    assert len(np.unique(plain.targets(np.arange(8))["wind_speed"])) == 8


def test_wind_speed_drives_mean_backscatter():
    ocean = sw.SyntheticWV(num_samples=10**6, image_size=32, seed=6, burst_length=1,
                           class_frequencies=_one_class(0))
    idx = np.arange(120)
    mean_db = np.array([sw.from_uint8(ocean[i]["image"]).mean() for i in idx])
    assert _spearman(ocean.targets(idx)["wind_speed"], mean_db) > 0.85
    mixed = sw.SyntheticWV(num_samples=10**6, image_size=32, seed=6, burst_length=1)
    mean_db = np.array([sw.from_uint8(mixed[i]["image"]).mean() for i in idx])
    assert _spearman(mixed.targets(idx)["wind_speed"], mean_db) > 0.75


def test_hs_drives_swell_texture():
    ocean = sw.SyntheticWV(num_samples=10**6, image_size=48, seed=7, burst_length=1,
                           class_frequencies=_one_class(0))
    idx = np.arange(100)
    texture = []
    for i in idx:
        db = sw.from_uint8(ocean[i]["image"][:, :, 0])
        # 2x2 block means damp speckle and keep swell (>= 3 px): their variance is swell energy.
        blocks = db.reshape(24, 2, 24, 2).mean(axis=(1, 3))
        texture.append(blocks.var())
    assert _spearman(ocean.targets(idx)["hs"], np.array(texture)) > 0.8


def test_evaluation_splits_balanced_and_disjoint():
    train, test = sw.evaluation_splits(num_train_per_class=4, num_test_per_class=2,
                                       image_size=16, seed=0)
    assert len(train) == 40 and len(test) == 20
    assert train.burst_length == 1 and test.burst_length == 1
    np.testing.assert_array_equal(np.bincount(train.labels(), minlength=10), 4)
    np.testing.assert_array_equal(np.bincount(test.labels(), minlength=10), 2)
    assert [train[i]["label"] for i in range(10)] == list(range(10))
    assert train.seed != test.seed and min(train.seed, test.seed) >= 2**62
    train_images = {train[i]["image"].tobytes() for i in range(len(train))}
    assert not train_images & {test[i]["image"].tobytes() for i in range(len(test))}
    assert not np.array_equal(train.targets()["wind_speed"][:20], test.targets()["wind_speed"])
    with pytest.raises(ValueError, match="burst_length"):
        sw.evaluation_splits(2, 2, 16, 0, burst_length=4)


def test_every_class_renders_finite_at_small_and_odd_sizes():
    for size in (16, 33):
        src = sw.SyntheticWV(num_samples=100, image_size=size, seed=1, balanced=True,
                             burst_length=1)
        for c in range(10):
            db = src.render_db(c)
            assert db.shape == (size, size) and np.all(np.isfinite(db))


def test_figure_without_real_quicklooks(tmp_path):
    out = tmp_path / "fig.png"
    note = simulator_figure.make_figure(str(out), image_size=16, real_dir=None, samples_per_class=2)
    assert "not found" in note
    assert 0 < out.stat().st_size < 1_000_000


def test_real_quicklooks_load_at_simulator_pixel_size(shared_data):
    real = simulator_figure.load_quicklooks(str(shared_data / "s1wv_samples"), image_size=64)
    assert len(real) == 15
    caption, image = real[0]
    assert image.shape == (64, 64) and caption
