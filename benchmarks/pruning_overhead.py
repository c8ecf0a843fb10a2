r"""Benchmark: the two overheads of dynamic pruning, priced against the train step. Prints JSON.

Everything is built as `oceansar.train.loop.run` builds it, through the `Experiment` (`run_spec`,
`make_pretrain_source`, `Pruner`, `Experiment.build`, `init_state`, `compile_train_step`,
`sharding.shard_batch`), and a re-clustering is computed as the loop's epoch boundary computes it
(`Pruner.plan`, the teacher's CLS embedding of `needs.embed` with `extract_features` at
`config.pruning.embed_batch_size`, `Pruner.decide`), so the two figures are those a run of the
recipe pays:

1. Resampling: one re-clustering of the `cluster_balanced` policy (plan, the teacher embeds M samples
   on one centre view, hierarchical k-means, balanced sampling) against the training compute between
   two re-clusterings, T_s pruned epochs = T_s * ceil(n_keep / batch_size) steps at the measured
   step time (goal <= 5%). It is timed once cold (the first re-clustering of a run, compilation
   included) and `--repeats` times warm (the steady state of a long run; each at another epoch, so
   another random subset of M), split into plan, teacher-embedding and decide (cluster+sample)
   seconds, with the XLA compilations each one triggers (counted from JAX's monitoring events).
2. Loss table: the on-device loss-statistics update against one train step (goal <= 1%). The step
   is compiled with and without the update (`compile_train_step(update_loss_stats=...)`) and both
   are timed on the same device-resident batch, in interleaved windows of `--steps` steps (the
   machine may be shared: best and median of `--repeats`); the fraction is (t_with - t_without) /
   t_with. `loss_stats.update` is also timed alone, jitted, on the same shapes and shardings (table
   replicated, batch sharded): an upper bound, since inside the step XLA fuses it with the rest. On a
   shared machine the differential's noise may exceed the 1% limit; the goal's `met` is then null
   rather than a coin toss.

    python -m benchmarks.pruning_overhead                          # configs/default.py, policy=cluster_balanced
    python -m benchmarks.pruning_overhead --subset_size=4096 --every_epochs=8
    python benchmarks/pruning_overhead.py --config=configs/oceansar1.py --steps=5 --repeats=2
    JAX_NUM_CPU_DEVICES=8 python -m benchmarks.pruning_overhead --num_devices=8   # emulated 8-device mesh
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any

# Run as a script (`python benchmarks/pruning_overhead.py`), the recipes' `from configs import ...` (and `oceansar`
# when it is not installed) need the repository root on the path, as `python -m benchmarks.pruning_overhead` gives.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax import monitoring  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from oceansar import sharding  # noqa: E402
from oceansar.data import sources  # noqa: E402
from oceansar.evals import features as features_lib  # noqa: E402
from oceansar.experiment import Experiment, run_spec  # noqa: E402
from oceansar.pruning import loss_stats, policies  # noqa: E402
from oceansar.spec import RunSpec  # noqa: E402

RESAMPLE_GOAL = 0.05  # one re-clustering <= 5% of the training compute between two of them
TABLE_GOAL = 0.01     # the loss-table update <= 1% of a train step

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_ROOT / "configs" / "default.py") + ":policy=cluster_balanced",
    "Recipe file with ':arg'; its pruning policy must be cluster_balanced.", lock_config=False)
_SUBSET = flags.DEFINE_integer("subset_size", None, "M, samples embedded per re-clustering (sets "
                               "config.pruning.subset_size; 0 = the whole pool).")
_EVERY = flags.DEFINE_integer("every_epochs", None, "T_s, pruned epochs between re-clusterings (sets "
                              "config.pruning.every_epochs).")
_RHO = flags.DEFINE_float("rho", None, "Kept fraction of the pool (sets config.pruning.rho).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps per window.")
_REPEATS = flags.DEFINE_integer("repeats", 9, "Interleaved timing windows, and warm re-clusterings.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls of each step after its compilation.")
_UPDATE_CALLS = flags.DEFINE_integer("update_calls", 100, "Calls of the lone table update per window.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Devices in the data mesh; 0 = all visible.")


def _apply_flags(config) -> None:
    """Writes the command-line overrides into `config`, before anything is built from it."""
    if _SUBSET.value is not None:
        config.pruning.subset_size = _SUBSET.value
    if _EVERY.value is not None:
        config.pruning.every_epochs = _EVERY.value
    if _RHO.value is not None:
        config.pruning.rho = _RHO.value
    config.num_devices = _NUM_DEVICES.value
    for name, flag in (("--steps", _STEPS), ("--repeats", _REPEATS), ("--warmup", _WARMUP),
                       ("--update_calls", _UPDATE_CALLS)):
        if flag.value < 1:
            raise ValueError(f"{name}: must be >= 1, got {flag.value}")


def _batch(spec: RunSpec, source, rng: np.random.Generator, image_dtype) -> dict[str, np.ndarray]:
    """This process's slice of one global batch of real pool records at random rows, as the pipeline yields it."""
    local = spec.batch_size // jax.process_count()
    rows = rng.choice(len(source), spec.batch_size, replace=False)
    rows = rows[jax.process_index() * local:(jax.process_index() + 1) * local]
    return {"image": np.stack([np.asarray(source[int(i)]["image"]) for i in rows]).astype(image_dtype, copy=False),
            "sample_id": rows.astype(np.int64),
            "weight": np.ones((local,), np.float32)}


class _CompileCounter:
    """XLA compilations (count, seconds) reported by JAX's monitoring events since the last `reset`."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count, self.seconds = 0, 0.0
        monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **kwargs) -> None:
        del kwargs
        if event == self.EVENT:
            self.count, self.seconds = self.count + 1, self.seconds + duration

    def reset(self) -> None:
        self.count, self.seconds = 0, 0.0


def _stats(values: list[float]) -> dict[str, Any]:
    return {"best": round(min(values), 6), "median": round(statistics.median(values), 6),
            "all": [round(v, 6) for v in values]}


def run(config) -> dict[str, Any]:
    """Builds the recipe's Experiment and pool as the loop does, times both overheads; returns the JSON report."""
    spec = run_spec(config)
    if spec.pruning.subset != "cluster_balanced":
        raise ValueError(f"config.pruning.policy is {spec.pruning.policy!r}: this benchmark prices the "
                         "cluster_balanced re-clustering")
    devices = spec.num_devices or jax.device_count()
    t0 = time.perf_counter()
    source = sources.make_pretrain_source(spec.data, seed=spec.seed, text=spec.text)
    source_s = time.perf_counter() - t0
    pruner = policies.Pruner(spec.pruning, num_samples=len(source), seed=spec.seed,
                             total_examples=spec.total_examples)
    policy = pruner.subset
    if not isinstance(policy, policies.ClusterBalanced):
        raise TypeError(f"Pruner gave a {type(policy).__name__} subset policy, not ClusterBalanced")
    exp = Experiment.build(spec, num_samples=len(source))
    mesh = exp.mesh
    state = exp.init_state()
    # The loop's choice: the pipeline serves uint8 as is and any float as float16.
    image = np.asarray(source[0]["image"])
    image_dtype = np.dtype(np.float16) if image.dtype.kind == "f" else image.dtype
    batch = sharding.shard_batch(mesh, _batch(spec, source, np.random.default_rng(spec.seed), image_dtype))

    # Compile both steps and the lone update, then warm each up; the state is threaded through
    # every call (the steps donate it), as the loop threads it through its steps.
    compile_s, steps = {}, {}
    per_sample = None
    for flag in (True, False):
        name = "step_with_update" if flag else "step_without_update"
        t0 = time.perf_counter()
        steps[flag] = exp.compile_train_step(image_dtype, update_loss_stats=flag, log=False)
        compile_s[name] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        state, _, per_sample = steps[flag](state, batch)
        jax.block_until_ready(state)
        compile_s[f"{name}_first_call"] = round(time.perf_counter() - t0, 3)
        for _ in range(_WARMUP.value - 1):
            state, _, per_sample = steps[flag](state, batch)
        jax.block_until_ready(state)
    update = jax.jit(functools.partial(loss_stats.update, momentum=spec.pruning.loss_stats_momentum),
                     donate_argnums=(0,))
    table = sharding.replicate(mesh, loss_stats.init(len(source)))
    # A copy of the step counter: the state's own is donated by the next train step.
    update_args = (batch["sample_id"], per_sample, batch["weight"],
                   sharding.replicate(mesh, jax.device_get(state.step)))
    t0 = time.perf_counter()
    table = update(table, *update_args)
    jax.block_until_ready(table)
    compile_s["lone_update"] = round(time.perf_counter() - t0, 3)

    windows = {True: [], False: []}
    update_windows = []
    metrics = None
    for r in range(_REPEATS.value):
        # Alternate which step goes first, so a drift in the machine's load biases neither.
        for flag in ((True, False) if r % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            for _ in range(_STEPS.value):
                state, metrics, _ = steps[flag](state, batch)
            jax.block_until_ready(state)
            windows[flag].append((time.perf_counter() - t0) / _STEPS.value)
        t0 = time.perf_counter()
        for _ in range(_UPDATE_CALLS.value):
            table = update(table, *update_args)
        jax.block_until_ready(table)
        update_windows.append((time.perf_counter() - t0) / _UPDATE_CALLS.value)
    final_loss = float(jax.device_get(metrics["train/loss"]))
    if not np.isfinite(final_loss):
        raise FloatingPointError(f"train step produced loss {final_loss}: the timing is of a broken step")

    # The loop's epoch boundary (`oceansar.train.loop._next_epoch`), timed; the teacher is the state's
    # after the steps above, and the epoch starts once the warm-up T_w is seen.
    embed = exp.embed_fn("cls")
    examples_seen = spec.pruning.warmup_examples
    compiles = _CompileCounter()

    def resample(epoch: int) -> dict[str, Any]:
        compiles.reset()
        t = time.perf_counter()
        needs = pruner.plan(epoch, examples_seen, last_resampling_epoch=None)
        t_plan = time.perf_counter()
        if needs.embed is None:
            raise RuntimeError(f"epoch {epoch}: the policy planned no re-clustering")
        embeddings = features_lib.extract_features(
            lambda images: embed(state.teacher, images), source, batch_size=spec.pruning.embed_batch_size,
            indices=needs.embed, mesh=mesh, desc="pruning embed")["features"]
        table_host = jax.device_get(state.loss_stats) if needs.loss_table else None
        t_embed = time.perf_counter()
        decision = pruner.decide(epoch, examples_seen, previous=None, last_resampling_epoch=None,
                                 embeddings=embeddings, loss_table=table_host)
        t_end = time.perf_counter()
        if decision.report is None:
            raise RuntimeError(f"epoch {epoch}: the policy did not re-cluster")
        return {"epoch": epoch, "kept": len(decision.subset), "embedded": int(needs.embed.size),
                "total": t_end - t, "plan": t_plan - t, "embed": t_embed - t_plan, "cluster_sample": t_end - t_embed,
                "compiles": compiles.count, "compile_s": compiles.seconds}

    every = spec.pruning.every_epochs
    first_epoch = 1
    cold = resample(first_epoch)
    warm = [resample(first_epoch + (r + 1) * every) for r in range(_REPEATS.value)]

    step_with, step_without = _stats(windows[True]), _stats(windows[False])
    lone = _stats(update_windows)
    steps_per_epoch = math.ceil(policy.n_keep / spec.batch_size)
    steps_between = every * steps_per_epoch
    between = {k: steps_between * step_with[k] for k in ("best", "median")}
    warm_total = _stats([w["total"] for w in warm])
    resample_fraction = {"warm_best": warm_total["best"] / between["best"],
                         "warm_median": warm_total["median"] / between["median"],
                         "cold": cold["total"] / between["median"]}
    # Each repeat's two windows are adjacent in time: their difference cancels slow drifts of the load.
    paired = [(w - wo) / w for w, wo in zip(windows[True], windows[False])]
    table_fraction = {
        "differential_best": (step_with["best"] - step_without["best"]) / step_with["best"],
        "differential_median": (step_with["median"] - step_without["median"]) / step_with["median"],
        "differential_paired_median": statistics.median(paired),
        "differential_paired_stderr": (statistics.stdev(paired) / math.sqrt(len(paired))
                                       if len(paired) > 1 else None),
        "lone_update_best": lone["best"] / step_with["best"],
        "lone_update_median": lone["median"] / step_with["median"],
    }
    # The differential decides the table goal only where its noise (2 stderr) leaves the limit on one side.
    diff, err = table_fraction["differential_paired_median"], table_fraction["differential_paired_stderr"]
    table_met = None
    if err is not None and diff + 2 * err <= TABLE_GOAL:
        table_met = True
    elif err is not None and diff - 2 * err > TABLE_GOAL:
        table_met = False
    device = jax.devices()[0]
    rounded = lambda d: {k: None if v is None else round(v, 6) for k, v in d.items()}  # noqa: E731
    return {
        "benchmark": "pruning_overhead",
        "device": {"platform": device.platform, "device_kind": device.device_kind, "num_devices": devices,
                   "process_count": jax.process_count(), "jax": jax.__version__},
        "settings": {
            "recipe": spec.name, "policy": spec.pruning.policy, "variant": spec.model.variant,
            "dtype": spec.model.dtype, "N": len(source), "M": policy.subset_size,
            "rho": spec.pruning.rho, "n_keep": policy.n_keep, "T_s": every,
            "batch_size": spec.batch_size, "n_clusters": list(spec.pruning.n_clusters),
            "n_resamples": spec.pruning.n_resamples, "eta": spec.pruning.eta,
            "embed_batch_size": spec.pruning.embed_batch_size, "steps_per_pruned_epoch": steps_per_epoch,
            "steps_between_resamplings": steps_between,
        },
        "setup_s": {"source_build": round(source_s, 3), **compile_s},
        "train_step_s": {"steps_per_window": _STEPS.value, "repeats": _REPEATS.value,
                         "with_table_update": step_with, "without_table_update": step_without,
                         "final_loss": final_loss},
        "table_update": {"lone_update_s": lone | {"calls_per_window": _UPDATE_CALLS.value},
                         "fraction_of_step": rounded(table_fraction)},
        "resampling": {
            "cold_s": rounded({k: cold[k] for k in ("total", "plan", "embed", "cluster_sample", "compile_s")}),
            "warm_s": {"total": warm_total, "plan": _stats([w["plan"] for w in warm]),
                       "embed": _stats([w["embed"] for w in warm]),
                       "cluster_sample": _stats([w["cluster_sample"] for w in warm]),
                       "compile_s": _stats([w["compile_s"] for w in warm])},
            "xla_compiles": [cold["compiles"]] + [w["compiles"] for w in warm],
            "epochs": [cold["epoch"]] + [w["epoch"] for w in warm],
            "embedded": [cold["embedded"]] + [w["embedded"] for w in warm],
            "kept": [cold["kept"]] + [w["kept"] for w in warm],
            "train_s_between_resamplings": rounded(between),
            "fraction_of_training_between": rounded(resample_fraction),
        },
        "goals": {
            "resample": {"limit": RESAMPLE_GOAL, "value_warm_median": round(resample_fraction["warm_median"], 6),
                         "met": resample_fraction["warm_median"] <= RESAMPLE_GOAL,
                         "value_cold": round(resample_fraction["cold"], 6),
                         "cold_met": resample_fraction["cold"] <= RESAMPLE_GOAL},
            "table": {"limit": TABLE_GOAL,
                      "value_differential_paired_median": round(table_fraction["differential_paired_median"], 6),
                      "stderr": rounded(table_fraction)["differential_paired_stderr"],
                      "met": table_met,
                      "value_lone_update_median": round(table_fraction["lone_update_median"], 6),
                      "lone_update_met": table_fraction["lone_update_median"] <= TABLE_GOAL},
        },
        "notes": ("resampling fractions: warm_best = best re-clustering / (steps_between * best step), warm_median "
                  "likewise with medians, cold = first (compiling) re-clustering / (steps_between * median step); "
                  "steps are the step with the table update; a re-clustering's seconds split into plan "
                  "(Pruner.plan), embed (extract_features of the planned indices with the teacher's CLS embedding, "
                  "plus the loss table's fetch when the policy reads it) and cluster_sample (Pruner.decide); "
                  "compile_s and xla_compiles: XLA compilations inside each re-clustering (part of its seconds). "
                  "setup_s: compile_train_step seconds of each step, then its first call. Table fractions: "
                  "differential = (t_with - t_without) / t_with from the best windows, the median windows, and "
                  "paired (median over repeats of each repeat's adjacent windows, with its standard error: the "
                  "goal's met is null when the limit lies within 2 stderr of it, i.e. this run's timing noise "
                  "cannot decide); lone_update = the jitted update alone (dispatch included, no fusion) / t_with, "
                  "an upper bound."),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    _apply_flags(config)
    print(json.dumps(run(config), indent=2))


if __name__ == "__main__":
    app.run(main)
