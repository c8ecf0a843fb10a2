"""Builds the sources a config names: the pretraining pool and the labelled evaluation splits.

One place maps `config.data` / `config.eval` onto the source classes, so every source goes through
the same Grain pipeline and the same evaluators. Numpy only.
"""
from __future__ import annotations

import pathlib

from oceansar.data import synthetic_wv
from oceansar.data.cache import InMemorySource
from oceansar.data.folder import ImageFolderSource
from oceansar.data.tfds_wv import TFDSSource
from oceansar.data.wv_files import WVFileSource

SOURCES = ("synthetic_wv", "folder", "wv_files", "tfds")


def make_pretrain_source(data, *, seed: int):
    """The unlabelled pretraining pool of `config.data` (labels, if any, stay hidden), read into
    memory once when `data.cache` is set."""
    source = _pretrain_source(data, seed=seed)
    return InMemorySource(source, progress=True) if data.get("cache", False) else source


def _pretrain_source(data, *, seed: int):
    if data.source == "synthetic_wv":
        return synthetic_wv.SyntheticWV(
            num_samples=data.num_samples, image_size=data.image_size, seed=seed,
            class_frequencies=tuple(data.class_frequencies) or None,
            burst_length=data.burst_length, burst_jitter=data.burst_jitter)
    if data.source == "folder":
        return ImageFolderSource(data.root, image_size=data.image_size,
                                 labels_csv=data.labels_csv or None, skip_corrupt=data.skip_corrupt)
    if data.source == "wv_files":
        return WVFileSource(data.root, image_size=data.image_size,
                            labels_csv=data.labels_csv or None, skip_corrupt=data.skip_corrupt)
    if data.source == "tfds":
        return TFDSSource(data.tfds_name, split=data.tfds_split, data_dir=data.root or None,
                          image_size=data.image_size)
    raise ValueError(f"config.data.source: unknown source {data.source!r}; known: {SOURCES}")


def make_eval_sources(config):
    """(train, test) labelled sources of `config.eval`, at the pretraining image size, in memory when
    `config.data.cache` is set (they are read at every evaluation)."""
    splits = _eval_sources(config)
    if config.data.get("cache", False):
        return tuple(InMemorySource(s) for s in splits)
    return splits


def _eval_sources(config):
    ev, size = config.eval, config.data.image_size
    if ev.source == "synthetic_wv":
        return synthetic_wv.evaluation_splits(ev.num_train_per_class, ev.num_test_per_class,
                                              image_size=size, seed=config.seed + 1000)
    if ev.source == "folder":
        root = pathlib.Path(ev.root)
        return tuple(ImageFolderSource(root / split, image_size=size, channels=config.model.in_channels)
                     for split in ("train", "test"))
    if ev.source == "tfds":
        return tuple(TFDSSource(ev.tfds_name, split=split, data_dir=ev.root or None, image_size=size)
                     for split in (ev.train_split, ev.test_split))
    raise ValueError(f"config.eval.source: unknown source {ev.source!r}; known: synthetic_wv, folder, tfds")
