"""`launch.py --mode=embed`: embeddings of any pretraining source with a released backbone.

Here live the run of a release's embedding (`oceansar.embedding` with the release's input scale and
resolution, CLS, L2-normalised) over a source through the feature pipeline, and the mode
`embed(config, workdir)`, which writes `X.npy` (float16) + `sample_ids.npy` with `curation.io`, plus
`labels.npy` when the source is labelled and `embed.json` (which source, which release, so curation
can render the images behind each row). Curation decisions live in `oceansar/apps/curate.py`.
"""
from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from curation import io as curation_io
from oceansar import release, sharding
from oceansar.data import sources
from oceansar.errors import ConfigError
from oceansar.evals import features as features_lib
from oceansar.spec import DataSpec, build

MANIFEST_FILE = "embed.json"
LABELS_FILE = "labels.npy"


def embed_source(release_dir: str | pathlib.Path, source, *, batch_size: int, mesh: jax.sharding.Mesh,
                 progress: bool = False, desc: str = "embed") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """L2-normalised CLS features of every record of `source` with the backbone at `release_dir`.

    Args:
      release_dir: the release directory.
      source: random-access source (`len`, `__getitem__` -> dict with `image`, `sample_id`, ...).
      batch_size: global batch size, a multiple of the mesh's device count (the last batch is padded).
      mesh: the data-parallel mesh the batch is sharded over.
      progress: show a tqdm bar.
      desc: the bar's label.

    Returns:
      (result, spec): `result` from `extract_features` ("features" [n, D] float32, "sample_id" [n] and
      the records' scalar fields such as "label"), and the release's spec.
    """
    fn, params, spec = release.embedder(release_dir, l2_normalize=True)  # it refuses a wrong channel count
    params = sharding.replicate(mesh, params)
    result = features_lib.extract_features(functools.partial(fn, params), source, batch_size=batch_size,
                                           mesh=mesh, progress=progress, desc=desc)
    return result, spec


def embed(config, workdir: str | pathlib.Path) -> pathlib.Path:
    """Embeds `config.data`'s pool with the backbone at `config.release`.

    Row i of the output is source index i (every oceansar source's `sample_id` is its index), so a
    selection of rows is a selection of source indices.

    Returns:
      `workdir`, now holding `X.npy`, `sample_ids.npy`, `embed.json` and, for labelled sources,
      `labels.npy`.
    """
    if not config.release:
        raise ConfigError("config.release: empty; pass the release directory written by --mode=export "
                         "(--config=configs/embed.py:release=PATH)")
    release_dir = pathlib.Path(config.release)
    release.read_config(release_dir, "config.release")  # names the field when it is no release
    mesh = sharding.make_mesh(config.num_devices or None)
    if config.batch_size <= 0 or config.batch_size % mesh.size:
        raise ConfigError(f"config.batch_size={config.batch_size} must be a positive multiple of the "
                         f"{mesh.size} devices")
    source = sources.make_pretrain_source(build(DataSpec, config.data, "data"), seed=config.seed)
    out_dir = pathlib.Path(workdir)
    start = time.perf_counter()
    result, spec = embed_source(release_dir, source, batch_size=config.batch_size, mesh=mesh,
                                progress=config.progress and jax.process_index() == 0,
                                desc=f"embed {config.data.source}")
    seconds = time.perf_counter() - start
    if jax.process_index() == 0:
        curation_io.save_embeddings(out_dir, result["features"], result["sample_id"])
        if "label" in result:
            np.save(out_dir / LABELS_FILE, result["label"].astype(np.int32))
        manifest = {
            "release": str(release_dir.absolute()),
            "model": spec,
            "features": "cls, L2-normalised, centre view at the release's img_size",
            "data": config.data.to_dict(),
            "seed": config.seed,
            "source": repr(source),
            "num_samples": int(result["features"].shape[0]),
            "dim": int(result["features"].shape[1]),
            "labelled": "label" in result,
            "seconds": round(seconds, 3),
            "images_per_second": round(result["features"].shape[0] / max(seconds, 1e-9), 1),
        }
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        logging.info("embedded %d samples (d=%d) in %.1f s into %s", manifest["num_samples"],
                     manifest["dim"], seconds, out_dir)
        print(f"wrote {manifest['num_samples']} x {manifest['dim']} embeddings to {out_dir} "
              f"({manifest['images_per_second']} img/s)")
    return out_dir
