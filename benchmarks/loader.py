"""Benchmark: the Grain epoch pipeline against a plain single-process Python loop. Prints JSON.

Both read the same source records in the same order (the epoch's permutation of a full Selection)
and stack them into the same batches, so the only difference is Grain and its worker processes.
The default source is the embedded WV simulator at 256 px (OceanSAR-1's input size), whose
per-record rendering is the heavy host work that workers parallelise; `--folder` times an image
folder instead. Pipeline rates include worker start-up (about 1-3 s: each spawned worker imports
Grain); `steady_samples_per_s` leaves out the first batch. Like the training loop, a pipeline run takes
the epoch's known number of batches and closes the iterator afterwards, outside the timed span (the loop
closes it in the background while the next epoch starts): Grain's end-of-stream signal and the join of
its workers take most of a second that no step waits for. The machine may be shared, so every
configuration runs `--repeats` times, interleaved, and the best run is reported with the median.
`cpu_ms_per_sample` (this process plus its reaped workers) separates the loader's own cost from
contention: on a saturated machine no loader can beat the plain loop, but equal CPU per sample
means the workers scale with the idle cores they are given.

    python -m benchmarks.loader                                # SyntheticWV, 256 px, 0/1/2 workers
    python -m benchmarks.loader --num_samples 256 --image_size 64 --repeats 1
    python -m benchmarks.loader --folder ../shared/data/mstar10/train
    taskset -c 0,1 python -m benchmarks.loader                 # pin to 2 cores on a bigger host
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np

from oceansar.data.pipeline import epoch_dataset, epoch_order, steps_per_epoch
from oceansar.data.selection import Selection


def _make_source(args):
    if args.folder:
        from oceansar.data.folder import ImageFolderSource
        return ImageFolderSource(args.folder, image_size=args.image_size)
    from oceansar.data.synthetic import SyntheticWV
    return SyntheticWV(args.num_samples, image_size=args.image_size, seed=0)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _plain_loop(source, selection, args) -> dict:
    """What a user writes without a loader: read, stack, repeat, in one process."""
    cpu = _cpu_seconds()
    order = selection.indices[epoch_order(len(selection), seed=0, epoch=0)]
    steps = len(order) // args.batch_size
    start = time.perf_counter()
    for s in range(steps):
        records = [source[int(i)] for i in order[s * args.batch_size:(s + 1) * args.batch_size]]
        batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
        assert batch["image"].shape[0] == args.batch_size
    elapsed = time.perf_counter() - start
    return {"samples": steps * args.batch_size, "seconds": round(elapsed, 3),
            "samples_per_s": round(steps * args.batch_size / elapsed, 1),
            "cpu_ms_per_sample": round((_cpu_seconds() - cpu) * 1e3 / (steps * args.batch_size), 2)}


def _pipeline(source, selection, args, workers: int) -> dict:
    cpu = _cpu_seconds()
    start = time.perf_counter()
    ds = epoch_dataset(source, selection, seed=0, epoch=0, batch_size=args.batch_size,
                       worker_count=workers, worker_buffer_size=args.worker_buffer_size)
    it = iter(ds)
    samples, first = 0, None
    for _ in range(steps_per_epoch(len(selection), args.batch_size)):
        samples += next(it)["image"].shape[0]
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    it.close()  # Joins the workers, so their CPU time is counted below.
    steady = samples - args.batch_size
    return {"samples": samples, "seconds": round(end - start, 3),
            "samples_per_s": round(samples / (end - start), 1),
            "cpu_ms_per_sample": round((_cpu_seconds() - cpu) * 1e3 / samples, 2),
            "first_batch_s": round(first - start, 3),
            "steady_samples_per_s": round(steady / (end - first), 1) if steady else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=8192)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", default="0,1,2", help="worker counts to time")
    parser.add_argument("--worker_buffer_size", type=int, default=2)
    parser.add_argument("--folder", default=None, help="time an image folder instead")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    source = _make_source(args)
    n = min(args.num_samples, len(source))
    selection = Selection.full(n)
    for i in range(2):  # Warm caches (imports, FFT plans) outside the timed loops.
        source[i]
    result = {
        "benchmark": "loader",
        "source": repr(source),
        "image_size": args.image_size, "batch_size": args.batch_size, "num_samples": n,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "repeats": args.repeats,
    }
    runs: dict[str, list[dict]] = {}
    worker_counts = [int(w) for w in args.workers.split(",")]
    for _ in range(args.repeats):
        runs.setdefault("plain_loop", []).append(_plain_loop(source, selection, args))
        for workers in worker_counts:
            runs.setdefault(f"workers={workers}", []).append(
                _pipeline(source, selection, args, workers))
    for name, reps in runs.items():
        best = max(reps, key=lambda r: r["samples_per_s"])
        best["median_samples_per_s"] = round(float(np.median([r["samples_per_s"] for r in reps])), 1)
        result[name] = best
    plain = result["plain_loop"]["samples_per_s"]
    result["speedup_vs_plain"] = {f"workers={w}": round(
        result[f"workers={w}"]["samples_per_s"] / plain, 2) for w in worker_counts}
    result["steady_speedup_vs_plain"] = {f"workers={w}": round(
        result[f"workers={w}"]["steady_samples_per_s"] / plain, 2) for w in worker_counts
        if result[f"workers={w}"]["steady_samples_per_s"]}
    result["load_average_1m_after"] = (round(os.getloadavg()[0], 2)
                                       if hasattr(os, "getloadavg") else None)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
