"""A redundant, heavy-tailed pool built from any labelled source, with its redundancy kept as hidden truth.

Real archives are long-tailed and full of near-copies (overlapping acquisitions, re-processed products,
crops of one scene). `RedundantPool` turns any labelled source (the simulator, a folder with class
sub-folders, a labelled TFDS split) into such a pool, so curation can be measured on data whose
redundancy is known: classes get Zipf shares (or explicit shares), and a fraction of the pool's images
come as bursts of near-duplicates of one original (a random crop of 85-97 % of the side resized back, a
brightness factor, and JPEG re-encoding for optical images or multiplicative speckle for SAR). Every
record keeps its pool index as `sample_id`; `labels()` and `groups()` give each sample's class and
duplicate group (the original's pool index) for diagnostics only: the training never sees them.
Everything is a function of the spec's seed. Numpy and Pillow only.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from oceansar.errors import DataError

DEGRADATIONS = ("jpeg", "speckle", "none")


def source_labels(source) -> np.ndarray:
    """The class index of every record of a labelled source, read without decoding images where the source
    offers `labels()` or an in-memory `fields["label"]`."""
    if hasattr(source, "labels") and callable(source.labels):
        labels = source.labels()
        if labels is not None:
            return np.asarray(labels, np.int64)
    fields = getattr(source, "fields", None)
    if isinstance(fields, dict) and "label" in fields:
        return np.asarray(fields["label"], np.int64)
    first = source[0]
    if "label" not in first:
        raise DataError(f"{source!r} has no labels: a redundant pool needs a labelled source")
    return np.asarray([source[i]["label"] for i in range(len(source))], np.int64)


def class_shares(num_classes: int, *, zipf: float, shares: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Target share of every class: explicit `shares`, else Zipf(`zipf`) over a random class order."""
    if shares:
        if len(shares) != num_classes:
            raise ValueError(f"class_shares has {len(shares)} entries for {num_classes} classes")
        p = np.asarray(shares, np.float64)
    else:
        p = np.empty(num_classes)
        p[rng.permutation(num_classes)] = 1.0 / np.arange(1, num_classes + 1) ** zipf
    if np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"class shares must be non-negative with a positive sum, got {p}")
    return p / p.sum()


def _originals(labels: np.ndarray, p: np.ndarray, num_originals: int, rng) -> np.ndarray:
    """Source indices of the originals: about p_c * num_originals per class, never more than it has."""
    available = np.bincount(labels, minlength=p.size)
    cap = int(np.floor(np.min(available[p > 0] / p[p > 0]) + 1e-6))  # 60 / 0.5 may round to 119.99...
    total = min(num_originals or cap, cap)
    per_class = np.floor(p * total).astype(int)
    # Largest remainders fill the rounding gap, within what each class has.
    for c in np.argsort(-(p * total - per_class)):
        if per_class.sum() >= total:
            break
        if per_class[c] < available[c]:
            per_class[c] += 1
    picks = [rng.choice(np.flatnonzero(labels == c), n, replace=False) for c, n in enumerate(per_class) if n]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


def near_duplicate(image: np.ndarray, spec, rng: np.random.Generator) -> np.ndarray:
    """A near-duplicate of `image`: a random crop resized back, a brightness factor, then JPEG re-encoding or
    multiplicative speckle, as `spec` (a `PoolSpec`: crop, brightness, degradation, jpeg_quality, looks) says."""
    h, w = image.shape[:2]
    side = rng.uniform(*spec.crop)
    ch, cw = max(1, round(side * h)), max(1, round(side * w))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    is_float = image.dtype.kind == "f"
    unit = image.astype(np.float32) if is_float else image.astype(np.float32) / 255.0
    pil = Image.fromarray(np.uint8(np.clip(unit * 255.0 + 0.5, 0, 255)).squeeze(-1) if image.shape[-1] == 1
                          else np.uint8(np.clip(unit * 255.0 + 0.5, 0, 255)))
    pil = pil.crop((int(x), int(y), int(x + cw), int(y + ch))).resize((w, h), Image.BICUBIC)
    out = np.asarray(pil, np.float32) / 255.0
    out = (out[..., None] if out.ndim == 2 else out) * rng.uniform(*spec.brightness)
    if spec.degradation == "jpeg":
        quality = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))
        buffer = io.BytesIO()
        pixels = np.uint8(np.clip(out * 255.0 + 0.5, 0, 255))
        Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(
            buffer, format="JPEG", quality=quality)
        out = np.asarray(Image.open(buffer), np.float32) / 255.0
        out = out[..., None] if out.ndim == 2 else out
    elif spec.degradation == "speckle":
        out = out * rng.gamma(spec.looks, 1.0 / spec.looks, out.shape)
    out = np.clip(out, 0.0, 1.0)
    return out.astype(image.dtype) if is_float else np.uint8(out * 255.0 + 0.5)


class RedundantPool:
    """A heavy-tailed pool with near-duplicate bursts over a labelled `base` source (see the module docstring).

    Args:
      base: a labelled source.
      spec: a `PoolSpec` (zipf, class_shares, num_originals, burst_fraction, copies, crop, brightness,
        degradation, jpeg_quality, looks, seed).
    """

    def __init__(self, base, spec):
        self.base, self.spec = base, spec
        rng = np.random.default_rng([spec.seed, 0x9001])
        base_labels = source_labels(base)
        num_classes = int(base_labels.max()) + 1
        self.class_shares = class_shares(num_classes, zipf=spec.zipf, shares=tuple(spec.class_shares), rng=rng)
        originals = _originals(base_labels, self.class_shares, spec.num_originals, rng)
        # Each original heads a group; a burst_fraction of them get copies[0]..copies[1] members in all.
        size = np.ones(originals.size, np.int64)
        bursty = rng.random(originals.size) < spec.burst_fraction
        size[bursty] = rng.integers(spec.copies[0], spec.copies[1] + 1, int(bursty.sum()))
        group = np.repeat(np.arange(originals.size), size)
        start = np.cumsum(size) - size                   # group-order position of each original
        order = rng.permutation(group.size)              # pool index i holds group-order position order[i]
        at = np.empty_like(order)
        at[order] = np.arange(order.size)                # pool index of each group-order position
        self._base_index = originals[group][order]
        self._copy = (np.arange(group.size) - np.repeat(start, size))[order]  # 0 for the original
        self._group = at[start][group][order]
        self._labels = base_labels[self._base_index]
        self.class_names = getattr(base, "class_names", None)
        # The files a file-backed base dropped are still the run's to report.
        for name in ("num_skipped", "skipped_files"):
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))

    def __len__(self) -> int:
        return int(self._base_index.size)

    def labels(self, indices=None) -> np.ndarray:
        """Hidden class of each pool sample (diagnostics only)."""
        return self._labels if indices is None else self._labels[np.asarray(indices)]

    def groups(self, indices=None) -> np.ndarray:
        """Hidden duplicate group of each pool sample: the pool index of its original (diagnostics only)."""
        return self._group if indices is None else self._group[np.asarray(indices)]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a pool of {len(self)}")
        image = np.asarray(self.base[int(self._base_index[index])]["image"])
        if self._copy[index]:
            image = near_duplicate(image, self.spec, np.random.default_rng([self.spec.seed, 0xD0, index]))
        return {"image": image, "sample_id": np.int64(index)}

    def __repr__(self) -> str:
        return (f"RedundantPool({self.base!r}, n={len(self)}, originals={int(np.unique(self._group).size)}, "
                f"seed={self.spec.seed})")
