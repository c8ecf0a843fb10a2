"""TFDS builder for a local archive of Sentinel-1 SAFE products: calibrate once, read many times as array_record.

Here lives `SafeArchive`, a `tfds` `GeneratorBasedBuilder` that runs `safe.SafeSource` (calibration, noise removal,
multilook, dB) over a folder of SAFE products or zips of them, optionally under `train/`, `validation/`, `test/`
split folders and labelled by a TenGeoP-style CSV, and writes the uint8 records with their incidence, swath,
polarisation and azimuth time to array_record shards. A full IW SLC swath costs seconds to calibrate; the prepared
records are read back in microseconds by `tfds_wv.TFDSSource('safe_archive', ...)` or `tfds.data_source`.
TensorFlow is never needed (images are uint8 `Tensor` features, as in `tfds_wv`); the radiometry is `safe`'s, this
module only packages.
"""
from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from oceansar.data.decode import CorruptImageError
from oceansar.data.safe import PIXEL_SPACING, POLARISATIONS, SWATHS, SafeSource
from oceansar.data.synthetic import DB_RANGE
from oceansar.data.tfds_wv import SPLIT_FOLDERS
from oceansar.errors import DataNotFoundError

log = logging.getLogger(__name__)


class SafeArchive(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder for a local archive of Sentinel-1 SAFE products, written as array_record.

    Layouts of `archive_dir`: SAFE folders and zips anywhere below it (each split folder `train/`, `validation/`,
    `test/` if present is a split; otherwise everything is `train`), with an optional labels CSV (`filename,label`,
    `filename,class` or multi-hot code columns; a filename names a measurement TIFF or a product). The one CSV
    labels every split: each split's records take the rows that match its own products (`SafeSource`'s
    `labels_elsewhere`), all splits share the CSV's class list, and a row matching no product of any split is an
    error (with `skip_corrupt`, counted in `skipped_files` and logged once).

    Features: `image` uint8 [S, S, 1] (ZLIB), `incidence` float32, `swath` int32 (`safe.SWATHS` index, the names
    in `info.metadata['swaths']`), `polarisation` int32 (`safe.POLARISATIONS`, `info.metadata['polarisations']`),
    `azimuth_time` float64, `window` int64 [4] (the record's raster lines and pixels: top, bottom, left, right),
    `archive_index` int64 (the record's index in its split's `SafeSource`), `filename` (the measurement TIFF) and
    `product` text, and `label` (ClassLabel) or `labels` (int32 [K]) when labelled.

    Args:
      archive_dir: the local archive.
      labels_csv: optional labels CSV.
      image_size, pixel_spacing, tile_size, polarisations, thermal_noise, db_range, verify_checksums,
        skip_corrupt: as `safe.SafeSource`; `skip_corrupt` also leaves out records that fail when read.
      **kwargs: `tfds.core.DatasetBuilder` arguments (`data_dir`, ...); `file_format` is always array_record.

    Raises:
      DataNotFoundError: no archive; a CSV row matching no measurement or product of any split (without
        `skip_corrupt`).
      DataError, CorruptImageError: as `safe.SafeSource`, for each split.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "uint8 sigma0-dB records of calibrated, denoised, multilooked SAFE measurements."}

    def __init__(self, *, archive_dir: str | os.PathLike, labels_csv: str | os.PathLike | None = None,
                 image_size: int = 256, pixel_spacing: float = PIXEL_SPACING, tile_size: int = 0,
                 polarisations: tuple[str, ...] = (), thermal_noise: bool = True,
                 db_range: tuple[float, float] = DB_RANGE, verify_checksums: bool = False,
                 skip_corrupt: bool = False, **kwargs: Any):
        archive = pathlib.Path(archive_dir)
        if not archive.exists():
            raise DataNotFoundError(f"SAFE archive {archive} does not exist")
        splits = {s: archive / s for s in SPLIT_FOLDERS if (archive / s).is_dir()} or {"train": archive}
        options = dict(image_size=image_size, pixel_spacing=pixel_spacing, tile_size=tile_size,
                       polarisations=tuple(polarisations), thermal_noise=thermal_noise, db_range=tuple(db_range),
                       labels_csv=labels_csv, labels_elsewhere=True, skip_corrupt=skip_corrupt,
                       verify_checksums=verify_checksums)
        self._sources = {s: SafeSource(d, **options) for s, d in splits.items()}
        first = next(iter(self._sources.values()))
        self._class_names = first.class_names  # the whole CSV's: the same in every split
        self._multi_hot = first.class_names is not None and first.labels() is None
        self._image_size, self._skip_corrupt = int(image_size), bool(skip_corrupt)
        self.skipped_files: list[str] = [f for s in self._sources.values() for f in s.skipped_files]
        elsewhere = [set(s.unmatched_rows) for s in self._sources.values()]
        unmatched = [f for f in first.unmatched_rows if all(f in rows for rows in elsewhere)]
        if unmatched:
            if not self._skip_corrupt:
                raise DataNotFoundError(f"{labels_csv}: {len(unmatched)} row(s) match no measurement or product "
                                        f"under {archive} (splits {sorted(splits)}), first: {unmatched[0]}")
            self.skipped_files += [f"{labels_csv}: no measurement for {f}" for f in unmatched]
            log.warning("SafeArchive(%s): %d row(s) of %s match no measurement of any split, first: %s", archive,
                        len(unmatched), labels_csv, unmatched[0])
        kwargs["file_format"] = "array_record"
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self._image_size
        features = {
            "image": tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
            "incidence": tfds.features.Scalar(dtype=np.float32),
            "swath": tfds.features.Scalar(dtype=np.int32),
            "polarisation": tfds.features.Scalar(dtype=np.int32),
            # Scalar features travel as tf.train.Example float lists, float32: 128 s steps at 1.6e9 s. Bytes are exact.
            "azimuth_time": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
            "window": tfds.features.Tensor(shape=(4,), dtype=np.int64),
            "archive_index": tfds.features.Scalar(dtype=np.int64),
            "filename": tfds.features.Text(),
            "product": tfds.features.Text(),
        }
        metadata = {"swaths": list(SWATHS), "polarisations": list(POLARISATIONS)}
        if self._class_names is not None and self._multi_hot:
            features["labels"] = tfds.features.Tensor(shape=(len(self._class_names),), dtype=np.int32)
            metadata["codes"] = list(self._class_names)
        elif self._class_names is not None:
            features["label"] = tfds.features.ClassLabel(names=list(self._class_names))
        return tfds.core.DatasetInfo(
            builder=self, description="Sentinel-1 SAFE measurements: calibrated, denoised, multilooked sigma0 dB "
                                      "as uint8.",
            features=tfds.features.FeaturesDict(features), metadata=tfds.core.MetadataDict(**metadata))

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager  # Local archive: nothing to download.
        return {split: self._generate_examples(source) for split, source in self._sources.items()}

    def _generate_examples(self, source: SafeSource) -> Iterator[tuple[int, dict[str, Any]]]:
        for index in range(len(source)):
            m, _ = source.measurement_of(index)
            try:
                record, window = source.record_and_window(index)
            except CorruptImageError as e:
                if not self._skip_corrupt:
                    raise
                self.skipped_files.append(str(e))
                log.warning("SafeArchive: skipped record %d (%s)", index, e)
                continue
            example = {key: record[key] for key in ("image", "incidence", "swath", "polarisation", "azimuth_time")}
            example.update(window=np.asarray(window, np.int64),
                           archive_index=index, filename=m.name, product=m.product.name)
            for key in ("label", "labels"):
                if key in record:
                    example[key] = record[key]
            yield index, example
