"""Sentinel-1 SAFE products: sigma0 from the real LUTs against an independent numpy evaluation, the pixel path
(multilook, dB, clip, uint8) on synthetic rasters written into copies of the real products, the error paths, the
TFDS round trip and the `safe` source's wiring.

The fixtures (`../shared/data/s1_safe`) hold real manifest, annotation, calibration and noise XML, and measurement
TIFFs of placeholder pixels; they are read in place, and every test that needs pixels copies the few XML files it
needs into `tmp_path` beside a small synthetic complex int16 raster (the product's first lines and pixels).
"""
import hashlib
import pickle
import shutil
import sys
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
import tifffile

from oceansar.data import safe
from oceansar.data.decode import CorruptImageError
from oceansar.data.synthetic import DB_RANGE
from oceansar.data.wv_files import normalised_db
from oceansar.errors import DataError, DataNotFoundError

IW = "S1B_IW_SLC__1SDV_20210401T052622_20210401T052650_026269_032297_EFA4.SAFE"
SM = "S1A_S3_SLC__1SDV_20210401T152855_20210401T152914_037258_04638E_6001.SAFE"
WV = "S1B_WV_SLC__1SSV_20210403T083025_20210403T084452_026300_032390_D542.SAFE"
IW1_VV = "s1b-iw1-slc-vv-20210401t052624-20210401t052649-026269-032297-004"
IW1_VH = "s1b-iw1-slc-vh-20210401t052624-20210401t052649-026269-032297-001"
IW2_VH = "s1b-iw2-slc-vh-20210401t052622-20210401t052650-026269-032297-002"
SM_VH = "s1a-s3-slc-vh-20210401t152855-20210401t152914-037258-04638e-001"
FLOOR = 1e-6
# The synthetic raster: the first 96 lines and 384 pixels of IW1, 24 x 32 cells of the 4 x 12 looks of 50 m.
SHAPE = (96, 384)
LOOKS = (4, 12)


@pytest.fixture(scope="module")
def s1_safe(shared_data):
    root = shared_data / "s1_safe"
    if not root.is_dir():
        pytest.skip(f"SAFE fixtures not found at {root}")
    return root


# ---- an independent evaluation of the LUTs: xml.etree, point by point ----

def _vectors(path, vector, value):
    out = []
    for v in ET.parse(path).getroot().iter(vector):
        out.append((int(v.find("line").text), np.array(v.find("pixel").text.split(), float),
                    np.array(v.find(value).text.split(), float)))
    return sorted(out, key=lambda t: t[0])


def _bracket(grid, x):
    """Index i and weight u of x between grid[i] and grid[i + 1], clamped at the ends."""
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2)
    return i, np.clip((x - grid[i]) / (grid[i + 1] - grid[i]), 0.0, 1.0)


def _bilinear(vectors, line, pixel):
    """The LUT at points (line[k], pixel[k]): along pixels in the two vectors around each line, then along lines."""
    j, t = _bracket(np.array([v[0] for v in vectors], float), line)

    def along(k):
        out = np.empty(pixel.shape)
        for kk in np.unique(k):
            sel = k == kk
            px, val = vectors[kk][1], vectors[kk][2]
            i, u = _bracket(px, pixel[sel])
            out[sel] = val[i] * (1 - u) + val[i + 1] * u
        return out

    return along(j) * (1 - t) + along(j + 1) * t


def _azimuth(path, line, pixel):
    out = np.ones(line.shape)
    for v in ET.parse(path).getroot().iter("noiseAzimuthVector"):
        first, last = int(v.find("firstAzimuthLine").text), int(v.find("lastAzimuthLine").text)
        left, right = int(v.find("firstRangeSample").text), int(v.find("lastRangeSample").text)
        inside = (line >= first) & (line <= last) & (pixel >= left) & (pixel <= right)
        lut_lines = np.array(v.find("line").text.split(), float)
        lut = np.array(v.find("noiseAzimuthLut").text.split(), float)
        out[inside] = np.interp(line[inside], lut_lines, lut)
    return out


def _reference_sigma0(product, stem, dn, line, pixel, *, noise=True):
    """max((|DN|^2 - noise) / A^2, floor) at points, from the product's XML."""
    cal = product / "annotation" / "calibration" / f"calibration-{stem}.xml"
    a = _bilinear(_vectors(cal, "calibrationVector", "sigmaNought"), line, pixel)
    n = 0.0
    if noise:
        path = product / "annotation" / "calibration" / f"noise-{stem}.xml"
        n = _bilinear(_vectors(path, "noiseRangeVector", "noiseRangeLut"), line, pixel) * _azimuth(path, line, pixel)
    return np.maximum((np.abs(dn.astype(np.complex128)) ** 2 - n) / a ** 2, FLOOR), a


def _measurement(product_dir, stem):
    return safe.Measurement(safe.Product.open(product_dir), stem)


@pytest.mark.parametrize("product, stem, noise", [(IW, IW1_VV, True), (IW, IW2_VH, True), (SM, SM_VH, False)],
                         ids=["iw1-vv", "iw2-vh", "s3-vh-no-noise-xml"])
def test_sigma0_at_sampled_points_matches_the_luts(s1_safe, product, stem, noise):
    rng = np.random.default_rng(0)
    annotation, cal = safe.load_metadata(_measurement(s1_safe / product, stem), thermal_noise=noise)
    # Sampled lines and pixels over the whole raster, its first and last ones included.
    lines = np.unique(np.r_[0, rng.integers(0, annotation.lines, 40), annotation.lines - 1])
    pixels = np.unique(np.r_[0, rng.integers(0, annotation.samples, 60), annotation.samples - 1])
    dn = (rng.normal(0, 60, (lines.size, pixels.size)) + 1j * rng.normal(0, 60, (lines.size, pixels.size)))
    dn = np.rint(dn.real).astype(np.int16) + 1j * np.rint(dn.imag).astype(np.int16)
    got = cal.sigma0(dn.astype(np.complex64), lines, pixels, floor=FLOOR)
    ll, pp = np.meshgrid(lines.astype(float), pixels.astype(float), indexing="ij")
    want, a = _reference_sigma0(s1_safe / product, stem, dn.ravel(), ll.ravel(), pp.ravel(), noise=noise)
    np.testing.assert_allclose(cal.sigma_nought(lines, pixels).ravel(), a, rtol=1e-9)
    np.testing.assert_allclose(got.ravel(), want, rtol=2e-4, atol=1e-8)
    assert got.dtype == np.float32 and got.shape == (lines.size, pixels.size)
    assert (got == np.float32(FLOOR)).any() == noise  # only the noise pushes samples below the floor
    if noise:
        assert cal.noise_azimuth and cal.noise_range is not None


def test_sigma_nought_agrees_with_xarray_sentinel(s1_safe):
    """The LUT interpolation is the one xarray-sentinel's calibrate_amplitude uses (inside the LUT's lines)."""
    xs = pytest.importorskip("xarray_sentinel")
    path = s1_safe / IW / "annotation" / "calibration" / f"calibration-{IW1_VV}.xml"
    lut = xs.sentinel1.open_calibration_dataset(str(path)).sigmaNought
    lines, pixels = np.arange(0, 13509, 997), np.arange(0, 21632, 1499)
    want = lut.interp(line=lines, pixel=pixels).values
    _, cal = safe.load_metadata(_measurement(s1_safe / IW, IW1_VV))
    np.testing.assert_allclose(cal.sigma_nought(lines, pixels), want, rtol=1e-6)


# ---- synthetic rasters in copies of the real products ----

def _write_slc(path, dn):
    """A complex int16 (SampleFormat COMPLEXINT) GeoTIFF, one zlib strip per line, as the real measurements."""
    pairs = np.stack([dn.real, dn.imag], axis=-1).astype(np.int16)
    tifffile.imwrite(path, np.ascontiguousarray(pairs).view(np.int32)[..., 0], rowsperstrip=1, compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages.first.tags["SampleFormat"].overwrite(5)


def _synthetic_dn(seed=0):
    """Speckled DN whose cell means sweep -45..+15 dB of sigma0, with one cell of no-data (DN = 0)."""
    rng = np.random.default_rng(seed)
    cells = (SHAPE[0] // LOOKS[0], SHAPE[1] // LOOKS[1])
    db = np.linspace(-45.0, 15.0, cells[0] * cells[1]).reshape(cells)
    amplitude = np.kron(np.sqrt(10 ** (db / 10)) * 320.0, np.ones(LOOKS))
    speckle = (rng.normal(size=SHAPE) + 1j * rng.normal(size=SHAPE)) / np.sqrt(2)
    dn = amplitude * speckle
    dn = np.clip(np.rint(dn.real), -32767, 32767) + 1j * np.clip(np.rint(dn.imag), -32767, 32767)
    dn[8:12, 24:36] = 0
    return dn


def _copy(src, dst_root, stems, *, seed=0):
    """A copy of product `src` holding `stems` (their XML copied, a synthetic raster each, the manifest's MD5 of
    each raster updated)."""
    dst = dst_root / src.name
    (dst / "annotation" / "calibration").mkdir(parents=True)
    (dst / "measurement").mkdir()
    manifest = (src / "manifest.safe").read_text()
    for k, stem in enumerate(stems):
        for rel in (f"annotation/{stem}.xml", f"annotation/calibration/calibration-{stem}.xml",
                    f"annotation/calibration/noise-{stem}.xml"):
            shutil.copyfile(src / rel, dst / rel)
        tiff = dst / "measurement" / f"{stem}.tiff"
        _write_slc(tiff, _synthetic_dn(seed + k))
        start = manifest.index(f"measurement/{stem}.tiff")
        at = manifest.index("<checksum checksumName=\"MD5\">", start) + len("<checksum checksumName=\"MD5\">")
        manifest = manifest[:at] + hashlib.md5(tiff.read_bytes()).hexdigest() + manifest[at + 32:]
    (dst / "manifest.safe").write_text(manifest)
    return dst


@pytest.fixture
def iw_copy(s1_safe, tmp_path):
    return _copy(s1_safe / IW, tmp_path / "archive", [IW1_VV])


def _reference_multilook(product, stem, dn):
    line, pixel = np.meshgrid(np.arange(SHAPE[0], dtype=float), np.arange(SHAPE[1], dtype=float), indexing="ij")
    cal = product / "annotation" / "calibration" / f"calibration-{stem}.xml"
    path = product / "annotation" / "calibration" / f"noise-{stem}.xml"
    a = _bilinear(_vectors(cal, "calibrationVector", "sigmaNought"), line.ravel(), pixel.ravel())
    n = (_bilinear(_vectors(path, "noiseRangeVector", "noiseRangeLut"), line.ravel(), pixel.ravel())
         * _azimuth(path, line.ravel(), pixel.ravel()))
    s0 = ((np.abs(dn.ravel()) ** 2 - n) / a ** 2).reshape(SHAPE)
    valid = (dn != 0).reshape(SHAPE[0] // 4, 4, SHAPE[1] // 12, 12)
    total = np.where(valid, s0.reshape(valid.shape), 0).sum(axis=(1, 3))
    count = valid.sum(axis=(1, 3))
    return np.maximum(np.where(count > 0, total / np.maximum(count, 1), 0), FLOOR)


def _to_uint8(ml):
    lo, hi = DB_RANGE
    return np.rint(np.clip((10 * np.log10(ml) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def test_multilook_db_clip_on_a_synthetic_raster(iw_copy):
    dn = _synthetic_dn()
    m = _measurement(iw_copy, IW1_VV)
    assert safe.load_metadata(m)[0].looks(50.0) == LOOKS
    ml, window = safe.read_sigma0(m)
    want = _reference_multilook(iw_copy, IW1_VV, dn)
    assert window == (0, SHAPE[0], 0, SHAPE[1]) and ml.shape == want.shape == (24, 32)
    np.testing.assert_allclose(ml, want, rtol=2e-4)
    assert ml[2, 2] == np.float32(FLOOR)  # the no-data cell
    blocks, _ = safe.read_sigma0(m, block_pixels=SHAPE[1] * 4)  # 24 blocks of one cell row each
    np.testing.assert_array_equal(blocks, ml)

    # Tiles of 8 x 8 cells read at 8 px: no resampling, so each record is the reference cells in dB, clipped.
    tiles = safe.SafeSource(iw_copy, image_size=8, tile_size=8)
    assert len(tiles) == 12
    expected = _to_uint8(want)
    for i in range(len(tiles)):
        _, (top, bottom, left, right) = tiles.measurement_of(i)
        cells = expected[top // 4:bottom // 4, left // 12:right // 12]
        image = tiles[i]["image"]
        assert image.shape == (8, 8, 1) and image.dtype == np.uint8
        diff = np.abs(image[..., 0].astype(int) - cells)  # float32 against float64: a rounding tie may flip
        assert diff.max() <= 1 and (diff == 0).mean() > 0.95
    images = np.stack([tiles[i]["image"] for i in range(len(tiles))])
    assert (images == 0).any() and (images == 255).any()  # both ends of DB_RANGE clip

    # A whole-file record: centre crop and antialiased resize of the intensity, then the same scale.
    whole = safe.SafeSource(iw_copy, image_size=16)
    assert len(whole) == 1
    reference = np.rint(normalised_db(want[..., None].astype(np.float32), 16, "reference") * 255)
    assert np.abs(whole[0]["image"].astype(int) - reference).max() <= 1


def test_records_carry_incidence_swath_polarisation_time(iw_copy):
    source = safe.SafeSource(iw_copy, image_size=8, tile_size=8)
    root = ET.parse(iw_copy / "annotation" / f"{IW1_VV}.xml").getroot()
    points = root.findall("geolocationGrid/geolocationGridPointList/geolocationGridPoint")
    grid = np.array([[float(p.find(k).text) for k in ("line", "pixel", "incidenceAngle")] for p in points])
    burst0 = np.datetime64(root.find("swathTiming/burstList/burst/azimuthTime").text, "us")
    interval = float(root.find("imageAnnotation/imageInformation/azimuthTimeInterval").text)
    for i in (0, 5, 11):
        r = source[i]
        _, (top, bottom, left, right) = source.measurement_of(i)
        line, pixel = (top + bottom - 1) / 2, (left + right - 1) / 2
        # The geolocation grid's first two line rows and pixel columns hold this corner of the raster.
        lines, pixels = np.unique(grid[:, 0])[:2], np.unique(grid[:, 1])[:2]
        corner = {(l_, p_): inc for l_, p_, inc in grid}
        u, v = (line - lines[0]) / (lines[1] - lines[0]), (pixel - pixels[0]) / (pixels[1] - pixels[0])
        incidence = ((1 - u) * ((1 - v) * corner[lines[0], pixels[0]] + v * corner[lines[0], pixels[1]])
                     + u * ((1 - v) * corner[lines[1], pixels[0]] + v * corner[lines[1], pixels[1]]))
        assert r["incidence"].dtype == np.float32 and r["incidence"] == pytest.approx(incidence, abs=1e-4)
        assert 30 < r["incidence"] < 46
        assert r["swath"] == safe.SWATHS.index("iw1") and r["swath"].dtype == np.int32
        assert r["polarisation"] == safe.POLARISATIONS.index("vv") and r["polarisation"].dtype == np.int32
        epoch = burst0.astype(np.int64) / 1e6 + line * interval  # the first burst's lines
        assert r["azimuth_time"].dtype == np.float64 and r["azimuth_time"] == pytest.approx(epoch, abs=1e-5)
        assert r["sample_id"] == i and r["sample_id"].dtype == np.int64
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone[3]["image"], source[3]["image"])


def _zip(product, archive, *, leave_out=""):
    with zipfile.ZipFile(archive, "w") as z:
        for f in product.rglob("*"):
            if f.is_file() and f.name != leave_out:
                z.write(f, f"{IW}/{f.relative_to(product)}")
    return archive


def test_zip_reads_like_the_folder(iw_copy, tmp_path):
    archive = _zip(iw_copy, tmp_path / f"{IW.removesuffix('.SAFE')}.zip")
    folder = safe.SafeSource(iw_copy, image_size=8, tile_size=8, verify_checksums=True)
    zipped = safe.SafeSource(archive, image_size=8, tile_size=8, verify_checksums=True)
    assert len(zipped) == len(folder) == 12
    for i in (0, 7):
        np.testing.assert_array_equal(zipped[i]["image"], folder[i]["image"])
        assert zipped[i]["azimuth_time"] == folder[i]["azimuth_time"]
    partial = _zip(iw_copy, tmp_path / "partial.zip", leave_out=f"{IW1_VV}.tiff")
    with pytest.raises(DataNotFoundError, match=f"partial.zip/{IW}/measurement/{IW1_VV}.tiff does not exist"):
        safe.SafeSource(partial, image_size=8)


# ---- errors name the file ----

def test_missing_calibration_noise_or_measurement_is_named(iw_copy, s1_safe):
    (iw_copy / "annotation" / "calibration" / f"calibration-{IW1_VV}.xml").unlink()
    with pytest.raises(DataNotFoundError, match=f"calibration-{IW1_VV}.xml"):
        safe.SafeSource(iw_copy, image_size=8)
    # The real SM product has no noise XML: reading it with noise removal names the file, without it reads.
    with pytest.raises(DataNotFoundError, match=f"noise-{SM_VH}.xml"):
        safe.SafeSource(s1_safe / SM, image_size=8)
    assert len(safe.SafeSource(s1_safe / SM, image_size=8, thermal_noise=False)) == 1
    cal = f"annotation/calibration/calibration-{IW1_VV}.xml"
    shutil.copyfile(s1_safe / IW / cal, iw_copy / cal)
    (iw_copy / "measurement" / f"{IW1_VV}.tiff").unlink()
    with pytest.raises(DataNotFoundError, match=f"measurement/{IW1_VV}.tiff does not exist"):
        safe.SafeSource(iw_copy, image_size=8)


def test_checksum_mismatch_is_named(s1_safe, tmp_path):
    good = _copy(s1_safe / IW, tmp_path / "archive" / "a", [IW1_VV])
    bad = _copy(s1_safe / IW, tmp_path / "archive" / "b", [IW1_VV], seed=1)
    assert len(safe.SafeSource(tmp_path / "archive", image_size=8, verify_checksums=True)) == 2
    cal = bad / "annotation" / "calibration" / f"calibration-{IW1_VV}.xml"
    cal.write_bytes(cal.read_bytes() + b"\n")
    assert len(safe.SafeSource(bad, image_size=8)) == 1  # without verification the product still reads
    with pytest.raises(CorruptImageError, match=f"b/{IW}/annotation/calibration/calibration-{IW1_VV}.xml: MD5"):
        safe.SafeSource(tmp_path / "archive", image_size=8, verify_checksums=True)
    (tmp_path / "archive" / "stray.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="stray.zip: neither a SAFE folder nor a zip"):
        safe.SafeSource(tmp_path / "archive", image_size=8)
    kept = safe.SafeSource(tmp_path / "archive", image_size=8, verify_checksums=True, skip_corrupt=True)
    assert len(kept) == 1 and kept.measurements[0].product.path == str(good)
    assert kept.num_skipped == 2 and "stray.zip" in kept.skipped_files[0] and "MD5" in kept.skipped_files[1]


def test_truncated_or_corrupt_raster_is_named(iw_copy):
    tiff = iw_copy / "measurement" / f"{IW1_VV}.tiff"
    data = tiff.read_bytes()
    tiff.write_bytes(data[:len(data) * 6 // 10])
    source = safe.SafeSource(iw_copy, image_size=8)  # construction only lists the files
    with pytest.raises(CorruptImageError, match=f"{IW1_VV}.tiff: truncated"):
        source[0]
    with pytest.raises(CorruptImageError, match=f"{IW1_VV}.tiff"):
        safe.SafeSource(iw_copy, image_size=8, tile_size=8)  # tiling reads the header at construction
    tiff.write_bytes(b"II*\x00garbage")
    with pytest.raises(CorruptImageError, match=f"{IW1_VV}.tiff: cannot read TIFF"):
        source[0]
    noise = iw_copy / "annotation" / "calibration" / f"noise-{IW1_VV}.xml"
    noise.write_bytes(b"<noise><noiseRangeVectorList>")
    safe.load_metadata.cache_clear()
    with pytest.raises(CorruptImageError, match=f"noise-{IW1_VV}.xml: unreadable XML"):
        safe.load_metadata(_measurement(iw_copy, IW1_VV))


def test_wave_mode_manifest_lists_its_vignettes(s1_safe):
    product = safe.Product.open(s1_safe / WV)
    manifest = safe.read_manifest(product)
    assert (manifest.mission, manifest.mode, manifest.product_type) == ("S1B", "WV", "SLC")
    assert len(manifest.measurements) == 60
    swaths = {rel.split("/")[-1].split("-")[1] for rel in manifest.measurements}
    assert swaths == {"wv1", "wv2"}
    assert all(len(manifest.checksums[rel]) == 32 for rel in manifest.measurements)
    # The fixture is the manifest alone: no annotation, so no measurement to read.
    assert safe.list_measurements(product) == []
    with pytest.raises(DataError, match="no usable Sentinel-1 measurement"):
        safe.SafeSource(s1_safe / WV, image_size=8)


# ---- packaging and wiring ----

def test_tfds_builder_round_trip(s1_safe, tmp_path):
    import tensorflow_datasets as tfds

    from oceansar.data.tfds_safe import SafeArchive
    from oceansar.data.tfds_wv import TFDSSource

    archive = tmp_path / "archive"
    _copy(s1_safe / IW, archive, [IW1_VV, IW1_VH])
    csv = tmp_path / "labels.csv"
    # The VV vignette's own row wins over its product's row, which labels the VH one.
    csv.write_text(f"filename,class\n{IW1_VV}.tiff,pure_ocean_waves\n{IW.removesuffix('.SAFE')},sea_ice\n")
    options = dict(image_size=8, tile_size=8, labels_csv=csv)
    direct = safe.SafeSource(archive, **options)
    assert len(direct) == 24 and direct.class_names == ["pure_ocean_waves", "sea_ice"]
    data_dir = tmp_path / "tfds"
    SafeArchive(archive_dir=archive, data_dir=data_dir, **options).download_and_prepare()
    assert list((data_dir / "safe_archive" / "1.0.0").glob("*.array_record*"))
    assert "tensorflow" not in sys.modules
    src = TFDSSource("safe_archive", split="train", data_dir=data_dir)
    assert len(src) == len(direct) and src.class_names == direct.class_names
    for i in range(len(src)):
        r, d = src[i], direct[int(src[i]["archive_index"])]
        np.testing.assert_array_equal(r["image"], d["image"])
        for key in ("incidence", "swath", "polarisation", "azimuth_time", "label"):
            assert r[key] == d[key], key
        m, window = direct.measurement_of(int(r["archive_index"]))
        assert src.text(i) == m.name and tuple(r["window"]) == window
        assert r["label"] == (0 if m.polarisation == "vv" else 1)
    meta = tfds.data_source("safe_archive", split="train", data_dir=data_dir).dataset_info.metadata
    assert meta["swaths"] == list(safe.SWATHS) and meta["polarisations"] == list(safe.POLARISATIONS)


def test_tfds_builder_labels_split_folders_from_one_csv(s1_safe, tmp_path, caplog):
    from oceansar.data.tfds_safe import SafeArchive
    from oceansar.data.tfds_wv import TFDSSource

    archive = tmp_path / "archive"
    _copy(s1_safe / IW, archive / "train", [IW1_VV])
    _copy(s1_safe / IW, archive / "test", [IW1_VH, IW2_VH])
    rows = {IW1_VV: "ocean", IW1_VH: "ice", IW2_VH: "ocean"}  # one CSV over both splits
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,class\n" + "".join(f"{stem}.tiff,{c}\n" for stem, c in rows.items()))
    with pytest.raises(DataNotFoundError, match="labels.csv: 2 row"):  # a lone SafeSource still wants every row
        safe.SafeSource(archive / "train", image_size=8, labels_csv=csv)
    data_dir = tmp_path / "tfds"
    builder = SafeArchive(archive_dir=archive, data_dir=data_dir, image_size=8, labels_csv=csv)
    assert builder.skipped_files == []
    builder.download_and_prepare()
    for split, stems in (("train", [IW1_VV]), ("test", [IW1_VH, IW2_VH])):
        src = TFDSSource("safe_archive", split=split, data_dir=data_dir)
        direct = safe.SafeSource(archive / split, image_size=8, labels_csv=csv, labels_elsewhere=True)
        assert direct.unmatched_rows == [f"{stem}.tiff" for stem in rows if stem not in stems]
        assert len(src) == len(stems) and src.class_names == direct.class_names == ["ice", "ocean"]
        assert sorted(src.text(i) for i in range(len(src))) == [f"{stem}.tiff" for stem in stems]
        for i in range(len(src)):
            r = src[i]
            stem = src.text(i).removesuffix(".tiff")
            assert r["label"] == ["ice", "ocean"].index(rows[stem]), (split, stem)
            # The whole-file window the record was read from: the raster cut to whole cells of its own looks.
            looks = safe.load_metadata(_measurement(archive / split / IW, stem))[0].looks(50.0)
            assert tuple(r["window"]) == safe.full_window(SHAPE, looks)
            np.testing.assert_array_equal(r["image"], direct[int(r["archive_index"])]["image"])

    # A row matching no product of any split: an error, or with skip_corrupt counted and logged once.
    csv.write_text(csv.read_text() + "S1A_IW_SLC__nowhere.SAFE,ice\n")
    with pytest.raises(DataNotFoundError, match="labels.csv: 1 row.*S1A_IW_SLC__nowhere"):
        SafeArchive(archive_dir=archive, data_dir=data_dir, image_size=8, labels_csv=csv)
    with caplog.at_level("WARNING", logger="oceansar.data.tfds_safe"):
        skipping = SafeArchive(archive_dir=archive, data_dir=tmp_path / "tfds2", image_size=8, labels_csv=csv,
                               skip_corrupt=True)
    assert skipping.skipped_files == [f"{csv}: no measurement for S1A_IW_SLC__nowhere.SAFE"]
    assert [r.name for r in caplog.records] == ["oceansar.data.tfds_safe"]


def test_explicit_class_names_give_splits_one_index(s1_safe, tmp_path):
    for split, label in (("train", "ocean"), ("test", "ice")):
        _copy(s1_safe / IW, tmp_path / split, [IW1_VV])
        (tmp_path / split / "labels.csv").write_text(f"filename,label\n{IW1_VV}.tiff,{label}\n")

    def source(split, **kwargs):
        return safe.SafeSource(tmp_path / split, image_size=8, labels_csv=tmp_path / split / "labels.csv", **kwargs)

    own = [source(split) for split in ("train", "test")]
    assert [s.class_names for s in own] == [["ocean"], ["ice"]]  # the default: each CSV's classes, sorted
    assert own[0].labels().tolist() == own[1].labels().tolist() == [0]  # index 0 names two classes
    train, test = (source(split, class_names=("ice", "ocean", "wind")) for split in ("train", "test"))
    assert train.class_names == test.class_names == ["ice", "ocean", "wind"]
    assert train.labels().tolist() == [1] and test.labels().tolist() == [0]
    assert train[0]["label"] == 1 and train[0]["label"].dtype == np.int32
    with pytest.raises(DataError, match=r"train/labels.csv: label 'ocean' is not one of the class_names"):
        source("train", class_names=["ice", "wind"])
    with pytest.raises(ValueError, match="class_names"):
        source("train", class_names=["ice", "ice"])
    with pytest.raises(ValueError, match="class_names"):
        safe.SafeSource(tmp_path / "train", image_size=8, class_names=["ice"])
    codes = tmp_path / "codes.csv"  # multi-hot code columns are mapped by name too
    codes.write_text(f"filename,b,a\n{IW1_VV}.tiff,1,0\n")
    multi = safe.SafeSource(tmp_path / "train", image_size=8, labels_csv=codes, class_names=["a", "b", "c"])
    assert multi.labels() is None and multi[0]["labels"].tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="codes.csv: label 'b'"):
        safe.SafeSource(tmp_path / "train", image_size=8, labels_csv=codes, class_names=["a", "c"])


def test_safe_source_is_built_from_the_config(iw_copy):
    from configs import default
    from oceansar.data import sources
    from oceansar.spec import DataSpec, build

    data = default.get_config().data
    data.source, data.root, data.image_size, data.cache = "safe", str(iw_copy), 8, False
    data.safe = dict(pixel_spacing=50.0, tile_size=8, polarisations=("vv",), thermal_noise=True,
                     db_range=DB_RANGE, verify_checksums=True)
    spec = build(DataSpec, data, "data")
    source = sources.make_pretrain_source(spec, seed=0)
    assert isinstance(source, safe.SafeSource) and len(source) == 12
    assert source[0]["image"].shape == (8, 8, 1)
    data.safe.polarisations = ("xx",)
    with pytest.raises(ValueError, match="config.data.safe.polarisations"):
        build(DataSpec, data, "data")


def test_safe_evaluator_reads_labelled_split_folders(s1_safe, tmp_path):
    from types import SimpleNamespace

    from oceansar.data import sources

    # Both splits hold both classes: the product's row labels one measurement, the other's own row wins.
    for split, label, other in (("train", "ocean", "ice"), ("test", "ice", "ocean")):
        _copy(s1_safe / IW, tmp_path / split, [IW1_VV, IW1_VH])
        (tmp_path / split / "labels.csv").write_text(
            f"filename,label\n{IW.removesuffix('.SAFE')}.SAFE,{label}\n{IW1_VH}.tiff,{other}\n")
    spec = SimpleNamespace(source="safe", root=str(tmp_path), train_split="train", test_split="test")
    train, test = sources.make_eval_sources(spec, image_size=8, in_channels=1, seed=0, cache=False)
    assert len(train) == len(test) == 2
    assert train.class_names == test.class_names == ["ice", "ocean"]
    vv = [m.polarisation for m in train.measurements].index("vv")
    assert train[vv]["label"] == 1 and test.labels()[vv] == 0 and train[vv]["image"].shape == (8, 8, 1)
    (tmp_path / "test" / "labels.csv").unlink()
    with pytest.raises(DataNotFoundError, match="test/labels.csv"):
        sources.make_eval_sources(spec, image_size=8, in_channels=1, seed=0, cache=False)
