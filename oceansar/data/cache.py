"""An in-memory copy of a source: every record read once, then served by indexing arrays.

The embedded simulator renders each vignette on demand (about a millisecond at 48 px), so on a small
CPU reading, not training, becomes the bottleneck, and every dynamic-pruning resampling pays the
rendering of each embedded image again. A pool that fits in memory (16384 x 48 x 48 uint8 is 38 MB)
is read once, by worker processes (rendering holds the GIL, threads do not help), and then costs a
copy per record. Pools larger than `max_bytes` are refused with the numbers: at that size, prepare
them on disk (`tfds_wv`, array_record) and read them through Grain workers instead. As with Grain's
workers, a script that builds a large cached source needs the `if __name__ == "__main__":` guard
(worker processes are spawned and import the main module).
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

import numpy as np
from tqdm import tqdm

from oceansar.data.pipeline import ignore_signals
from oceansar.errors import DataError

_CHUNK = 512          # records per worker task
_MIN_PARALLEL = 2048  # below this, starting processes costs more than it saves


def _fields(record: dict) -> dict[str, np.ndarray]:
    """The record's numeric (and boolean) fields besides the image: scalars, and fixed-shape arrays such as a
    captioned record's token ids; strings are left out."""
    return {k: np.asarray(v) for k, v in record.items()
            if k != "image" and np.asarray(v).dtype.kind in "biuf"}


def _where(source, index: int) -> str:
    """A record's file when the source has one per record (`files`), else the source and the index."""
    files = getattr(source, "files", None)
    return files[index] if files is not None else f"{source!r} record {index}"


def _read_chunk(source, start: int, stop: int, shape: tuple[int, ...], dtype: np.dtype
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Records [start, stop) as stacked images and fields; each image must have record 0's `shape` and `dtype`."""
    records = [source[i] for i in range(start, stop)]
    images = [np.asarray(r["image"]) for r in records]
    for index, image in zip(range(start, stop), images):
        # Checked per record, before stacking: stacking would fail on a shape, or promote a dtype, anonymously.
        if image.shape != shape or image.dtype != dtype:
            raise DataError(f"{_where(source, index)}: image {image.shape} {image.dtype} differs from "
                            f"{shape} {dtype} of record 0 ({_where(source, 0)}); an in-memory cache "
                            f"holds one image shape and dtype")
    per_record = [_fields(r) for r in records]
    fields = {k: np.stack([f[k] for f in per_record]) for k in per_record[0]}
    return np.stack(images), fields


class InMemorySource:
    """Every record of `source` held in arrays; other attributes (labels, class_names, ...) pass through.

    Args:
      source: a random-access source (picklable, as Grain needs anyway).
      max_bytes: refuse pools whose images take more memory than this.
      num_workers: reading processes; 0 = one per CPU core (in-process below 2048 records).
      progress: show a tqdm bar while reading.
    """

    def __init__(self, source, *, max_bytes: int = 4 << 30, num_workers: int = 0,
                 progress: bool = False):
        self._source = source
        n = len(source)
        first = source[0]
        image = np.asarray(first["image"])
        needed = n * image.nbytes
        if needed > max_bytes:
            raise DataError(f"config.data.cache: {source!r} needs {needed / 2**30:.1f} GiB of images in "
                            f"memory (limit {max_bytes / 2**30:.1f} GiB); turn the cache off and read it "
                            f"from disk with Grain workers")
        self.images = np.empty((n,) + image.shape, image.dtype)
        self.fields = {k: np.empty((n,) + v.shape, v.dtype) for k, v in _fields(first).items()}
        bounds = [(s, min(s + _CHUNK, n)) for s in range(0, n, _CHUNK)]
        workers = num_workers or os.cpu_count() or 1
        with tqdm(total=n, desc=f"cache {type(source).__name__}", unit="img",
                  disable=not progress) as bar:
            if n < _MIN_PARALLEL or workers == 1:
                for start, stop in bounds:
                    self._fill(start, *_read_chunk(source, start, stop, image.shape, image.dtype))
                    bar.update(stop - start)
            else:
                # spawn, not fork: the parent may already run JAX's threads.
                context = multiprocessing.get_context("spawn")
                with concurrent.futures.ProcessPoolExecutor(min(workers, len(bounds)), mp_context=context,
                                                            initializer=ignore_signals) as pool:
                    futures = {pool.submit(_read_chunk, source, s, e, image.shape, image.dtype): (s, e)
                               for s, e in bounds}
                    for future in concurrent.futures.as_completed(futures):
                        start, stop = futures[future]
                        self._fill(start, *future.result())
                        bar.update(stop - start)

    def _fill(self, start: int, images: np.ndarray, fields: dict[str, np.ndarray]) -> None:
        stop = start + images.shape[0]
        self.images[start:stop] = images
        for key, values in fields.items():
            self.fields[key][start:stop] = values

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = {"image": self.images[index]}
        record.update({k: v[index] for k, v in self.fields.items()})
        return record

    def read_batch(self, indices) -> dict[str, np.ndarray]:
        """The records at `indices` as columns: {"image": [n, ...], field: [n, ...]} (`__getitem__`'s, stacked)."""
        indices = np.asarray(indices, np.int64)
        return {"image": self.images[indices], **{k: v[indices] for k, v in self.fields.items()}}

    def __getattr__(self, name: str):
        if name.startswith("_"):  # unpickling looks up dunders before _source exists
            raise AttributeError(name)
        return getattr(self._source, name)

    def __repr__(self) -> str:
        return f"InMemorySource({self._source!r})"
