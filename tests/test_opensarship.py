"""The OpenSARShip source: chips in the release's layout, classes from file names, a fixed stratified split, VV
sigma0 on the project's dB scale; the real release where `../shared/data` exists."""
import numpy as np
import pytest
import tifffile

from oceansar.data import opensarship, wv_files
from oceansar.data.decode import CorruptImageError
from oceansar.errors import DataNotFoundError


def _release(root, counts, rng):
    """A release-shaped folder: two scenes, dual-pol (H, W, 2) chips in one and single-pol (H, W) in the other."""
    files = []
    for kind, n in counts.items():
        for i in range(n):
            scene = root / f"S1A_scene{i % 2}" / "Patch_Cal"
            scene.mkdir(parents=True, exist_ok=True)
            side = int(rng.integers(17, 78))
            shape = (side, side, 2) if i % 2 == 0 else (side, side)
            path = scene / f"{kind}_x{i}_y{i}.tif"
            # As the release stores them: interleaved bands ('YXS'), min-is-black.
            tifffile.imwrite(path, rng.gamma(4.0, 0.01, shape).astype(np.float32), photometric="minisblack",
                             planarconfig="contig")
            files.append(path)
    return files


def test_classes_split_and_records(tmp_path):
    rng = np.random.default_rng(0)
    _release(tmp_path, {"Cargo": 20, "Tanker": 10, "Other Type": 5, "Tug": 2, "Search": 1}, rng)
    files, labels = opensarship.list_chips(tmp_path)
    assert np.bincount(labels).tolist() == [20, 10, 8]          # rare types join Other
    train, test = (opensarship.split_indices(labels, s) for s in opensarship.SPLITS)
    assert np.intersect1d(train, test).size == 0 and np.union1d(train, test).size == len(files)
    assert np.bincount(labels[test]).tolist() == [6, 3, 2]      # 30 % of each class
    np.testing.assert_array_equal(test, opensarship.split_indices(labels, "test"))  # fixed seed
    source = opensarship.OpenSARShipSource(tmp_path, split="test", image_size=32)
    assert len(source) == 11 and source.class_names == ["Cargo", "Tanker", "Other"]
    for i in range(len(source)):
        record = source[i]
        assert record["image"].shape == (32, 32, 1) and record["image"].dtype == np.uint8
        assert record["label"] == labels[test[i]]
    # The VV band of a dual-pol chip, on the dB scale of wv_files.
    dual = next(f for f in source.files if tifffile.imread(f).ndim == 3)
    vv = tifffile.imread(dual)[..., :1]
    expected = np.rint(wv_files.normalised_db(vv, 32, dual) * 255).astype(np.uint8)
    np.testing.assert_array_equal(source[source.files.index(dual)]["image"], expected)


def test_bad_release_inputs_are_named(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        opensarship.OpenSARShipSource(tmp_path / "missing", split="train", image_size=16)
    with pytest.raises(DataNotFoundError, match="no OpenSARShip chips"):
        opensarship.OpenSARShipSource(tmp_path, split="train", image_size=16)
    chip = tmp_path / "scene" / "Patch_Cal" / "Cargo_x1_y1.tif"
    chip.parent.mkdir(parents=True)
    tifffile.imwrite(chip, np.full((20, 20), 7, np.uint16))
    tifffile.imwrite(chip.with_name("Cargo_x2_y2.tif"), np.full((20, 20), -1.0, np.float32))
    splits = [opensarship.OpenSARShipSource(tmp_path, split=s, image_size=16) for s in opensarship.SPLITS]
    for name, why in (("Cargo_x1_y1.tif", "float sigma0"), ("Cargo_x2_y2.tif", "negative linear sigma0")):
        source = next(s for s in splits if any(f.endswith(name) for f in s.files))
        with pytest.raises(CorruptImageError, match=why) as err:
            source[[f.endswith(name) for f in source.files].index(True)]
        assert name in str(err.value)
    with pytest.raises(ValueError, match="split"):
        opensarship.split_indices(np.zeros(3, np.int32), "val")


def test_real_release(shared_data):
    files, labels = opensarship.list_chips(shared_data / "opensarship")
    assert len(files) == 299 and np.bincount(labels).tolist() == [162, 95, 42]
    train = opensarship.OpenSARShipSource(shared_data / "opensarship", split="train", image_size=32)
    test = opensarship.OpenSARShipSource(shared_data / "opensarship", split="test", image_size=32)
    assert len(train) + len(test) == 299 and not set(train.files) & set(test.files)
    images = np.stack([test[i]["image"] for i in range(len(test))])
    # Calibrated sea clutter and ships inside DB_RANGE: neither floor nor ceiling dominates.
    assert 40 < images.mean() < 200 and (images == 0).mean() < 0.01 and (images == 255).mean() < 0.05
