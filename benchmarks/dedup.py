"""Benchmark: SemDeDup's banded JAX kernel against the straightforward numpy reference, same clustering. Prints JSON.

Data: unit embeddings in `--n_clusters` Gaussian blobs of Dirichlet-distributed sizes, with `--dup_fraction` of them
planted as noisy copies (cosine distance ~1e-3) of other points. Both implementations get the same spherical k-means
clustering (timed separately) and the same distances; the numpy reference is `semdedup_reference` from
tests/test_dedup.py (per cluster: order, full similarity matrix, strict upper triangle, column max). The kept sets
must be identical for every eps (asserted). JAX is timed cold (with compilation) and warm; numpy once.
Memory: peak resident set above the level at entry (sampled every 10 ms) for both, plus tracemalloc's peak of the
Python/numpy allocations for the reference.

    python benchmarks/dedup.py                                   # 300k x 256, ~1000 clusters
    python benchmarks/dedup.py --n 30000 --n_clusters 100        # quick
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import tracemalloc

import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[1]
# runnable from a checkout without installing; the numpy reference lives in tests
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests")]

from curation import dedup, kmeans  # noqa: E402
from test_dedup import semdedup_reference  # noqa: E402
from benchmarks.memory import PeakRSS  # noqa: E402


def make_data(n: int, d: int, k: int, dup_fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_dup = int(dup_fraction * n)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    label = rng.choice(k, n - n_dup, p=rng.dirichlet(np.full(k, 2.0)))
    x = centres[label] + 1.2 * rng.standard_normal((n - n_dup, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    copies = x[rng.integers(0, n - n_dup, n_dup)] + 0.003 * rng.standard_normal((n_dup, d)).astype(np.float32)
    x = np.concatenate([x, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    return x[rng.permutation(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--n_clusters", type=int, default=1000)
    parser.add_argument("--dup_fraction", type=float, default=0.05)
    parser.add_argument("--kmeans_iters", type=int, default=10)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.005, 0.05, 0.2])
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x = make_data(args.n, args.d, args.n_clusters, args.dup_fraction, args.seed)
    t = time.perf_counter()
    km = kmeans.kmeans(x, args.n_clusters, n_iters=args.kmeans_iters, key=args.seed, mode="cosine")
    t_cluster = time.perf_counter() - t
    sizes = np.bincount(km.assignment, minlength=args.n_clusters)

    def run_jax():
        return dedup.semdedup(x, n_clusters=args.n_clusters, eps_list=args.eps, assignment=km.assignment,
                              distance=km.distance, block_size=args.block_size)

    with PeakRSS() as jax_mem:
        t = time.perf_counter()
        res = run_jax()
        t_cold = time.perf_counter() - t
    t = time.perf_counter()
    res = run_jax()
    t_warm = time.perf_counter() - t

    tracemalloc.start()
    with PeakRSS() as ref_mem:
        t = time.perf_counter()
        kept_ref, m_ref = semdedup_reference(x, km.assignment, km.distance, args.eps)
        t_ref = time.perf_counter() - t
    _, ref_traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert np.array_equal(res.kept, kept_ref), "kept sets differ from the numpy reference"
    # The reference's strict upper triangle of zeros makes its M = max(0, M); the rule only compares M > 1 - eps > 0.
    finite = np.isfinite(m_ref)
    m_jax = np.maximum(res.max_similarity[finite], 0.0)
    print(json.dumps({
        "data": {"n": args.n, "d": args.d, "n_clusters": args.n_clusters,
                 "planted_duplicates": int(args.dup_fraction * args.n),
                 "cluster_size_max": int(sizes.max()), "cluster_size_median": float(np.median(sizes)),
                 "sum_sq_cluster_sizes_over_n": round(float((sizes.astype(np.float64) ** 2).sum() / args.n), 1)},
        "eps": args.eps,
        "kept": {str(e): int(c) for e, c in zip(args.eps, res.kept.sum(axis=0))},
        "identical_kept_sets": True,
        "max_abs_M_difference": float(np.abs(m_jax - m_ref[finite]).max()),
        "clustering_s": round(t_cluster, 2),
        "kmeans_iters": args.kmeans_iters,
        "jax_cold_s": round(t_cold, 2),
        "jax_warm_s": round(t_warm, 2),
        "numpy_reference_s": round(t_ref, 2),
        "speedup_warm": round(t_ref / t_warm, 2),
        "speedup_cold": round(t_ref / t_cold, 2),
        "jax_peak_rss_above_entry_mib": round(jax_mem.mib, 1),
        "numpy_peak_rss_above_entry_mib": round(ref_mem.mib, 1),
        "numpy_tracemalloc_peak_mib": round(ref_traced / 2**20, 1),
        "block_size": args.block_size,
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
