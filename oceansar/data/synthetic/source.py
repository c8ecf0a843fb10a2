"""The random-access source of the WV simulator: `SyntheticWV`, whose image `i` is a pure function
of `(seed, i)` (scene parameters from `scene`, pixels from `render`, quantised to uint8), with
its hidden ground truth available without rendering through `SyntheticWV.targets`; and
`evaluation_splits`, the labelled class-balanced probe train/test sources on seeds disjoint from
every pretraining seed. Numpy only.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from oceansar.data.synthetic.render import render, to_uint8
from oceansar.data.synthetic.scene import TENGEOP_CLASSES, _check_frequencies, scene_parameters

_TARGETS_CHUNK = 1 << 20  # indices per vectorised block in `targets`: memory O(chunk)
_EVAL_SEED_BASE = 2**62  # evaluation splits use seeds above this; pretraining seeds stay below


class SyntheticWV:
    """Random-access source of simulated S1 WV vignettes with hidden TenGeoP / wind / Hs truth.

    Records: `image` uint8 [image_size, image_size, 1] (sigma0 dB over `DB_RANGE`), `sample_id`
    int64, `label` int32 (index into `TENGEOP_CLASSES`), `wind_speed` float32 (m/s), `hs`
    float32 (m). Cheap to construct and picklable (it holds only its arguments).

    Args:
      num_samples: number of images N.
      image_size: side in pixels (each `PIXEL_SIZE_M` metres).
      seed: dataset seed; image i is a pure function of (seed, i). Seeds at or above 2**62 are
        reserved for `evaluation_splits`.
      class_frequencies: probability of each class in `TENGEOP_CLASSES` order (None: the
        heavy-tailed `DEFAULT_CLASS_FREQUENCIES`).
      burst_length: consecutive indices sharing one scene (class, wind, Hs, directions,
        morphology), like neighbouring acquisitions along an orbit; 1 = no redundancy.
      burst_jitter: size of the per-image perturbation within a burst (relative wind/Hs change,
        direction change in radians, and the variance fraction of fresh random field).
      balanced: class-balanced labels (burst b gets class b % 10) instead of frequencies.
    """

    def __init__(self, num_samples: int, image_size: int = 64, seed: int = 0,
                 class_frequencies: Sequence[float] | None = None, burst_length: int = 8,
                 burst_jitter: float = 0.05, balanced: bool = False):
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if int(image_size) < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        if int(burst_length) < 1:
            raise ValueError(f"burst_length must be >= 1, got {burst_length}")
        if not 0.0 <= float(burst_jitter) <= 1.0:
            raise ValueError(f"burst_jitter must be in [0, 1], got {burst_jitter}")
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.class_frequencies = _check_frequencies(class_frequencies)
        self.burst_length = int(burst_length)
        self.burst_jitter = float(burst_jitter)
        self.balanced = bool(balanced)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The TenGeoP phenomenon names, indexed by `label`."""
        return TENGEOP_CLASSES

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 1)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"SyntheticWV(num_samples={self.num_samples}, image_size={self.image_size}, "
                f"seed={self.seed}, burst_length={self.burst_length}, "
                f"burst_jitter={self.burst_jitter}, balanced={self.balanced})")

    def _params(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return scene_parameters(self.seed, indices, burst_length=self.burst_length,
                                burst_jitter=self.burst_jitter,
                                class_frequencies=self.class_frequencies, balanced=self.balanced)

    def _indices(self, indices: np.ndarray | Sequence[int] | None) -> np.ndarray:
        if indices is None:
            return np.arange(self.num_samples, dtype=np.int64)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise IndexError(f"SyntheticWV indices must lie in [0, {self.num_samples}), got "
                             f"min {idx.min()} max {idx.max()}")
        return idx

    def targets(self, indices: np.ndarray | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Hidden ground truth of `indices` (all when None) without rendering any image.

        Returns:
          dict of `label` int32, `wind_speed` float32 and `hs` float32 arrays [len(indices)].
        """
        idx = self._indices(indices)
        chunks = [scene_parameters(self.seed, idx[start:start + _TARGETS_CHUNK],
                                   burst_length=self.burst_length, burst_jitter=self.burst_jitter,
                                   class_frequencies=self.class_frequencies,
                                   balanced=self.balanced, render=False)
                  for start in range(0, max(idx.size, 1), _TARGETS_CHUNK)]
        return {key: np.concatenate([c[key] for c in chunks])
                for key in ("label", "wind_speed", "hs")}

    def labels(self, indices: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """TenGeoP class index (int32) of `indices` (all when None), without rendering."""
        return self.targets(indices)["label"]

    def groups(self, indices: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Near-duplicate group of `indices` (all when None): the burst, `index // burst_length`."""
        return self._indices(indices) // self.burst_length

    def _render(self, index: int) -> tuple[int, dict[str, np.ndarray], np.ndarray]:
        i = operator.index(index)
        if not 0 <= i < self.num_samples:
            raise IndexError(f"SyntheticWV index {i} out of range [0, {self.num_samples})")
        p = self._params(np.array([i]))
        mix = self.burst_jitter if self.burst_length > 1 else 0.0
        return i, p, render(p, 0, self.image_size, self.seed, i, mix)

    def render_db(self, index: int) -> np.ndarray:
        """sigma0 (dB) float32 [image_size, image_size] of image `index`, before quantisation."""
        return self._render(index)[2]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        i, p, db = self._render(index)
        return {
            "image": to_uint8(db)[:, :, None],
            "sample_id": np.int64(i),
            "label": np.int32(p["label"][0]),
            "wind_speed": np.float32(p["wind_speed"][0]),
            "hs": np.float32(p["hs"][0]),
        }


def evaluation_splits(num_train_per_class: int, num_test_per_class: int, image_size: int,
                      seed: int, **kwargs) -> tuple[SyntheticWV, SyntheticWV]:
    """Labelled, class-balanced probe train/test sources from disjoint seeds, without bursts.

    Both seeds live above 2**62, away from any pretraining seed, and differ from each other, so
    no probe image is a pretraining image or appears in both splits.

    Args:
      num_train_per_class: train images per TenGeoP class.
      num_test_per_class: test images per class.
      image_size: side in pixels.
      seed: evaluation seed (the two split seeds derive from it).
      **kwargs: other `SyntheticWV` arguments except `burst_length` and `balanced`.

    Returns:
      (train, test) `SyntheticWV` sources whose label of index i is i % 10.
    """
    for key in ("burst_length", "balanced", "num_samples", "seed"):
        if key in kwargs:
            raise ValueError(f"evaluation_splits sets {key} itself; do not pass it")
    classes = len(TENGEOP_CLASSES)
    common = dict(image_size=image_size, burst_length=1, balanced=True, **kwargs)
    base = _EVAL_SEED_BASE + 2 * int(seed)
    train = SyntheticWV(num_samples=classes * int(num_train_per_class), seed=base, **common)
    test = SyntheticWV(num_samples=classes * int(num_test_per_class), seed=base + 1, **common)
    return train, test
