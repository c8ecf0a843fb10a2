r"""Which curation levers engage: the redundancy left in static selections, lever by lever, on two pools.

    python launch.py --workdir=runs/default                            # a trained teacher, released
    python -m benchmarks.engagement --release=runs/default/release     # simulator + redundant UC Merced pool

For each pool (the embedded WV simulator, and a redundant pool built from the real UC Merced `train`
images: Zipf class shares, near-duplicate bursts of 2-8 with crops, brightness and JPEG, at 48 px
grayscale) it selects `rho` of the pool with each lever and prints, as JSON, the selection's head-class
share, effective number of classes, near-duplicate share and duplicate groups visited twice, next to
the pool's and a random subset's (the hidden truth of the pool: `oceansar.pruning.report.engagement`).
Levers: the features clustered (the teacher's CLS, CLS + mean patch, PCA-whitened CLS, the model-free
copy descriptors of `curation.copies`), the hierarchy's k relative to the pool, eta, and a copy-removal
stage (SemDeDup on copy descriptors) before balanced sampling. Everything here is offline (the static
selection a `--mode=curate` run would make from these features); a dynamic run re-selects from the same
kind of features every T_s epochs.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np
from absl import app, flags
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from curation import copies, dedup, hierarchical, sampling  # noqa: E402
from oceansar import embedding, release, sharding  # noqa: E402
from oceansar.data import synthetic  # noqa: E402
from oceansar.data.cache import InMemorySource  # noqa: E402
from oceansar.data.folder import ImageFolderSource  # noqa: E402
from oceansar.data.pool import RedundantPool  # noqa: E402
from oceansar.evals import features as features_lib  # noqa: E402
from oceansar.pruning.report import engagement  # noqa: E402
from oceansar.spec import PoolSpec  # noqa: E402

_RELEASE = flags.DEFINE_string("release", None, "A release directory (--mode=export) that embeds the pools.")
_POOLS = flags.DEFINE_list("pools", ["simulator", "ucm"], "Pools to measure: simulator, ucm.")
_UCM = flags.DEFINE_string("ucm_root", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
                                          / "ucm_captions" / "train"), "UC Merced train folder.")
_RHO = flags.DEFINE_float("rho", 0.25, "Kept fraction of the pool.")
_SIM_N = flags.DEFINE_integer("simulator_samples", 16384, "Simulator pool size (the default recipe's).")
_COPY_EPS = flags.DEFINE_list("copy_eps", ["0.02", "0.05", "0.1"], "SemDeDup eps on copy descriptors.")


class _Gray:
    """Luminance of an RGB source (the release takes one channel), labels passed through."""

    def __init__(self, source):
        self.source, self.class_names = source, source.class_names

    def __len__(self):
        return len(self.source)

    def labels(self, indices=None):
        return self.source.labels(indices)

    def __getitem__(self, i):
        record = dict(self.source[i])
        rgb = record["image"].astype(np.float32)
        record["image"] = np.uint8(np.clip(rgb @ np.float32([0.299, 0.587, 0.114]), 0, 255) + 0.5)[..., None]
        return record


def _pool(name: str, image_size: int):
    if name == "simulator":
        return InMemorySource(synthetic.SyntheticWV(_SIM_N.value, image_size=image_size, seed=0))
    spec = PoolSpec(enabled=True, zipf=1.0, class_shares=(), num_originals=0, burst_fraction=0.45, copies=(2, 8),
                    crop=(0.85, 0.97), brightness=(0.9, 1.1), degradation="jpeg", jpeg_quality=(60, 90), looks=4.0,
                    seed=0)
    rgb = ImageFolderSource(_UCM.value, image_size=image_size, channels=3)
    return InMemorySource(RedundantPool(_Gray(rgb), spec))


def _features(source, rel: pathlib.Path, mesh) -> dict[str, np.ndarray]:
    vit, spec = release.load(rel)
    graphdef, params = nnx.split(vit, nnx.Param)
    params = sharding.replicate(mesh, params)
    out = {}
    for kind in ("cls", "cls+mean_patch"):
        fn = embedding.make_embed_fn(graphdef, mean=spec["input_mean"], std=spec["input_std"],
                                     img_size=spec["img_size"], in_channels=spec["in_channels"], features=kind,
                                     l2_normalize=True)
        out[kind] = features_lib.extract_features(lambda images: fn(params, images), source, batch_size=256,
                                                  mesh=mesh)["features"]
    cls = out["cls"] - out["cls"].mean(0)
    eigval, eigvec = np.linalg.eigh(np.cov(cls, rowvar=False))
    out["cls_whitened"] = (cls @ eigvec) / np.sqrt(np.maximum(eigval, 1e-8))
    out["copy_descriptors"] = copies.copy_descriptors(source.images)
    return out


def _balanced(x: np.ndarray, target: int, divisors, eta: float, seed: int = 0) -> np.ndarray:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    levels = [max(x.shape[0] // d, 2) for d in divisors]
    h = hierarchical.hierarchical_kmeans(x.astype(np.float32), levels, n_resamples=2, key=seed)
    return np.asarray(sampling.balanced_sample(h, target, key=seed, strategy="eta", eta=eta))


def _measure(name: str, source, feats, labels, groups) -> dict:
    n, target = len(labels), int(round(_RHO.value * len(labels)))
    rng = np.random.default_rng(0)
    rows = {"pool": engagement(labels, groups, np.arange(n)),
            "random": engagement(labels, groups, rng.choice(n, target, replace=False))}
    for kind, x in feats.items():
        for divisors in ((20, 200), (5, 50)):
            for eta in (0.5, 0.0):
                start = time.perf_counter()
                kept = _balanced(x, target, divisors, eta)
                rows[f"hkmeans[{kind}, k=N/{divisors[0]},N/{divisors[1]}, eta={eta}]"] = engagement(
                    labels, groups, kept) | {"seconds": round(time.perf_counter() - start, 2)}
    for eps in map(float, _COPY_EPS.value):
        res = dedup.semdedup(feats["copy_descriptors"], n_clusters=max(n // 128, 2), eps_list=(eps,), normalize=False)
        survivors = np.flatnonzero(res.kept[:, 0])
        rows[f"copy-dedup eps={eps} (alone)"] = engagement(labels, groups, survivors) | {
            "kept_fraction": round(survivors.size / n, 4)}
        if survivors.size >= target:
            kept = survivors[_balanced(feats["cls"][survivors], target, (20, 200), 0.5)]
            rows[f"copy-dedup eps={eps} + hkmeans[cls]"] = engagement(labels, groups, kept)
    return {"pool": name, "n": n, "target": target, "selections": rows}


def main(argv):
    del argv
    if not _RELEASE.value:
        raise app.UsageError("--release: a release directory written by --mode=export")
    rel = pathlib.Path(_RELEASE.value)
    spec = release.read_config(rel)
    mesh = sharding.make_mesh()
    for name in _POOLS.value:
        source = _pool(name, image_size=48 if spec["img_size"] <= 48 else spec["img_size"])
        labels = np.asarray(source.labels())
        groups = np.asarray(source.groups())
        start = time.perf_counter()
        feats = _features(source, rel, mesh)
        result = _measure(name, source, feats, labels, groups)
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({"benchmark": "engagement", "release": str(rel), "rho": _RHO.value, **result}), flush=True)


if __name__ == "__main__":
    app.run(main)
