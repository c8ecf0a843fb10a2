"""Image-folder source: `root/<class>/*.{png,jpg,jpeg,tif,tiff}` or a flat folder with a labels CSV.

Here live `ImageFolderSource` (random access, picklable, static image shape for Grain) and the labels
CSV reader shared with the WV-file source. Decoding and resizing live in `decode.py`; sensor-specific
radiometry (sigma0 in dB) lives in `wv_files.py`, not here: a folder source ships pixels on one scale,
the dtype of its first file (uint8, or float16 for other dtypes; see `ImageFolderSource`).
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from oceansar.data.decode import (IMAGE_EXTENSIONS, CorruptImageError, decode_image,
                                  resize_square, to_source_dtype)
from oceansar.errors import DataError, DataNotFoundError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """The contents of a labels CSV.

    Two layouts are accepted: `filename,label` or `filename,class` (one class name per row; `label` holds class
    indices into the sorted class names) or `filename,<code>,<code>,...` with 0/1 entries
    (multi-hot, as in the WV-Net `sample_data.csv`; `multi_hot` holds them, codes in CSV order).

    Attributes:
      filenames: file paths relative to the data root, in CSV row order.
      class_names: sorted class names (single-label) or the code columns (multi-hot).
      label: int32 [n] class index per row, or None for a multi-hot table.
      multi_hot: int32 [n, K], or None for a single-label table.
    """

    filenames: list[str]
    class_names: list[str]
    label: np.ndarray | None
    multi_hot: np.ndarray | None


def _sorted_class_names(names: set[str]) -> list[str]:
    # Integer class names sort numerically ("2" before "10"), others lexically.
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def read_labels_csv(path: str | os.PathLike) -> LabelTable:
    """Parses a labels CSV (see `LabelTable` for the two layouts).

    Raises:
      DataNotFoundError: no such file.
      DataError: no `filename` column, duplicate filenames, or a malformed row; the message names
        the file and the row.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"labels CSV {path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0].strip() != "filename":
        raise DataError(f"{path}: the first CSV column must be 'filename', header is "
                        f"{rows[0] if rows else 'missing'}")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise DataError(f"{path}: row {i} has {len(r)} fields, the header has {len(header)}")
    filenames = [r[0].strip() for r in body]
    if len(set(filenames)) != len(filenames):
        raise DataError(f"{path}: duplicate filenames")
    if header in (["filename", "label"], ["filename", "class"]):  # TenGeoP-style lists name the column class
        labels = [r[1].strip() for r in body]
        class_names = _sorted_class_names(set(labels))
        index = {c: i for i, c in enumerate(class_names)}
        return LabelTable(filenames, class_names,
                          np.array([index[c] for c in labels], np.int32), None)
    try:
        multi_hot = np.array([[int(c) for c in r[1:]] for r in body], np.int32).reshape(
            len(body), len(header) - 1)
    except ValueError as e:
        raise DataError(f"{path}: expected columns filename,label or filename followed by 0/1 "
                        f"code columns ({e})") from e
    if multi_hot.size and not np.isin(multi_hot, (0, 1)).all():
        raise DataError(f"{path}: multi-hot code columns must hold 0 or 1")
    return LabelTable(filenames, header[1:], None, multi_hot)


def scan_image_folder(root: pathlib.Path, extensions: Sequence[str]
                      ) -> tuple[list[str], list[str], list[int]]:
    """Lists image files under `root`.

    Returns:
      (files, class_names, labels): with class sub-folders, every image below each (sorted by
      folder name, files sorted) and its class index; without, the images directly under `root`
      and empty class_names and labels.
    """
    exts = tuple(e.lower() for e in extensions)

    def images_in(d: pathlib.Path) -> list[str]:
        return sorted(str(p) for p in d.rglob("*") if p.is_file() and p.suffix.lower() in exts)

    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    files, labels, class_names = [], [], []
    for d in class_dirs:
        found = images_in(d)
        if found:
            labels += [len(class_names)] * len(found)
            class_names.append(d.name)
            files += found
    if not files:
        files = sorted(str(p) for p in root.iterdir()
                       if p.is_file() and p.suffix.lower() in exts)
    return files, class_names, labels


class FileRecords:
    """Records of a list of files with optional labels: the part every file-backed source shares.

    A subclass sets `_files`, `_label` ([n] int class indices or None) and `_multi_hot` ([n, c] or
    None), and reads one file's image in `_image(path)`.
    """

    _files: list[str]
    _label: np.ndarray | None
    _multi_hot: np.ndarray | None

    def _image(self, path: str) -> np.ndarray:
        raise NotImplementedError

    @property
    def files(self) -> list[str]:
        """The file behind each index (after skipping corrupt ones)."""
        return list(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def labels(self, indices=None) -> np.ndarray | None:
        """The class index of each record (None without single labels), read without decoding images."""
        if self._label is None:
            return None
        return self._label if indices is None else self._label[np.asarray(indices)]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self._files):
            raise IndexError(f"index {index} out of range for {len(self._files)} files")
        record = {"image": self._image(self._files[index]), "sample_id": np.int64(index)}
        if self._label is not None:
            record["label"] = np.int32(self._label[index])
        if self._multi_hot is not None:
            record["labels"] = self._multi_hot[index]
        return record


class ImageFolderSource(FileRecords):
    """Random-access source over an image folder, with a static image shape and one pixel scale.

    Layouts: `root/<class>/**/<file>` (classes are the sorted sub-folder names), or files directly
    under `root` with an optional labels CSV (`filename,label` or multi-hot, see `LabelTable`;
    filenames are relative to `root`). Without classes or CSV the source is unlabelled.

    Records: `image` [S, S, C] of `image_dtype`, `sample_id` int64 (the position in this source),
    and `label` int32 (single-label) or `labels` int32 [K] (multi-hot) when labelled.

    Pixel scale: the first readable file fixes `image_dtype`, so every record shares one dtype and
    one scale whatever the files' bit depths. An 8-bit first file makes it uint8: files of another
    integer bit depth are scaled by their dtype's maximum to [0, 1], then rounded to 0..255 (a
    16-bit image of constant 65535 becomes 255). Any other first file makes it float16: integer
    files are scaled by their dtype's maximum to [0, 1] (8-bit ones divided by 255), float files
    keep their values. Integer and float pixels share no scale (a float32 TIFF of dB values is no
    fraction of a maximum), so a float file in a folder of integer images, or the reverse, is a
    corrupt file: `CorruptImageError` naming it and both dtypes.

    Corrupt files: by default a bad file raises `CorruptImageError` (naming it) when read. With
    `skip_corrupt=True` every file is fully decoded once at construction, in a thread pool (Pillow
    and tifffile release the GIL while decoding), and bad ones are dropped before indices are
    assigned, so `len` stays fixed for Grain; `num_skipped` and `skipped_files` report them and a
    warning logs the count. That costs one decoding pass over the folder: fine for the
    thousands-to-hundreds-of-thousands of images of an eval or fine-tuning set; clean very large
    corpora once offline instead.

    Args:
      root: the folder.
      image_size: side of the square output (center crop, then antialiased bilinear resize), or
        None to keep the native size, which then must be the same for every file.
      channels: expected channel count, or None to take it from the first readable file.
      convert: convert 8-bit PNG/JPEG files to `channels` (RGB to luminance for 1) instead of treating another
        channel count as corrupt; evaluators use it to show optical images to a 1-channel SAR model.
      labels_csv: a labels CSV for a flat folder.
      skip_corrupt: drop and count bad files at construction instead of raising when read.
      extensions: file suffixes to pick up (case-insensitive).
      validate_threads: threads for the construction-time validation pass.

    Attributes:
      image_shape: the records' [S, S, C] image shape.
      image_dtype: the records' image dtype, uint8 or float16.
      channels: C.
      class_names: the class names, or None when unlabelled.
      num_skipped: how many files `skip_corrupt` dropped (0 without it).
      skipped_files: those files.

    Raises:
      DataNotFoundError: `root` or `labels_csv` does not exist.
      DataError: no image files, every file corrupt, or a malformed labels CSV.
      CorruptImageError: the first file is bad (without `skip_corrupt`).
    """

    def __init__(self, root: str | os.PathLike, *, image_size: int | None,
                 channels: int | None = None, convert: bool = False,
                 labels_csv: str | os.PathLike | None = None, skip_corrupt: bool = False,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, validate_threads: int = 8):
        self.root = pathlib.Path(root)
        self._convert = bool(convert and channels)
        if not self.root.is_dir():
            raise DataNotFoundError(f"image folder {self.root} does not exist")
        if image_size is not None and image_size <= 0:
            raise ValueError(f"image_size must be positive or None, got {image_size}")
        self.image_size = image_size
        self.class_names: list[str] | None = None
        labels = multi_hot = None
        if labels_csv is not None:
            table = read_labels_csv(labels_csv)
            files = [str(self.root / f) for f in table.filenames]
            self.class_names = table.class_names
            labels, multi_hot = table.label, table.multi_hot
        else:
            files, class_names, class_labels = scan_image_folder(self.root, extensions)
            if class_names:
                self.class_names = class_names
                labels = np.asarray(class_labels, np.int32)
        if not files:
            raise DataError(f"no image files with extensions {tuple(extensions)} under {self.root}")

        keep = np.ones(len(files), bool)
        self.skipped_files: list[str] = []
        if skip_corrupt:
            keep = self._validate_all(files, channels, validate_threads)
            self.skipped_files = [f for f, k in zip(files, keep) if not k]
            if not keep.any():
                raise DataError(f"every one of the {len(files)} files under {self.root} is corrupt")
            if self.skipped_files:
                log.warning("ImageFolderSource(%s): skipped %d corrupt file(s) of %d, first: %s",
                            self.root, len(self.skipped_files), len(files), self.skipped_files[0])
        self.num_skipped = len(self.skipped_files)
        self._files = [f for f, k in zip(files, keep) if k]
        self._label = None if labels is None else labels[keep]
        self._multi_hot = None if multi_hot is None else multi_hot[keep]

        raw = decode_image(self._files[0], channels=channels, convert=self._convert)
        self._scale_of = (self._files[0], raw.dtype)
        self.image_dtype = np.dtype(np.uint8 if raw.dtype == np.uint8 else np.float16)
        first = self._fit(raw, self._files[0], native_shape=None)
        self.channels = int(first.shape[-1])
        self._native_shape = None if image_size is not None else first.shape
        self.image_shape = tuple(int(d) for d in first.shape)

    def _validate_all(self, files: list[str], channels: int | None, threads: int) -> np.ndarray:
        def check(f: str) -> tuple[tuple[int, ...] | int, bool] | None:
            try:
                arr = decode_image(f, channels=channels, convert=self._convert)
            except CorruptImageError:
                return None
            return (arr.shape if self.image_size is None else arr.shape[-1]), arr.dtype.kind == "f"

        with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
            shapes = list(pool.map(check, files))
        # The first readable file fixes the channel count (the shape without resizing) and whether
        # pixels are integer or float; files that disagree with it are skipped too.
        reference = next((s for s in shapes if s is not None), None)
        return np.array([s is not None and s == reference for s in shapes], bool)

    def _on_scale(self, arr: np.ndarray, path: str) -> np.ndarray:
        """A decoded image in `image_dtype`, on the scale the first file fixed (see the class docstring)."""
        first_file, first_dtype = self._scale_of
        if (arr.dtype.kind == "f") != (first_dtype.kind == "f"):
            raise CorruptImageError(
                path, f"pixel dtype {arr.dtype} differs from {first_dtype} of {first_file}, which fixes "
                      f"this folder's scale: integer and float images share no scale, keep them in "
                      f"separate folders")
        if arr.dtype.kind in "iu" and arr.dtype != self.image_dtype:
            # Another bit depth than the source's: its full range maps onto the source's.
            unit = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
            if self.image_dtype == np.uint8:
                return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
            return unit.astype(np.float16)
        return to_source_dtype(arr, path)

    def _fit(self, arr: np.ndarray, path: str, native_shape: tuple[int, ...] | None) -> np.ndarray:
        """A decoded image on the source's scale, at its size."""
        arr = self._on_scale(arr, path)
        if self.image_size is not None:
            return to_source_dtype(resize_square(arr, self.image_size), path)
        if native_shape is not None and arr.shape != native_shape:
            raise CorruptImageError(
                path, f"shape {arr.shape} differs from the dataset's {native_shape} "
                      f"(pass image_size to resize)")
        return arr

    def _image(self, path: str) -> np.ndarray:
        return self._fit(decode_image(path, channels=self.channels, convert=self._convert), path, self._native_shape)

    def __repr__(self) -> str:
        return (f"ImageFolderSource({str(self.root)!r}, n={len(self)}, image_shape="
                f"{self.image_shape}, classes={None if self.class_names is None else len(self.class_names)})")
