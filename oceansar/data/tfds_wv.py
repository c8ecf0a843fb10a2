"""TFDS path: a builder for a local WV archive, and a source over any prepared TFDS dataset.

Here live `WvArchive`, a `tfds` `GeneratorBasedBuilder` that turns a local Sentinel-1 WV archive
(TenGeoP-SARwv style `<class>/<file>`, or files plus a labels CSV, optionally under `train/`,
`validation/`, `test/` split folders) into array_record shards of uint8 sigma0-dB vignettes, and
`TFDSSource`, which reads ANY prepared array_record TFDS dataset by name (the WV archive, eurosat,
resisc45, uc_merced, ...) through `tfds.data_source` and normalises its records to the oceansar
source interface. TensorFlow is never needed: images are stored as uint8 `Tensor` features (a
`tfds.features.Image` would need TF to encode) and read through the numpy data-source API.
Radiometry comes from `wv_files.read_wv`; this module only packages and reads.
"""
from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from oceansar.data.decode import CorruptImageError, resize_square, to_source_dtype
from oceansar.data.folder import read_labels_csv, scan_image_folder
from oceansar.data.wv_files import CALIBRATION_DB, WV_EXTENSIONS, read_wv
from oceansar.errors import DataError, DataNotFoundError

SPLIT_FOLDERS = ("train", "validation", "test")

log = logging.getLogger(__name__)


class WvArchive(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder for a local Sentinel-1 WV archive, written as array_record.

    Layouts of `archive_dir`: class folders `<class>/<file>` (TenGeoP-SARwv), or files plus
    `labels_csv` (`filename,label`, or multi-hot code columns; matched by base name), or unlabelled
    files. If `archive_dir` holds `train/`, `validation/` or `test/` folders, each is a split with
    that layout inside; otherwise everything is the `train` split.

    Features: `image` uint8 [S, S, 1] (`wv_files.read_wv` scaled to 0..255, the simulator's
    scale; ZLIB-compressed), `archive_index` int64 (position in the split's sorted file list),
    `filename` text, and `label` (ClassLabel) or `labels` (int32 [K] multi-hot, codes in
    `info.metadata['codes']`) when labelled.

    Build once, then read with `TFDSSource('wv_archive', split=..., data_dir=...)`,
    `tfds.data_source('wv_archive', data_dir=...)` or `builder.as_data_source()`. The builder is
    not registered by name (it needs `archive_dir` to build); reading by name goes through the
    prepared files' own metadata.

    Args:
      archive_dir: the local archive.
      labels_csv: optional labels CSV.
      image_size: side of the stored square vignettes.
      skip_corrupt: leave unreadable files out of the shards instead of failing the build.
      calibration_db: see `wv_files.read_wv`.
      **kwargs: `tfds.core.DatasetBuilder` arguments (`data_dir`, ...); `file_format` is always
        array_record.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "uint8 sigma0-dB vignettes over the simulator's DB_RANGE."}

    def __init__(self, *, archive_dir: str | os.PathLike, labels_csv: str | os.PathLike | None = None,
                 image_size: int = 256, skip_corrupt: bool = False,
                 calibration_db: float = CALIBRATION_DB, **kwargs: Any):
        self._archive_dir = pathlib.Path(archive_dir)
        if not self._archive_dir.is_dir():
            raise DataNotFoundError(f"WV archive {self._archive_dir} does not exist")
        self._image_size = int(image_size)
        self._skip_corrupt = bool(skip_corrupt)
        self._calibration_db = float(calibration_db)
        self._split_files, self._class_names, self._labels_of, self._multi_hot = (
            self._scan_archive(labels_csv))
        self.skipped_files: list[str] = []
        kwargs["file_format"] = "array_record"
        super().__init__(**kwargs)

    def _scan_archive(self, labels_csv):
        split_dirs = {s: self._archive_dir / s for s in SPLIT_FOLDERS
                      if (self._archive_dir / s).is_dir()}
        if not split_dirs:
            split_dirs = {"train": self._archive_dir}
        split_files, folder_classes = {}, {}
        for split, d in split_dirs.items():
            files, classes, labels = scan_image_folder(d, WV_EXTENSIONS)
            if not files:
                raise DataError(f"no WV files (.png/.tif/.tiff) under {d}")
            split_files[split] = files
            folder_classes[split] = (classes, labels)
        if labels_csv is not None:
            table = read_labels_csv(labels_csv)
            rows = {os.path.basename(f): i for i, f in enumerate(table.filenames)}
            labels_of = {}
            for files in split_files.values():
                for f in files:
                    row = rows.get(os.path.basename(f))
                    if row is None:
                        raise DataError(f"{labels_csv}: no row for archive file {f}")
                    labels_of[f] = (int(table.label[row]) if table.label is not None
                                    else table.multi_hot[row])
            return split_files, table.class_names, labels_of, table.multi_hot is not None
        # Class folders: one sorted class list over all splits, so indices agree across splits.
        class_names = sorted({c for classes, _ in folder_classes.values() for c in classes})
        if not class_names:
            return split_files, None, None, False
        index = {c: i for i, c in enumerate(class_names)}
        labels_of = {}
        for split, (classes, labels) in folder_classes.items():
            for f, lab in zip(split_files[split], labels):
                labels_of[f] = index[classes[lab]]
        return split_files, class_names, labels_of, False

    def _info(self) -> tfds.core.DatasetInfo:
        s = self._image_size
        features = {
            "image": tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "archive_index": tfds.features.Scalar(dtype=np.int64),
            "filename": tfds.features.Text(),
        }
        metadata = None
        if self._class_names is not None and self._multi_hot:
            features["labels"] = tfds.features.Tensor(shape=(len(self._class_names),),
                                                      dtype=np.int32)
            metadata = tfds.core.MetadataDict(codes=list(self._class_names))
        elif self._class_names is not None:
            features["label"] = tfds.features.ClassLabel(names=list(self._class_names))
        return tfds.core.DatasetInfo(
            builder=self, description="Sentinel-1 Wave Mode vignettes, sigma0 dB as uint8.",
            features=tfds.features.FeaturesDict(features), metadata=metadata)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager  # Local archive: nothing to download.
        return {split: self._generate_examples(files)
                for split, files in self._split_files.items()}

    def _generate_examples(self, files: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        skipped = 0
        for archive_index, f in enumerate(files):
            try:
                norm = read_wv(f, self._image_size, calibration_db=self._calibration_db)
            except CorruptImageError:
                if not self._skip_corrupt:
                    raise
                self.skipped_files.append(f)
                skipped += 1
                continue
            example = {"image": np.rint(norm * 255.0).astype(np.uint8),
                       "archive_index": archive_index, "filename": os.path.basename(f)}
            if self._labels_of is not None:
                example["labels" if self._multi_hot else "label"] = self._labels_of[f]
            yield archive_index, example
        if skipped:
            log.warning("WvArchive: skipped %d corrupt file(s) of %d", skipped, len(files))


def _as_str(value: Any) -> str:
    # Real array_record data decodes text to bytes; tfds.testing.mock_data gives str.
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TFDSSource:
    """Random-access source over a prepared TFDS dataset (array_record), read without TensorFlow.

    Records: `image` [H, W, C] uint8 (or float16 for other dtypes, see `decode.to_source_dtype`),
    resized to `image_size` when given; `sample_id` int64, the record index in this split (dense
    in [0, len), stable for a prepared dataset: what the loss-statistics table needs; a stored
    `sample_id` feature is renamed `stored_sample_id`); `label` int32 when `label_key` names a feature; and
    every other numeric feature as a numpy array. Text features (filenames) are left out of records
    so batches stay numeric; read them with `text(index, key)`.

    The TFDS data source is opened lazily in each process, so the object pickles small into Grain
    workers.

    Args:
      name: dataset name as for `tfds.data_source` (e.g. 'eurosat', 'resisc45', 'uc_merced',
        'wv_archive'), optionally with '/config' or ':version'.
      split: split name or slice ('train', 'test[:10%]').
      data_dir: TFDS data dir holding the prepared dataset.
      image_key: the image feature.
      label_key: the class feature, or None for unlabelled use.
      image_size: square side to center-crop and resize to; required when image shapes vary.
    """

    def __init__(self, name: str, *, split: str, data_dir: str | os.PathLike | None = None,
                 image_key: str = "image", label_key: str | None = "label",
                 image_size: int | None = None):
        self.name, self.split = name, split
        self.data_dir = None if data_dir is None else str(data_dir)
        self.image_key, self.label_key = image_key, label_key
        self.image_size = image_size
        self._ds = None
        features = self._source().dataset_info.features
        if image_key not in features:
            raise KeyError(f"TFDS dataset {name!r} has no feature {image_key!r} "
                           f"(features: {sorted(features.keys())})")
        shape = tuple(features[image_key].shape)
        if len(shape) == 2:
            shape = shape + (1,)
        if len(shape) != 3 or shape[-1] is None:
            raise DataError(f"TFDS dataset {name!r}: feature {image_key!r} has shape {shape}, "
                             f"expected [H, W, C] with a known channel count")
        if image_size is None and None in shape[:2]:
            raise DataError(f"TFDS dataset {name!r} has images of varying size {shape}: pass "
                             f"image_size so batches have a static shape")
        self.image_shape = (shape if image_size is None
                            else (int(image_size), int(image_size), int(shape[-1])))
        self.class_names: list[str] | None = None
        if label_key is not None:
            if label_key not in features:
                raise KeyError(f"TFDS dataset {name!r} has no feature {label_key!r} "
                               f"(features: {sorted(features.keys())}); pass label_key=None")
            names = getattr(features[label_key], "names", None)
            self.class_names = list(names) if names else None
        self._text_keys = {k for k, f in features.items() if isinstance(f, tfds.features.Text)}
        self._len = len(self._source())

    def _source(self):
        if self._ds is None:
            try:
                self._ds = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                            download=False)
            except Exception as e:
                raise DataNotFoundError(
                    f"cannot open TFDS dataset {self.name!r} split {self.split!r} in data_dir "
                    f"{self.data_dir}: it must be prepared in array_record format (e.g. `tfds "
                    f"build {self.name} --file_format=array_record`) ({type(e).__name__}: {e})"
                ) from e
        return self._ds

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def __len__(self) -> int:
        return self._len

    def text(self, index: int, key: str = "filename") -> str:
        """A text feature of one record as `str`, whatever TFDS returned (bytes or str)."""
        return _as_str(self._source()[int(index)][key])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} records")
        raw = self._source()[index]
        where = f"{self.name}[{self.split}][{index}]"
        image = np.asarray(raw[self.image_key])
        if image.ndim == 2:
            image = image[:, :, None]
        image = to_source_dtype(image, where)
        if self.image_size is not None:
            image = to_source_dtype(resize_square(image, self.image_size), where)
        elif image.shape != self.image_shape:
            raise CorruptImageError(where, f"shape {image.shape}, expected {self.image_shape}")
        record = {"image": image, "sample_id": np.int64(index)}
        if self.label_key is not None:
            record["label"] = np.int32(np.asarray(raw[self.label_key]))
        for key, value in raw.items():
            if key in (self.image_key, self.label_key) or key in self._text_keys:
                continue
            record["stored_sample_id" if key == "sample_id" else key] = np.asarray(value)
        return record

    def __repr__(self) -> str:
        return f"TFDSSource({self.name!r}, split={self.split!r}, n={len(self)})"
