"""Image-text sources with redundant captions (UCM-captions, RSICD, RSITMD, Sydney-captions) for WFA pretraining.

Here live the listings of the two caption layouts (`read_ucm_listing`: the `captions.json` + `train/` `val/` folders
of `shared/data/ucm_captions`; `read_karpathy_listing`: a Karpathy-style JSON and an image root), `caption_fields`,
which turns one image's captions into the fixed-shape caption fields every captioned record carries, and
`CaptionedImageSource`, the random-access source over a listing.

The caption fields follow WFA (arXiv 2505.11121; METHODS.md section 7) with exact duplicates folded before the text
tower: of an image's captions, those equal after `tokenizer.normalize_caption` are one distinct caption; the BLEU
uniqueness weights of `curation.captions` are computed on the normalised captions and each distinct caption carries
the summed weight of its copies, so sum_j w_j h_j over the originals equals the sum over the distinct rows while the
text encoder sees each string once. With m = `max_captions` and L = `context_length`, a record holds:

- `caption_ids` int32 [m, L]: the distinct captions' id rows first (first-appearance order), then all-PAD rows;
- `caption_valid` bool [m]: True on the distinct captions;
- `caption_count` int32 [m]: how many original captions each distinct one stands for (0 on padding; sums to the
  image's caption count);
- `caption_weights` float32 [m]: the folded uniqueness weights (sum 1 over valid rows, 0 on padding);
- `caption_tokens` int32 scalar: non-PAD ids over all the image's original captions, before folding (the text
  tower's work without folding; the valid rows' non-PAD ids are its work with it).

Weights and ids are computed once at construction (host text processing, about 1 s per thousand images), so
reading a record decodes one image and copies arrays. Numpy, Pillow (through `decode`), `tokenizers` and sacrebleu
(through `curation.captions`) only; never jax.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from curation.captions import fold_duplicates, load_karpathy_captions, uniqueness_weights
from oceansar.data.decode import CorruptImageError, decode_image, resize_square
from oceansar.data.tokenizer import CaptionTokenizer, normalize_caption, train_tokenizer
from oceansar.errors import DataError, DataNotFoundError

CAPTION_FIELDS = ("caption_ids", "caption_valid", "caption_count", "caption_weights", "caption_tokens")


@dataclasses.dataclass(frozen=True)
class CaptionListing:
    """The images of one split of a caption dataset, before any image is read.

    Attributes:
        files: absolute image paths.
        captions: the raw captions of each image (outer whitespace stripped), in file order.
        class_names: sorted class names, or None when the layout has no classes.
        labels: int32 [n] class indices into `class_names`, or None.
        source: the caption file the listing came from (for error messages).
    """

    files: list[str]
    captions: list[list[str]]
    class_names: list[str] | None
    labels: np.ndarray | None
    source: str


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise DataNotFoundError(f"caption file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: expected an object with an 'images' list")
    return data


def read_ucm_listing(root: str | os.PathLike, split: str | None) -> CaptionListing:
    """The UCM-captions layout: `root/captions.json` with `images[]` of `image` (path relative to `root`),
    `class` and `captions` (list of str); the split of an image is its own `split` key if it has one, else the first
    component of its path (`train/...`, `val/...`).

    Args:
        root: the dataset folder.
        split: keep only this split ("train", "val", ...); None keeps every image.

    Raises:
        DataNotFoundError: no `captions.json`, or no image of `split`.
        DataError: a malformed entry (the message names the file and the entry).
    """
    root = pathlib.Path(root)
    path = root / "captions.json"
    images = _read_json(path)["images"]
    files, captions, classes = [], [], []
    for i, entry in enumerate(images):
        try:
            rel, cls, caps = str(entry["image"]), str(entry["class"]), list(entry["captions"])
        except (KeyError, TypeError):
            raise DataError(f"{path}: images[{i}] lacks 'image', 'class' or a 'captions' list") from None
        if split is not None and str(entry.get("split", pathlib.PurePosixPath(rel).parts[0])) != split:
            continue
        if not all(isinstance(c, str) for c in caps):
            raise DataError(f"{path}: images[{i}] ({rel}) has a caption that is not a string")
        files.append(str(root / rel))
        captions.append([c.strip() for c in caps])
        classes.append(cls)
    if not files:
        raise DataNotFoundError(f"{path}: no image of split {split!r}")
    class_names = sorted(set(classes))
    index = {c: k for k, c in enumerate(class_names)}
    return CaptionListing(files, captions, class_names, np.array([index[c] for c in classes], np.int32), str(path))


def read_karpathy_listing(json_path: str | os.PathLike, image_root: str | os.PathLike,
                          split: str | None) -> CaptionListing:
    """A Karpathy-style caption JSON (RSICD, RSITMD, Sydney-/UCM-captions: `images[]` of `filename`, `split`,
    `sentences[].raw`) with its images under `image_root/<filename>`. Unlabelled: these files carry no class.

    Args:
        json_path: the JSON file.
        image_root: the folder holding the images.
        split: keep only this split; None keeps every image.

    Raises:
        DataNotFoundError: no such JSON, or no image of `split`.
        DataError: a malformed JSON (the message names it).
    """
    json_path = pathlib.Path(json_path)
    if not json_path.is_file():
        raise DataNotFoundError(f"caption file {json_path} does not exist")
    try:
        names, captions = load_karpathy_captions(json_path, split=split)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(str(err)) from None
    if not names:
        raise DataNotFoundError(f"{json_path}: no image of split {split!r}")
    root = pathlib.Path(image_root)
    return CaptionListing([str(root / n) for n in names], captions, None, None, str(json_path))


def fold_captions(captions: Sequence[str], eps: float = 0.01) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One image's captions folded onto its distinct normalised captions.

    Args:
        captions: the image's original captions (non-empty).
        eps: the uniqueness floor of `curation.captions.uniqueness_weights`.

    Returns:
        (distinct normalised captions in first-appearance order, int32 [d] copies of each,
        float64 [d] summed uniqueness weights, summing to 1).

    Raises:
        ValueError: no caption, or an empty one.
    """
    normalised = [normalize_caption(c) for c in captions]
    weights = uniqueness_weights(normalised, eps)
    distinct, folded = fold_duplicates(normalised, weights)
    _, counts = fold_duplicates(normalised, np.ones(len(normalised)))
    return distinct, np.rint(counts).astype(np.int32), folded


def caption_fields(captions: Sequence[str], tokenizer: CaptionTokenizer, *, max_captions: int,
                   context_length: int, eps: float = 0.01) -> dict[str, np.ndarray]:
    """The caption fields of one record (see the module docstring for their meaning and shapes).

    Args:
        captions: the image's original captions, 1 to `max_captions` of them, none empty.
        tokenizer: the split-shared tokenizer.
        max_captions: m, the rows of the caption fields.
        context_length: L, the id row length.
        eps: the uniqueness floor.

    Returns:
        dict of `caption_ids` int32 [m, L], `caption_valid` bool [m], `caption_count` int32 [m],
        `caption_weights` float32 [m] and `caption_tokens` int32 [].

    Raises:
        ValueError: no caption, an empty caption, or more than `max_captions`.
    """
    if len(captions) > max_captions:
        raise ValueError(f"{len(captions)} captions, more than max_captions={max_captions}")
    distinct, counts, weights = fold_captions(captions, eps)
    d = len(distinct)
    ids = np.full((max_captions, context_length), tokenizer.pad_id, np.int32)
    ids[:d] = tokenizer.encode(distinct, context_length)
    valid = np.arange(max_captions) < d
    count = np.zeros(max_captions, np.int32)
    count[:d] = counts
    w = np.zeros(max_captions, np.float32)
    w[:d] = weights
    w[:d] /= w[:d].sum()  # exactly 1 in float32, whatever the float64 -> float32 rounding did
    # Copies share one normalised string, hence one id row: originals' tokens = sum over rows of count * tokens.
    tokens = np.int32(int(tokenizer.num_tokens(ids[:d]) @ counts))
    return {"caption_ids": ids, "caption_valid": valid, "caption_count": count, "caption_weights": w,
            "caption_tokens": tokens}


def _to_channels(arr: np.ndarray, channels: int | None, path: str) -> np.ndarray:
    """An 8-bit [H, W, C] image with `channels` channels: RGB(A) to luminance (Pillow's "L" formula, so the result
    matches the folder source's conversion), gray to RGB by repetition, alpha dropped."""
    if channels is None or arr.shape[-1] == channels:
        return arr
    c = arr.shape[-1]
    if channels == 1 and c in (3, 4):
        rgb = arr[..., :3].astype(np.uint32)
        lum = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        return lum.astype(np.uint8)[..., None]
    if channels == 1 and c == 2:
        return arr[..., :1]
    if channels == 3 and c in (1, 2):
        return np.repeat(arr[..., :1], 3, axis=-1)
    if channels == 3 and c == 4:
        return arr[..., :3]
    raise CorruptImageError(path, f"cannot convert {c} channel(s) to {channels}")


def _to_uint8(arr: np.ndarray, path: str) -> np.ndarray:
    """8-bit pixels: other integer depths scaled by their maximum; float files are refused (no shared scale)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind in "iu":
        unit = np.clip(arr.astype(np.float32) / float(np.iinfo(arr.dtype).max), 0.0, 1.0)
        return np.rint(unit * 255.0).astype(np.uint8)
    raise CorruptImageError(path, f"pixel dtype {arr.dtype}: captioned sources read 8-bit or integer images")


class CaptionedImageSource:
    """Random-access source over a `CaptionListing`: images with their folded caption fields.

    Records: `image` uint8 [S, S, C], `sample_id` int64 (the position in this source), `label` int32 when the
    listing has classes, and the caption fields of the module docstring (`caption_ids` int32 [m, L],
    `caption_valid` bool [m], `caption_count` int32 [m], `caption_weights` float32 [m], `caption_tokens` int32 []).
    Every record has the same shapes, so batches stack.

    The tokenizer comes from the TRAIN split: build the train source with `with_new_tokenizer` (or
    `captioned_splits`) and pass its `tokenizer` to the other splits, so all share one vocabulary.

    Args:
        listing: the split's images and captions.
        tokenizer: the tokenizer shared by all splits.
        image_size: side of the square output (center crop, then antialiased resize), or None to keep the native
            size, which then must be the same for every image.
        channels: 1 (RGB to luminance, as `ImageFolderSource(convert=True)`), 3, or None to keep the first image's.
        max_captions: m, the caption rows of a record (5 for UCM-, Sydney-captions, RSICD, RSITMD); None takes the
            largest caption count of the listing (then splits may disagree: pass it explicitly for training).
        context_length: L, ids per caption row (BOS and EOS included).
        eps: the uniqueness floor of the WFA weights.

    Attributes:
        image_shape: [S, S, C] of every record's image.
        channels: C.
        class_names: the class names, or None.
        tokenizer: the shared tokenizer.
        max_captions: m.
        context_length: L.

    Raises:
        DataNotFoundError: an image file of the listing is missing (the message names it).
        DataError: an image with no caption, an empty caption or more than `max_captions`; a bad first image.
    """

    def __init__(self, listing: CaptionListing, tokenizer: CaptionTokenizer, *, image_size: int | None,
                 channels: int | None = None, max_captions: int | None = 5, context_length: int = 32,
                 eps: float = 0.01):
        if image_size is not None and int(image_size) <= 0:
            raise ValueError(f"image_size must be positive or None, got {image_size}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels}")
        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (BOS and EOS), got {context_length}")
        if max_captions is not None and int(max_captions) < 1:
            raise ValueError(f"max_captions must be >= 1 or None, got {max_captions}")
        missing = [f for f in listing.files if not os.path.isfile(f)]
        if missing:
            raise DataNotFoundError(f"{listing.source}: image file {missing[0]} does not exist "
                                    f"({len(missing)} of {len(listing.files)} listed images are missing)")
        self._files = list(listing.files)
        self._captions = [list(c) for c in listing.captions]
        self._label = listing.labels
        self.class_names = None if listing.class_names is None else list(listing.class_names)
        self.tokenizer = tokenizer
        self.max_captions = int(max_captions or max(len(c) for c in self._captions))
        self.context_length = int(context_length)
        self.image_size = None if image_size is None else int(image_size)
        self._fields = self._all_caption_fields(listing.source, float(eps))
        first = self._read(self._files[0], channels, native_shape=None)
        self.channels = int(first.shape[-1])
        self.image_shape = tuple(int(s) for s in first.shape)
        self._native_shape = self.image_shape if self.image_size is None else None

    def _all_caption_fields(self, where: str, eps: float) -> dict[str, np.ndarray]:
        """Every image's caption fields, stacked [n, ...]."""
        rows = []
        for i, (path, captions) in enumerate(zip(self._files, self._captions)):
            try:
                rows.append(caption_fields(captions, self.tokenizer, max_captions=self.max_captions,
                                           context_length=self.context_length, eps=eps))
            except ValueError as err:
                raise DataError(f"{where}: image {i} ({path}): {err}") from None
        return {k: np.stack([r[k] for r in rows]) for k in CAPTION_FIELDS}

    @classmethod
    def with_new_tokenizer(cls, listing: CaptionListing, *, vocab_size: int = 1000, min_frequency: int = 2,
                           **kwargs) -> "CaptionedImageSource":
        """The TRAIN split's source, with a tokenizer trained on its captions (`train_tokenizer`).

        Args:
            listing: the training split.
            vocab_size: the tokenizer's largest vocabulary.
            min_frequency: the fewest occurrences of a merged pair.
            **kwargs: the other constructor arguments.
        """
        tokenizer = train_tokenizer([c for caps in listing.captions for c in caps], vocab_size,
                                    min_frequency=min_frequency)
        return cls(listing, tokenizer, **kwargs)

    def _read(self, path: str, channels: int | None, native_shape: tuple[int, ...] | None) -> np.ndarray:
        arr = _to_channels(_to_uint8(decode_image(path), path), channels, path)
        if self.image_size is not None:
            return resize_square(arr, self.image_size)
        if native_shape is not None and arr.shape != native_shape:
            raise CorruptImageError(path, f"shape {arr.shape} differs from the dataset's {native_shape} "
                                          f"(pass image_size to resize)")
        return arr

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self._files):
            raise IndexError(f"index {index} out of range for {len(self._files)} images")
        record = {"image": self._read(self._files[index], self.channels, self._native_shape),
                  "sample_id": np.int64(index)}
        if self._label is not None:
            record["label"] = np.int32(self._label[index])
        for key, column in self._fields.items():
            record[key] = column[index].copy()
        return record

    @property
    def files(self) -> list[str]:
        """The image file behind each index."""
        return list(self._files)

    def captions(self, index: int) -> list[str]:
        """The original captions of image `index` (raw, outer whitespace stripped): retrieval queries."""
        return list(self._captions[int(index)])

    def labels(self, indices=None) -> np.ndarray | None:
        """The class index of each record (None without classes), read without decoding images."""
        if self._label is None:
            return None
        return self._label if indices is None else self._label[np.asarray(indices)]

    def caption_columns(self) -> dict[str, np.ndarray]:
        """Every record's caption fields, [n, ...] (read-only views), without decoding images."""
        out = {}
        for key, column in self._fields.items():
            view = column.view()
            view.flags.writeable = False
            out[key] = view
        return out

    def redundancy(self) -> dict[str, int]:
        """Caption totals of the split: `images`, `captions` (originals), `distinct` (after folding), `tokens`
        (non-PAD ids of the originals) and `distinct_tokens` (of the distinct rows, what the text tower sees)."""
        f = self._fields
        distinct_tokens = int(self.tokenizer.num_tokens(f["caption_ids"][f["caption_valid"]]).sum())
        return {"images": len(self), "captions": int(f["caption_count"].sum()),
                "distinct": int(f["caption_valid"].sum()), "tokens": int(f["caption_tokens"].sum()),
                "distinct_tokens": distinct_tokens}

    def __repr__(self) -> str:
        return (f"CaptionedImageSource(n={len(self)}, image_shape={self.image_shape}, m={self.max_captions}, "
                f"L={self.context_length}, vocab={self.tokenizer.vocab_size}, "
                f"classes={None if self.class_names is None else len(self.class_names)})")


def captioned_splits(listings: Sequence[CaptionListing], *, tokenizer: CaptionTokenizer | None = None,
                     vocab_size: int = 1000, min_frequency: int = 2, **kwargs) -> tuple[CaptionedImageSource, ...]:
    """Sources over several splits sharing one tokenizer, trained on `listings[0]` (the TRAIN split) unless given.

    Args:
        listings: the splits, the training split first.
        tokenizer: an existing tokenizer (a released model's); None trains one on `listings[0]`'s captions.
        vocab_size: see `train_tokenizer`.
        min_frequency: see `train_tokenizer`.
        **kwargs: `CaptionedImageSource` arguments shared by every split.
    """
    if not listings:
        raise ValueError("captioned_splits needs at least one listing")
    if tokenizer is None:
        tokenizer = train_tokenizer([c for caps in listings[0].captions for c in caps], vocab_size,
                                    min_frequency=min_frequency)
    return tuple(CaptionedImageSource(listing, tokenizer, **kwargs) for listing in listings)


def ucm_captioned_splits(root: str | os.PathLike, splits: Sequence[str] = ("train", "val"),
                         **kwargs) -> tuple[CaptionedImageSource, ...]:
    """`captioned_splits` over the UCM-captions layout (`read_ucm_listing`), the first split training the tokenizer.

    Args:
        root: the folder holding `captions.json` and the split folders.
        splits: the split names, the training split first.
        **kwargs: `captioned_splits` and `CaptionedImageSource` arguments.
    """
    return captioned_splits([read_ucm_listing(root, s) for s in splits], **kwargs)
