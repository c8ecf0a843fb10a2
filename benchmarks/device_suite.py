r"""Benchmark suite for one accelerator session: every goal of the issue, in one call. Prints JSON.

Accelerator time is the scarcest evidence this project gets (one H100/H200 for about 15 minutes per
session, its start-up included), so a session that holds one runs this suite once, in one prepared
call, and pastes its JSON:

    PYTHONPATH=. python -m benchmarks.device_suite --out=$OUT/device_suite.json

Each case is one existing benchmark run as its own subprocess (`python -m benchmarks.<name> ...`)
with its own timeout; the suite keeps the last JSON object the case prints on stdout. A case that
fails or times out is recorded with its status (`ok`, `failed`, `timeout`), its wall seconds and the
tail of its stderr, its process group is stopped, and the suite goes on: one broken or slow case never
costs the others' results. The cases run in the order of the issue's goals; a case is
`skipped_budget` when less of `--budget_s` (default 480 s) remains than its own timeout, and one whose
Python modules are missing is `missing_dependency` (checked with `importlib.util.find_spec` before
anything runs). The JSON, rewritten to `--out` after every case so that an outer timeout keeps what
finished, holds the device (kind, platform, count, from a short probe subprocess: the suite itself
never starts a backend, which on a GPU would hold memory the cases need), the JAX/jaxlib/flax/Python
versions, the host (CPU count, no hostname), the mode, the total wall seconds, every case (name,
command, status, wall_s, result) and `goals`, the issue's goals read off the results.

Goals of the issue, on one H100/H200 (dense bf16 peak 989 TFLOP/s, `oceansar.flops.PEAK_TFLOPS`):

- DINO ViT-S/16 multi-crop training (2 x 224 global + 8 x 96 local crops) at >= 35 % MFU, about
  2,800 samples/s: `train_step_s16` (which also times the DINOv2 objective's step, iBOT + KoLeo, in
  its `objectives` and `ratios`); `train_step_s16_cudnn` times the DINO step with cuDNN's flash
  attention (`model.attention = "cudnn"`), and `goals.train_step_s16` judges the faster of the two,
  naming it; S/8 and B/8 at the same crops: `train_step_s8`, `train_step_b8`.
- The full loop >= 95 % of the step alone with dynamic pruning on. No benchmark times the whole
  loop; `goals.loop_over_step` multiplies the parts that are measured: the re-clustering's share
  (below), the loss-table update's share of the step (`pruning_1m`: the step compiled with and
  without it) and the host pipeline's rate over the step's (`loader_256`: Grain serving 256 px
  simulator images with 15 workers; the simulator renders on the host, a WV archive reads files).
- k-means 1M x 128 -> 10,000 clusters, 10 Lloyd iterations, in <= 1 s: `kmeans_1m` (oceansar's
  float32 and bfloat16-screened kernels only: `--peers=`, since neither scikit-learn nor faiss is
  installed on the device machine).
- One dynamic re-clustering <= 5 % of the training between two re-clusterings, at a 1M pool.
  `benchmarks/pruning_overhead.py` prices a re-clustering end to end as the loop computes it, but
  at a 1M pool the teacher embeds M = 2 rho N = 500k samples that the simulator renders on the host
  (about 8 ms per 256 px image per core: an hour), so the closest measurements are two: `pruning_1m`
  runs it on the OceanSAR-1 recipe at N = 1M with M = 2048 (k = M/20, M/200, M/2000), which times
  the real code path (plan, embed, cluster, sample, compilations) and the loss-table update at the
  recipe's table size, but whose fraction is that of a pruned epoch of M, not of rho N; and
  `recluster_1m` runs the recipe's clustering at the 1M pool's size (`benchmarks/hierarchical.py`:
  500k x 384, k = 25,000 / 2,500 / 250, 10 resamples, 20 iterations, k-means++ as the policy calls
  it; Zipf blobs rather than teacher CLS). `goals.recluster_1m_fraction` adds the teacher's
  embedding of 500k images at the S/16 step's achieved TFLOP/s (forward FLOPs of one 224 view) and
  divides by T_s = 4 pruned epochs of rho N = 250k samples at the S/16 step's samples/s.
- Also timed: SemDeDup on 1M x 256 (`dedup_1m`) and a 4-level hierarchical k-means on 1M x 128
  (`hierarchical_1m`, bfloat16 screening).

Batch sizes per device (bf16 compute, f32 params): S/16 256, S/8 32, B/8 16, each with smaller
fallbacks tried when a step runs out of memory (`--fallback_batch_sizes`, recorded as
`batch_fallback`). `benchmarks/step_memory.py` reads the sizes off the compiled step on a CPU: the
residuals the backward keeps (a jaxpr count before XLA's fusion, an upper bound; the attention
probabilities are among them with `model.attention = "xla"`) are 250 MiB, 1.38 GiB and 2.75 GiB per
sample without remat, so 62, 44 and 44 GiB at these batches; XLA:CPU's temporaries (bf16 widened to
float32 there) are 0.35, 1.94 and 3.88 GiB per sample, 90, 62 and 62 GiB. The suite raises the cases'
XLA memory fraction to 0.9 (each case has the device to itself): 127 GB on an H200 holds every case
at either count, 72 GB on an H100 holds them by the residuals, S/16 at 256 with little room, hence
the fallbacks. S/16 at 256 needs 0.09 s per step for the goal's 2,800 samples/s. A case that runs
out of memory at its last fallback is recorded as failed and the others still run.

The device machine has Python 3.12, JAX 0.11, flax, optax, orbax and numpy (`DEVICE_HAS`), no
network, and not the project's other dependencies. Each case's `needs` lists the modules its
benchmark imports at module level, through every project module and config it loads
(`tests/test_device_suite.py` reads the imports and checks the lists): `train_step_*` and
`pruning_1m` need absl, ml_collections, grain, tqdm, Pillow, tifffile and tokenizers (`oceansar.data`
and `oceansar.experiment`); `loader_256` needs absl and grain; `dedup_1m` needs pytest (its numpy
reference is `tests/test_dedup.py`'s); `kmeans_1m`, `recluster_1m` and `hierarchical_1m` need jax and
numpy only. The JSON's `dependencies` says which are missing there. The distributions to carry are
`WHEELS`; several are compiled, so they are fetched for the device's Python and platform on a
networked machine, and installed from the carried folder in the one device call, before the suite
(pip leaves an installed numpy alone). `--list` prints both commands; for an x86-64 host:

    pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 -d .whl grain ml_collections absl-py tqdm tifffile pillow \
        pytest tokenizers
    # the device call, carry=[".whl"] (`.whl/` is git-ignored; 40 MB with the dependencies):
    pip install -q --no-index --find-links .whl grain ml_collections absl-py tqdm tifffile pillow \
        pytest tokenizers; PYTHONPATH=. python -m benchmarks.device_suite --out=$OUT/device_suite.json

(`aarch64` platforms for a Grace host, whose `host.machine` the JSON reports.) Rehearsed on the CPU in a
Python 3.12 environment holding only `DEVICE_HAS` and these wheels, installed with `--no-index`: every
case ran.

Cases run one at a time, in this order: train_step_s16, kmeans_1m, recluster_1m, pruning_1m (the
goals), then train_step_s16_cudnn, train_step_s8, train_step_b8, hierarchical_1m, dedup_1m,
loader_256, train_step_r50, step_memory. The default budget
covers the goals' cases; the rest are `skipped_budget` unless earlier ones finish early, and a later
session runs them with `--cases=train_step_s8,train_step_b8,...`. Give the device call a timeout of
at least `--budget_s` + 60 s.

`--mode=reduced` (the default when JAX's backend is the CPU) runs the same cases at smoke sizes (the
`configs/oceansar1.py:smoke` step, k-means on 4,000 points, ...) in under a minute on a 2-core CPU,
two at a time (`--jobs`), with a shared compilation cache and XLA's optimisations off (the cuDNN case,
which needs a CUDA GPU, is `skipped`): it checks the
plumbing, its timings are not measurements and its goals are not judged.

    python -m benchmarks.device_suite --list                         # cases and full-mode commands
    python -m benchmarks.device_suite --mode=reduced                 # CPU smoke run, under a minute
    python -m benchmarks.device_suite --cases=kmeans_1m,recluster_1m --budget_s=300
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGET_S = 480.0
STDERR_TAIL_CHARS = 3000

GOAL_MFU = 0.35                 # DINO ViT-S/16 multi-crop step, of the dense bf16 peak
GOAL_SAMPLES_PER_S = 2800       # the same step, one H100/H200
GOAL_LOOP_OVER_STEP = 0.95      # full loop / step alone, dynamic pruning on
GOAL_KMEANS_S = 1.0             # 1M x 128 -> 10,000, 10 iterations
GOAL_RECLUSTER_FRACTION = 0.05  # one re-clustering / training between two, 1M pool
# The OceanSAR-1 recipe at a 1M pool (configs/oceansar1.py): M = 2 rho N embedded, rho N kept, every T_s epochs.
POOL_1M = {"N": 1_000_000, "M": 500_000, "n_keep": 250_000, "T_s": 4}

# Modules each benchmark imports, directly or through the project modules it loads.
_CURATION = ("jax", "numpy")
_STEP = ("jax", "ml_dtypes", "numpy", "flax", "optax", "orbax.checkpoint", "absl", "ml_collections", "grain",
         "tqdm", "PIL", "tifffile", "tokenizers")
# What the device machine has installed (ml_dtypes is jax's own dependency), and the distributions a device
# call carries as wheels for the rest of the cases' needs.
DEVICE_HAS = ("jax", "ml_dtypes", "numpy", "flax", "optax", "orbax.checkpoint")
WHEELS = ("grain", "ml_collections", "absl-py", "tqdm", "tifffile", "pillow", "pytest", "tokenizers")
_SMOKE = "--config=configs/oceansar1.py:smoke"
_SMOKE_STEP = (_SMOKE, "--steps=2", "--repeats=1", "--warmup=1", "--ceiling_size=256")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark run: its module in `benchmarks/`, its arguments and timeout in each mode.

    Attributes:
      name: the case's name in `--cases` and in the JSON.
      module: the benchmark module, run as `python -m benchmarks.<module>`.
      what: one line on what the case measures.
      full: arguments on the accelerator.
      reduced: arguments of the CPU smoke run; None: the case needs a CUDA GPU and has none.
      timeout_s: (full, reduced) seconds before the case is stopped.
      needs: top-level modules the benchmark imports.
    """

    name: str
    module: str
    what: str
    full: tuple[str, ...]
    reduced: tuple[str, ...] | None
    timeout_s: tuple[float, float]
    needs: tuple[str, ...]


CASES: tuple[Case, ...] = (
    Case("train_step_s16", "train_step", "DINO and DINOv2 steps, ViT-S/16, 2x224 + 8x96 crops, bf16, batch 256",
         ("--config=configs/oceansar1.py:variant=S/16", "--dtype=bfloat16", "--batch_size=256", "--steps=10",
          "--repeats=3", "--objectives=dino,dinov2", "--fallback_batch_sizes=128,64"),
         _SMOKE_STEP + ("--objectives=dino,dinov2",), (240, 120),
         _STEP),
    Case("kmeans_1m", "kmeans", "k-means 1M x 128 -> 10,000, 10 iterations, float32 and bf16 screening",
         ("--n=1000000", "--d=128", "--k=10000", "--iters=10", "--repeats=3", "--peers=", "--skip_large"),
         ("--n=4000", "--d=16", "--k=32", "--iters=2", "--repeats=1", "--peers=", "--skip_large"), (90, 60), _CURATION),
    Case("recluster_1m", "hierarchical", "the 1M-pool re-clustering's k-means: 500k x 384, k=25000/2500/250",
         ("--n=500000", "--d=384", "--k=25000,2500,250", "--n_resamples=10", "--n_iters=20", "--init=kmeans++",
          "--target_fraction=0.5"),
         ("--n=3000", "--d=16", "--k=150,15,2", "--n_resamples=2", "--n_iters=2", "--init=kmeans++",
          "--target_fraction=0.5"), (180, 60), _CURATION),
    Case("pruning_1m", "pruning_overhead", "re-clustering (M=2048) and loss-table update, OceanSAR-1 S/16, N=1M",
         ("--config=configs/oceansar1.py:variant=S/16", "--config.batch_size=256", "--subset_size=2048",
          "--config.pruning.n_clusters=(102,10,2)", "--steps=10", "--repeats=3", "--update_calls=20"),
         (_SMOKE, "--config.batch_size=16", "--subset_size=32", "--config.pruning.n_clusters=(4,2)", "--steps=1",
          "--repeats=1", "--warmup=1", "--update_calls=2"), (210, 120), _STEP),
    # The S/16 step again with cuDNN's flash attention (`model.attention`): a kernel JAX never picks by itself.
    Case("train_step_s16_cudnn", "train_step", "DINO step, ViT-S/16, cuDNN flash attention, bf16, batch 256",
         ("--config=configs/oceansar1.py:variant=S/16", "--dtype=bfloat16", "--config.model.attention=cudnn",
          "--batch_size=256", "--steps=10", "--repeats=3", "--objectives=dino", "--fallback_batch_sizes=128,64"),
         None, (150, 0), _STEP),
    # Batches chosen to fit an H200 at the CPU's memory analysis and an H100 at a count of the activations
    # (see the module docstring).
    Case("train_step_s8", "train_step", "DINO step, ViT-S/8, 2x224 + 8x96 crops, bf16, batch 32",
         ("--config=configs/oceansar1.py:variant=S/8", "--dtype=bfloat16", "--batch_size=32", "--steps=5",
          "--repeats=2", "--objectives=dino", "--fallback_batch_sizes=16,8"), _SMOKE_STEP + ("--objectives=dino",), (150, 90), _STEP),
    Case("train_step_b8", "train_step", "DINO step, ViT-B/8, 2x224 + 8x96 crops, bf16, batch 16",
         ("--config=configs/oceansar1.py:variant=B/8", "--dtype=bfloat16", "--batch_size=16", "--steps=5",
          "--repeats=2", "--objectives=dino", "--fallback_batch_sizes=8"), _SMOKE_STEP + ("--objectives=dino",), (150, 90), _STEP),
    Case("hierarchical_1m", "hierarchical", "4-level hierarchical k-means, 1M x 128, k=10000/2000/500/100, bf16",
         ("--compute_dtype=bfloat16",),
         ("--n=3000", "--d=16", "--k=60,20,5,2", "--n_resamples=1", "--n_iters=2", "--compute_dtype=bfloat16"),
         (150, 60), _CURATION),
    Case("dedup_1m", "dedup", "SemDeDup on 1M x 256, 1000 clusters, against the numpy reference",
         ("--n=1000000", "--d=256", "--n_clusters=1000"),
         ("--n=3000", "--d=16", "--n_clusters=12", "--kmeans_iters=2"), (180, 60), _CURATION + ("pytest",)),
    Case("loader_256", "loader", "Grain pipeline, 256 px simulator images, 15 workers, batch 256",
         ("--num_samples=2048", "--image_size=256", "--batch_size=256", "--workers=15", "--repeats=1"),
         ("--num_samples=64", "--image_size=32", "--batch_size=16", "--workers=0", "--repeats=1"), (120, 60),
         ("numpy", "absl", "grain")),
    # OceanSAR-1's convolutional baseline, last: it runs when the budget has room after the issue's goals.
    Case("train_step_r50", "train_step", "DINO step, ResNet-50, 2x224 + 8x96 crops, bf16, batch 128",
         ("--config=configs/oceansar1.py:variant=R50", "--dtype=bfloat16", "--batch_size=128", "--steps=5",
          "--repeats=2", "--objectives=dino", "--fallback_batch_sizes=64,32"),
         (_SMOKE + ",variant=R50",) + _SMOKE_STEP[1:] + ("--objectives=dino",), (150, 90), _STEP),
    # Compiles only: the accelerator's own memory analysis of the step, where remat's saving shows (not on a CPU).
    Case("step_memory", "step_memory", "compiled step memory, S/16 and B/8, remat none/full, 64 per device",
         ("--variants=S/16,B/8", "--batch_per_device=64", "--remat=none,full", "--fsdp=1"),
         ("--variants=mu/8", "--batch_per_device=2", "--remat=none,full", "--fsdp=1"), (240, 90), _STEP),
)


@dataclasses.dataclass(frozen=True)
class Planned:
    """A case as this run will execute it.

    Attributes:
      name: the case's name.
      command: the argv to run.
      timeout_s: seconds before the case's process group is stopped.
      missing: modules it needs that this interpreter cannot find; the case is not run when any.
      what: one line on what it measures.
      skip: why the case does not run in this mode ("" when it runs).
    """

    name: str
    command: list[str]
    timeout_s: float
    missing: tuple[str, ...] = ()
    what: str = ""
    skip: str = ""


# Set by SIGTERM/SIGINT (an outer timeout): running cases are stopped within a second, none starts after.
_STOP = threading.Event()
_SIGNAL: list[int] = []


def find_missing(modules: Sequence[str]) -> tuple[str, ...]:
    """The modules of `modules` that `importlib.util.find_spec` cannot find (a dotted name imports its parent)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # the parent package of a dotted name is absent or broken
            found = False
        if not found:
            missing.append(name)
    return tuple(missing)


def plan(mode: str, names: Sequence[str] | None = None, python: str = sys.executable) -> list[Planned]:
    """The cases of `mode` ("full" or "reduced"), all or those named, in the suite's order.

    Raises:
      ValueError: an unknown mode or case name.
    """
    if mode not in ("full", "reduced"):
        raise ValueError(f"mode must be full or reduced, got {mode!r}")
    known = [c.name for c in CASES]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; known: {known}")
    index = 0 if mode == "full" else 1
    args = {c.name: c.full if mode == "full" else c.reduced for c in CASES}
    return [Planned(c.name, [python, "-m", f"benchmarks.{c.module}", *(args[c.name] or ())], c.timeout_s[index],
                    find_missing(c.needs), c.what,
                    "" if args[c.name] is not None else "needs a CUDA GPU: no reduced run")
            for c in CASES if names is None or c.name in names]


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last complete JSON object in `text` that starts a line, or None.

    Benchmarks print their report last but may print partial ones before it (kmeans.py prints each case
    as it finishes); only objects starting a line are tried, so a truncated report never yields one of
    its nested objects.
    """
    decoder = json.JSONDecoder()
    found, pos = None, 0
    while (start := text.find("{", pos)) != -1:
        pos = start + 1
        if start and text[start - 1] != "\n":
            continue
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict):
            found, pos = obj, end
    return found


def _stop_group(proc: subprocess.Popen) -> None:
    """Stops the case's whole process group (Grain workers included): TERM, then KILL after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; workers it left in the group must not hold the device for the next case.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def _tail(data: bytes, chars: int = STDERR_TAIL_CHARS) -> str:
    """The last `chars` characters of a captured stream: the error is at the end, the noise before it."""
    return data.decode("utf-8", errors="replace")[-chars:]


def run_case(case: Planned, *, env: dict[str, str] | None = None, cwd: str | os.PathLike = ROOT) -> dict[str, Any]:
    """Runs one planned case in its own process group and records it.

    Returns:
      {name, command, status, wall_s, timeout_s, returncode, result, ...}: status is "ok" (exit 0 and a JSON
      object on stdout), "failed" (non-zero exit, no JSON, or the command cannot start), "timeout" or
      "interrupted" (the suite was signalled); result is the last JSON object printed, kept even when the
      case failed after printing it; a case that is not ok also gets `stderr_tail` (and `stdout_tail` when
      it printed no JSON).
    """
    record: dict[str, Any] = {"name": case.name, "what": case.what, "command": shlex.join(case.command),
                              "timeout_s": case.timeout_s}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        try:  # files, not pipes: a case printing megabytes never blocks on a full pipe
            proc = subprocess.Popen(case.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                    cwd=cwd, start_new_session=True)
        except OSError as e:
            return record | {"status": "failed", "wall_s": 0.0, "returncode": None, "result": None,
                             "stderr_tail": f"could not start: {e}"}
        status = None
        while status is None:  # short waits, so that a signal to the suite stops the case within a second
            left = case.timeout_s - (time.monotonic() - start)
            try:
                returncode = proc.wait(timeout=max(0.0, min(1.0, left)))
                status = "ok" if returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                if _STOP.is_set() or left <= 0:
                    _stop_group(proc)
                    returncode, status = proc.returncode, "interrupted" if _STOP.is_set() else "timeout"
        if _STOP.is_set() and status == "failed":
            status = "interrupted"  # it died of the signal the suite got: not a failure of the case
        wall_s = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = last_json_object(stdout.decode("utf-8", errors="replace"))
    record |= {"status": status, "wall_s": round(wall_s, 2), "returncode": returncode, "result": result}
    if status == "ok" and result is None:
        record["status"] = "failed"
        record["error"] = "exited 0 without a JSON object on stdout"
    if record["status"] != "ok":
        record["stderr_tail"] = _tail(stderr)
        if result is None:
            record["stdout_tail"] = _tail(stdout, 1000)
    return record


def run_cases(cases: Sequence[Planned], *, budget_s: float, started: float | None = None,
              env: dict[str, str] | None = None, cwd: str | os.PathLike = ROOT, jobs: int = 1,
              on_record: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Runs `cases` in order within `budget_s` seconds of `started` (a `time.monotonic()`, default now).

    A case with a `skip` reason is recorded as "skipped", one with missing modules as
    "missing_dependency", one whose timeout exceeds the time
    left when its turn comes as "skipped_budget", and every case after a signal to the suite as
    "skipped_interrupt", all without running; every other case runs (`run_case`) whatever the previous
    ones did. `jobs` > 1 runs that many cases at once: for the CPU smoke run only, where cases share
    host cores rather than a device. `on_record` gets the records so far, in the cases' order, after
    each case.

    Returns:
      One record per case, in the cases' order.
    """
    started = time.monotonic() if started is None else started
    records: list[dict[str, Any] | None] = [None] * len(cases)
    lock = threading.Lock()

    def one(i: int) -> None:
        case = cases[i]
        left = budget_s - (time.monotonic() - started)
        base = {"name": case.name, "what": case.what, "command": shlex.join(case.command),
                "timeout_s": case.timeout_s, "wall_s": 0.0, "result": None}
        if _STOP.is_set():
            record = base | {"status": "skipped_interrupt"}
        elif case.skip:
            record = base | {"status": "skipped", "why": case.skip}
        elif case.missing:
            record = base | {"status": "missing_dependency", "missing": list(case.missing)}
        elif left < case.timeout_s:
            record = base | {"status": "skipped_budget", "budget_left_s": round(left, 1)}
        else:
            _log(f"{case.name}: running (timeout {case.timeout_s:.0f} s, {left:.0f} s of budget left)")
            record = run_case(case, env=env, cwd=cwd)
        _log(f"{case.name}: {record['status']} in {record['wall_s']:.1f} s")
        with lock:
            records[i] = record
            if on_record is not None:
                on_record([r for r in records if r is not None])

    if jobs <= 1:
        for i in range(len(cases)):
            one(i)
    else:
        with futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for done in [pool.submit(one, i) for i in range(len(cases))]:
                done.result()
    return records  # type: ignore[return-value]


def _log(message: str) -> None:
    """Progress on stderr, which the device tool returns even when the JSON on stdout is cut short."""
    print(f"[device_suite] {message}", file=sys.stderr, flush=True)


_PROBE = r"""
import json
import jax
devices = jax.devices()
info = {"backend": jax.default_backend(), "platform": devices[0].platform, "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(), "jax": jax.__version__}
try:
    info["allocator_bytes_limit"] = (devices[0].memory_stats() or {}).get("bytes_limit")
except Exception:  # CPU devices have no memory statistics on some versions
    info["allocator_bytes_limit"] = None
print(json.dumps(info))
"""


def probe_device(env: dict[str, str] | None = None, timeout_s: float = 120) -> dict[str, Any]:
    """Device kind, platform and count from a short subprocess, so that this process never holds the device."""
    record = run_case(Planned("probe", [sys.executable, "-c", _PROBE], timeout_s), env=env)
    if record["status"] == "ok":
        return record["result"] | {"probe_s": record["wall_s"]}
    return {"error": record["status"], "stderr_tail": record.get("stderr_tail", "")[-1500:]}


def _version(dist: str) -> str | None:
    """The installed version of distribution `dist`, read from its metadata (nothing is imported)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_info() -> dict[str, Any]:
    """The host without its name: CPUs, memory, architecture, load, Python and package versions."""
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)  # first line: MemTotal in kB
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "machine": platform.machine(),
        "system": platform.system(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
    }


def versions() -> dict[str, str | None]:
    """Installed versions of JAX and the project's dependencies (None: not installed)."""
    dists = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "flax", "optax", "orbax-checkpoint", "numpy")
    return {"python": platform.python_version()} | {d: _version(d) for d in dists + WHEELS}


def _dig(obj: Any, *keys: str | int) -> Any:
    """obj[k0][k1]... or None where a level is missing: a failed case leaves holes anywhere in its result."""
    for key in keys:
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return None
    return obj


def _round(value: float | None, digits: int = 4) -> float | None:
    """`round`, passing None through."""
    return None if value is None else round(value, digits)


def goals(records: Sequence[dict[str, Any]], mode: str = "full") -> dict[str, Any]:
    """The issue's goals read off the case results; a value is None where its case did not produce it.

    In reduced mode the values are computed (the smoke run checks this code too) but no goal is judged.
    """
    res = {r["name"]: r.get("result") for r in records}
    # The S/16 step with the faster attention kernel; the estimates below use the step the runs would take.
    steps = {name: res.get(case) for name, case in (("xla", "train_step_s16"), ("cudnn", "train_step_s16_cudnn"))
             if _dig(res.get(case), "timing", "samples_per_s")}
    attention = max(steps, key=lambda a: _dig(steps[a], "timing", "samples_per_s")) if steps else None
    step = steps.get(attention)
    sps, mfu = _dig(step, "timing", "samples_per_s"), _dig(step, "throughput", "mfu")
    out: dict[str, Any] = {"train_step_s16": {
        "mfu": mfu, "goal_mfu": GOAL_MFU, "met": None if mfu is None else mfu >= GOAL_MFU,
        "samples_per_s": sps, "goal_samples_per_s": GOAL_SAMPLES_PER_S, "attention": attention,
        "samples_per_s_by_attention": {a: _dig(r, "timing", "samples_per_s") for a, r in steps.items()},
        "peak_tflops_per_device": _dig(step, "throughput", "peak_tflops_per_device")}}

    methods = _dig(res.get("kmeans_1m"), "cases", 0, "methods") or {}
    timed = {m: v.get("best_seconds") for m, v in methods.items() if m.startswith("oceansar") and v.get("best_seconds")}
    best = min(timed, key=timed.get) if timed else None
    out["kmeans_1m"] = {"best_seconds": timed.get(best), "method": best, "goal_s": GOAL_KMEANS_S,
                        "met": None if best is None else timed[best] <= GOAL_KMEANS_S, "all": timed or None}

    # A 1M-pool re-clustering: the recipe's clustering as timed by recluster_1m, plus the teacher's
    # forward of one 224 view per embedded sample at the rate the S/16 step achieves (not measured:
    # the simulator would time its host renderer), over T_s pruned epochs of rho N at the step's rate.
    rc = res.get("recluster_1m")
    cluster_s = _dig(rc, "seconds_total_clustering")
    if cluster_s is not None:
        cluster_s += _dig(rc, "balanced_sample", "seconds") or 0.0
    view_flops, tflops = _dig(step, "flops", "analytic_per_sample", "forward_global_crop"), _dig(
        step, "throughput", "achieved_tflops")
    embed_s = view_flops * POOL_1M["M"] / (tflops * 1e12) if view_flops and tflops else None
    between_s = POOL_1M["T_s"] * POOL_1M["n_keep"] / sps if sps else None
    fraction = (cluster_s + embed_s) / between_s if None not in (cluster_s, embed_s, between_s) else None
    out["recluster_1m_fraction"] = {
        "value": _round(fraction), "goal": GOAL_RECLUSTER_FRACTION,
        "met": None if fraction is None else fraction <= GOAL_RECLUSTER_FRACTION,
        "clustering_s": _round(cluster_s, 2), "embed_estimate_s": _round(embed_s, 2),
        "train_between_s": _round(between_s, 1), "pool": POOL_1M,
        "basis": "(recluster_1m clustering + balanced sampling s + M x forward FLOPs of one 224 view / the S/16 "
                 "step's achieved FLOP/s) / (T_s x n_keep / the S/16 step's samples/s)",
        "pruning_1m_measured": _dig(res.get("pruning_1m"), "goals", "resample")}

    table = _dig(res.get("pruning_1m"), "goals", "table", "value_differential_paired_median")
    loader = res.get("loader_256") or {}
    # Steady rates leave out the workers' start-up, which a run pays once, not every epoch.
    loader_sps = max((v.get("steady_samples_per_s") or v.get("samples_per_s") or 0 for k, v in loader.items()
                      if k.startswith("workers=") and isinstance(v, dict)), default=None) or None
    feed = min(1.0, loader_sps / sps) if loader_sps and sps else None
    factors = {"recluster": None if fraction is None else 1 / (1 + fraction),
               "table_update": None if table is None else 1 - max(table, 0.0), "host_pipeline": feed}
    loop = None
    if None not in factors.values():
        loop = factors["recluster"] * factors["table_update"] * factors["host_pipeline"]
    out["loop_over_step"] = {
        "value": _round(loop), "goal": GOAL_LOOP_OVER_STEP,
        "met": None if loop is None else loop >= GOAL_LOOP_OVER_STEP,
        "factors": {k: _round(v) for k, v in factors.items()}, "loader_samples_per_s": loader_sps,
        "basis": "an estimate from parts, no benchmark times the whole loop: 1 / (1 + recluster fraction) x "
                 "(1 - the table update's share of the step, pruning_1m) x min(1, loader_256 steady samples/s / "
                 "train_step_s16 samples/s); the step alone is the step without the table update"}
    if mode != "full":
        for goal in out.values():
            goal["met"] = None
        out["note"] = f"{mode} mode: smoke sizes, no goal is judged"
    return out


def case_env(mode: str, cache_dir: str | None) -> dict[str, str]:
    """The cases' environment: this one, the checkout on the path, the device's memory for the full run and
    compile savers for the smoke run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if mode == "full":
        # Each case has the device to itself (the suite never starts a backend), so it may use more than
        # XLA's default 75 %: the S/8 and B/8 batches are sized for it.
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    if mode == "reduced":
        # Compilation is most of a smoke case's seconds: the three train-step cases share one program,
        # and XLA's optimisation passes cost tiny programs more than they save.
        if cache_dir:
            env.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)
            env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    return env


def _env_report(env: dict[str, str]) -> dict[str, str]:
    """The variables of `env` that change what JAX and XLA do, for the JSON."""
    prefixes = ("JAX_", "XLA_", "CUDA_VISIBLE", "TF_CPP", "PYTHONPATH", "NVIDIA_VISIBLE")
    return {k: v for k, v in sorted(env.items()) if k.startswith(prefixes)}


def _write(path: str | None, report: dict[str, Any]) -> None:
    """Writes the report atomically, so that a kill mid-write leaves the previous version."""
    if not path:
        return
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, target)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; `names` is the list of `--cases`, or None for all of them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("auto", "full", "reduced"), default="auto",
                        help="full on an accelerator, reduced (smoke sizes) on a CPU; auto picks by JAX's backend")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all, in order)")
    parser.add_argument("--budget_s", type=float, default=BUDGET_S,
                        help="total seconds; a case whose timeout exceeds what is left is skipped")
    parser.add_argument("--out", default=None, help="also write the JSON here (rewritten after every case)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="cases run at once in reduced mode (default: 2 where 2 CPUs are usable); full mode "
                             "runs one at a time, since cases would share the device")
    parser.add_argument("--list", action="store_true",
                        help="print the cases and their commands (full mode unless --mode=reduced) and exit")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.cases.split(",") if n.strip()] or None
    unknown = sorted(set(args.names or ()) - {c.name for c in CASES})
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {[c.name for c in CASES]}")
    return args


def wheel_commands(folder: str = ".whl") -> dict[str, str]:
    """The commands that fetch `WHEELS` for an x86-64 Python 3.12 host (on a networked machine) and install
    them from `folder` on the device machine, then run the suite."""
    platforms = ("--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64")
    return {"download": shlex.join(["pip", "download", "--only-binary=:all:", "--python-version", "3.12",
                                    *platforms, "-d", folder, *WHEELS]),
            "device": shlex.join(["pip", "install", "-q", "--no-index", "--find-links", folder, *WHEELS])
            + "; PYTHONPATH=. python -m benchmarks.device_suite --out=$OUT/device_suite.json"}


def _list(mode: str, names: Sequence[str] | None) -> dict[str, Any]:
    """What `--list` prints: each case's name, what it measures, timeout, modules and command, and the
    commands that carry the wheels the device machine lacks."""
    needs = {c.name: ",".join(c.needs) for c in CASES}
    return {"mode": mode, "cases": [{"name": p.name, "what": p.what, "timeout_s": p.timeout_s,
                                     "needs": needs[p.name], "command": shlex.join(["python", *p.command[1:]])}
                                    for p in plan(mode, names)],
            "wheels": wheel_commands()}


def _interrupt(signum, frame) -> None:
    """Signal handler: asks the running cases to stop (`run_case` polls `_STOP`); no exception, so no
    record is lost half-written."""
    del frame
    _SIGNAL.append(signum)
    _STOP.set()


def _auto_mode(device: dict[str, Any]) -> tuple[str, str]:
    """(mode, why) for `--mode=auto`: full unless JAX's backend is the CPU."""
    if "backend" in device:
        return ("reduced" if device["backend"] == "cpu" else "full"), f"JAX backend {device['backend']}"
    # The probe failed: an accelerator's device files still say which sizes the cases were meant for.
    accelerator = any(pathlib.Path(p).exists() for p in ("/dev/nvidia0", "/dev/accel0"))
    return ("full" if accelerator else "reduced"), "device probe failed; accelerator device files " + (
        "present" if accelerator else "absent")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the suite; prints its JSON. Returns 0 once every case has a record, 1 when interrupted."""
    args = _parse_args(argv)
    if args.list:
        print(json.dumps(_list("reduced" if args.mode == "reduced" else "full", args.names), indent=1))
        return 0
    started = time.monotonic()
    _STOP.clear()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    report: dict[str, Any] = {"suite": "device_suite", "complete": False, "budget_s": args.budget_s,
                              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    records: list[dict[str, Any]] = []

    def save(so_far: list[dict[str, Any]]) -> None:
        records[:] = so_far
        _write(args.out, report | {"total_wall_s": round(time.monotonic() - started, 1), "cases": so_far})

    with tempfile.TemporaryDirectory(prefix="device_suite_cache_") as cache_dir:
        report["device"] = probe_device()
        mode, why = (args.mode, "--mode") if args.mode != "auto" else _auto_mode(report["device"])
        jobs = 1 if mode == "full" else (args.jobs or min(2, host_info()["cpus_usable"] or 1))
        env = case_env(mode, cache_dir)
        planned = plan(mode, args.names)
        needed = sorted({m for c in CASES if c.name in {p.name for p in planned} for m in c.needs})
        missing = set(find_missing(needed))
        report |= {"mode": mode, "mode_from": why, "jobs": jobs, "versions": versions(), "host": host_info(),
                   "dependencies": {m: m not in missing for m in needed}, "case_env": _env_report(env)}
        if missing:
            _log(f"missing modules: {sorted(missing)}; cases needing them are recorded as missing_dependency")
        save([])
        run_cases(planned, budget_s=args.budget_s, started=started, env=env, jobs=jobs, on_record=save)
    report["complete"] = not _STOP.is_set()
    if _SIGNAL:
        report["interrupted_by_signal"] = _SIGNAL[0]
        _log(f"interrupted by signal {_SIGNAL[0]}: reporting what finished")
    report |= {"total_wall_s": round(time.monotonic() - started, 1),
               "goals": goals(records, report.get("mode", "full")), "cases": records}
    _write(args.out, report)
    print(json.dumps(report, indent=1))
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
