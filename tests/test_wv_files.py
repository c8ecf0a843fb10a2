"""WV files: real quicklook PNGs with multi-hot labels, and GeoTIFF measurement files in dB."""
import numpy as np
import pytest
import tifffile

from oceansar.data.decode import CorruptImageError
from oceansar.data.synthetic import DB_RANGE
from oceansar.data.wv_files import CALIBRATION_DB, WVFileSource, read_wv


def _norm(db):
    lo, hi = DB_RANGE
    return (db - lo) / (hi - lo)


def test_real_quicklooks_with_multi_hot_labels(shared_data):
    root = shared_data / "s1wv_samples"
    if not root.is_dir():
        pytest.skip(f"WV quicklooks not found at {root}")
    src = WVFileSource(root, image_size=32, labels_csv=root / "sample_data.csv")
    assert len(src) == 15 and len(src.class_names) == 21 and src.class_names[:3] == ["UN", "NV", "WS"]
    r = src[0]
    assert r["image"].dtype == np.uint8 and r["image"].shape == (32, 32, 1)
    assert r["labels"].shape == (21,) and r["labels"].sum() >= 1
    # The first CSV row is UN + MC.
    assert src.files[0].endswith("20190929t033915-20190929t033918-029230-03520d-056.png")
    np.testing.assert_array_equal(np.flatnonzero(r["labels"]), [0, 3])
    # Quicklook medians are anchored near -15 dB, speckle spreads around it.
    med = np.median(r["image"]) / 255.0
    assert abs(med - _norm(-15.0)) < 0.1 and r["image"].std() > 3


def test_geotiff_dn_float_linear_and_db(tmp_path):
    dn = np.full((40, 50), 100, np.uint16)
    tifffile.imwrite(tmp_path / "dn.tiff", dn)
    expected = _norm(20 * np.log10(100.0) - CALIBRATION_DB)
    np.testing.assert_allclose(read_wv(tmp_path / "dn.tiff", 16), expected, atol=1e-5)
    # Complex SLC samples: |z|^2.
    tifffile.imwrite(tmp_path / "slc.tif", np.full((20, 20), 60 + 80j, np.complex64))
    np.testing.assert_allclose(read_wv(tmp_path / "slc.tif", 8), expected, atol=1e-5)
    sigma0 = np.full((20, 20), 10 ** (-1.2), np.float32)  # -12 dB linear
    tifffile.imwrite(tmp_path / "lin.tif", sigma0)
    tifffile.imwrite(tmp_path / "db.tif", np.full((20, 20), -12.0, np.float32))
    for name in ("lin.tif", "db.tif"):
        out = read_wv(tmp_path / name, 8)
        assert out.shape == (8, 8, 1) and out.dtype == np.float32
        np.testing.assert_allclose(out, _norm(-12.0), atol=1e-5)
    # Out-of-range backscatter clips to [0, 1].
    tifffile.imwrite(tmp_path / "bright.tif", np.full((8, 8), 30.0, np.float32))
    assert np.all(read_wv(tmp_path / "bright.tif", 8) == 1.0)
    src = WVFileSource(tmp_path, image_size=8)
    assert len(src) == 5 and src.image_shape == (8, 8, 1)
    img = src[src.files.index(str(tmp_path / "db.tif"))]["image"]
    assert np.all(img == np.rint(_norm(-12.0) * 255))


def test_bad_wv_files(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.full((8, 8), 5, np.uint16))
    tifffile.imwrite(tmp_path / "nan.tif", np.full((8, 8), np.nan, np.float32))
    tifffile.imwrite(tmp_path / "three.tif", np.ones((8, 8, 3), np.uint16))
    (tmp_path / "empty.tiff").write_bytes(b"")
    with pytest.raises(CorruptImageError, match="three.tif.*single-band"):
        read_wv(tmp_path / "three.tif", 8)
    src = WVFileSource(tmp_path, image_size=8)
    with pytest.raises(CorruptImageError, match="nan.tif"):
        src[src.files.index(str(tmp_path / "nan.tif"))]
    skipping = WVFileSource(tmp_path, image_size=8, skip_corrupt=True)
    assert len(skipping) == 1 and skipping.num_skipped == 3
