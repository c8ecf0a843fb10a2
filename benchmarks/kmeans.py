"""Benchmark: oceansar's blockwise JAX k-means against scikit-learn and faiss-cpu, same data, same start.

oceansar runs twice: with float32 matmuls, and with bfloat16 screening (the two best bfloat16 candidates of each point
re-scored exactly in float32), which doubles the matmul rate on CPUs with AVX512-BF16 and on GPUs. oceansar and
scikit-learn return centroids and each point's cluster (n_iters assignment passes plus a final one); faiss's train()
returns centroids only (n_iters passes), so `faiss_with_labels` adds the index search that gives the labels. Every
method starts from the same initial centroids C0, runs the same fixed number of Lloyd iterations with no
subsampling and no early stop, and its final centroids are scored by one common evaluator (nearest-centroid squared
distance, float64 sum), so the inertia difference measures numerical agreement, not seeding luck. On fits this
large oceansar's Lloyd skips, exactly, the scoring that cannot change an assignment (a point against centroids that
did not move, when a kept bound settles it): the iterations are still full Lloyd iterations. Methods run
interleaved in one process and the best of `--repeats` is reported (the machine is shared). Prints JSON.

    python benchmarks/kmeans.py                        # 200k x 256 -> 1024 (10 iters) and the large-K case
    python benchmarks/kmeans.py --n 20000 --large_n 20000 --large_k 2048 --repeats 1   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script from a checkout
from benchmarks.memory import PeakRSS  # noqa: E402


def _blobs(n: int, d: int, n_centers: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_centers, d), dtype=np.float32)
    owner = rng.integers(0, n_centers, n)
    return centers[owner] + rng.standard_normal((n, d), dtype=np.float32)


def _run_oceansar(x, c0, iters, block_size, compute_dtype):
    import jax.numpy as jnp

    from curation import kmeans as km

    return km.kmeans(x, c0.shape[0], n_iters=iters, init=c0, block_size=block_size,
                     compute_dtype=jnp.dtype(compute_dtype)).centroids


def _run_sklearn(x, c0, iters):
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=c0.shape[0], init=c0, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd")
    return model.fit(x).cluster_centers_.astype(np.float32)


def _run_faiss(x, c0, iters, labels=False):
    import faiss

    model = faiss.Kmeans(x.shape[1], c0.shape[0], niter=iters, verbose=False, seed=0,
                         max_points_per_centroid=x.shape[0] + 1, min_points_per_centroid=1)
    model.train(x, init_centroids=c0)
    if labels:  # train() returns centroids only; the others also return each point's cluster
        model.index.search(x, 1)
    return np.asarray(model.centroids, np.float32)


def _case(name, n, d, k, iters, repeats, peers, block_size, seed):
    from curation import kmeans as km

    x = _blobs(n, d, 4 * k, seed)
    c0 = x[np.random.default_rng(seed + 1).choice(n, k, replace=False)].copy()
    runners = {"oceansar": lambda: _run_oceansar(x, c0, iters, block_size, "float32"),
               "oceansar_bf16": lambda: _run_oceansar(x, c0, iters, block_size, "bfloat16"),
               "sklearn": lambda: _run_sklearn(x, c0, iters),
               "faiss": lambda: _run_faiss(x, c0, iters),
               "faiss_with_labels": lambda: _run_faiss(x, c0, iters, labels=True)}
    ours = [m for m in runners if m.startswith("oceansar")]
    runners = {m: f for m, f in runners.items() if m in ours or m.removesuffix("_with_labels") in peers}
    flop = 2.0 * n * k * d * iters
    results = {m: {"seconds": [], "peak_rss_mib": 0.0} for m in runners}
    centroids = {}
    for method in ours:  # compile once, outside the timed repeats
        t0 = time.perf_counter()
        centroids[method] = runners[method]()
        results[method]["first_call_seconds_with_compile"] = time.perf_counter() - t0
    for _ in range(repeats):
        for method, run in runners.items():
            with PeakRSS() as mem:
                t = time.perf_counter()
                centroids[method] = run()
                results[method]["seconds"].append(time.perf_counter() - t)
            results[method]["peak_rss_mib"] = max(results[method]["peak_rss_mib"], mem.mib)
    inertia = {m: float(km.assign(x, c)[1].sum(dtype=np.float64)) for m, c in centroids.items()}
    out = {"case": name, "n": n, "d": d, "k": k, "iters": iters, "repeats": repeats,
           "n_x_k_float32_gib": n * k * 4 / 2**30, "methods": {}}
    best = {m: min(r["seconds"]) for m, r in results.items()}
    for method, r in results.items():
        out["methods"][method] = {
            "best_seconds": round(best[method], 3), "all_seconds": [round(s, 3) for s in r["seconds"]],
            "gflops": round(flop / best[method] / 1e9, 1), "peak_rss_mib": round(r["peak_rss_mib"], 1),
            "inertia": inertia[method],
            "rel_inertia_diff_vs_oceansar": (inertia[method] - inertia["oceansar"]) / inertia["oceansar"],
        }
        if method in ours:
            out["methods"][method]["first_call_seconds_with_compile"] = round(
                r["first_call_seconds_with_compile"], 3)
        else:  # how many times faster each oceansar variant is than this peer
            out["methods"][method]["speedup"] = {m: round(best[method] / best[m], 3) for m in ours}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--large_n", type=int, default=500_000)
    parser.add_argument("--large_d", type=int, default=64)
    parser.add_argument("--large_k", type=int, default=32768)
    parser.add_argument("--large_iters", type=int, default=2)
    parser.add_argument("--large_repeats", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block_size", type=int, default=None)
    parser.add_argument("--peers", default="sklearn,faiss")
    parser.add_argument("--skip_large", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    report = {"cpu_count": os.cpu_count(), "cases": []}
    report["cases"].append(_case("standard", args.n, args.d, args.k, args.iters, args.repeats, peers,
                                 args.block_size, args.seed))
    print(json.dumps(report["cases"][-1]), flush=True)
    if not args.skip_large:
        report["cases"].append(_case("large_k", args.large_n, args.large_d, args.large_k, args.large_iters,
                                     args.large_repeats, peers, args.block_size, args.seed))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
