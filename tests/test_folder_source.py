"""ImageFolderSource and decoding: round trips, labels CSV, MSTAR, and named errors for bad files."""
import logging
import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image

from oceansar.data.decode import CorruptImageError, decode_image, resize_square
from oceansar.data.folder import ImageFolderSource, read_labels_csv


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(path)


def _gradient(h, w, c, offset=0):
    y, x = np.mgrid[:h, :w]
    return np.stack([((x + y * 3 + offset + 17 * k) % 256) for k in range(c)], -1).astype(np.uint8)


def test_class_folders_grayscale_roundtrip(tmp_path):
    images = {}
    for ci, cls in enumerate(["b_ice", "a_ocean"]):
        for j in range(3):
            arr = _gradient(12, 12, 1, offset=10 * ci + j)
            _png(tmp_path / cls / f"{j}.png", arr)
            images[(cls, j)] = arr
    src = ImageFolderSource(tmp_path, image_size=None)
    assert src.class_names == ["a_ocean", "b_ice"]
    assert len(src) == 6 and src.image_shape == (12, 12, 1)
    r = src[0]
    assert r["image"].dtype == np.uint8 and r["sample_id"].dtype == np.int64
    np.testing.assert_array_equal(r["image"], images[("a_ocean", 0)])
    assert int(r["label"]) == 0 and int(src[5]["label"]) == 1 and int(src[5]["sample_id"]) == 5
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[4]["image"], src[4]["image"])


def test_multiband_tiff_and_rgb_png_resized(tmp_path):
    planar = np.stack([np.full((20, 30), v, np.uint16) for v in (0, 30000, 65535)])  # bands first
    (tmp_path / "x").mkdir()
    tifffile.imwrite(tmp_path / "x" / "a.tif", planar, photometric="minisblack",
                     planarconfig="separate")
    tifffile.imwrite(tmp_path / "x" / "b.tiff", np.moveaxis(planar, 0, -1), photometric="rgb")
    src = ImageFolderSource(tmp_path, image_size=8)
    assert src.image_shape == (8, 8, 3) and len(src) == 2
    for i in range(2):
        img = src[i]["image"]
        assert img.dtype == np.float16 and img.shape == (8, 8, 3)
        np.testing.assert_allclose(img.astype(np.float32).mean(axis=(0, 1)),
                                   [0.0, 30000 / 65535, 1.0], atol=1e-3)
    rgb = tmp_path / "rgb"
    _png(rgb / "c" / "0.png", _gradient(16, 24, 3))
    r = ImageFolderSource(rgb, image_size=8)[0]
    assert r["image"].dtype == np.uint8 and r["image"].shape == (8, 8, 3)


def test_resize_center_crops_then_averages():
    arr = np.zeros((10, 20, 1), np.uint8)
    arr[:, 5:15] = 200  # the centred square is all 200
    out = resize_square(arr, 5)
    assert out.shape == (5, 5, 1) and np.all(out == 200)


def test_flat_folder_with_labels_csv(tmp_path):
    for name in ["x.png", "y.png", "z.png"]:
        _png(tmp_path / name, _gradient(6, 6, 1))
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\nx.png,10\ny.png,2\nz.png,10\n")
    src = ImageFolderSource(tmp_path, image_size=4, labels_csv=csv)
    assert src.class_names == ["2", "10"]
    assert [int(src[i]["label"]) for i in range(3)] == [1, 0, 1]
    multi = tmp_path / "multi.csv"
    multi.write_text("filename,WS,SI\nx.png,1,0\ny.png,1,1\nz.png,0,0\n")
    table = read_labels_csv(multi)
    assert table.class_names == ["WS", "SI"] and table.label is None
    src = ImageFolderSource(tmp_path, image_size=4, labels_csv=multi)
    np.testing.assert_array_equal(src[1]["labels"], [1, 1])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.png,1\n")
    with pytest.raises(ValueError, match="bad.csv"):
        read_labels_csv(bad)


def _write_bad_files(root):
    good = _gradient(8, 8, 1)
    _png(root / "c" / "a_good0.png", good)
    _png(root / "c" / "a_good1.png", good)
    (root / "c" / "empty.png").write_bytes(b"")
    buf = root / "c" / "full.jpg"
    Image.fromarray(_gradient(64, 64, 1)[..., 0]).save(buf, quality=95)
    data = buf.read_bytes()
    buf.unlink()
    (root / "c" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "c" / "garbage.png").write_bytes(b"not an image at all")
    _png(root / "c" / "rgb.png", _gradient(8, 8, 3))  # wrong channel count
    tifffile.imwrite(root / "c" / "nan.tif", np.full((8, 8), np.nan, np.float32))


@pytest.mark.parametrize("name, reason", [
    ("empty.png", "empty"), ("truncated.jpg", "decode"), ("garbage.png", "decode"),
    ("rgb.png", "channel"), ("nan.tif", "NaN")])
def test_corrupt_files_raise_named_error(tmp_path, name, reason):
    _write_bad_files(tmp_path)
    with pytest.raises(CorruptImageError, match=reason) as e:
        decode_image(tmp_path / "c" / name, channels=1)
    assert name in str(e.value) and e.value.path.endswith(name)
    err = pickle.loads(pickle.dumps(e.value))
    assert err.path == e.value.path


def test_corrupt_file_raises_when_read_and_skip_counts(tmp_path, caplog):
    _write_bad_files(tmp_path)
    src = ImageFolderSource(tmp_path, image_size=8, channels=1)
    names = [p.rsplit("/", 1)[-1] for p in src.files]
    with pytest.raises(CorruptImageError, match="truncated.jpg"):
        src[names.index("truncated.jpg")]
    with caplog.at_level(logging.WARNING):
        skipping = ImageFolderSource(tmp_path, image_size=8, skip_corrupt=True)
    assert len(skipping) == 2 and skipping.num_skipped == 5
    assert sorted(p.rsplit("/", 1)[-1] for p in skipping.skipped_files) == [
        "empty.png", "garbage.png", "nan.tif", "rgb.png", "truncated.jpg"]
    assert "skipped 5 corrupt" in caplog.text
    assert [int(skipping[i]["sample_id"]) for i in range(2)] == [0, 1]


def test_mstar_loads(shared_data):
    root = shared_data / "mstar10"
    if not root.is_dir():
        pytest.skip(f"MSTAR chips not found at {root}")
    for split in ("train", "test"):
        src = ImageFolderSource(root / split, image_size=64)
        assert len(src.class_names) == 10 and src.image_shape == (64, 64, 1)
        assert len(src) > 2000
        r = src[len(src) - 1]
        assert r["image"].dtype == np.uint8 and int(r["label"]) == 9
        assert r["image"].std() > 5


def test_convert_shows_rgb_images_to_a_one_channel_model(tmp_path):
    from PIL import Image

    rgb = _gradient(8, 8, 3)
    _png(tmp_path / "a" / "rgb.png", rgb)
    src = ImageFolderSource(tmp_path, image_size=None, channels=1, convert=True)
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))[..., None]
    np.testing.assert_array_equal(src[0]["image"], expected)
    with pytest.raises(CorruptImageError, match="channel"):
        ImageFolderSource(tmp_path, image_size=None, channels=1)  # without convert: a wrong channel count
