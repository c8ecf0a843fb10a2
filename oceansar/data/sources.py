"""What a source is, and the one place that builds the sources a run's specs name.

A `Source` is a random-access collection of records: `len(source)`, `source[i]` -> a dict with an
`image` ([H, W, C] uint8, or float16 in [0, 1]), the record's `sample_id` and its scalar fields
(`label`, `wind_speed`, ...). A source may also offer `read_batch(indices)` (columns of many records
at once, as the in-memory cache does), `class_names`, and `labels(indices)` (hidden labels of an
unlabelled pool, for diagnostics only). Every source goes through the same Grain pipeline
(`pipeline.py`) for training and for feature extraction, and through the same evaluators.
`make_pretrain_source` maps a `DataSpec` onto the source classes, `make_eval_sources` an `EvalSpec`.
Numpy only; TFDS is imported only when a TFDS source is built.
"""
from __future__ import annotations

import pathlib
from typing import Any, Protocol, runtime_checkable

import numpy as np

from oceansar.data import synthetic
from oceansar.data.cache import InMemorySource
from oceansar.data.duplication import DuplicatedPool
from oceansar.data.folder import ImageFolderSource
from oceansar.data.opensarship import OpenSARShipSource
from oceansar.data.pool import RedundantPool
from oceansar.data.safe import SafeSource
from oceansar.data.wv_files import WVFileSource
from oceansar.errors import DataError, DataNotFoundError


@runtime_checkable
class Source(Protocol):
    """A random-access collection of records (see the module docstring)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


def _tfds_source(name: str, *, split: str, data_dir: str, image_size: int, labelled: bool = True):
    """A prepared TFDS dataset; its `label` feature is required for evaluation (`labelled`), optional in a pool."""
    from oceansar.data.tfds_wv import TFDSSource  # imports tensorflow_datasets: only when one is built

    try:
        return TFDSSource(name, split=split, data_dir=data_dir or None, image_size=image_size)
    except KeyError:  # no `label` feature (the image's absence raises again below)
        if labelled:
            raise
        return TFDSSource(name, split=split, data_dir=data_dir or None, image_size=image_size, label_key=None)


def _check_paths(data) -> None:
    """A missing root or labels CSV of a file-backed `DataSpec`, named by its config field."""
    root = pathlib.Path(data.root)
    if not (root.is_dir() or (data.source == "safe" and root.is_file())):  # safe: also one zipped product
        raise DataNotFoundError(f"config.data.root: {data.root} is not a directory")
    if data.labels_csv and not pathlib.Path(data.labels_csv).is_file():
        raise DataNotFoundError(f"config.data.labels_csv: {data.labels_csv} does not exist")


def _captioned(data, text, *, seed: int):
    """The image-text pool: a captions source (UCM-captions layout, or a Karpathy JSON with its images under
    `data.root`), or the simulator with generated captions; a tokenizer trained on its captions."""
    from oceansar.data.captioned import CaptionedImageSource, read_karpathy_listing, read_ucm_listing
    from oceansar.data.synthetic.captions import CaptionedSyntheticWV, SyntheticCaptioner

    if data.source == "captions":
        listing = (read_karpathy_listing(data.captions, data.root, data.split) if data.captions
                   else read_ucm_listing(data.root, data.split))
        return CaptionedImageSource.with_new_tokenizer(listing, vocab_size=text.vocab_size, image_size=data.image_size,
                                                       max_captions=text.max_captions,
                                                       context_length=text.context_length)
    base = synthetic.SyntheticWV(num_samples=data.num_samples, image_size=data.image_size, seed=seed,
                                 class_frequencies=tuple(data.class_frequencies) or None,
                                 burst_length=data.burst_length, burst_jitter=data.burst_jitter)
    captioner = SyntheticCaptioner(num_captions=text.max_captions, repeat_fraction=text.repeat_fraction, seed=seed)
    return CaptionedSyntheticWV.with_new_tokenizer(base, vocab_size=text.vocab_size, captioner=captioner,
                                                   context_length=text.context_length)


def make_pretrain_source(data, *, seed: int, progress: bool = True, text=None) -> Any:
    """The unlabelled pretraining pool of a `DataSpec` (labels, if any, stay hidden), made redundant and
    heavy-tailed when `data.pool_transform.enabled`, then a duplicated base subset when
    `data.duplication.scheme` is not none, read into memory once when `data.cache` is set. With an enabled
    `TextSpec` (`text`), the image-text pool: a captions source, or the simulator with generated captions.

    Raises:
      DataNotFoundError: a folder or WV-file pool's `config.data.root` or `config.data.labels_csv` is missing.
      DataError: files that cannot be read as configured (see each source).
    """
    if data.source in ("folder", "wv_files", "safe"):
        _check_paths(data)
    captioned = text is not None and text.enabled  # which sources may be captioned: RunSpec.check
    if data.source == "captions" and not captioned:
        raise DataError("config.data.source='captions' is read with its config.text (vocabulary, context length)")
    if captioned:
        source = _captioned(data, text, seed=seed)
    elif data.source == "synthetic_wv":
        source = synthetic.SyntheticWV(
            num_samples=data.num_samples, image_size=data.image_size, seed=seed,
            class_frequencies=tuple(data.class_frequencies) or None,
            burst_length=data.burst_length, burst_jitter=data.burst_jitter)
    elif data.source == "folder":
        source = ImageFolderSource(data.root, image_size=data.image_size, labels_csv=data.labels_csv or None,
                                   skip_corrupt=data.skip_corrupt)
    elif data.source == "wv_files":
        source = WVFileSource(data.root, image_size=data.image_size, labels_csv=data.labels_csv or None,
                              skip_corrupt=data.skip_corrupt)
    elif data.source == "safe":
        s = data.safe
        source = SafeSource(data.root, image_size=data.image_size, pixel_spacing=s.pixel_spacing,
                            tile_size=s.tile_size, polarisations=s.polarisations, thermal_noise=s.thermal_noise,
                            db_range=tuple(s.db_range), labels_csv=data.labels_csv or None,
                            skip_corrupt=data.skip_corrupt, verify_checksums=s.verify_checksums)
    else:
        source = _tfds_source(data.tfds_name, split=data.tfds_split, data_dir=data.root,
                              image_size=data.image_size, labelled=False)
    if data.pool_transform.enabled:
        source = RedundantPool(source, data.pool_transform)
    if data.duplication.scheme != "none":
        source = DuplicatedPool(source, data.duplication, data.pool_transform)
    return InMemorySource(source, progress=progress) if data.cache else source


def make_captioned_test_source(spec, *, text, tokenizer, image_size: int, seed: int, cache: bool) -> Any:
    """The captioned test split of an image-text `EvalSpec`, tokenised with the run's `tokenizer`: the captions
    source's `test_split` (UCM-captions layout under `spec.root`), or the simulator's test split (drawn from
    `seed + 1000` as every simulator evaluator's) with captions written as the pool's."""
    from oceansar.data.captioned import CaptionedImageSource, read_ucm_listing
    from oceansar.data.synthetic.captions import CaptionedSyntheticWV, SyntheticCaptioner

    if spec.source == "captions":
        source = CaptionedImageSource(read_ucm_listing(spec.root, spec.test_split), tokenizer, image_size=image_size,
                                      max_captions=text.max_captions, context_length=text.context_length)
    else:
        _, test = synthetic.evaluation_splits(spec.num_train_per_class, spec.num_test_per_class,
                                              image_size=image_size, seed=seed + 1000)
        captioner = SyntheticCaptioner(num_captions=text.max_captions, repeat_fraction=text.repeat_fraction,
                                       seed=seed + 1000)
        source = CaptionedSyntheticWV(test, tokenizer, captioner=captioner, context_length=text.context_length)
    return InMemorySource(source) if cache else source


def _safe_eval_split(folder: pathlib.Path, image_size: int) -> SafeSource:
    """A labelled SAFE split: `<root>/<split>/` holds its products and a `labels.csv` (`filename,label` by
    measurement or product), read at `SafeSource`'s defaults (50 m, whole measurement files, every
    polarisation, noise removed)."""
    if not (folder / "labels.csv").is_file():
        raise DataNotFoundError(f"safe evaluator: {folder / 'labels.csv'} does not exist (each split folder holds "
                                f"its products and their labels.csv)")
    return SafeSource(folder, image_size=image_size, labels_csv=folder / "labels.csv")


def make_eval_sources(spec, *, image_size: int, in_channels: int, seed: int, cache: bool) -> tuple[Any, Any]:
    """(train, test) labelled sources of an `EvalSpec` at `image_size`, in memory when `cache` is set
    (they are read at every evaluation). The simulator's splits are drawn from `seed + 1000`, disjoint
    from the pool."""
    if spec.source == "synthetic_wv":
        splits = synthetic.evaluation_splits(spec.num_train_per_class, spec.num_test_per_class,
                                             image_size=image_size, seed=seed + 1000)
    elif spec.source == "folder":
        root = pathlib.Path(spec.root)
        # The model's channel count: 8-bit RGB images become luminance for a 1-channel SAR model.
        splits = tuple(ImageFolderSource(root / split, image_size=image_size, channels=in_channels, convert=True)
                       for split in (spec.train_split, spec.test_split))
    elif spec.source == "opensarship":
        splits = tuple(OpenSARShipSource(spec.root, split=split, image_size=image_size)
                       for split in (spec.train_split, spec.test_split))
    elif spec.source == "safe":
        splits = tuple(_safe_eval_split(pathlib.Path(spec.root) / split, image_size)
                       for split in (spec.train_split, spec.test_split))
    else:
        splits = tuple(_tfds_source(spec.tfds_name, split=split, data_dir=spec.root, image_size=image_size)
                       for split in (spec.train_split, spec.test_split))
    names = [getattr(split, "class_names", None) for split in splits]
    if names[0] is not None and names[1] is not None and list(names[0]) != list(names[1]):
        raise DataError(f"{spec.source} {spec.root or spec.tfds_name}: the {spec.train_split} split's classes "
                        f"{list(names[0])} differ from the {spec.test_split} split's {list(names[1])}: a label index "
                        "would name different classes in the two")
    return tuple(InMemorySource(s) for s in splits) if cache else splits
