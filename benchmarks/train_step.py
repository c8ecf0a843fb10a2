r"""Benchmark: throughput, model FLOPs and MFU of the real train step, DINO's and DINOv2's objective. Prints JSON.

The step is built exactly as `oceansar.train.loop` builds it, through the `Experiment`
(`run_spec`, `Experiment.build`, `init_state`, `compile_train_step`, `sharding.shard_batch`), and fed
one synthetic uint8 batch that stays on the device, so the timing covers the whole compiled step
(multi-crop, student and teacher, loss, AdamW, EMA, loss statistics) and nothing of the host
pipeline. Tracing + lowering and XLA compilation are timed apart from the steps (the split of
`compile_train_step`'s seconds comes from JAX's backend-compile monitoring event); steps are
dispatched back to back as in the loop and timed with `jax.block_until_ready` over `--steps` steps,
`--repeats` times (best and median reported: the machine may be shared).

FLOPs are model FLOPs from `oceansar.flops` (matmuls only, 2 per multiply-accumulate; the formula
is in the JSON), cross-checked against an exact count of the traced program's matmuls (the
Experiment's pure step traced on its abstract state and batch: forward and backward as traced,
multi-crop resampling included) and against XLA's own `cost_analysis()` of the compiled step
(`oceansar.experiment.program_report`: every op, elementwise included). MFU divides the achieved
rate by the device's dense bf16 peak when `oceansar.flops.PEAK_TFLOPS` knows the device; on a CPU it
is null and the step is compared with a large matmul timed in the same run instead.

`--objectives=dino,dinov2` (the default) times the same variant and crops under both objectives in
one run: DINO's (the recipe with the iBOT and KoLeo terms off) and DINOv2's (`configs.common.
dinov2_objective`: iBOT masked patches through the shared head, KoLeo). The top-level report is the
first objective's; `objectives` holds each one's step time, samples/s and analytic FLOPs (or the error
of one that failed, e.g. out of memory at a batch the first one fits, without losing the first's
numbers), and `ratios` the later ones over the first (time per sample and analytic FLOPs per sample).

`--fallback_batch_sizes=128,64` retries a step that runs out of device memory at the next smaller batch
(`batch_fallback` in the report records the batches that did not fit): a device session cannot afford
to lose its headline case to a batch size guessed from a CPU's memory analysis. Later objectives start
from the batch the first one fitted.

    python -m benchmarks.train_step                                   # configs/default.py (mu/8)
    python -m benchmarks.train_step --variant=S/16 --global_size=224 --local_size=96 --n_local=8 \
        --batch_size=8 --steps=3 --repeats=1
    python -m benchmarks.train_step --config=configs/oceansar1.py:variant=S/8 --dtype=bfloat16 \
        --batch_size=64                                               # one GPU
    JAX_NUM_CPU_DEVICES=8 python -m benchmarks.train_step             # the 8-device mesh, emulated on a CPU
"""
from __future__ import annotations

import copy
import gc
import json
import pathlib
import statistics
import sys
import time
from typing import Any

# Run as a script (`python benchmarks/train_step.py`), the recipes' `from configs import ...` (and `oceansar` when it
# is not installed) need the repository root on the path, as `python -m benchmarks.train_step` from the root gives.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax import monitoring  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from oceansar import flops, sharding  # noqa: E402
from oceansar.experiment import Experiment, program_report, run_spec  # noqa: E402
from oceansar.spec import RunSpec  # noqa: E402
from oceansar.train import contrastive_step  # noqa: E402
from oceansar.train import step as step_lib  # noqa: E402
from configs import common, wfa  # noqa: E402

OBJECTIVES = ("dino", "dinov2", "wfa")

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_ROOT / "configs" / "default.py"), "Recipe file, optionally with ':arg'.", lock_config=False)
_VARIANT = flags.DEFINE_string("variant", None, "ViT variant (sets config.model.variant), e.g. S/16.")
_DTYPE = flags.DEFINE_string("dtype", None, "Compute dtype (sets config.model.dtype): float32 or bfloat16.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch size (sets config.batch_size).")
_GLOBAL = flags.DEFINE_integer("global_size", None, "Global crop side (sets config.crops.global_size).")
_LOCAL = flags.DEFINE_integer("local_size", None, "Local crop side (sets config.crops.local_size).")
_N_LOCAL = flags.DEFINE_integer("n_local", None, "Local crops per image (sets config.crops.n_local).")
_IMAGE = flags.DEFINE_integer(
    "image_size", None, "Side of the synthetic source images (sets config.data.image_size); by default the "
    "config's, raised to the global crop side when smaller.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed windows of --steps steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation (the first includes dispatch set-up).")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Devices in the data mesh; 0 = all visible.")
_OBJECTIVES = flags.DEFINE_list(
    "objectives", ["dino", "dinov2"], "Objectives timed one after the other: dino (iBOT and KoLeo off), dinov2 "
    "(iBOT + KoLeo on, configs.common.dinov2_objective) and/or wfa (image-text: the same image tower with a text "
    "tower over 5 captions per image, WFA BLEU aggregation, InfoNCE; configs/wfa.py's text block).")
_FALLBACK = flags.DEFINE_list(
    "fallback_batch_sizes", [], "Smaller global batches tried in order when a step runs out of device memory.")
_CEILING = flags.DEFINE_integer(
    "ceiling_size", 0, "Side n of the n x n matmul timed as this device's ceiling; 0 = 2048 on CPU, 8192 "
    "elsewhere.")

def _apply_flags(config) -> dict[str, Any]:
    """Writes the command-line overrides into `config`; returns notes on values the benchmark chose itself."""
    notes = {}
    if _VARIANT.value is not None:
        config.model.variant = _VARIANT.value
    if _DTYPE.value is not None:
        config.model.dtype = _DTYPE.value
    if _BATCH.value is not None:
        config.batch_size = _BATCH.value
        config.total_examples = max(config.total_examples, config.batch_size)
    if _GLOBAL.value is not None:
        config.crops.global_size = _GLOBAL.value
    if _LOCAL.value is not None:
        config.crops.local_size = _LOCAL.value
    if _N_LOCAL.value is not None:
        config.crops.n_local = _N_LOCAL.value
    if _IMAGE.value is not None:
        config.data.image_size = _IMAGE.value
    elif config.data.image_size < config.crops.global_size:
        notes["image_size"] = (f"raised from the config's {config.data.image_size} to the global crop side "
                               f"{config.crops.global_size}")
        config.data.image_size = config.crops.global_size
    config.num_devices = _NUM_DEVICES.value
    for name, flag in (("--steps", _STEPS), ("--repeats", _REPEATS)):
        if flag.value < 1:
            raise ValueError(f"{name}: must be >= 1, got {flag.value}")
    if _WARMUP.value < 1:
        raise ValueError(f"--warmup: must be >= 1 (the first call pays dispatch set-up), got {_WARMUP.value}")
    return notes


def _synthetic_captions(spec: RunSpec, local: int, rng) -> dict:
    """Caption fields as a captioned source yields them: per image 5 captions of which 3 to 5 distinct, each
    BOS, 12 to L-2 token ids, EOS, then pads (0), distinct rows first, counts summing to 5, BLEU-like weights."""
    t = spec.text
    m, length = t.max_captions, t.context_length
    ids = np.zeros((local, m, length), np.int32)
    distinct = rng.integers(max(1, m - 2), m + 1, local)
    valid = np.arange(m)[None] < distinct[:, None]
    lengths = rng.integers(min(12, length - 2), length - 1, (local, m))
    for b, j in zip(*np.nonzero(valid)):
        ids[b, j, 0], ids[b, j, lengths[b, j] + 1] = 1, 2
        ids[b, j, 1:lengths[b, j] + 1] = rng.integers(3, t.vocab_size, lengths[b, j])
    count = valid.astype(np.int32)
    count[:, 0] += m - distinct                     # the repeats fold onto the first caption
    weights = np.where(valid, rng.random((local, m)), 0.0).astype(np.float32)
    return {"caption_ids": ids, "caption_valid": valid, "caption_count": count,
            "caption_weights": weights / weights.sum(1, keepdims=True),
            "caption_tokens": (count * (lengths + 2)).sum(1).astype(np.int32)}


def _synthetic_batch(spec: RunSpec, rng) -> dict:
    """This process's slice of one global batch of uint8 images (and captions for an image-text run), as the
    Grain pipeline yields it."""
    local = spec.batch_size // jax.process_count()
    size, channels = spec.data.image_size, spec.model.in_channels
    first = jax.process_index() * local
    batch = {
        "image": rng.integers(0, 256, (local, size, size, channels), dtype=np.uint8),
        "sample_id": (np.arange(first, first + local) % spec.data.num_samples).astype(np.int64),
        "weight": np.ones((local,), np.float32),
    }
    return batch | (_synthetic_captions(spec, local, rng) if spec.text.enabled else {})


class _CompileSeconds:
    """Seconds of XLA backend compilation reported by JAX's monitoring events while active."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.seconds, self.active = 0.0, False
        monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **kwargs) -> None:
        del kwargs
        if self.active and event == self.EVENT:
            self.seconds += duration


def matmul_ceiling(n: int, dtype, *, repeats: int = 5) -> float:
    """Best TFLOP/s of one jitted n x n x n matmul on the default device (f32 accumulation for low precision)."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    jax.block_until_ready(dot(a, b))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def run(config, notes: dict[str, Any]) -> dict[str, Any]:
    """Builds, compiles and times the train step of `config` through its Experiment; returns the JSON report."""
    spec = run_spec(config)
    num_devices = spec.num_devices or jax.device_count()
    exp = Experiment.build(spec, num_samples=spec.data.num_samples)
    state = exp.init_state()
    nlayers = len(state.params["head"]["mlp"]) if "head" in state.params else 0
    batch = sharding.shard_batch(exp.mesh, _synthetic_batch(spec, np.random.default_rng(0)))

    compile_seconds = _CompileSeconds()
    compile_seconds.active = True
    t0 = time.perf_counter()
    train_step = exp.compile_train_step(np.uint8, log=False)
    compile_total_s = time.perf_counter() - t0
    compile_seconds.active = False
    report = program_report(train_step)
    xla_flops_per_device = report.get("flops")
    memory = {k: v for k, v in report.items() if k != "flops"} or None
    # The same pure step the Experiment compiled, traced on the same abstract state and batch.
    make = contrastive_step.make_train_step if spec.text.enabled else step_lib.make_train_step
    pure_step = make(exp.graphdef, exp.rest, exp.tx, spec, exp.budget)
    jaxpr = jax.make_jaxpr(pure_step)(exp.abstract_state, exp.batch_spec(np.uint8))
    traced_matmul_flops = flops.jaxpr_matmul_flops(jaxpr)

    # The loop's own call path: the AOT-compiled step, state donated.
    t3 = time.perf_counter()
    state, metrics, _ = train_step(state, batch)
    jax.block_until_ready(state)
    first_call_s = time.perf_counter() - t3
    for _ in range(_WARMUP.value - 1):
        state, metrics, _ = train_step(state, batch)
    jax.block_until_ready(state)

    windows = []
    for _ in range(_REPEATS.value):
        t0w = time.perf_counter()
        for _ in range(_STEPS.value):
            state, metrics, _ = train_step(state, batch)
        jax.block_until_ready(state)
        windows.append((time.perf_counter() - t0w) / _STEPS.value)
    final_loss = float(jax.device_get(metrics["train/loss"]))
    if not np.isfinite(final_loss):
        raise FloatingPointError(f"train step produced loss {final_loss}: the timing is of a broken step")

    device = jax.devices()[0]
    platform = device.platform
    b = spec.batch_size
    analytic = flops.run_step_flops(spec, nlayers=nlayers)
    augment = flops.multicrop_flops(spec.crops, image_size=spec.data.image_size, in_channels=spec.model.in_channels)
    step_s_best, step_s_median = min(windows), statistics.median(windows)
    achieved = analytic["total"] * b / step_s_best / 1e12
    peak = flops.peak_tflops(device.device_kind)
    ceiling_dtype = jnp.float32 if platform == "cpu" else jnp.dtype(spec.model.dtype)
    ceiling_n = _CEILING.value or (2048 if platform == "cpu" else 8192)
    ceiling = matmul_ceiling(ceiling_n, ceiling_dtype)
    # CPU "devices" share the host's cores, so their ceiling is the host's; accelerators add up.
    ceiling_total = ceiling if platform == "cpu" else ceiling * num_devices
    xla_per_sample = None if xla_flops_per_device is None else xla_flops_per_device * num_devices / b

    c = spec.crops
    return {
        "benchmark": "train_step",
        "config": {
            "recipe": spec.name,
            "variant": spec.model.variant,
            "dtype": spec.model.dtype,
            "attention": spec.model.attention,
            "remat": spec.model.remat,
            "batch_size": b,
            "image_size": spec.data.image_size,
            "in_channels": spec.model.in_channels,
            "crops": {"n_global": c.n_global, "global_size": c.global_size, "n_local": c.n_local,
                      "local_size": c.local_size},
            "head": {"hidden_dim": spec.model.hidden_dim, "bottleneck_dim": spec.model.bottleneck_dim,
                     "out_dim": spec.model.out_dim, "nlayers": nlayers},
            "objective": ({"image_text": True, "text_size": spec.text.size, "aggregation": spec.text.aggregation,
                           "context_length": spec.text.context_length, "capacity": spec.text.capacity}
                          if spec.text.enabled else
                          {"ibot_weight": spec.ibot.weight, "koleo_weight": spec.dino.koleo_weight,
                           "centering": spec.dino.centering, "ibot_separate_head": spec.ibot.separate_head}),
            "notes": notes,
        },
        "device": {"platform": platform, "device_kind": device.device_kind, "num_devices": num_devices,
                   "process_count": jax.process_count(), "jax": jax.__version__},
        "timing": {
            "trace_lower_s": round(compile_total_s - compile_seconds.seconds, 3),
            "compile_s": round(compile_seconds.seconds, 3),
            "first_call_s": round(first_call_s, 4),
            "steps_per_repeat": _STEPS.value,
            "repeats": _REPEATS.value,
            "step_ms_best": round(1e3 * step_s_best, 3),
            "step_ms_median": round(1e3 * step_s_median, 3),
            "samples_per_s": round(b / step_s_best, 2),
            "samples_per_s_median": round(b / step_s_median, 2),
            "final_loss": final_loss,
        },
        "flops": {
            "formula": flops.IMAGE_TEXT_STEP_FORMULA if spec.text.enabled else flops.DINO_STEP_FORMULA,
            "analytic_per_sample": analytic,
            "analytic_per_step": analytic["total"] * b,
            "multicrop_matmul_per_sample": augment,
            "traced_matmul_per_sample": traced_matmul_flops / b,
            "traced_over_analytic_plus_multicrop": round(
                traced_matmul_flops / b / (analytic["total"] + augment), 4),
            "xla_cost_analysis_per_sample": xla_per_sample,
            "xla_over_analytic": None if xla_per_sample is None else round(xla_per_sample / analytic["total"], 4),
            "notes": ("analytic: model matmuls only, backward as 2x forward. traced: every dot_general/conv of the "
                      "jitted step as traced (true backward, multi-crop resampling, position-embedding resize). "
                      "xla_cost_analysis: XLA's estimate for one device's partitioned program times the device "
                      "count, every op counted (elementwise, reductions, transcendentals as flops; replicated work "
                      "such as AdamW and the EMA once per device). Custom calls such as cuDNN attention count 0 in "
                      "both traced and XLA numbers."),
        },
        "throughput": {
            "achieved_tflops": round(achieved, 4),
            "peak_tflops_per_device": peak,
            "peak_basis": "dense bf16 datasheet peak" if peak is not None else "unknown for this device",
            "mfu": None if peak is None else round(achieved / (peak * num_devices), 4),
            "matmul_ceiling": {"n": ceiling_n, "dtype": jnp.dtype(ceiling_dtype).name,
                               "tflops_one_device": round(ceiling, 4),
                               "tflops_all_devices": round(ceiling_total, 4)},
            "fraction_of_matmul_ceiling": round(achieved / ceiling_total, 4),
        },
        "memory_per_device_bytes": memory,
    }


def with_objective(config, objective: str):
    """A copy of `config` training `objective`: dino (iBOT and KoLeo off), dinov2 (both on, DINOv2's values) or wfa
    (image-text: configs/wfa.py's text block on the same image tower, crops and batch)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"--objectives: unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    config = copy.deepcopy(config)
    if objective == "wfa":
        config.text = wfa.get_config().text
        config.ibot.weight = 0.0
        config.dino.koleo_weight = 0.0
    elif objective == "dinov2":
        common.dinov2_objective(config)
    else:
        config.ibot.weight = 0.0
        config.dino.koleo_weight = 0.0
    return config


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the device (or host) running out of memory, as XLA and Python report it."""
    text = str(error)
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run_fitting(config, notes: dict[str, Any], fallback_batch_sizes=()) -> dict[str, Any]:
    """`run` at `config.batch_size`, then at each smaller batch of `fallback_batch_sizes` while the previous one
    ran out of memory; `config.batch_size` is left at the batch that ran.

    Raises:
      whatever `run` raised at the last batch tried, or at any batch for an error other than out-of-memory.
    """
    batches = [config.batch_size] + [b for b in fallback_batch_sizes if b < config.batch_size]
    too_big = []

    def run_at(batch_size: int) -> dict[str, Any]:
        config.batch_size = batch_size
        config.total_examples = max(config.total_examples, batch_size)
        report = run(config, notes)
        if too_big:
            report["batch_fallback"] = {"out_of_memory": too_big, "batch_size": batch_size}
        return report

    for b in batches[:-1]:
        try:
            return run_at(b)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is retried
            if not out_of_memory(e):
                raise
            too_big.append({"batch_size": b, "error": f"{type(e).__name__}: {e}"[:300]})
        # The failed attempt's buffers and executables must go before a smaller batch allocates.
        gc.collect()
        jax.clear_caches()
    return run_at(batches[-1])


def compare_objectives(config, notes: dict[str, Any], objectives: list[str],
                       fallback_batch_sizes=()) -> dict[str, Any]:
    """`run_fitting` for each objective; the first one's report with every objective's headline and the ratios
    added."""
    if not objectives:
        raise ValueError("--objectives: give at least one of " + ", ".join(OBJECTIVES))
    first = objectives[0]
    first_config = with_objective(config, first)
    reports = {first: run_fitting(first_config, notes, fallback_batch_sizes)}
    config = copy.deepcopy(config)
    config.batch_size = first_config.batch_size
    errors = {}
    for name in objectives[1:]:
        # A later objective that fails (out of memory even at the smallest batch) must not take the first
        # one's measurement with it: the device time that produced it is the scarce part.
        try:
            reports[name] = run_fitting(with_objective(config, name), notes, fallback_batch_sizes)
        except Exception as e:  # noqa: BLE001 - recorded in the report, whatever XLA raised
            errors[name] = f"{type(e).__name__}: {e}"[:1000]
    out = dict(reports[first], objective=first)
    out["objectives"] = {name: {"batch_size": r["config"]["batch_size"], "step_ms_best": r["timing"]["step_ms_best"],
                                "samples_per_s": r["timing"]["samples_per_s"],
                                "analytic_flops_per_sample": r["flops"]["analytic_per_sample"]["total"],
                                "achieved_tflops": r["throughput"]["achieved_tflops"],
                                "mfu": r["throughput"]["mfu"], "compile_s": r["timing"]["compile_s"],
                                "final_loss": r["timing"]["final_loss"]}
                         for name, r in reports.items()}
    out["objectives"] |= {name: {"error": error} for name, error in errors.items()}
    base = out["objectives"][first]
    out["ratios"] = {f"{name}_over_{first}": {
        "time_per_sample": round(base["samples_per_s"] / o["samples_per_s"], 4),
        "analytic_flops": round(o["analytic_flops_per_sample"] / base["analytic_flops_per_sample"], 4)}
        for name, o in out["objectives"].items() if name != first and "error" not in o}
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    notes = _apply_flags(config)
    fallbacks = [int(b) for b in _FALLBACK.value]
    print(json.dumps(compare_objectives(config, notes, _OBJECTIVES.value, fallbacks), indent=2))


if __name__ == "__main__":
    app.run(main)
