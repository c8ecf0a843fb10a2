"""TFDS path without TensorFlow: build a tiny WV archive as array_record, read it back by name."""
import pickle
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tifffile

from oceansar.data.tfds_wv import TFDSSource, WvArchive


def _archive(root):
    """TenGeoP-style archive: train/test split folders with class folders of GeoTIFFs (dB)."""
    levels = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls, base in (("F_pure_ocean_waves", -20.0), ("K_sea_ice", -5.0)):
            d = root / split / cls
            d.mkdir(parents=True)
            for j in range(n):
                db = base + j
                tifffile.imwrite(d / f"s1a-wv1-{split}-{cls[0]}-{j}.tiff",
                                 np.full((12, 12), db, np.float32))
                levels[f"s1a-wv1-{split}-{cls[0]}-{j}.tiff"] = db
    return levels


def test_build_array_record_and_read_back(tmp_path):
    levels = _archive(tmp_path / "archive")
    data_dir = tmp_path / "tfds"
    builder = WvArchive(archive_dir=tmp_path / "archive", image_size=8, data_dir=data_dir)
    builder.download_and_prepare()
    assert list((data_dir / "wv_archive" / "1.0.0").glob("*.array_record*"))
    assert not list((data_dir / "wv_archive" / "1.0.0").glob("*tfrecord*"))
    assert "tensorflow" not in sys.modules

    direct = builder.as_data_source(split="train")
    assert len(direct) == 6
    src = TFDSSource("wv_archive", split="train", data_dir=data_dir)
    assert len(src) == 6 and src.image_shape == (8, 8, 1)
    assert src.class_names == ["F_pure_ocean_waves", "K_sea_ice"]
    seen = set()
    for i in range(len(src)):
        r = src[i]
        assert r["image"].dtype == np.uint8 and r["image"].shape == (8, 8, 1)
        assert r["sample_id"] == i and r["sample_id"].dtype == np.int64
        assert r["label"].dtype == np.int32 and "filename" not in r
        name = src.text(i)
        assert isinstance(name, str)
        assert int(r["label"]) == (0 if "-F-" in name else 1)
        expected = np.rint((levels[name] + 35.0) / 40.0 * 255)  # synthetic.DB_RANGE
        assert np.all(r["image"] == expected)
        seen.add(name)
    assert len(seen) == 6
    test = TFDSSource("wv_archive", split="test", data_dir=data_dir)
    assert len(test) == 4
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[3]["image"], src[3]["image"])


def test_multi_hot_csv_archive(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    for j in range(3):
        tifffile.imwrite(root / f"v{j}.tif", np.full((8, 8), 100 * (j + 1), np.uint16))
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,WS,SI,IB\nv0.tif,1,0,0\nv1.tif,0,1,1\nv2.tif,0,0,0\n")
    WvArchive(archive_dir=root, labels_csv=csv, image_size=8,
              data_dir=tmp_path / "tfds").download_and_prepare()
    src = TFDSSource("wv_archive", split="train", data_dir=tmp_path / "tfds", label_key=None)
    assert src.class_names is None
    by_name = {src.text(i): src[i]["labels"] for i in range(len(src))}
    np.testing.assert_array_equal(by_name["v1.tif"], [0, 1, 1])
    meta = tfds.data_source("wv_archive", split="train", data_dir=tmp_path / "tfds").dataset_info
    assert meta.metadata["codes"] == ["WS", "SI", "IB"]


@pytest.mark.parametrize("name, size", [("eurosat", None), ("resisc45", 32), ("uc_merced", 16)])
def test_prepared_datasets_by_name(name, size):
    with tfds.testing.mock_data(num_examples=3):
        src = TFDSSource(name, split="train", image_size=size)
        r = src[2]
    assert len(src) == 3 and len(src.class_names) in (10, 21, 45)
    assert r["image"].dtype == np.uint8 and r["image"].shape == src.image_shape
    assert src.image_shape[-1] == 3 and (size is None or src.image_shape[:2] == (size, size))
    assert r["label"].dtype == np.int32 and r["label"].shape == ()
    assert r["sample_id"] == 2


def test_varying_size_dataset_needs_image_size():
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match="image_size"):
            TFDSSource("uc_merced", split="train")


def test_missing_dataset_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="array_record"):
        TFDSSource("wv_archive", split="train", data_dir=tmp_path)
