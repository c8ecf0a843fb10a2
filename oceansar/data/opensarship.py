"""OpenSARShip (Huang et al., IEEE JSTARS 2018) calibrated ship chips as a labelled source.

The layout is the public release's: `<root>/<scene>/Patch_Cal/<Type>_x<col>_y<row>.tif`, one float32 chip of linear
sigma0 per ship, 17-77 px square, (H, W, 2) = VV, VH for dual-pol scenes and (H, W) for single-pol ones; the ship type
is the file name's prefix (the scene's `Ship.xml` holds the AIS records behind it). Records carry the VV band on the
project's sigma0 scale (`wv_files.normalised_db`: dB mapped from `DB_RANGE`, uint8), resized to the requested side,
and the class. Classes: Cargo, Tanker and Other, where Other gathers "Other Type" with the rare types (Passenger,
Tug, Search, Law Enforcement: 7 of the 299 chips of the six-scene release), which cannot be split into a train and a
test part of their own. The release has no split: `split_indices` draws a stratified one from a fixed seed, so
every run evaluates on the same chips.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from oceansar.data.decode import CorruptImageError, decode_image
from oceansar.data.folder import FileRecords
from oceansar.data.wv_files import normalised_db
from oceansar.errors import DataError, DataNotFoundError

CLASSES = ("Cargo", "Tanker", "Other")
SPLITS = ("train", "test")
TEST_FRACTION = 0.3
SPLIT_SEED = 0


def class_of(path: str | os.PathLike) -> int:
    """The class index of a chip from its file name's ship type."""
    kind = pathlib.Path(path).name.split("_x")[0]
    return CLASSES.index(kind) if kind in CLASSES[:-1] else len(CLASSES) - 1


def list_chips(root: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Every chip under `root` (sorted) and its class index.

    Raises:
      DataNotFoundError: `root` does not exist or holds no `*/Patch_Cal/*.tif`.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"OpenSARShip folder {root} does not exist")
    files = sorted(str(p) for p in root.glob("*/Patch_Cal/*.tif*"))
    if not files:
        raise DataNotFoundError(f"no OpenSARShip chips (<scene>/Patch_Cal/*.tif) under {root}")
    return files, np.asarray([class_of(f) for f in files], np.int32)


def split_indices(labels: np.ndarray, split: str, *, test_fraction: float = TEST_FRACTION,
                  seed: int = SPLIT_SEED) -> np.ndarray:
    """Sorted indices of `split` ("train" or "test"): per class, round(test_fraction * n_c) chips (at least one
    when the class has two or more) go to test, drawn with `seed`; the rest to train."""
    if split not in SPLITS:
        raise DataError(f"OpenSARShip split {split!r} is not one of {SPLITS}")
    rng = np.random.default_rng(seed)
    test = []
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        n_test = max(int(round(test_fraction * members.size)), 1 if members.size >= 2 else 0)
        test.extend(rng.permutation(members)[:n_test].tolist())
    in_test = np.zeros(labels.size, bool)
    in_test[test] = True
    return np.flatnonzero(in_test if split == "test" else ~in_test)


class OpenSARShipSource(FileRecords):
    """One split of OpenSARShip: `image` uint8 [S, S, 1] (VV sigma0 on the simulator's dB scale), `label` int32,
    `sample_id` int64; `class_names` are `CLASSES`.

    Args:
      root: the release folder (one sub-folder per scene).
      split: "train" or "test" (see `split_indices`).
      image_size: side of the square output.

    Raises:
      DataNotFoundError: no chips under `root`.
      DataError: an unknown split.
    """

    def __init__(self, root: str | os.PathLike, *, split: str, image_size: int):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        files, labels = list_chips(root)
        keep = split_indices(labels, split)
        self.root, self.split, self.image_size = str(root), split, int(image_size)
        self.image_shape = (self.image_size, self.image_size, 1)
        self.class_names = list(CLASSES)
        self._files = [files[i] for i in keep]
        self._label = labels[keep]
        self._multi_hot = None

    def _image(self, path: str) -> np.ndarray:
        arr = decode_image(path)
        if arr.dtype.kind != "f":
            raise CorruptImageError(path, f"OpenSARShip chips are float sigma0, got {arr.dtype}")
        vv = arr[..., :1].astype(np.float32)  # VV first in dual-pol chips
        return np.rint(normalised_db(vv, self.image_size, path) * 255.0).astype(np.uint8)

    def __repr__(self) -> str:
        return f"OpenSARShipSource({self.root!r}, split={self.split!r}, n={len(self)}, image_size={self.image_size})"
