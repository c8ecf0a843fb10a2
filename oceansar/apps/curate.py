"""`launch.py --mode=curate`: offline curation recipes on an embeddings file, and the static subset they leave.

Three recipes turn the `X.npy` written by `--mode=embed` into a selection (`kept_indices.npy`, rows of
`X.npy`, which are source indices; optional `weights.npy`; `summary.json`) plus plots (cluster sizes
before/after; a grid of kept versus removed images when the source can render them):
`hkmeans` (hierarchical k-means with resampling + balanced sampling to a target, Vo et al.),
`semdedup` (SemDeDup at several eps, the kept set of the chosen one written), and `rs_prune`
(entropy filter over the source images + scene-aware sampling guided by a labelled reference set); `captions`
reports a captioned pool's caption redundancy instead (`oceansar.apps.caption_report`).
Every input is checked, with the config field or file named, before any clustering runs. The
selection is written with `Selection.save`, the one owner of the format, which the static pruning
policy reads back with `Selection.load`. The kernels live in `curation/`; this module is
configuration, validation and files.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from curation import dedup, entropy as entropy_lib, hierarchical, io as curation_io, sampling, scene
from oceansar import release, sharding
from oceansar.apps import embed as embed_lib
from oceansar.apps.caption_report import caption_report
from oceansar.data import sources
from oceansar.data.selection import Selection
from oceansar.errors import ConfigError, DataError, DataNotFoundError
from oceansar.evals import features as features_lib
from oceansar.models.backbone import describe
from oceansar.spec import DataSpec, EvalSpec, build

RECIPES = ("hkmeans", "semdedup", "rs_prune", "captions")


@dataclasses.dataclass
class _Pool:
    """The embeddings being curated and what is known about them."""

    x: np.ndarray                     # [n, d] float16/float32 memmap
    path: pathlib.Path                # directory of X.npy
    labels: np.ndarray | None         # [n] labels.npy when the embedded source was labelled
    manifest: dict[str, Any] | None   # embed.json when written by --mode=embed
    _source: tuple[Any, str] | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def source(self, config) -> tuple[Any, str]:
        """(source whose index i is row i, "") or (None, why there is none); built once."""
        if self._source is None:
            data, seed, reason = _pool_data(config, self)
            source = None if data is None else sources.make_pretrain_source(build(DataSpec, data, "data"), seed=seed)
            if source is not None and len(source) != self.n:
                raise ConfigError(f"config.data: {source!r} has {len(source)} samples but {self.path} holds "
                                 f"{self.n} embeddings; curate the source that was embedded")
            self._source = (source, reason)
        return self._source


def _load_embeddings(path) -> np.ndarray:
    """`curation.io.load_embeddings`, its errors as the data errors they are (curation knows no oceansar)."""
    try:
        return curation_io.load_embeddings(path)[0]
    except FileNotFoundError as e:
        raise DataNotFoundError(str(e)) from None
    except ValueError as e:
        raise DataError(str(e)) from None


def _load_pool(config) -> _Pool:
    if not config.embeddings:
        raise ConfigError("config.embeddings: empty; pass the directory written by --mode=embed "
                         "(--config=configs/curate_*.py:embeddings=DIR)")
    path = pathlib.Path(config.embeddings)
    x = _load_embeddings(path)
    directory = path if path.is_dir() else path.parent
    manifest = None
    if (directory / embed_lib.MANIFEST_FILE).is_file():
        manifest = json.loads((directory / embed_lib.MANIFEST_FILE).read_text())
        if manifest["dim"] != x.shape[1] or manifest["num_samples"] != x.shape[0]:
            raise DataError(f"{directory / embed_lib.MANIFEST_FILE} describes {manifest['num_samples']} x "
                             f"{manifest['dim']} embeddings but {directory / curation_io.EMBEDDINGS_FILE} "
                             f"is {x.shape[0]} x {x.shape[1]}")
    labels = None
    if (directory / embed_lib.LABELS_FILE).is_file():
        labels = np.load(directory / embed_lib.LABELS_FILE)
        if labels.shape != (x.shape[0],):
            raise DataError(f"{directory / embed_lib.LABELS_FILE}: shape {labels.shape} for {x.shape[0]} "
                             f"embeddings")
    return _Pool(x=x, path=directory, labels=labels, manifest=manifest)


def _target(config, n: int, *, multiplier: int = 1) -> int:
    """The selection size from `config.target_count` (when > 0) or `config.target_fraction` of n."""
    if config.target_count > 0:
        target, field = int(config.target_count), f"config.target_count={config.target_count}"
    else:
        if not 0.0 < config.target_fraction <= 1.0:
            raise ConfigError(f"config.target_fraction={config.target_fraction} must lie in (0, 1] "
                             f"(or set config.target_count)")
        target = int(round(config.target_fraction * n))
        field = f"config.target_fraction={config.target_fraction} (= {target})"
    if target < 1:
        raise DataError(f"{field}: the selection would be empty")
    if target > n * multiplier:
        raise DataError(f"{field} exceeds the {n} embeddings in {config.embeddings}"
                         + (f" x multiplier {multiplier}" if multiplier > 1 else ""))
    return target


def _pool_data(config, pool: _Pool) -> tuple[ml_collections.ConfigDict | None, int, str]:
    """(data block, seed, why-not) of the source behind the embeddings: `config.data` if it names a source,
    else the one recorded in embed.json; (None, 0, reason) when neither exists."""
    if config.data.source:
        return config.data, config.seed, ""
    if pool.manifest is not None:
        return ml_collections.ConfigDict(pool.manifest["data"]), int(pool.manifest["seed"]), ""
    return None, 0, (f"config.data.source is empty and {pool.path / embed_lib.MANIFEST_FILE} does not exist "
                     f"(embeddings not written by --mode=embed)")


def _check_mesh_multiple(value: int, field: str, mesh: jax.sharding.Mesh) -> None:
    if value <= 0 or value % mesh.size:
        raise DataError(f"{field}={value} must be a positive multiple of the {mesh.size} devices")


_COMPUTE_DTYPES = ("float32", "bfloat16")


def _compute_dtype(value: str, field: str) -> jnp.dtype:
    if value not in _COMPUTE_DTYPES:
        raise DataError(f"{field}={value!r}; known: {_COMPUTE_DTYPES}")
    return jnp.dtype(value)


# ---------------------------------------------------------------------------------------------- recipes


def _hkmeans(config, pool: _Pool, mesh, timings: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    h = config.hkmeans
    ks = [int(k) for k in h.n_clusters]
    if not ks:
        raise ConfigError("config.hkmeans.n_clusters: empty; list k per level, data level first")
    if len(h.n_resamples) != len(ks):
        raise ConfigError(f"config.hkmeans.n_resamples has {len(h.n_resamples)} entries for the {len(ks)} levels "
                         f"of config.hkmeans.n_clusters")
    if h.sample_sizes and len(h.sample_sizes) != len(ks):
        raise ConfigError(f"config.hkmeans.sample_sizes has {len(h.sample_sizes)} entries for the {len(ks)} levels "
                         f"of config.hkmeans.n_clusters (or leave it empty)")
    if ks[0] * h.n_splits > pool.n:
        raise ConfigError(f"config.hkmeans.n_clusters[0]={ks[0]}"
                         + (f" x n_splits={h.n_splits}" if h.n_splits > 1 else "")
                         + f" exceeds the {pool.n} embeddings in {config.embeddings}")
    for level in range(1, len(ks)):
        if not 1 <= ks[level] <= ks[level - 1] * (h.n_splits if level == 1 else 1):
            raise ConfigError(f"config.hkmeans.n_clusters[{level}]={ks[level]} must lie in [1, {ks[level - 1]}] "
                             f"(it clusters the centroids of level {level - 1})")
    if h.strategy not in sampling.STRATEGIES:
        raise ConfigError(f"config.hkmeans.strategy={h.strategy!r}; known: {sampling.STRATEGIES}")
    compute_dtype = _compute_dtype(h.compute_dtype, "config.hkmeans.compute_dtype")
    target = _target(config, pool.n, multiplier=h.multiplier)
    x = np.asarray(pool.x, np.float32)

    start = time.perf_counter()
    hier = hierarchical.hierarchical_kmeans(
        x, ks, n_resamples=tuple(h.n_resamples), sample_sizes=tuple(h.sample_sizes) or None,
        strategy=h.resample_strategy, n_iters=h.n_iters, n_splits=h.n_splits, key=config.seed, mode=h.mode, mesh=mesh,
        compute_dtype=compute_dtype)
    timings["hierarchical_kmeans"] = time.perf_counter() - start
    start = time.perf_counter()
    kept = np.sort(sampling.balanced_sample(hier, target, key=config.seed, strategy=h.strategy, eta=h.eta,
                                            multiplier=h.multiplier))
    timings["balanced_sample"] = time.perf_counter() - start
    flat = hier.flat_sizes()
    top = hier.leaf_of_level(len(ks) - 1)
    info = {
        "target": target,
        "clusters_per_level": [len(level.centroids) for level in hier.levels],
        "top_level_sizes_before": flat[-1].tolist(),
        "top_level_sizes_after": np.bincount(top[kept], minlength=len(flat[-1])).tolist(),
    }
    return kept, hier.levels[0].assignment.astype(np.int64), info


def _semdedup_eps(x: np.ndarray, s, config, mesh, compute_dtype) -> float:
    """The eps whose first pass keeps `s.target_fraction` of the points: one minus that quantile of each
    point's largest similarity to an earlier member of its cluster (exact for one pass)."""
    probe = dedup.semdedup(x, n_clusters=s.n_clusters, eps_list=(0.5,), n_passes=1, ordering=s.ordering,
                           key=config.seed, normalize=True, kmeans_iters=s.kmeans_iters, block_size=s.block_size,
                           units_per_call=s.units_per_call, compute_dtype=compute_dtype, mesh=mesh)
    threshold = float(np.quantile(probe.max_similarity, s.target_fraction, method="lower"))
    return float(np.clip(1.0 - threshold, 1e-7, 1.0 - 1e-7))


def _semdedup(config, pool: _Pool, mesh, timings: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    s = config.semdedup
    if not 0.0 <= s.target_fraction <= 1.0:
        raise ConfigError(f"config.semdedup.target_fraction={s.target_fraction} must lie in [0, 1] (0: use eps)")
    eps_list = tuple(float(e) for e in s.eps_list)
    if not s.target_fraction and (not eps_list or not all(0.0 < e < 1.0 for e in eps_list)):
        raise ConfigError(f"config.semdedup.eps_list={eps_list}: needs at least one eps, each in (0, 1)")
    if not s.target_fraction and float(s.eps) not in eps_list:
        raise ConfigError(f"config.semdedup.eps={s.eps} is not in config.semdedup.eps_list={eps_list}")
    if not 1 <= s.n_clusters <= pool.n:
        raise ConfigError(f"config.semdedup.n_clusters={s.n_clusters} must lie in [1, {pool.n}] (the number of "
                         f"embeddings in {config.embeddings})")
    if s.n_passes < 1:
        raise ConfigError(f"config.semdedup.n_passes={s.n_passes} must be >= 1")
    _check_mesh_multiple(s.units_per_call, "config.semdedup.units_per_call", mesh)
    compute_dtype = _compute_dtype(s.compute_dtype, "config.semdedup.compute_dtype")

    start = time.perf_counter()
    x = np.asarray(pool.x, np.float32)
    eps = _semdedup_eps(x, s, config, mesh, compute_dtype) if s.target_fraction else float(s.eps)
    eps_list = (eps,) if s.target_fraction else eps_list
    res = dedup.semdedup(x, n_clusters=s.n_clusters, eps_list=eps_list, n_passes=s.n_passes, ordering=s.ordering,
                         key=config.seed, normalize=True, kmeans_iters=s.kmeans_iters, block_size=s.block_size,
                         units_per_call=s.units_per_call, compute_dtype=compute_dtype, mesh=mesh)
    timings["semdedup"] = time.perf_counter() - start
    column = eps_list.index(eps)
    kept = np.flatnonzero(res.kept[:, column]).astype(np.int64)
    info = {
        "eps": eps,
        "eps_from_target_fraction": float(s.target_fraction) or None,
        "kept_per_eps": {str(e): int(res.kept[:, i].sum()) for i, e in enumerate(eps_list)},
        "survivors_per_pass": {str(e): res.survivors_per_pass[:, i].tolist() for i, e in enumerate(eps_list)},
    }
    return kept, res.assignment.astype(np.int64), info


def _reference(config, pool: _Pool, mesh, timings: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """Embeddings and labels of the labelled reference set: loaded, or embedded here with a release."""
    ref = config.rs_prune.reference
    if ref.embeddings:
        x = _load_embeddings(ref.embeddings)
        directory = pathlib.Path(ref.embeddings)
        directory = directory if directory.is_dir() else directory.parent
        labels_path = pathlib.Path(ref.labels) if ref.labels else directory / embed_lib.LABELS_FILE
        if not labels_path.is_file():
            raise DataNotFoundError(f"config.rs_prune.reference.labels: {labels_path} not found (an [m] .npy of "
                                    f"the reference's scene labels)")
        labels = np.load(labels_path)
        if labels.shape != (x.shape[0],):
            raise DataError(f"{labels_path}: shape {labels.shape} for the {x.shape[0]} reference embeddings in "
                             f"{directory}")
        if x.shape[1] != pool.x.shape[1]:
            raise DataError(f"dimension mismatch: config.embeddings {pool.path} has d={pool.x.shape[1]} but "
                             f"config.rs_prune.reference.embeddings {directory} has d={x.shape[1]}")
        return np.asarray(x, np.float32), labels, str(directory)

    release_dir = ref.release or (pool.manifest or {}).get("release", "")
    if not release_dir:
        raise ConfigError("config.rs_prune.reference: set embeddings (+ labels), or release (or embed the pool "
                         "with --mode=embed, whose embed.json names the release)")
    spec = release.read_config(release_dir, "config.rs_prune.reference.release")
    width = describe(spec["variant"])["width"]
    if width != pool.x.shape[1]:
        raise DataError(f"dimension mismatch: config.embeddings {pool.path} has d={pool.x.shape[1]} but the "
                         f"reference release {release_dir} ({spec['variant']}) embeds to d={width}")
    _check_mesh_multiple(ref.batch_size, "config.rs_prune.reference.batch_size", mesh)
    data, seed, reason = _pool_data(config, pool)
    if data is None:
        raise ConfigError(f"config.rs_prune.reference: embedding the reference needs the pool's image size: {reason}")
    view = EvalSpec(source=ref.source, root=ref.root, tfds_name=ref.tfds_name, train_split=ref.split,
                    test_split=ref.split, num_train_per_class=ref.num_per_class, num_test_per_class=1,
                    probes=("knn",), targets=(), knn_ks=(1,), every_examples=0, features="cls",
                    batch_size=ref.batch_size, n_bootstrap=1)
    source = sources.make_eval_sources(view, image_size=data.image_size, in_channels=spec["in_channels"],
                                       seed=seed, cache=False)[0]
    start = time.perf_counter()
    result, _ = embed_lib.embed_source(release_dir, source, batch_size=ref.batch_size, mesh=mesh,
                                       progress=config.progress, desc="embed reference")
    timings["embed_reference"] = time.perf_counter() - start
    if "label" not in result:
        raise ConfigError(f"config.rs_prune.reference: {source!r} has no labels")
    labels = result["label"]
    names = getattr(source, "class_names", None)  # scene names in the summary where the source has them
    if names is not None:
        labels = np.asarray(names)[labels]
    return result["features"], labels, repr(source)


def source_entropy(source, *, n_levels: int, batch_size: int, mesh: jax.sharding.Mesh | None = None,
                   progress: bool = False) -> np.ndarray:
    """Local 2-D entropy (`curation.entropy.local_entropy`, bits) of every image of `source`.

    Records are read `batch_size` at a time (threaded, one batch ahead, the last batch padded) by
    `extract_features`; multi-channel uint8 images are scaled to float so their channels are averaged.
    """
    def score(images):
        images = np.asarray(images)
        if images.dtype == np.uint8 and images.shape[-1] > 1:
            images = images.astype(np.float32) / 255.0
        return jnp.asarray(entropy_lib.local_entropy(images, n_levels=n_levels, batch_size=batch_size,
                                                     mesh=mesh))[:, None]

    return features_lib.extract_features(score, source, batch_size=batch_size, progress=progress,
                                         desc="entropy")["features"][:, 0]


def _rs_prune(config, pool: _Pool, mesh, timings: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    r = config.rs_prune
    if not 0.0 <= r.entropy_percentile < 100.0:
        raise ConfigError(f"config.rs_prune.entropy_percentile={r.entropy_percentile} must lie in [0, 100)")
    if not 0.0 <= r.eta <= 1.0:
        raise ConfigError(f"config.rs_prune.eta={r.eta} must lie in [0, 1]")
    _check_mesh_multiple(r.entropy_batch_size, "config.rs_prune.entropy_batch_size", mesh)
    target = _target(config, pool.n)
    source, reason = pool.source(config)
    if source is None:
        raise DataError(f"rs_prune scores the images behind the embeddings, but {reason}; set config.data")
    ref_x, ref_labels, ref_name = _reference(config, pool, mesh, timings)

    start = time.perf_counter()
    scores = source_entropy(source, n_levels=r.n_levels, batch_size=r.entropy_batch_size, mesh=mesh,
                            progress=config.progress)
    timings["entropy"] = time.perf_counter() - start
    survivors = int(entropy_lib.entropy_filter(scores, r.entropy_percentile).sum())
    if target > survivors:
        raise DataError(f"the target of {target} exceeds the {survivors} images left by the entropy filter "
                         f"(config.rs_prune.entropy_percentile={r.entropy_percentile}); lower one of them")
    start = time.perf_counter()
    kept, info = scene.rs_prune(np.asarray(pool.x, np.float32), scores, ref_x, ref_labels, target,
                                entropy_percentile=r.entropy_percentile, eta=r.eta, k_scale=r.k_scale,
                                key=config.seed, kmeans_iters=r.kmeans_iters, mesh=mesh)
    timings["scene_aware_sample"] = time.perf_counter() - start
    summary = {
        "target": target,
        "reference": ref_name,
        "reference_size": int(ref_x.shape[0]),
        "scene_names": [str(v) for v in np.unique(ref_labels)],
        "entropy_bits": {"min": float(scores.min()), "median": float(np.median(scores)),
                         "max": float(scores.max())},
        "entropy_survivors": survivors,
        "scene_sizes_before": np.bincount(info["scene"][info["scene"] >= 0],
                                          minlength=len(info["k_per_scene"])).tolist(),
        "scene_quota": info["scene_quota"].tolist(),
        "k_per_scene": info["k_per_scene"].tolist(),
    }
    return np.sort(kept).astype(np.int64), info["cluster"].astype(np.int64), summary


_RECIPES = {"hkmeans": _hkmeans, "semdedup": _semdedup, "rs_prune": _rs_prune}


# ------------------------------------------------------------------------------------------------- outputs


def _size_stats(sizes: np.ndarray) -> dict[str, float]:
    sizes = sizes[sizes > 0]
    return {"clusters": int(sizes.size), "max": int(sizes.max()), "median": float(np.median(sizes)),
            "min": int(sizes.min())}


def _plot_examples(config, pool: _Pool, kept: np.ndarray, out_dir: pathlib.Path) -> str:
    """Writes kept_removed.png when the source renders images; returns the path or why not."""
    if config.plot_examples <= 0:
        return "config.plot_examples is 0"
    source, reason = pool.source(config)
    if source is None:
        return reason
    rng = np.random.default_rng(config.seed)
    kept_mask = np.zeros(pool.n, bool)
    kept_mask[kept] = True
    picks = [rng.permutation(np.flatnonzero(mask))[:config.plot_examples] for mask in (kept_mask, ~kept_mask)]
    rows = np.concatenate(picks)
    images = np.stack([np.asarray(source[int(i)]["image"]) for i in rows])
    path = curation_io.plot_kept_removed(images, kept_mask[rows], out_dir / "kept_removed.png",
                                         max_per_row=config.plot_examples)
    return str(path)


def curate(config, workdir: str | pathlib.Path) -> pathlib.Path:
    """Runs `config.recipe` on `config.embeddings` and writes the selection and plots into `workdir`.

    Returns:
      `workdir`, holding kept_indices.npy (rows of X.npy = source indices, sorted), summary.json,
      cluster_sizes.png and, when the source renders images, kept_removed.png.
    """
    if config.recipe not in RECIPES:
        raise ConfigError(f"config.recipe={config.recipe!r}; known: {RECIPES}")
    if config.recipe == "captions":  # a report on a captioned pool: no embeddings, nothing selected
        return caption_report(config, workdir)
    out_dir = pathlib.Path(workdir)
    mesh = sharding.make_mesh(config.num_devices or None)
    pool = _load_pool(config)
    if config.plot_examples > 0:
        pool.source(config)  # a source that does not match the embeddings fails now, not after clustering
    timings: dict[str, float] = {}
    start = time.perf_counter()
    kept, cluster, info = _RECIPES[config.recipe](config, pool, mesh, timings)
    timings["total"] = time.perf_counter() - start
    if jax.process_index() != 0:
        return out_dir

    clustered = cluster >= 0
    n_clusters = int(cluster.max()) + 1
    before = np.bincount(cluster[clustered], minlength=n_clusters)
    after = np.bincount(cluster[kept][clustered[kept]], minlength=n_clusters)
    summary: dict[str, Any] = {
        "recipe": config.recipe,
        "embeddings": str(pool.path.absolute()),
        "num_embeddings": pool.n,
        "dim": int(pool.x.shape[1]),
        "kept": int(kept.size),
        "kept_fraction": kept.size / pool.n,
        "indices": "rows of X.npy, which are source indices for embeddings written by --mode=embed",
        "source": None if pool.manifest is None else pool.manifest["source"],
        **info,
        "cluster_sizes_before": _size_stats(before),
        "cluster_sizes_after": _size_stats(after),
    }
    if pool.labels is not None:
        classes = int(pool.labels.max()) + 1
        summary["label_counts_before"] = np.bincount(pool.labels, minlength=classes).tolist()
        summary["label_counts_after"] = np.bincount(pool.labels[kept], minlength=classes).tolist()
    out_dir.mkdir(parents=True, exist_ok=True)
    curation_io.plot_cluster_sizes(before, after, out_dir / "cluster_sizes.png")
    summary["kept_removed_plot"] = _plot_examples(config, pool, kept, out_dir)
    summary["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    summary["config"] = config.to_dict()
    Selection.subset(kept).save(out_dir, summary=summary)
    logging.info("%s kept %d of %d in %.1f s", config.recipe, kept.size, pool.n, timings["total"])
    print(f"{config.recipe}: kept {kept.size} of {pool.n} ({100 * kept.size / pool.n:.1f} %) in "
          f"{timings['total']:.1f} s -> {out_dir}")
    return out_dir
