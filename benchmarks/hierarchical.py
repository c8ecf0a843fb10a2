"""Benchmark: 4-level hierarchical k-means with resampling on synthetic embeddings, time per level, then a balanced
sample. Prints JSON.

    python benchmarks/hierarchical.py                                   # 1M x 128, k = 10000, 2000, 500, 100
    python benchmarks/hierarchical.py --n 50000 --k 1000,200,50,10      # quick
    python benchmarks/hierarchical.py --compute_dtype bfloat16          # bfloat16 screening (AVX512-BF16, GPUs)
"""
from __future__ import annotations

import argparse
import json
import time

import jax.numpy as jnp
import numpy as np

from curation import hierarchical as hk
from curation import sampling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", default="10000,2000,500,100", help="clusters per level, data level first")
    parser.add_argument("--n_resamples", type=int, default=2)
    parser.add_argument("--n_iters", type=int, default=10)
    parser.add_argument("--init", default="kmeans||")
    parser.add_argument("--target_fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    ks = [int(v) for v in args.k.split(",")]

    rng = np.random.default_rng(args.seed)
    # Unequal-density embeddings: Zipf-distributed concept sizes on the unit sphere.
    n_concepts = max(ks[0] // 2, 2)
    centers = rng.standard_normal((n_concepts, args.d)).astype(np.float32)
    weights = 1.0 / np.arange(1, n_concepts + 1)
    owner = rng.choice(n_concepts, args.n, p=weights / weights.sum())
    x = centers[owner] + 0.5 * rng.standard_normal((args.n, args.d)).astype(np.float32)

    per_level = []
    points = x
    timings = {}
    for level, k in enumerate(ks):  # one level at a time so each is timed on its own
        t = time.perf_counter()
        h = hk.hierarchical_kmeans(points, [k], n_resamples=args.n_resamples, n_iters=args.n_iters,
                                   key=args.seed + level, init=args.init if level == 0 else "kmeans++",
                                   compute_dtype=jnp.dtype(args.compute_dtype))
        timings[level] = time.perf_counter() - t
        per_level.append(h.levels[0])
        points = h.levels[0].centroids
    hierarchy = hk.Hierarchy(per_level)
    t = time.perf_counter()
    target = int(args.target_fraction * args.n)
    kept = sampling.balanced_sample(hierarchy, target, key=args.seed)
    t_sample = time.perf_counter() - t
    leaf_sizes = hierarchy.flat_sizes()[0]
    kept_sizes = np.bincount(hierarchy.levels[0].assignment[kept], minlength=len(leaf_sizes))
    report = {
        "n": args.n, "d": args.d, "k": ks, "n_resamples": args.n_resamples, "n_iters": args.n_iters,
        "init_level1": args.init, "compute_dtype": args.compute_dtype, "compile_included": True,
        "seconds_per_level": [round(timings[i], 2) for i in range(len(ks))],
        "seconds_total_clustering": round(sum(timings.values()), 2),
        "balanced_sample": {"target": target, "seconds": round(t_sample, 3), "returned": int(kept.size),
                            "leaf_size_max_over_median_before": float(leaf_sizes.max() / np.median(leaf_sizes)),
                            "leaf_kept_max_over_median_after": float(kept_sizes.max() / max(np.median(kept_sizes), 1))},
        "level1_inertia": float(per_level[0].distance.sum(dtype=np.float64)),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
