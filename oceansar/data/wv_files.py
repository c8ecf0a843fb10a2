"""Real Sentinel-1 Wave Mode files: quicklook PNGs and GeoTIFF measurement files, as sigma0 in dB.

Here live `read_wv` (one file -> normalised sigma0 dB array) and `WVFileSource` (random access over a
folder or list of such files, optionally labelled by a CSV). Every format goes through one path:
linear backscatter intensity -> center crop + antialiased resize (averaging intensity, the physical
multilook, not dB) -> 10*log10 -> clip and map `DB_RANGE` onto [0, 1]. `DB_RANGE` is the simulator's
(`synthetic.DB_RANGE`), so real and simulated vignettes share one uint8 scale. Generic image
folders live in `folder.py`; this module is about radiometry.

Formats and their conversion to intensity:
- Quicklook PNG (`*-QL-*.png`, uint8): a per-image stretched amplitude rendering (in the WV-Net
  samples every image has its median near 95/255 and about 1% of pixels saturated at each end), so
  absolute calibration is lost. The pixel is taken as amplitude relative to the image median, and
  the median is anchored at `QUICKLOOK_MEDIAN_DB` (typical open-ocean VV backscatter).
- Measurement TIFF with integer digital numbers (uint16 detected, or complex int16 SLC, which
  tifffile reads as complex): intensity = |DN|^2 / A^2, with one constant A for the whole image
  (`calibration_db` = 20*log10(A)) instead of the product's calibration LUT. The default
  `CALIBRATION_DB` is of the order of Sentinel-1 Level-1 sigmaNought LUT values; for quantitative
  work calibrate with the SAFE annotation LUT first and pass float sigma0.
- Float TIFF: calibrated sigma0, linear (all values >= 0) or already in dB (any negative value);
  `float_units` overrides the guess.
"""
from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from oceansar.data.decode import CorruptImageError, decode_image, resize_square
from oceansar.data.folder import FileRecords, read_labels_csv
from oceansar.data.synthetic import DB_RANGE
from oceansar.errors import DataError, DataNotFoundError

log = logging.getLogger(__name__)

WV_EXTENSIONS = (".png", ".tif", ".tiff")
# 20*log10(A_sigma) for A_sigma ~ 237, the order of Sentinel-1 Level-1 sigmaNought LUT values.
CALIBRATION_DB = 47.5
# Where a quicklook's median lands: typical C-band VV open-ocean sigma0 at WV incidences.
QUICKLOOK_MEDIAN_DB = -15.0
# Intensity floor before the log: zero DNs (no-data borders) map to the bottom of DB_RANGE.
_MIN_INTENSITY = 1e-12


def _intensity(arr: np.ndarray, path: pathlib.Path, calibration_db: float,
               float_units: str) -> np.ndarray:
    """Linear sigma0 intensity [H, W, 1] float32 of a decoded single-band WV image."""
    if arr.shape[-1] != 1:
        raise CorruptImageError(path, f"WV files are single-band, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        amplitude = arr.astype(np.float32)
        median = float(np.median(amplitude))
        if median <= 0:
            raise CorruptImageError(path, "quicklook is blank (median pixel is 0)")
        return (amplitude / median) ** 2 * np.float32(10.0 ** (QUICKLOOK_MEDIAN_DB / 10.0))
    if arr.dtype.kind in "iuc":
        power = np.abs(arr.astype(np.complex64 if arr.dtype.kind == "c" else np.float32)) ** 2
        return (power * np.float32(10.0 ** (-calibration_db / 10.0))).astype(np.float32)
    if arr.dtype.kind == "f":
        units = float_units
        if units == "auto":
            units = "db" if float(arr.min()) < 0 else "linear"
        if units == "db":
            return (10.0 ** (arr.astype(np.float32) / 10.0)).astype(np.float32)
        if units == "linear":
            return arr.astype(np.float32)
        raise ValueError(f"float_units must be 'auto', 'linear' or 'db', got {float_units!r}")
    raise CorruptImageError(path, f"unsupported WV pixel dtype {arr.dtype}")


def read_wv(path: str | os.PathLike, image_size: int, *, calibration_db: float = CALIBRATION_DB,
            float_units: str = "auto") -> np.ndarray:
    """Reads one WV quicklook PNG or measurement TIFF as normalised sigma0 dB.

    Args:
      path: the file.
      image_size: side of the square output (center crop, then antialiased resize of intensity).
      calibration_db: 20*log10 of the constant calibration factor for integer DN files.
      float_units: 'auto', 'linear' or 'db' for float TIFFs.

    Returns:
      float32 [image_size, image_size, 1] in [0, 1]: sigma0 dB mapped linearly from `DB_RANGE`
      (values outside it clip).

    Raises:
      CorruptImageError: unreadable, empty, truncated, multi-band, negative linear sigma0 or
        non-finite file; the message names it.
    """
    path = pathlib.Path(path)
    return normalised_db(_intensity(decode_image(path), path, calibration_db, float_units), image_size, path)


def normalised_db(intensity: np.ndarray, image_size: int, path: str | os.PathLike, *,
                  db_range: tuple[float, float] = DB_RANGE) -> np.ndarray:
    """Linear sigma0 [H, W, 1] -> float32 [image_size, image_size, 1] in [0, 1]: resized (center crop, antialiased
    resize of the intensity), in dB, `db_range` (the simulator's `DB_RANGE` unless given) mapped onto [0, 1]
    (values outside clip).

    Raises:
      CorruptImageError: negative intensity; the message names `path`.
    """
    if intensity.min() < 0:
        raise CorruptImageError(path, "negative linear sigma0")
    intensity = resize_square(intensity, image_size)
    db = 10.0 * np.log10(np.maximum(intensity, _MIN_INTENSITY))
    lo, hi = db_range
    return np.clip((db - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _list_wv_files(paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(paths_or_dir, (str, os.PathLike)):
        root = pathlib.Path(paths_or_dir)
        if not root.is_dir():
            raise DataNotFoundError(f"WV folder {root} does not exist")
        return sorted(str(p) for p in root.rglob("*")
                      if p.is_file() and p.suffix.lower() in WV_EXTENSIONS)
    return [str(p) for p in paths_or_dir]


class WVFileSource(FileRecords):
    """Random-access source over real WV files, on the simulator's uint8 sigma0-dB scale.

    Records: `image` uint8 [S, S, 1] (normalised sigma0 dB of `read_wv` times 255, the same scale
    as `SyntheticWV`), `sample_id` int64 (position in this source), and with a labels CSV either
    `label` int32 (`filename,label`) or `labels` int32 [K] multi-hot (the WV-Net
    `sample_data.csv` layout over its 21 phenomenon codes); `class_names` then names the classes or
    codes. CSV filenames are matched by base name, and only the files the CSV lists are used.

    Args:
      paths_or_dir: a folder (searched recursively for .png/.tif/.tiff) or a list of files.
      image_size: side of the square output.
      labels_csv: optional labels CSV.
      skip_corrupt: read every file once at construction and drop (and count) bad ones, so
        `len` stays fixed; otherwise a bad file raises `CorruptImageError` when read.
      calibration_db: see `read_wv`.
      float_units: see `read_wv`.

    Attributes:
      num_skipped: how many files were dropped (0 without `skip_corrupt`).
      skipped_files: those files: corrupt ones, and files the CSV lists that do not exist.

    Raises:
      DataNotFoundError: the folder, or (without `skip_corrupt`) a file the CSV lists, does not exist.
      DataError: no WV files, or every one corrupt or missing.
    """

    def __init__(self, paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike], *,
                 image_size: int, labels_csv: str | os.PathLike | None = None,
                 skip_corrupt: bool = False, calibration_db: float = CALIBRATION_DB,
                 float_units: str = "auto"):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if float_units not in ("auto", "linear", "db"):
            raise ValueError(f"float_units must be 'auto', 'linear' or 'db', got {float_units!r}")
        self.image_size = int(image_size)
        self.calibration_db = float(calibration_db)
        self.float_units = float_units
        self.image_shape = (self.image_size, self.image_size, 1)
        files = _list_wv_files(paths_or_dir)
        self.class_names: list[str] | None = None
        label = multi_hot = None
        if labels_csv is not None:
            table = read_labels_csv(labels_csv)
            by_name = {os.path.basename(f): f for f in files}
            missing = [f for f in table.filenames if os.path.basename(f) not in by_name]
            if missing and not skip_corrupt:
                raise DataNotFoundError(
                    f"{labels_csv}: {len(missing)} listed file(s) not found, first: {missing[0]}")
            rows = [i for i, f in enumerate(table.filenames) if os.path.basename(f) in by_name]
            files = [by_name[os.path.basename(table.filenames[i])] for i in rows]
            self.class_names = table.class_names
            label = None if table.label is None else table.label[rows]
            multi_hot = None if table.multi_hot is None else table.multi_hot[rows]
            skipped = [str(f) for f in missing]
        else:
            skipped = []
        if not files:
            raise DataError(f"no WV files (.png/.tif/.tiff) in {paths_or_dir}")
        keep = np.ones(len(files), bool)
        if skip_corrupt:
            for i, f in enumerate(files):
                try:
                    self._read(f)
                except CorruptImageError:
                    keep[i] = False
            skipped += [f for f, k in zip(files, keep) if not k]
            if not keep.any():
                raise DataError(f"every WV file in {paths_or_dir} is corrupt or missing")
        if skipped:
            log.warning("WVFileSource: skipped %d corrupt or missing file(s), first: %s",
                        len(skipped), skipped[0])
        self.skipped_files = skipped
        self.num_skipped = len(skipped)
        self._files = [f for f, k in zip(files, keep) if k]
        self._label = None if label is None else label[keep]
        self._multi_hot = None if multi_hot is None else multi_hot[keep]

    def _read(self, path: str) -> np.ndarray:
        norm = read_wv(path, self.image_size, calibration_db=self.calibration_db,
                       float_units=self.float_units)
        return np.rint(norm * 255.0).astype(np.uint8)

    def _image(self, path: str) -> np.ndarray:
        return self._read(path)

    def __repr__(self) -> str:
        return f"WVFileSource(n={len(self)}, image_size={self.image_size})"
