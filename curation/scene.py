"""Reference-guided scene-aware sampling (RS-Prune stage 2) and the two-stage RS-Prune pipeline (arXiv 2512.23239).

A labelled scene-classification reference set (UCM/AID/NWPU for optical, TenGeoP for WV SAR) embedded by the same
backbone gives one prototype per scene: the renormalised mean of its L2-normalised embeddings. Every pool embedding
goes to its cosine-nearest prototype (blockwise, never an N x S matrix beyond one tile). Inside each scene partition
a spherical k-means with k_s = round(k_scale * sqrt(|s|)) clusters is cheaper than one global k-means. The budget is
then spread by water-filling cap allocation over scenes, within each scene over its clusters, and inside a cluster
round((1 - eta) * q) representatives closest to the centroid are taken first and the rest drawn at random: exactly
`curation.sampling.balanced_sample` with strategy "eta" on the two-level hierarchy (clusters -> scenes), which is how
it is computed here. `rs_prune` puts the entropy filter (`curation.entropy`, stage 1) in front. Nothing here imports
oceansar.
"""
from __future__ import annotations

import jax
import numpy as np

from curation import entropy as entropy_lib
from curation import kmeans as kmeans_lib
from curation import sampling
from curation.hierarchical import Hierarchy, Level


def _normalized(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [n, d], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise ValueError(f"{name} row {bad[0]} is NaN/Inf or all zero")
    return x / norms


def scene_prototypes(ref_embeddings: np.ndarray, ref_labels: np.ndarray) -> np.ndarray:
    """One unit-norm prototype per reference scene class.

    Args:
        ref_embeddings: [m, d] embeddings of the labelled reference set.
        ref_labels: [m] class labels (ints or strings).

    Returns:
        [n_scenes, d] float32 prototypes, row s for class `np.unique(ref_labels)[s]`.
    """
    e = _normalized(ref_embeddings, "ref_embeddings")
    labels = np.asarray(ref_labels)
    if labels.shape != (e.shape[0],):
        raise ValueError(f"ref_labels must have shape ({e.shape[0]},), got {labels.shape}")
    _, scene = np.unique(labels, return_inverse=True)
    sums = np.zeros((scene.max() + 1, e.shape[1]), np.float64)
    np.add.at(sums, scene, e)
    return _normalized(sums, "scene prototype sums")


def assign_scenes(x: np.ndarray, prototypes: np.ndarray, *, mesh: jax.sharding.Mesh | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cosine-nearest prototype of every embedding, blockwise.

    Args:
        x: [n, d] embeddings (normalised here).
        prototypes: [n_scenes, d] prototypes from `scene_prototypes`.
        mesh: optional mesh to shard the points over.

    Returns:
        (scene int32 [n], cosine distance 1 - cos float32 [n]).
    """
    return kmeans_lib.assign(x, prototypes, mode="cosine", mesh=mesh)


def _scene_hierarchy(x: np.ndarray, scene: np.ndarray, prototypes: np.ndarray, k_scale: float, key: int,
                     kmeans_iters: int, mesh) -> tuple[Hierarchy, np.ndarray]:
    """Per-scene spherical k-means stacked into a two-level hierarchy (clusters -> scenes)."""
    n, d = x.shape
    cluster = np.zeros(n, np.int32)
    distance = np.zeros(n, np.float32)
    centroids, scene_of_cluster, k_per_scene = [], [], np.zeros(len(prototypes), np.int64)
    for s in np.unique(scene):
        members = np.flatnonzero(scene == s)
        k = int(min(members.size, max(1, round(k_scale * np.sqrt(members.size)))))
        res = kmeans_lib.kmeans(x[members], k, n_iters=kmeans_iters, key=key + int(s), mode="cosine", mesh=mesh)
        cluster[members] = res.assignment + sum(len(c) for c in centroids)
        distance[members] = res.distance
        centroids.append(res.centroids)
        scene_of_cluster.append(np.full(k, s, np.int32))
        k_per_scene[s] = k
    leaves = Level(centroids=np.concatenate(centroids), assignment=cluster, distance=distance)
    scenes = Level(centroids=prototypes, assignment=np.concatenate(scene_of_cluster),
                   distance=np.zeros(leaves.centroids.shape[0], np.float32))
    return Hierarchy(levels=[leaves, scenes]), k_per_scene


def scene_aware_sample(
    x: np.ndarray,
    ref_embeddings: np.ndarray,
    ref_labels: np.ndarray,
    target: int,
    *,
    eta: float = 0.5,
    k_scale: float = 1.0,
    key: int = 0,
    kmeans_iters: int = 20,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """RS-Prune stage 2: scene partition, per-scene k-means, stratified quotas, representatives then diversity.

    Args:
        x: [n, d] pool embeddings.
        ref_embeddings: [m, d] reference-set embeddings from the same backbone.
        ref_labels: [m] reference scene labels.
        target: number of samples to select, in [0, n].
        eta: diversity knob: in each cluster round((1 - eta) * q) closest to the centroid, the rest at random.
        k_scale: k_s = round(k_scale * sqrt(|s|)) clusters in scene s (at least 1, at most |s|).
        key: seed of the k-means and of the random draws.
        kmeans_iters: Lloyd iterations per scene.
        mesh: optional mesh for the assignment and the k-means.

    Returns:
        (indices int64 [target] into x, sorted; info) where info holds "scene" [n] (row of `scene_prototypes`),
        "cluster" [n] (global cluster id), "cluster_distance" [n] (1 - cos to it), "scene_of_cluster" [K],
        "k_per_scene" [n_scenes] and "scene_quota" [n_scenes] (samples taken per scene).
    """
    x = _normalized(x, "x")
    n = x.shape[0]
    if not 0 <= target <= n:
        raise ValueError(f"target={target} must be in [0, {n}] (the number of pool embeddings)")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if k_scale <= 0:
        raise ValueError(f"k_scale must be > 0, got {k_scale}")
    prototypes = scene_prototypes(ref_embeddings, ref_labels)
    if prototypes.shape[1] != x.shape[1]:
        raise ValueError(f"dimension mismatch: x has d={x.shape[1]}, ref_embeddings d={prototypes.shape[1]}")
    scene, _ = assign_scenes(x, prototypes, mesh=mesh)
    hierarchy, k_per_scene = _scene_hierarchy(x, scene, prototypes, k_scale, key, kmeans_iters, mesh)
    indices = np.sort(sampling.balanced_sample(hierarchy, target, key=np.random.default_rng(key), strategy="eta",
                                               eta=eta))
    info = {
        "scene": scene.astype(np.int32),
        "cluster": hierarchy.levels[0].assignment,
        "cluster_distance": hierarchy.levels[0].distance,
        "scene_of_cluster": hierarchy.levels[1].assignment,
        "k_per_scene": k_per_scene,
        "scene_quota": np.bincount(scene[indices], minlength=len(prototypes)),
    }
    return indices, info


def rs_prune(
    x: np.ndarray,
    images_or_entropy: np.ndarray,
    ref_embeddings: np.ndarray,
    ref_labels: np.ndarray,
    target: int,
    *,
    entropy_percentile: float = 30.0,
    n_levels: int = 256,
    eta: float = 0.5,
    k_scale: float = 1.0,
    key: int = 0,
    kmeans_iters: int = 20,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """RS-Prune: entropy filter (stage 1), then scene-aware sampling of the survivors (stage 2).

    Args:
        x: [n, d] pool embeddings.
        images_or_entropy: [n] precomputed entropies, or [n, H, W(, C)] images to score with
            `curation.entropy.local_entropy`.
        ref_embeddings: [m, d] reference-set embeddings.
        ref_labels: [m] reference scene labels.
        target: final number of samples, at most the number of stage-1 survivors.
        entropy_percentile: stage 1 drops images below this entropy percentile (20-40 in RS-Prune; mild for SAR,
            whose low-entropy images include real low-wind and sea-ice scenes).
        n_levels: entropy quantisation levels when images are given.
        eta, k_scale, key, kmeans_iters, mesh: as in `scene_aware_sample`.

    Returns:
        (indices int64 [target] into x, sorted; info) with the `scene_aware_sample` fields mapped back to x (-1 for
        images dropped by stage 1) plus "entropy" [n] and "entropy_kept" [n] bool.
    """
    x = np.asarray(x)
    n = x.shape[0]
    scores = np.asarray(images_or_entropy)
    if scores.ndim != 1:
        scores = entropy_lib.local_entropy(scores, n_levels=n_levels, mesh=mesh)
    if scores.shape != (n,):
        raise ValueError(f"images_or_entropy must describe the {n} pool items, got shape {scores.shape}")
    kept = entropy_lib.entropy_filter(scores, entropy_percentile)
    survivors = np.flatnonzero(kept)
    if target > survivors.size:
        raise ValueError(f"target={target} exceeds the {survivors.size} images left by the entropy filter "
                         f"(entropy_percentile={entropy_percentile})")
    picked, sub = scene_aware_sample(x[survivors], ref_embeddings, ref_labels, target, eta=eta, k_scale=k_scale,
                                     key=key, kmeans_iters=kmeans_iters, mesh=mesh)
    info = {name: value for name, value in sub.items() if name in ("scene_of_cluster", "k_per_scene", "scene_quota")}
    for name in ("scene", "cluster", "cluster_distance"):
        full = np.full(n, -1, sub[name].dtype)
        full[survivors] = sub[name]
        info[name] = full
    info["entropy"] = scores.astype(np.float32)
    info["entropy_kept"] = kept
    return survivors[picked], info
