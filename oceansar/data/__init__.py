"""Input data: what a source is, the sources, the Selection and the Grain pipeline that turns it into batches.

`sources` defines the `Source` protocol and builds the sources a run's specs name; `synthetic/` is the embedded
Sentinel-1 WV simulator, the default dataset (its `captions` adds generated captions with a redundancy knob, an
offline SAR image-text task); `captioned` holds the image-text sources with redundant captions (the UCM-captions
layout and Karpathy-style JSONs: RSICD, RSITMD, Sydney-captions) whose records carry fixed-shape caption ids with
exact duplicates folded and WFA uniqueness weights; `tokenizer` the byte-level BPE caption tokenizer trained on a
training split's captions and saved as one JSON; `folder` is the image-folder source (class folders or a labels CSV);
`wv_files` reads real WV quicklook PNGs and GeoTIFF measurement files as sigma0 in dB; `opensarship` the OpenSARShip
calibrated ship chips, labelled, on the same sigma0 scale; `safe` reads Sentinel-1 SAFE products (folders or zips),
one record per measurement file or tile, calibrated and denoised from their LUTs by `s1_calibration` and
multilooked to a ground pixel spacing, and `tfds_safe` prepares an archive of them as array_record; `pool` makes
any labelled source a redundant, heavy-tailed pool and `duplication` a base subset with controlled duplication, both keeping their redundancy as
hidden truth; `tfds_wv` builds a TFDS
dataset from a local WV archive and reads any prepared TFDS dataset; `decode` holds the per-file decoding and resizing
the file-based sources share; `cache` is an in-memory copy of a source that fits in memory; `selection` holds the
Selection (which source samples an epoch visits, with what loss weight) and owns its file format; `pipeline` is the
Grain pipeline, for training epochs and for in-order inference passes. The package is numpy and Grain only (plus
Pillow and tifffile, `tokenizers` and, through `curation.captions`, sacrebleu for captions, and tensorflow_datasets
only when a TFDS source is built): it never imports jax, so Grain worker processes never start an accelerator
backend, and of `oceansar` it imports only the pure-Python `errors`.
Augmentation and device placement live above it (`oceansar.augment`, the caller's sharding).
"""
