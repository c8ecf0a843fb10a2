"""The training loop: `run(config, workdir)` pretrains, evaluates, checkpoints and releases.

The loop is an explicit epoch loop. At each epoch boundary the pruning policy produces the epoch's
Selection and the Grain pipeline serves it; each step dispatches the jitted train step without
waiting for it (the host reads the next batch while the device computes), and metrics are fetched
only on log steps. An epoch ends when its known number of batches has been served, without waiting
for the iterator to report its end, and the finished iterator is closed off the training thread
(joining Grain's worker processes takes most of a second). Resume order: the workdir's own
checkpoint, then `config.resume`, then scratch. A non-finite loss stops the run with an error and
the last good checkpoint stays untouched.
"""
from __future__ import annotations

import json
import logging
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from oceansar import release, sharding
from oceansar.checkpoint import Checkpointer, abstract_like
from oceansar.data import pipeline, sources
from oceansar.data.selection import Selection
from oceansar.evals import features as features_lib
from oceansar.evals import probes
from oceansar.metrics import MetricWriter, plot_run, read_jsonl, truncate_after
from oceansar.pruning import policies
from oceansar.pruning.report import ResamplingLog, plot_pruning, resampling_scalars
from oceansar.train import optimizer as optim_lib
from oceansar.train import state as state_lib
from oceansar.train import step as step_lib
from oceansar.validate import validate


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class _Preempted(Exception):
    """SIGTERM arrived; the loop saved and stops."""


def _num_classes(source) -> int:
    return len(source.class_names)


class Evaluator:
    """Frozen-teacher evaluation on the labelled splits of `config.eval`."""

    def __init__(self, config, graphdef, rest, mesh):
        self.config = config
        self.train_source, self.test_source = sources.make_eval_sources(config)
        self.num_classes = _num_classes(self.train_source)
        self.embed = step_lib.make_embed_fn(graphdef, rest, config, features=config.eval.features)
        self.mesh = mesh

    def __call__(self, teacher_params, *, progress: bool = False) -> dict[str, float]:
        def embed_fn(images):
            return self.embed(teacher_params, images)

        feats = [features_lib.extract_features(
            embed_fn, src, batch_size=self.config.eval.batch_size, mesh=self.mesh,
            progress=progress, desc=f"eval {name} features")
            for name, src in (("train", self.train_source), ("test", self.test_source))]
        return probes.evaluate_features(feats[0], feats[1], num_classes=self.num_classes,
                                        n_bootstrap=self.config.eval.n_bootstrap,
                                        seed=self.config.seed)


def selection_summary(source, selection: Selection, *, resamplings: int = 0) -> dict[str, float]:
    """Size, kept fraction, mean weight, re-clusterings so far and, where the source knows its
    hidden labels (the simulator), the class shares of a selection: the picture of pruning
    rebalancing the tail."""
    out = {"selection_size": len(selection),
           "pruning/kept_fraction": len(selection) / len(source),
           "pruning/weight_mean": float(selection.weights.mean()),
           "pruning/resamplings": resamplings}
    if hasattr(source, "labels") and hasattr(source, "class_names"):
        counts = np.bincount(source.labels(selection.indices), minlength=len(source.class_names))
        out.update({f"pruning/class_share/{name}": float(c) / len(selection)
                    for name, c in zip(source.class_names, counts)})
    return out


def _format_results(title: str, results: dict[str, float]) -> str:
    keys = [k for k in sorted(results) if not k.endswith("_std") and isinstance(results[k], float)]
    return title + "\n" + "\n".join(
        f"  {k:<28s} {results[k]:.4f}" + (f" ± {results[k + '_std']:.4f}"
                                          if k + "_std" in results else "") for k in keys)


def _pruning_arrays(subset: Selection, served: Selection) -> dict[str, np.ndarray]:
    """The checkpoint's pruning item: the served Selection and the subset it was drawn from."""
    return served.to_arrays() | {f"subset_{k}": v for k, v in subset.to_arrays().items()}


def _from_pruning_arrays(arrays) -> tuple[Selection, Selection]:
    served = Selection.from_arrays(arrays)
    if "subset_indices" not in arrays:
        return served, served
    return Selection.from_arrays({k[len("subset_"):]: v for k, v in arrays.items()
                                  if k.startswith("subset_")}), served


def run(config, workdir: str | pathlib.Path, *, stop_at_step: int | None = None) -> dict[str, Any]:
    """Pretrains per `config` in `workdir`, resuming from its latest checkpoint if any.

    Args:
      config: the recipe (see configs/).
      workdir: where checkpoints, metrics, the release and the summary go.
      stop_at_step: if set, save a checkpoint at this step and return without the final
        evaluation (the schedules still span the whole budget): a shared prefix that other runs
        continue from with `config.resume` (the comparison's common warm-up).

    Returns:
      A summary dict: steps, examples seen, wall time, pruning record, final and at-init
      evaluation results (only steps and examples seen when stopped early).
    """
    workdir = pathlib.Path(workdir)
    devices = config.num_devices or jax.device_count()
    validate(config, num_devices=devices, process_count=jax.process_count())
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    mesh = sharding.make_mesh(config.num_devices or None)
    source = sources.make_pretrain_source(config.data, seed=config.seed)
    policy = policies.make_policy(config.pruning, num_samples=len(source), seed=config.seed,
                                  total_examples=config.total_examples)
    budget = step_lib.Budget.from_config(config)
    tx = optim_lib.make_optimizer(config.optim)
    graphdef, rest, state = state_lib.init_state(config, num_samples=len(source), tx=tx)
    state = sharding.replicate(mesh, state)
    train_step = step_lib.make_train_step(graphdef, rest, tx, config, budget)
    evaluator = Evaluator(config, graphdef, rest, mesh)
    local_batch = config.batch_size // jax.process_count()
    embed_cls = step_lib.make_embed_fn(graphdef, rest, config, features="cls")

    def signals(examples_seen: int, previous: Selection | None,
                last_resampling_epoch: int | None) -> dict[str, Any]:
        """What a pruning policy may read at an epoch boundary; each fetched only if used."""
        def embed(indices):
            return features_lib.extract_features(
                lambda images: embed_cls(state.teacher, images), source,
                batch_size=config.eval.batch_size, indices=indices, mesh=mesh,
                desc="pruning embed")["features"]
        return {"examples_seen": examples_seen, "previous": previous, "embed": embed,
                "last_resampling_epoch": last_resampling_epoch,
                "loss_table": lambda: jax.device_get(state.loss_stats)}

    def select(epoch: int, examples_seen: int, previous: Selection | None):
        """The policy's (subset, served) for `epoch`, counting and logging re-clusterings."""
        nonlocal resamplings, last_resampled
        chosen = policy.select(epoch, **signals(examples_seen, previous, last_resampled))
        if policy.last_resampling is not None:
            resamplings, last_resampled = resamplings + 1, epoch
            resampling_log.append(policy.last_resampling)
        return chosen

    def epoch_iterator(selection: Selection, epoch: int):
        ds = pipeline.epoch_dataset(
            source, selection, seed=config.seed, epoch=epoch, batch_size=local_batch,
            shard_index=jax.process_index(), shard_count=jax.process_count(),
            worker_count=config.data.worker_count)
        return iter(ds)

    def epoch_steps(selection: Selection) -> int:
        return pipeline.steps_per_epoch(len(selection), local_batch, jax.process_count())

    def retire(iterator) -> None:
        """Closes a finished epoch's iterator in the background, overlapping the next epoch."""
        if hasattr(iterator, "close"):
            threading.Thread(target=iterator.close, name="retire-epoch-iterator", daemon=True).start()

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
    restore_from = ckpt if ckpt.latest_step() is not None else None
    if restore_from is None and config.resume:
        restore_from = Checkpointer(config.resume, max_to_keep=config.keep_checkpoints)
        if restore_from.latest_step() is None:
            raise FileNotFoundError(f"config.resume: no checkpoint under {config.resume}")
    resampling_log = ResamplingLog(workdir, enabled=is_main)
    if restore_from is not None:
        start = restore_from.latest_step()
        meta, pruning_arrays = restore_from.restore_meta(start)
        epoch = meta["epoch"]
        resamplings = meta.get("resamplings", 0)
        last_resampled = meta.get("last_resampling_epoch")
        # Checkpoints written before epoch_start_step existed: read the epoch until its iterator ends.
        epoch_start = meta.get("epoch_start_step", start)
        subset, selection = _from_pruning_arrays(pruning_arrays)
        data_iter = epoch_iterator(selection, epoch)
        state = restore_from.restore_state(start, abstract_state=abstract_like(state),
                                           data_iterator=data_iter)
        if restore_from is not ckpt:
            restore_from.close()
        if is_main:
            truncate_after(workdir / "metrics.jsonl", start)
            resampling_log.truncate_after(epoch if restore_from is ckpt else -1)
        logging.warning("resumed from step %d (epoch %d) of %s", start, epoch, restore_from.directory)
    else:
        start, epoch, epoch_start, resamplings, last_resampled = 0, 0, 0, 0, None
        resampling_log.truncate_after(-1)
        subset, selection = select(epoch, 0, None)
        data_iter = epoch_iterator(selection, epoch)

    writer = MetricWriter(workdir, enabled=is_main)

    def describe(selection: Selection, resamplings: int) -> dict[str, float]:
        """The selection's log fields, with the latest re-clustering's cluster-size summary."""
        info = selection_summary(source, selection, resamplings=resamplings)
        if resampling_log.records:
            info |= resampling_scalars(resampling_log.records[-1])
        return info

    selection_info = describe(selection, resamplings)
    preempted = {"flag": False}
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.update(flag=True))

    def save(step: int) -> None:
        if not bool(jax.device_get(state.finite)):
            raise NonFiniteLossError(
                f"non-finite loss before step {step}; not saved (last good checkpoint: "
                f"{ckpt.latest_step()} in {ckpt.directory})")
        ckpt.save(step, state=state, data_iterator=data_iter,
                  pruning=_pruning_arrays(subset, selection),
                  meta={"epoch": epoch, "epoch_start_step": epoch_start,
                        "examples_seen": step * config.batch_size,
                        "resamplings": resamplings, "last_resampling_epoch": last_resampled})

    eval_every = (config.eval.every_examples // config.batch_size) if config.eval.every_examples else 0
    step = int(jax.device_get(state.step))
    bar = tqdm(total=budget.total_steps, initial=step, disable=not (config.progress and is_main),
               desc="pretrain", unit="step", dynamic_ncols=True)
    # (step, metrics, epoch, selection summary) of the last log step, written one step later.
    pending: tuple[int, dict, int, dict] | None = None
    t_last, step_last = time.perf_counter(), step
    t_start = time.perf_counter()
    end_step = budget.total_steps if stop_at_step is None else min(stop_at_step, budget.total_steps)
    try:
        served = epoch_steps(selection)
        while step < end_step:
            batch = next(data_iter, None) if step - epoch_start < served else None
            if batch is None:  # the epoch's batches are all served (or its iterator ended)
                retire(data_iter)
                epoch, epoch_start = epoch + 1, step
                subset, selection = select(epoch, step * config.batch_size, subset)
                data_iter, served = epoch_iterator(selection, epoch), epoch_steps(selection)
                selection_info = describe(selection, resamplings)
                continue
            device_batch = sharding.shard_batch(
                mesh, {k: batch[k] for k in ("image", "sample_id", "weight")})
            state, metrics, _ = train_step(state, device_batch)
            step += 1
            bar.update(1)
            if pending is not None:
                # Metrics of the previous log step, fetched now that the next step is queued.
                log_step, log_metrics, log_epoch, log_selection = pending
                values = jax.device_get(log_metrics)
                if not np.isfinite(values["train/loss"]):
                    raise NonFiniteLossError(
                        f"loss is {values['train/loss']} at step {log_step}; stopping. The last good "
                        f"checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.directory}")
                now = time.perf_counter()
                values["train/examples_per_sec"] = (step - 1 - step_last) * config.batch_size / (now - t_last)
                t_last, step_last = now, step - 1
                values.update(examples_seen=log_step * config.batch_size, epoch=log_epoch,
                              **log_selection)
                writer.write(log_step, values)
                bar.set_postfix(loss=f"{values['train/loss']:.3f}",
                                ex_s=f"{values['train/examples_per_sec']:.0f}")
                pending = None
            if step % config.log_every_steps == 0:
                pending = (step, metrics, epoch, selection_info)
            if step % config.checkpoint_every_steps == 0 or preempted["flag"]:
                save(step)
            if preempted["flag"]:
                raise _Preempted()
            if eval_every and step % eval_every == 0 and step < budget.total_steps:
                results = evaluator(state.teacher)
                writer.write(step, {f"eval/{k}": v for k, v in results.items()}
                             | {"examples_seen": step * config.batch_size})
        if pending is not None:
            values = jax.device_get(pending[1])
            if not np.isfinite(values["train/loss"]):
                raise NonFiniteLossError(f"loss is {values['train/loss']} at step {pending[0]}")
            values.update(examples_seen=pending[0] * config.batch_size, epoch=pending[2],
                          **pending[3])
            writer.write(pending[0], values)
        if ckpt.latest_step() != step:
            save(step)
        ckpt.wait()
    except _Preempted:
        ckpt.wait()
        logging.warning("SIGTERM: saved step %d in %s; rerun the same command to resume",
                        step, ckpt.directory)
        bar.close()
        raise SystemExit(143)
    finally:
        # Whatever stops the loop, the saves already started are completed: a crash keeps the
        # last good checkpoint whole.
        ckpt.wait()
        signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
    train_seconds = time.perf_counter() - t_start
    if step < budget.total_steps:  # stopped at stop_at_step: a prefix for other runs
        if is_main:
            release.export(workdir / "release", teacher_params=state.teacher, config=config)
        writer.close()
        ckpt.close()
        return {"steps": step, "examples_seen": step * config.batch_size}

    final = evaluator(state.teacher, progress=config.progress and is_main)
    writer.write(step, {f"eval/{k}": v for k, v in final.items()}
                 | {"examples_seen": step * config.batch_size})
    summary: dict[str, Any] = {
        "steps": step, "examples_seen": step * config.batch_size,
        "train_seconds": round(train_seconds, 1),
        "pruning": {"policy": config.pruning.policy, "epochs": epoch + 1,
                    "resamplings": resamplings, "subset_size": len(subset),
                    "selection_size": len(selection),
                    "kept_fraction": round(len(selection) / len(source), 4),
                    "distinct_seen_fraction": round(float(
                        (jax.device_get(state.loss_stats["count"]) > 0).mean()), 4)},
        "final": final}
    if config.eval.at_init:
        _, _, init = state_lib.init_state(config, num_samples=1, tx=tx)
        summary["at_init"] = evaluator(sharding.replicate(mesh, init.teacher))
    if is_main:
        release.export(workdir / "release", teacher_params=state.teacher, config=config)
        records = read_jsonl(workdir / "metrics.jsonl")
        plot_run(records, workdir / "metrics.png")
        if config.pruning.policy != "none":
            plot_pruning(records, resampling_log.records, workdir / "pruning.png")
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(_format_results(f"teacher after {summary['examples_seen']} examples:", final))
        if "at_init" in summary:
            print(_format_results("same architecture at random init:", summary["at_init"]))
    writer.close()
    ckpt.close()
    return summary
